"""The emulator's in-memory model of WeChat: apps, users, codes, session keys, tokens and faults."""

from __future__ import annotations

import base64
import hashlib
import heapq
import hmac
import json
import random
import secrets
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from emulator import crypto
from emulator.access_tokens import ERRMSG as TOKEN_ERRMSG
from emulator.access_tokens import AccessTokenError, AccessTokens

Clock = Callable[[], float]

# The WeChat endpoints the emulator serves; faults and /_dev/stats are per endpoint.
ENDPOINTS = (
    "jscode2session",
    "stable_token",
    "getuserphonenumber",
    "checksession",
    "resetusersessionkey",
)

# WeChat's own messages for the errcodes it answers jscode2session with.
ERRMSG: dict[int, str] = {
    40002: "invalid grant_type",
    40003: "invalid openid",
    40013: "invalid appid",
    40029: "invalid code",
    40125: "invalid appsecret",
    40163: "code been used",
    40226: "high risk user",
    41002: "appid missing",
    41004: "appsecret missing",
    41008: "missing code",
    47001: "data format error",
    87009: "invalid signature",
    40097: "invalid args",
}


class WeChatError(Exception):
    """A jscode2session failure, answered as ``{"errcode", "errmsg"}``."""

    def __init__(self, errcode: int, errmsg: str | None = None) -> None:
        self.errcode = errcode
        self.errmsg = errmsg if errmsg is not None else ERRMSG.get(errcode, "error")
        super().__init__(f"{self.errcode} {self.errmsg}")


class UnknownAppError(Exception):
    """A dev endpoint named an appid the emulator was not started with."""


class NeverLoggedInError(Exception):
    """user-data was asked for a user that has no session_key yet."""


class NoPhoneError(Exception):
    """A phone code was asked for a user set up without a phone number."""


@dataclass
class User:
    """A test user of one app; ``session_key`` is the latest one minted by a login."""

    name: str
    openid: str
    unionid: str | None = None
    blocked: bool = False
    session_key: str | None = None
    phone: str | None = None  # the number without country code, e.g. "13800138000"
    country_code: str = "86"


@dataclass(frozen=True)
class Session:
    """What a successful jscode2session exchange returns."""

    openid: str
    session_key: str
    unionid: str | None


@dataclass
class _Code:
    appid: str
    user: str
    session_key: str
    expires_at: float
    used: bool = False


@dataclass
class _PhoneCode:
    appid: str
    user: str
    expires_at: float
    used: bool = False


@dataclass(frozen=True)
class PhoneInfo:
    """What getuserphonenumber answers for a phone code (``phone_info``)."""

    phone_number: str
    pure_phone_number: str
    country_code: str
    appid: str
    timestamp: int


@dataclass(frozen=True)
class Fault:
    """A misbehaviour for the next ``times`` requests to ``endpoint`` (None: until cleared).

    ``use_code``: WeChat performs the call (a code is spent) before the answer goes
    wrong, as when its reply is lost on the way back; without it the code stays usable.
    """

    latency_ms: int = 0
    errcode: int | None = None
    http_status: int | None = None
    drop: bool = False
    times: int | None = None
    use_code: bool = False
    endpoint: str = "jscode2session"

    @property
    def spoils_answer(self) -> bool:
        """Whether the answer is something other than the real exchange's (merely late)."""
        return self.drop or self.http_status is not None or self.errcode is not None

    def as_json(self) -> dict[str, Any]:
        """The fault as the dev API shows it."""
        return {
            "latency_ms": self.latency_ms,
            "errcode": self.errcode,
            "http_status": self.http_status,
            "drop": self.drop,
            "times": self.times,
            "use_code": self.use_code,
            "endpoint": self.endpoint,
        }


