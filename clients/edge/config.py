"""The edge's configuration: where it listens, which wxlogin it calls and how; read at start."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from clients._upstream import UpstreamConfig
from runtime.config import ConfigError, ListenAddress, parse_listen, parse_log_level

DEFAULT_HTTP_LISTEN = "127.0.0.1:8080"
DEFAULT_UPSTREAM = "127.0.0.1:50051"
# The service itself caches for 5 s; 2 s here bounds a revoke-elsewhere at 7 s in all.
DEFAULT_SESSION_CACHE_SECONDS = 2.0


@dataclass(frozen=True)
class EdgeConfig:
    """Where the edge listens and which gRPC target it calls."""

    listen: ListenAddress = field(default_factory=lambda: ListenAddress("127.0.0.1", 8080))
    upstream: str = DEFAULT_UPSTREAM
    log_level: str = "INFO"
    # Seconds GET /v1/session may answer from memory (clients/session_cache.py); 0 = off.
    session_cache_seconds: float = DEFAULT_SESSION_CACHE_SECONDS
    # WXLOGIN_UPSTREAM_CA/_CERT/_KEY and WXLOGIN_CALLER_KEY: TLS to wxlogin, and who we are.
    security: UpstreamConfig = field(default_factory=UpstreamConfig)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> EdgeConfig:
        """Read and validate the edge's WXLOGIN_* variables; raise ConfigError on a bad one."""
        return cls(
            parse_listen(
                "WXLOGIN_HTTP_LISTEN", env.get("WXLOGIN_HTTP_LISTEN"), DEFAULT_HTTP_LISTEN
            ),
            parse_target("WXLOGIN_UPSTREAM", env.get("WXLOGIN_UPSTREAM")),
            parse_log_level("WXLOGIN_LOG_LEVEL", env.get("WXLOGIN_LOG_LEVEL")),
            parse_cache_seconds(
                "WXLOGIN_EDGE_SESSION_CACHE", env.get("WXLOGIN_EDGE_SESSION_CACHE")
            ),
            UpstreamConfig.from_env(env),
        )


def parse_target(variable: str, value: str | None) -> str:
    """A gRPC target: HOST:PORT or any URI grpc understands (dns:///..., unix:...)."""
    target = (value or DEFAULT_UPSTREAM).strip()
    if not target or any(char.isspace() for char in target):
        raise ConfigError(variable, f"expected a gRPC target such as HOST:PORT, got {value!r}")
    return target


def parse_cache_seconds(variable: str, value: str | None) -> float:
    """Seconds from 0 (off) to 60."""
    if value is None or not value.strip():
        return DEFAULT_SESSION_CACHE_SECONDS
    try:
        seconds = float(value)
    except ValueError:
        raise ConfigError(variable, f"expected seconds, got {value!r}") from None
    if not 0 <= seconds <= 60:
        raise ConfigError(variable, f"must be between 0 and 60, got {value!r}")
    return seconds
