"""The one place configuration is read: WXLOGIN_* environment variables into a frozen Settings."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from runtime.config import (
    ConfigError,
    ListenAddress,
    parse_apps,
    parse_listen,
    parse_number,
    parse_optional_listen,
    parse_seconds,
    parse_whole,
    parse_workers,
)
from runtime.event_loop import UVLOOP, parse_event_loop
from runtime.serve import DEFAULT_DRAIN_SECONDS, parse_drain_seconds
from service.crypto import key_id

__all__ = ["ConfigError", "Settings"]

DEFAULT_GRPC_LISTEN = "127.0.0.1:50051"
DEFAULT_WECHAT_API_BASE = "https://api.weixin.qq.com"
DEFAULT_SESSION_TTL = 7 * 24 * 3600
DEFAULT_SESSION_MAX_TTL = 30 * 24 * 3600
DEFAULT_MAX_SESSIONS_PER_USER = 10
# Logins per second per app, per process (service/limits.py); WeChat's quota is per app.
DEFAULT_LOGIN_RATE = 1000.0
# One day: long enough for a client that retries or queues the call, short enough
# that a captured encryptedData blob is not replayable forever.
DEFAULT_WATERMARK_MAX_AGE = 24 * 3600
# Inside WeChat's 5-minute overlap, with a minute to spare for retries and clock skew.
DEFAULT_ACCESS_TOKEN_REFRESH_BEFORE = 240


@dataclass(frozen=True)
class Settings:
    """Everything the service needs to know, read once at start-up and passed down."""

    apps: Mapping[str, str]  # appid -> secret
    secret_key: bytes = field(repr=False)  # 32 bytes, encrypts session_keys at rest
    grpc_listen: str = DEFAULT_GRPC_LISTEN
    mongodb_uri: str | None = None  # None: start the embedded mongod
    data_dir: Path = Path(".data")
    wechat_api_base: str = DEFAULT_WECHAT_API_BASE
    # WXLOGIN_SESSION_TTL: the idle lifetime, renewed by use (CheckSession)...
    session_ttl: int = DEFAULT_SESSION_TTL
    # ...up to WXLOGIN_SESSION_MAX_TTL after the login, whatever the use.
    session_max_ttl: int = DEFAULT_SESSION_MAX_TTL
    watermark_max_age: int = DEFAULT_WATERMARK_MAX_AGE
    database: str = "wxlogin"
    # WeChat timeouts and retry budget; not environment knobs, tests shrink them.
    wechat_connect_timeout: float = 2.0
    wechat_total_timeout: float = 5.0
    wechat_attempts: int = 3
    # How long CheckSession may answer from memory; see service/cache.py.
    session_cache_seconds: float = 5.0
    # Expired sessions stay this long before MongoDB's TTL monitor deletes them,
    # so a recently expired token is reported as SESSION_EXPIRED, not SESSION_INVALID.
    expired_session_retention: int = 24 * 3600
    # While the event loop is saturated, logins are written to MongoDB at most
    # once per this many seconds, together (service/batching.py).
    login_batch_interval: float = 0.01
    # Load shedding (service/limits.py): RPCs in flight per kind of work, and
    # logins waiting behind a MongoDB write in flight; past these, OVERLOADED at once.
    max_in_flight_logins: int = 512
    max_in_flight_session_calls: int = 4096
    max_waiting_logins: int = 2048
    # WXLOGIN_SECRET_KEYS_OLD: earlier secret keys, still opened, never sealed with.
    old_secret_keys: tuple[bytes, ...] = field(default=(), repr=False)
    # WXLOGIN_CALLERS_FILE (service/callers.py); None: every caller may call everything.
    callers_file: Path | None = None
    # WXLOGIN_ALLOW_INSECURE: a non-loopback listen address without TLS or callers.
    allow_insecure: bool = False
    # WXLOGIN_REFLECTION: server reflection (grpcurl without the proto); the dev stack sets it.
    reflection: bool = False
    # WXLOGIN_TLS_CERT/_KEY: serve over TLS; WXLOGIN_TLS_CLIENT_CA: require client certs (mTLS).
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    # WXLOGIN_LOGIN_RATE: Logins per second per app, per process; 0 = no bound.
    login_rate_per_app: float = DEFAULT_LOGIN_RATE
    # How long CheckSession remembers that a token hash is unknown (service/cache.py).
    unknown_token_cache_seconds: float = 5.0
    # WXLOGIN_METRICS_LISTEN: Prometheus /metrics (service/metrics.py); None: off.
    metrics_listen: ListenAddress | None = None
    # WXLOGIN_ACCESS_TOKEN_REFRESH_BEFORE: the shared access_token is refreshed this
    # many seconds before it expires (service/access_tokens.py); must fall inside
    # WeChat's 300 s overlap window, where normal-mode stable_token mints the next one.
    access_token_refresh_before: int = DEFAULT_ACCESS_TOKEN_REFRESH_BEFORE
    # WXLOGIN_MAX_SESSIONS_PER_USER: a login beyond this many live sessions of its
    # user ends the oldest (service/store/sessions.py, Sessions.trim).
    max_sessions_per_user: int = DEFAULT_MAX_SESSIONS_PER_USER
    # WXLOGIN_WORKERS: worker processes on one listen address (runtime/workers.py).
    workers: int = 1
    # WXLOGIN_DRAIN_SECONDS: after SIGTERM, NOT_SERVING this long before the listener closes.
    drain_seconds: float = DEFAULT_DRAIN_SECONDS
    # WXLOGIN_EVENT_LOOP: uvloop (default where installed) or asyncio (runtime/event_loop.py).
    event_loop: str = UVLOOP

    def __repr__(self) -> str:
        # Secrets never reach a log line, even by printing the settings.
        return (
            f"Settings(apps={sorted(self.apps)}, grpc_listen={self.grpc_listen!r}, "
            f"mongodb={'embedded' if self.mongodb_uri is None else 'external'}, "
            f"wechat_api_base={self.wechat_api_base!r}, session_ttl={self.session_ttl})"
        )

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        """Read and validate the WXLOGIN_* variables; raise ConfigError on the first bad one."""
        apps_raw = env.get("WXLOGIN_APPS", "")
        if not apps_raw.strip():
            raise ConfigError("WXLOGIN_APPS", "required: appid:secret[,appid:secret...]")
        key_raw = env.get("WXLOGIN_SECRET_KEY", "")
        if not key_raw:
            raise ConfigError(
                "WXLOGIN_SECRET_KEY",
                "required: base64 of 32 random bytes "
                '(python -c "import os,base64;print(base64.b64encode(os.urandom(32)).decode())")',
            )
        tls_cert, tls_key, tls_client_ca = parse_tls(env)
        session_ttl, session_max_ttl = parse_session_ttls(env)
        workers = parse_workers("WXLOGIN_WORKERS", env.get("WXLOGIN_WORKERS"))
        if workers > 1 and not env.get("WXLOGIN_MONGODB_URI"):
            raise ConfigError(
                "WXLOGIN_WORKERS",
                f"{workers} workers need WXLOGIN_MONGODB_URI: each would start its own "
                "embedded mongod on one data dir",
            )
        return cls(
            apps=parse_apps(apps_raw),
            secret_key=parse_secret_key(key_raw),
            grpc_listen=str(
                parse_listen(
                    "WXLOGIN_GRPC_LISTEN", env.get("WXLOGIN_GRPC_LISTEN"), DEFAULT_GRPC_LISTEN
                )
            ),
            mongodb_uri=env.get("WXLOGIN_MONGODB_URI") or None,
            data_dir=Path(env.get("WXLOGIN_DATA_DIR") or ".data"),
            wechat_api_base=parse_url(
                "WXLOGIN_WECHAT_API_BASE", env.get("WXLOGIN_WECHAT_API_BASE")
            ),
            session_ttl=session_ttl,
            session_max_ttl=session_max_ttl,
            watermark_max_age=parse_seconds(
                "WXLOGIN_WATERMARK_MAX_AGE",
                env.get("WXLOGIN_WATERMARK_MAX_AGE"),
                DEFAULT_WATERMARK_MAX_AGE,
                minimum=0,
            ),
            old_secret_keys=parse_old_secret_keys(env.get("WXLOGIN_SECRET_KEYS_OLD")),
            callers_file=parse_path("WXLOGIN_CALLERS_FILE", env.get("WXLOGIN_CALLERS_FILE")),
            allow_insecure=parse_bool("WXLOGIN_ALLOW_INSECURE", env.get("WXLOGIN_ALLOW_INSECURE")),
            reflection=parse_bool("WXLOGIN_REFLECTION", env.get("WXLOGIN_REFLECTION")),
            login_rate_per_app=parse_number(
                "WXLOGIN_LOGIN_RATE",
                env.get("WXLOGIN_LOGIN_RATE"),
                DEFAULT_LOGIN_RATE,
                minimum=0,
                unit="logins per second (0: no bound)",
            ),
            tls_cert=tls_cert,
            tls_key=tls_key,
            tls_client_ca=tls_client_ca,
            metrics_listen=parse_optional_listen(
                "WXLOGIN_METRICS_LISTEN", env.get("WXLOGIN_METRICS_LISTEN")
            ),
            max_sessions_per_user=parse_whole(
                "WXLOGIN_MAX_SESSIONS_PER_USER",
                env.get("WXLOGIN_MAX_SESSIONS_PER_USER"),
                DEFAULT_MAX_SESSIONS_PER_USER,
                minimum=1,
                maximum=10_000,
            ),
            access_token_refresh_before=parse_seconds(
                "WXLOGIN_ACCESS_TOKEN_REFRESH_BEFORE",
                env.get("WXLOGIN_ACCESS_TOKEN_REFRESH_BEFORE"),
                DEFAULT_ACCESS_TOKEN_REFRESH_BEFORE,
                minimum=1,
                maximum=295,
            ),
            workers=workers,
            drain_seconds=parse_drain_seconds(env),
            event_loop=parse_event_loop(env),
        )

    @property
    def tls(self) -> bool:
        """True when gRPC is served over TLS."""
        return self.tls_cert is not None

    def exposure_problem(self) -> str | None:
        """Why this set-up must not listen where it does, or None when it may.

        Off loopback, anyone on the network can reach the port: without TLS they
        read tokens and personal data off the wire, without callers they call
        every RPC. WXLOGIN_ALLOW_INSECURE=true accepts that (behind a mesh that
        does both, say), loudly.
        """
        if parse_listen("WXLOGIN_GRPC_LISTEN", self.grpc_listen, DEFAULT_GRPC_LISTEN).is_loopback:
            return None
        missing = [
            what
            for what, present in (
                ("TLS (WXLOGIN_TLS_CERT, WXLOGIN_TLS_KEY)", self.tls),
                ("callers (WXLOGIN_CALLERS_FILE)", self.callers_file is not None),
            )
            if not present
        ]
        if not missing:
            return None
        return f"listening on {self.grpc_listen}, beyond loopback, without " + " or ".join(missing)


def parse_secret_key(raw: str, variable: str = "WXLOGIN_SECRET_KEY", what: str = "") -> bytes:
    """Decode a secret key, which must be base64 of exactly 32 bytes (`what` names an entry)."""
    try:
        key = base64.b64decode(raw.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(variable, f"{what}not valid base64") from None
    if len(key) != 32:
        raise ConfigError(variable, f"{what}must decode to 32 bytes, got {len(key)}")
    return key


def parse_old_secret_keys(raw: str | None) -> tuple[bytes, ...]:
    """WXLOGIN_SECRET_KEYS_OLD: comma-separated earlier keys, each like WXLOGIN_SECRET_KEY."""
    variable = "WXLOGIN_SECRET_KEYS_OLD"
    if raw is None or not raw.strip():
        return ()
    keys: list[bytes] = []
    ids: set[bytes] = set()
    for number, item in enumerate(raw.split(","), start=1):
        # Never echo the entry: it is a secret.
        key = parse_secret_key(item, variable, f"entry {number} ")
        kid = key_id(key)
        if kid in ids:
            raise ConfigError(variable, f"entry {number} repeats an earlier key")
        ids.add(kid)
        keys.append(key)
    return tuple(keys)


def parse_tls(env: Mapping[str, str]) -> tuple[Path | None, Path | None, Path | None]:
    """WXLOGIN_TLS_CERT and _KEY (both or neither), and WXLOGIN_TLS_CLIENT_CA (needs them)."""
    cert = parse_path("WXLOGIN_TLS_CERT", env.get("WXLOGIN_TLS_CERT"))
    key = parse_path("WXLOGIN_TLS_KEY", env.get("WXLOGIN_TLS_KEY"))
    client_ca = parse_path("WXLOGIN_TLS_CLIENT_CA", env.get("WXLOGIN_TLS_CLIENT_CA"))
    if (cert is None) != (key is None):
        missing = "WXLOGIN_TLS_KEY" if key is None else "WXLOGIN_TLS_CERT"
        raise ConfigError(missing, "TLS needs both WXLOGIN_TLS_CERT and WXLOGIN_TLS_KEY")
    if client_ca is not None and cert is None:
        raise ConfigError(
            "WXLOGIN_TLS_CLIENT_CA", "client certificates need TLS: set WXLOGIN_TLS_CERT and _KEY"
        )
    return cert, key, client_ca


def parse_session_ttls(env: Mapping[str, str]) -> tuple[int, int]:
    """WXLOGIN_SESSION_TTL (idle) and WXLOGIN_SESSION_MAX_TTL (absolute), which can't be shorter."""
    idle = parse_seconds(
        "WXLOGIN_SESSION_TTL", env.get("WXLOGIN_SESSION_TTL"), DEFAULT_SESSION_TTL, minimum=1
    )
    absolute = parse_seconds(
        "WXLOGIN_SESSION_MAX_TTL",
        env.get("WXLOGIN_SESSION_MAX_TTL"),
        DEFAULT_SESSION_MAX_TTL,
        minimum=1,
    )
    if absolute < idle:
        # Since the idle lifetime became renewable, a long WXLOGIN_SESSION_TTL alone
        # no longer says how long a session may live: say so instead of capping it.
        raise ConfigError(
            "WXLOGIN_SESSION_MAX_TTL",
            f"must be >= WXLOGIN_SESSION_TTL ({idle} s, the idle lifetime), got {absolute}",
        )
    return idle, absolute


def parse_bool(variable: str, value: str | None) -> bool:
    """`true` or `false` (any case); unset or empty means false."""
    text = (value or "").strip().lower()
    if text in ("", "false"):
        return False
    if text == "true":
        return True
    raise ConfigError(variable, f"expected true or false, got {value!r}")


def parse_path(variable: str, value: str | None) -> Path | None:
    """A file that must exist; unset or empty means None."""
    if value is None or not value.strip():
        return None
    path = Path(value.strip())
    if not path.is_file():
        raise ConfigError(variable, f"no such file: {path}")
    return path


def parse_url(variable: str, value: str | None) -> str:
    """Validate an http(s) base URL and drop a trailing slash."""
    url = (value or DEFAULT_WECHAT_API_BASE).rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ConfigError(variable, f"expected an http(s) URL, got {url!r}")
    return url