# What each chaos kind stands for: WeChat's -1 "system busy", a gateway's 500/502/503, a
# reply lost after WeChat spent the code, and a slow answer that does arrive.
CHAOS_KINDS = ("busy", "http5xx", "drop", "stall")
CHAOS_HTTP_STATUSES = (500, 502, 503)
SYSTEM_BUSY = -1


@dataclass(frozen=True)
class Chaos:
    """Random faults: each jscode2session request fails with probability ``rate``.

    The kind is drawn from ``kinds`` by a ``random.Random(seed)``, so the same seed and
    the same order of requests give the same faults.
    """

    rate: float
    seed: int
    kinds: tuple[str, ...] = CHAOS_KINDS
    stall_ms: int = 2000

    def as_json(self) -> dict[str, Any]:
        """The setting as the dev API shows it."""
        return {
            "rate": self.rate,
            "seed": self.seed,
            "kinds": list(self.kinds),
            "stall_ms": self.stall_ms,
        }


@dataclass(frozen=True)
class UserData:
    """An encrypted user-data bundle as ``wx.getUserInfo`` hands it to the mini-program."""

    encrypted_data: str
    iv: str
    raw_data: str
    signature: str


def _derive_id(*parts: str) -> str:
    # 28 chars like WeChat's ids: "o" + 27 chars of base64url(sha256); the NUL separator keeps
    # ("ab", "c") and ("a", "bc") apart.
    digest = hashlib.sha256("\0".join(parts).encode("utf-8")).digest()
    return "o" + base64.urlsafe_b64encode(digest).decode("ascii")[:27]


def openid_for(appid: str, user: str) -> str:
    """The openid WeChat would give ``user`` in ``appid``: stable, and different per app."""
    return _derive_id("openid", appid, user)


def unionid_for(user: str) -> str:
    """The derived unionid of ``user``: the same in every app, like WeChat's."""
    return _derive_id("unionid", user)


def session_signature(session_key: str) -> str:
    """WeChat's login-state signature: hmac_sha256(key=session_key, msg="") in hex."""
    return hmac.new(session_key.encode("utf-8"), b"", hashlib.sha256).hexdigest()


def _new_session_key() -> str:
    return base64.b64encode(secrets.token_bytes(16)).decode("ascii")


