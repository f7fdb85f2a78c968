"""The one place configuration is read: WXLOGIN_* environment variables into a frozen Settings."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from runtime.config import ConfigError, parse_apps, parse_listen, parse_seconds

__all__ = ["ConfigError", "Settings"]

DEFAULT_GRPC_LISTEN = "127.0.0.1:50051"
DEFAULT_WECHAT_API_BASE = "https://api.weixin.qq.com"
DEFAULT_SESSION_TTL = 7 * 24 * 3600
# One day: long enough for a client that retries or queues the call, short enough
# that a captured encryptedData blob is not replayable forever.
DEFAULT_WATERMARK_MAX_AGE = 24 * 3600


@dataclass(frozen=True)
class Settings:
    """Everything the service needs to know, read once at start-up and passed down."""

    apps: Mapping[str, str]  # appid -> secret
    secret_key: bytes = field(repr=False)  # 32 bytes, encrypts session_keys at rest
    grpc_listen: str = DEFAULT_GRPC_LISTEN
    mongodb_uri: str | None = None  # None: start the embedded mongod
    data_dir: Path = Path(".data")
    wechat_api_base: str = DEFAULT_WECHAT_API_BASE
    session_ttl: int = DEFAULT_SESSION_TTL
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
    # logins waiting for their MongoDB write; past these, OVERLOADED at once.
    max_in_flight_logins: int = 512
    max_in_flight_session_calls: int = 4096
    max_waiting_logins: int = 2048

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
            session_ttl=parse_seconds(
                "WXLOGIN_SESSION_TTL",
                env.get("WXLOGIN_SESSION_TTL"),
                DEFAULT_SESSION_TTL,
                minimum=1,
            ),
            watermark_max_age=parse_seconds(
                "WXLOGIN_WATERMARK_MAX_AGE",
                env.get("WXLOGIN_WATERMARK_MAX_AGE"),
                DEFAULT_WATERMARK_MAX_AGE,
                minimum=0,
            ),
        )


def parse_secret_key(raw: str) -> bytes:
    """Decode WXLOGIN_SECRET_KEY, which must be base64 of exactly 32 bytes."""
    try:
        key = base64.b64decode(raw.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError("WXLOGIN_SECRET_KEY", "not valid base64") from None
    if len(key) != 32:
        raise ConfigError("WXLOGIN_SECRET_KEY", f"must decode to 32 bytes, got {len(key)}")
    return key


def parse_url(variable: str, value: str | None) -> str:
    """Validate an http(s) base URL and drop a trailing slash."""
    url = (value or DEFAULT_WECHAT_API_BASE).rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ConfigError(variable, f"expected an http(s) URL, got {url!r}")
    return url
