"""Who calls us: the callers file, the guard that admits each call, the current caller.

WXLOGIN_CALLERS_FILE is TOML, one table per caller:

    [callers.edge]
    key_sha256 = "9f86d081884c7d65..."     # SHA-256 (hex) of the key it sends as
                                           # metadata x-wxlogin-caller-key; a list
                                           # during a key change
    rpcs = ["Login", "CheckSession", "DecryptUserData", "GetPhoneNumber",
            "RevokeSession", "RevokeAllSessions"]   # the edge's (clients/edge/app.py RPCS)
    apps = ["*"]
    login_rate = 200                       # optional: its Logins per second, at most

    [callers.orders]
    identity = "spiffe://corp.example/orders"  # a SAN (DNS or URI) of its mTLS client
                                               # certificate; a list is fine too
    rpcs = ["CheckSession", "DecryptUserData"]
    apps = ["wx1234567890abcdef"]

`"*"` in `rpcs` or `apps` means all, except for the RPCs in `NAMED_ONLY`
(GetAccessToken: it hands out the app's own WeChat credential), which a caller
gets only by naming them: `rpcs = ["*", "GetAccessToken"]`. So is
"RevokeAllSessions:user_id" (log any user out everywhere by user_id; without it,
RevokeAllSessions takes only a token of the user). Only the key's
SHA-256 is stored, so the file is no secret; presented keys are hashed and
compared with every stored hash in constant time, and never logged. Health
stays open to everyone.

Authorising an app needs the app, which for token RPCs is known only once the
token is resolved: the guard authenticates the caller and checks the RPC,
and the servicer runs the call as that caller (`act_as`: a context variable), so
the domain (service/sessions.py) can call `authorize_app` once it knows the app.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import tomllib
from collections.abc import Collection, Iterable, Mapping, Sequence
from contextvars import ContextVar, Token
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from runtime import log_context
from runtime.config import ConfigError
from runtime.ratelimited_log import RateLimitedLog
from service.errors import CallerForbidden, CallerUnauthenticated, WxLoginError

log = logging.getLogger(__name__)

CALLERS_VARIABLE = "WXLOGIN_CALLERS_FILE"
CALLER_KEY_METADATA = "x-wxlogin-caller-key"
ALL = "*"
# Granted only by name, never by "*": the access_token acts as the app itself at
# WeChat, so a backend that only checks sessions must not be able to take it.
# Not an RPC but a grant within one: RevokeAllSessions for any user named by
# user_id, where a caller granted only the RPC may end just the sessions of a
# token it holds. Naming it grants the RPC too.
REVOKE_BY_USER_ID = "RevokeAllSessions:user_id"
# Grants that stand for more than their own name.
_IMPLIES: Mapping[str, str] = {REVOKE_BY_USER_ID: "RevokeAllSessions"}
NAMED_ONLY = frozenset({"GetAccessToken", REVOKE_BY_USER_ID})
# Names go on log lines as they are: nothing that could forge or break one.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_FIELDS = frozenset({"key_sha256", "identity", "rpcs", "apps", "login_rate"})

# A call's invocation metadata: (key, value) pairs, values bytes for "-bin" keys.
Metadata = Sequence[tuple[str, str | bytes]]  # read twice: never a one-shot iterator

# Module level because context variables must be: set by the guard in the
# RPC's own task, read by the domain and by log records created in that task.
_CURRENT: ContextVar[Caller | None] = ContextVar("wxlogin_caller", default=None)


@dataclass(frozen=True)
class Caller:
    """One caller: how it proves who it is, and what it may do."""

    name: str
    key_sha256: tuple[bytes, ...] = ()  # digests of its keys
    identities: frozenset[str] = frozenset()  # SAN DNS names / URIs of its certificates
    rpcs: frozenset[str] | None = None  # None: every RPC but NAMED_ONLY
    apps: frozenset[str] | None = None  # None: every app
    login_rate: float | None = None  # Logins per second (service/limits.py); None: no own bound

    def __repr__(self) -> str:
        return f"Caller({self.name!r})"

    def may_call(self, rpc: str) -> bool:
        """True when this caller may call the RPC named `rpc` (e.g. "CheckSession")."""
        if self.rpcs is None:
            return rpc not in NAMED_ONLY
        return rpc in self.rpcs

    def may_act_for(self, app_id: str) -> bool:
        """True when this caller may act for users of `app_id`."""
        return self.apps is None or app_id in self.apps


class Callers:
    """The callers of one callers file, looked up by key or by certificate identity."""

    def __init__(self, callers: Iterable[Caller]) -> None:
        self.callers = tuple(callers)
        self._keys = [(digest, caller) for caller in self.callers for digest in caller.key_sha256]
        self._identities = {
            identity: caller for caller in self.callers for identity in caller.identities
        }

    def by_key(self, key: str) -> Caller | None:
        """The caller whose key this is, or None; the same work whichever caller, if any.

        Not remembered once matched (that would save a SHA-256, ~1 us a call): the
        process would then hold every valid key in the clear for its lifetime, where
        it holds only their hashes, like the callers file.
        """
        digest = hashlib.sha256(key.encode()).digest()
        found: Caller | None = None
        # No early exit and no dict lookup: every stored hash is compared, in constant time.
        for stored, caller in self._keys:
            if hmac.compare_digest(stored, digest) and found is None:
                found = caller
        return found

    def by_identity(self, identities: Iterable[str]) -> Caller | None:
        """The caller named by one of a verified certificate's identities, or None."""
        for identity in identities:
            caller = self._identities.get(identity)
            if caller is not None:
                return caller
        return None

    def __len__(self) -> int:
        return len(self.callers)