class EmulatorState:
    """Everything the emulator remembers; all methods are synchronous, so each is atomic on
    the event loop."""

    def __init__(
        self,
        apps: Mapping[str, str],
        code_ttl: float = 300.0,
        clock: Clock = time.time,
        *,
        access_token_ttl: float = 7200.0,
        access_token_overlap: float = 300.0,
    ) -> None:
        self._apps = dict(apps)
        self._code_ttl = code_ttl
        self._base_clock = clock
        # Added to the clock by POST /_dev/clock, so tests of a separate emulator
        # process can move its time (token expiry, code lifetimes) without waiting.
        self.clock_offset = 0.0
        self._users: dict[tuple[str, str], User] = {}
        self._by_openid: dict[tuple[str, str], User] = {}
        self._codes: dict[str, _Code] = {}
        self._phone_codes: dict[str, _PhoneCode] = {}
        # Expiry heap so that a benchmark minting millions of codes does not grow memory forever.
        self._expiry: list[tuple[float, str]] = []
        self._faults: deque[Fault] = deque()
        self.requests: dict[str, int] = dict.fromkeys(ENDPOINTS, 0)
        self.access_tokens = AccessTokens(
            self._clock, ttl=access_token_ttl, overlap=access_token_overlap
        )
        self._chaos: Chaos | None = None
        self._chaos_rng = random.Random()
        self._chaos_drawn = 0  # requests chaos decided about since it was set
        self._chaos_injected: dict[str, int] = dict.fromkeys(CHAOS_KINDS, 0)

    def _clock(self) -> float:
        return self._base_clock() + self.clock_offset

    @property
    def apps(self) -> Mapping[str, str]:
        """The configured apps (appid -> secret)."""
        return self._apps

    @property
    def jscode2session_requests(self) -> int:
        """jscode2session requests since the last reset, faulted ones included."""
        return self.requests["jscode2session"]

    # -- users and logins (the dev API) ---------------------------------------------------

    def _check_app(self, appid: str) -> None:
        if appid not in self._apps:
            raise UnknownAppError(appid)

    def set_user(
        self,
        appid: str,
        name: str,
        unionid: str | bool | None = None,
        blocked: bool = False,
        phone: str | None = None,
        country_code: str = "86",
    ) -> User:
        """Create or overwrite a test user; a session_key already minted for it is kept."""
        self._check_app(appid)
        if unionid is True:
            resolved: str | None = unionid_for(name)
        elif isinstance(unionid, str):
            resolved = unionid
        else:
            resolved = None
        user = self._users.get((appid, name))
        if user is None:
            user = User(name=name, openid=openid_for(appid, name))
            self._users[(appid, name)] = user
            self._by_openid[(appid, user.openid)] = user
        user.unionid = resolved
        user.blocked = blocked
        user.phone = phone
        user.country_code = country_code
        return user

    def login(self, appid: str, name: str, ttl: float | None = None) -> tuple[str, User]:
        """Play ``wx.login()``: mint a single-use code and rotate the user's session_key."""
        self._check_app(appid)
        self._purge()
        user = self._users.get((appid, name))
        if user is None:
            user = self.set_user(appid, name)
        user.session_key = _new_session_key()
        code = secrets.token_urlsafe(24)
        expires_at = self._clock() + (self._code_ttl if ttl is None else ttl)
        self._codes[code] = _Code(appid, name, user.session_key, expires_at)
        heapq.heappush(self._expiry, (expires_at, code))
        return code, user

    def user_data(
        self,
        appid: str,
        name: str,
        data: Mapping[str, Any] | None = None,
        watermark_appid: str | None = None,
        watermark_timestamp: int | None = None,
    ) -> UserData:
        """Encrypt ``data`` (default: a userInfo object) under the user's current session_key."""
        self._check_app(appid)
        user = self._users.get((appid, name))
        if user is None or user.session_key is None:
            raise NeverLoggedInError(name)
        if data is None:
            data = _default_user_info(user)
        # rawData is what WeChat signs: the payload without the watermark, compact, UTF-8.
        raw = {k: v for k, v in data.items() if k != "watermark"}
        raw_data = json.dumps(raw, ensure_ascii=False, separators=(",", ":"))
        watermark = {
            "appid": watermark_appid if watermark_appid is not None else appid,
            "timestamp": (
                watermark_timestamp if watermark_timestamp is not None else int(self._clock())
            ),
        }
        plaintext = json.dumps({**raw, "watermark": watermark}, ensure_ascii=False)
        encrypted, iv = crypto.encrypt(user.session_key, plaintext.encode("utf-8"))
        return UserData(encrypted, iv, raw_data, crypto.sign(raw_data, user.session_key))

    # -- jscode2session -------------------------------------------------------------------

    def exchange(self, appid: str, secret: str, js_code: str, grant_type: str) -> Session:
        """Answer jscode2session as WeChat does, or raise WeChatError with its errcode."""
        if not appid:
            raise WeChatError(41002)
        if not secret:
            raise WeChatError(41004)
        if not js_code:
            raise WeChatError(41008)
        if grant_type != "authorization_code":
            raise WeChatError(40002)
        expected = self._apps.get(appid)
        if expected is None:
            raise WeChatError(40013)
        if not secrets.compare_digest(expected.encode("utf-8"), secret.encode("utf-8")):
            raise WeChatError(40125)
        self._purge()
        code = self._codes.get(js_code)
        # Expired codes may not be purged yet when a fake clock jumped; same answer either way.
        if code is None or code.appid != appid or self._clock() >= code.expires_at:
            raise WeChatError(40029)
        if code.used:
            raise WeChatError(40163)
        # Like WeChat, an exchange burns the code even when it is then refused.
        code.used = True
        user = self._users[(appid, code.user)]
        if user.blocked:
            raise WeChatError(40226)
        return Session(user.openid, code.session_key, user.unionid)

    def _purge(self) -> None:
        now = self._clock()
        while self._expiry and self._expiry[0][0] <= now:
            _, code = heapq.heappop(self._expiry)
            self._codes.pop(code, None)
            self._phone_codes.pop(code, None)

    def _check_secret(self, appid: str, secret: str) -> None:
        expected = self._apps.get(appid)
        if expected is None:
            raise WeChatError(40013)
        if not secrets.compare_digest(expected.encode("utf-8"), secret.encode("utf-8")):
            raise WeChatError(40125)

    # -- stable_token and the APIs that take its access_token ------------------------------

    def stable_token(
        self, appid: str, secret: str, grant_type: str, force_refresh: bool
    ) -> tuple[str, int]:
        """Answer stable_token: (access_token, expires_in), or raise WeChatError."""
        if not appid:
            raise WeChatError(41002)
        if not secret:
            raise WeChatError(41004)
        if grant_type != "client_credential":
            raise WeChatError(40002)
        self._check_secret(appid, secret)
        try:
            return self.access_tokens.stable_token(appid, force_refresh=force_refresh)
        except AccessTokenError as error:
            raise _token_error(error) from None

    def _token_app(self, access_token: str) -> str:
        try:
            return self.access_tokens.app_of(access_token)
        except AccessTokenError as error:
            raise _token_error(error) from None

    def mint_phone_code(self, appid: str, name: str, ttl: float | None = None) -> str:
        """Play the getPhoneNumber button: a single-use phone code for a user with a phone."""
        self._check_app(appid)
        self._purge()
        user = self._users.get((appid, name))
        if user is None or user.phone is None:
            raise NoPhoneError(name)
        code = secrets.token_urlsafe(24)
        expires_at = self._clock() + (self._code_ttl if ttl is None else ttl)
        self._phone_codes[code] = _PhoneCode(appid, name, expires_at)
        heapq.heappush(self._expiry, (expires_at, code))
        return code

    def phone_number(self, access_token: str, code: str) -> PhoneInfo:
        """Answer getuserphonenumber for a phone code, or raise WeChatError."""
        appid = self._token_app(access_token)
        self._purge()
        phone_code = self._phone_codes.get(code)
        if (
            phone_code is None
            or phone_code.appid != appid
            or self._clock() >= phone_code.expires_at
        ):
            raise WeChatError(40029)
        if phone_code.used:
            raise WeChatError(40163)
        phone_code.used = True
        user = self._users[(appid, phone_code.user)]
        pure = user.phone or ""
        # WeChat adds the country code to phoneNumber only for numbers outside China.
        full = pure if user.country_code == "86" else f"+{user.country_code} {pure}"
        return PhoneInfo(full, pure, user.country_code, appid, int(self._clock()))

    def _signed_user(self, access_token: str, openid: str, signature: str, sig_method: str) -> User:
        """The user whose current session_key made ``signature``; WeChatError otherwise."""
        appid = self._token_app(access_token)
        if sig_method != "hmac_sha256":
            raise WeChatError(40097)
        user = self._by_openid.get((appid, openid))
        if user is None:
            raise WeChatError(40003)
        if user.session_key is None:
            raise WeChatError(87009)
        expected = session_signature(user.session_key)
        if not hmac.compare_digest(expected.encode(), signature.lower().encode()):
            raise WeChatError(87009)
        return user

    def check_session(
        self, access_token: str, openid: str, signature: str, sig_method: str
    ) -> None:
        """Answer wxa/checksession: returns when the signature is by the current session_key."""
        self._signed_user(access_token, openid, signature, sig_method)

    def reset_session_key(
        self, access_token: str, openid: str, signature: str, sig_method: str
    ) -> str:
        """Answer wxa/resetusersessionkey: a new current session_key (the old one stops)."""
        user = self._signed_user(access_token, openid, signature, sig_method)
        user.session_key = _new_session_key()
        return user.session_key

    # -- faults and stats -----------------------------------------------------------------

    def add_fault(self, fault: Fault) -> None:
        """Queue ``fault`` behind those already queued."""
        self._faults.append(fault)

    def clear_faults(self) -> None:
        """Forget every queued fault."""
        self._faults.clear()

    def faults(self) -> list[Fault]:
        """The queued faults, head first, with their remaining ``times``."""
        return list(self._faults)

    def begin_jscode2session(self) -> Fault | None:
        """Count one jscode2session request and take the fault, if any, that applies to it.

        Queued faults go first; chaos draws only for requests that no queued fault took.
        """
        return self.begin("jscode2session")

    def begin(self, endpoint: str) -> Fault | None:
        """Count one request to ``endpoint`` and take the first queued fault meant for it.

        Chaos applies to jscode2session only, and only when no queued fault took the request.
        """
        self.requests[endpoint] += 1
        for index, fault in enumerate(self._faults):
            if fault.endpoint != endpoint:
                continue
            if fault.times is not None:
                if fault.times <= 1:
                    del self._faults[index]
                else:
                    self._faults[index] = replace(fault, times=fault.times - 1)
            return fault
        return self._chaos_fault() if endpoint == "jscode2session" else None

    def set_chaos(self, chaos: Chaos) -> None:
        """Start random faults (replacing earlier ones): reseed, zero the counts."""
        self._chaos = chaos
        self._chaos_rng = random.Random(chaos.seed)
        self._chaos_drawn = 0
        self._chaos_injected = dict.fromkeys(CHAOS_KINDS, 0)

    def clear_chaos(self) -> None:
        """Stop random faults; the counts stay readable until the next ``set_chaos``."""
        self._chaos = None

    def chaos_report(self) -> dict[str, Any]:
        """The setting (None when off), how many requests it decided about, faults by kind."""
        return {
            "chaos": None if self._chaos is None else self._chaos.as_json(),
            "requests": self._chaos_drawn,
            "injected": dict(self._chaos_injected),
        }

    def _chaos_fault(self) -> Fault | None:
        chaos = self._chaos
        if chaos is None:
            return None
        self._chaos_drawn += 1
        rng = self._chaos_rng
        if rng.random() >= chaos.rate:
            return None
        kind = rng.choice(chaos.kinds)
        self._chaos_injected[kind] += 1
        if kind == "busy":
            return Fault(errcode=SYSTEM_BUSY)
        if kind == "http5xx":
            return Fault(http_status=rng.choice(CHAOS_HTTP_STATUSES))
        if kind == "drop":
            return Fault(drop=True, use_code=True)
        return Fault(latency_ms=chaos.stall_ms)

    def reset_stats(self) -> None:
        """Zero the request counters."""
        self.requests = dict.fromkeys(ENDPOINTS, 0)

    def stats(self) -> dict[str, int]:
        """Requests per endpoint, as /_dev/stats shows them."""
        return {f"{endpoint}_requests": count for endpoint, count in self.requests.items()}


def _token_error(error: AccessTokenError) -> WeChatError:
    return WeChatError(error.errcode, TOKEN_ERRMSG.get(error.errcode))


def _default_user_info(user: User) -> dict[str, Any]:
    info: dict[str, Any] = {
        "openId": user.openid,
        "nickName": user.name,
        "gender": 0,
        "city": "Guangzhou",
        "province": "Guangdong",
        "country": "China",
        "avatarUrl": "https://thirdwx.qlogo.cn/mmopen/vi_32/emulator/132",
    }
    if user.unionid is not None:
        info["unionId"] = user.unionid
    return info