def current_caller() -> Caller | None:
    """The authenticated caller of the RPC being handled; None when callers are not configured."""
    return _CURRENT.get()


def authorize_app(app_id: str) -> None:
    """Raise CallerForbidden unless the current caller (if any) may act for `app_id`."""
    caller = _CURRENT.get()
    if caller is not None and not caller.may_act_for(app_id):
        raise CallerForbidden("this caller may not act for this app")


def load_callers(path: Path, *, apps: Collection[str], rpcs: Collection[str]) -> Callers:
    """Read and check a callers file; ConfigError naming WXLOGIN_CALLERS_FILE on any problem."""
    try:
        with path.open("rb") as file:
            document = tomllib.load(file)
    except OSError as error:
        raise ConfigError(CALLERS_VARIABLE, f"cannot read {path}: {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(CALLERS_VARIABLE, f"{path} is not valid TOML: {error}") from None
    unknown_top = set(document) - {"callers"}
    if unknown_top:
        raise ConfigError(CALLERS_VARIABLE, f"unknown top-level key {sorted(unknown_top)[0]!r}")
    tables = document.get("callers")
    if not isinstance(tables, dict) or not tables:
        raise ConfigError(CALLERS_VARIABLE, f"{path} has no [callers.NAME] tables")
    made = [_caller(name, table, apps, rpcs) for name, table in tables.items()]
    _unique(made)
    return Callers(made)


def _caller(name: str, table: Any, apps: Collection[str], rpcs: Collection[str]) -> Caller:
    where = f"caller {name[:64]!r}"
    if not _NAME.fullmatch(name):
        raise ConfigError(CALLERS_VARIABLE, f"{where}: names are letters, digits, '.', '_', '-'")
    if not isinstance(table, dict):
        raise ConfigError(CALLERS_VARIABLE, f"{where}: expected a table")
    unknown = set(table) - _FIELDS
    if unknown:
        raise ConfigError(CALLERS_VARIABLE, f"{where}: unknown field {sorted(unknown)[0]!r}")
    keys = _strings(table.get("key_sha256"), f"{where}: key_sha256")
    for key in keys:
        if not _SHA256_HEX.fullmatch(key):
            # Someone may have pasted the key itself: never echo it.
            raise ConfigError(
                CALLERS_VARIABLE, f"{where}: key_sha256 must be 64 lowercase hex digits"
            )
    identities = _strings(table.get("identity"), f"{where}: identity")
    if not keys and not identities:
        raise ConfigError(CALLERS_VARIABLE, f"{where}: give key_sha256 or identity (or both)")
    return Caller(
        name=name,
        key_sha256=tuple(bytes.fromhex(key) for key in keys),
        identities=frozenset(identities),
        rpcs=_grant(table.get("rpcs"), f"{where}: rpcs", rpcs, "RPC"),
        apps=_grant(table.get("apps"), f"{where}: apps", apps, "app"),
        login_rate=_rate(table.get("login_rate"), f"{where}: login_rate"),
    )


def _rate(value: Any, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ConfigError(CALLERS_VARIABLE, f"{where}: expected logins per second (> 0)")
    return float(value)


def _strings(value: Any, where: str) -> list[str]:
    if value is None:
        return []
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(item, str) and item for item in items):
        raise ConfigError(CALLERS_VARIABLE, f"{where}: expected a string or a list of strings")
    return list(items)


def _grant(value: Any, where: str, known: Collection[str], what: str) -> frozenset[str] | None:
    items = _strings(value, where)
    if not items:
        raise ConfigError(CALLERS_VARIABLE, f'{where}: required (a list; "*" for all)')
    for item in items:
        grant = what == "RPC" and item in _IMPLIES
        if item != ALL and item not in known and not grant:
            raise ConfigError(CALLERS_VARIABLE, f"{where}: unknown {what} {item[:64]!r}")
    if what == "RPC":
        items += [_IMPLIES[item] for item in items if item in _IMPLIES]
    if ALL in items:
        named = NAMED_ONLY.intersection(items)
        # "*" and a named-only RPC: everything, spelled out (None would drop the name),
        # but never the named-only ones that were not named.
        if named and what == "RPC":
            return frozenset(known).difference(NAMED_ONLY) | named
        return None
    return frozenset(items)


def _unique(callers: Iterable[Caller]) -> None:
    keys: set[bytes] = set()
    identities: set[str] = set()
    for caller in callers:
        for key in caller.key_sha256:
            if key in keys:
                raise ConfigError(
                    CALLERS_VARIABLE, f"caller {caller.name!r}: key_sha256 is another caller's"
                )
            keys.add(key)
        for identity in caller.identities:
            if identity in identities:
                raise ConfigError(
                    CALLERS_VARIABLE, f"caller {caller.name!r}: identity is another caller's"
                )
            identities.add(identity)


def peer_identities(auth_context: Mapping[str, Iterable[bytes]]) -> list[str]:
    """The SAN DNS names and URIs of the verified client certificate (empty without mTLS)."""
    names = [*auth_context.get("peer_dns", ()), *auth_context.get("peer_uri", ())]
    if not names:  # grpc versions without peer_dns/peer_uri: every SAN
        names = list(auth_context.get("x509_subject_alternative_name", ()))
    return [name.decode("utf-8", "replace") for name in names]


class CallerGuard:
    """Authenticates every call of a servicer's RPCs and authorises the RPC by name.

    A caller is known by its key (metadata x-wxlogin-caller-key) or, without a
    key, by an identity of its verified mTLS certificate. A key that matches no
    caller is refused even if the certificate would match: a wrong key is a
    mistake (or an attack) worth a clear answer. `callers` may be swapped while
    serving (SIGHUP): each call reads it once, when it starts.

    Not a grpc.aio.ServerInterceptor, though it does an interceptor's job: with
    any interceptor installed, grpc.aio runs an interceptor chain for every call
    and leaves its fast path for registered methods. Measured side by side
    (service CPU per CheckSession, one process, same load), the interceptor cost
    about 20 % per call and these same checks wrapped around the servicer's
    methods about 5 %. So the guard first wrapped the servicer, before its
    methods are registered. Now the servicer's one RPC wrapper (service/servicer.py)
    calls `admit` first, so refused calls are counted and carry a request id like
    every other; services registered beside it (health) stay open.
    """

    def __init__(self, callers: Callers) -> None:
        self.callers = callers
        # Refusals can come by the thousand: one line per kind per interval.
        self._quiet = RateLimitedLog(log)

    def admit(
        self, rpc: str, context: grpc.aio.ServicerContext[Any, Any], metadata: Metadata
    ) -> Caller:
        """The caller of this call (`metadata`: its invocation metadata), granted `rpc`.

        Raises CallerUnauthenticated or CallerForbidden, each logged here
        (rate-limited, with the peer, never the key). A known caller is named on
        the call's log lines and metrics even when it is refused.
        """
        try:
            caller = self._identify(context, metadata)
            log_context.note_caller(caller.name)
            if not caller.may_call(rpc):
                raise CallerForbidden(f"this caller may not call {rpc}")
        except WxLoginError as error:
            # The peer, so operators can find a misconfigured caller; never the key.
            self._quiet.log(
                logging.WARNING,
                error.reason,
                "%s refused: %s (peer %s)",
                rpc,
                error.reason,
                context.peer(),
            )
            raise
        return caller

    def _identify(self, context: grpc.aio.ServicerContext[Any, Any], metadata: Metadata) -> Caller:
        callers = self.callers
        key = None
        for item in metadata:
            if item[0] == CALLER_KEY_METADATA:
                key = item[1]
                break
        if key is not None:
            caller = callers.by_key(key) if isinstance(key, str) else None
            if caller is None:
                raise CallerUnauthenticated("unknown caller key")
            return caller
        caller = callers.by_identity(peer_identities(context.auth_context()))
        if caller is None:
            raise CallerUnauthenticated()
        return caller


def act_as(caller: Caller) -> Token[Caller | None]:
    """Run the rest of the call as `caller`: `current_caller` and `authorize_app` see it.

    Pass what it returns to `end_acting` when the call ends. Two functions, not a
    context manager: entered on every call, inside the servicer's one wrapper.
    """
    return _CURRENT.set(caller)


def end_acting(token: Token[Caller | None]) -> None:
    """The call started with `act_as` is over."""
    _CURRENT.reset(token)
