"""The edge's configuration: where it listens, which wxlogin it calls and how; read at start."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field

from clients._upstream import UpstreamConfig
from runtime.config import (
    ConfigError,
    ListenAddress,
    parse_listen,
    parse_log_format,
    parse_log_level,
    parse_number,
    parse_optional_listen,
    parse_workers,
)
from runtime.event_loop import UVLOOP, parse_event_loop
from runtime.serve import DEFAULT_DRAIN_SECONDS, parse_drain_seconds

DEFAULT_HTTP_LISTEN = "127.0.0.1:8080"
DEFAULT_UPSTREAM = "127.0.0.1:50051"
# The service itself caches for 5 s; 2 s here bounds a revoke-elsewhere at 7 s in all.
DEFAULT_SESSION_CACHE_SECONDS = 2.0
# POST /v1/login per client address (clients/edge/login_limit.py). A person logs in
# a few times a day; a carrier NAT can put many people behind one address.
DEFAULT_LOGIN_RATE = 5.0
DEFAULT_LOGIN_BURST = 30.0


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
    # WXLOGIN_EDGE_LOGIN_RATE (per second, 0 = off) and _BURST, per client address;
    # WXLOGIN_EDGE_TRUSTED_PROXIES: whose X-Forwarded-For names the client.
    login_rate: float = DEFAULT_LOGIN_RATE
    login_burst: float = DEFAULT_LOGIN_BURST
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    # WXLOGIN_EDGE_METRICS_LISTEN: Prometheus /metrics (clients/edge/metrics.py); None: off.
    metrics_listen: ListenAddress | None = None
    # WXLOGIN_LOG_FORMAT: text, or json (one object per line; runtime/logs.py).
    log_format: str = "text"
    # WXLOGIN_WORKERS: worker processes on one listen address (runtime/workers.py).
    workers: int = 1
    # WXLOGIN_DRAIN_SECONDS: after SIGTERM, /readyz 503 this long before the listener closes.
    drain_seconds: float = DEFAULT_DRAIN_SECONDS
    # WXLOGIN_EVENT_LOOP: uvloop (default where installed) or asyncio (runtime/event_loop.py).
    event_loop: str = UVLOOP

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> EdgeConfig:
        """Read and validate the edge's WXLOGIN_* variables; raise ConfigError on a bad one."""
        return cls(
            parse_listen(
                "WXLOGIN_HTTP_LISTEN", env.get("WXLOGIN_HTTP_LISTEN"), DEFAULT_HTTP_LISTEN
            ),
            parse_target("WXLOGIN_UPSTREAM", env.get("WXLOGIN_UPSTREAM")),
            parse_log_level("WXLOGIN_LOG_LEVEL", env.get("WXLOGIN_LOG_LEVEL")),
            parse_number(
                "WXLOGIN_EDGE_SESSION_CACHE",
                env.get("WXLOGIN_EDGE_SESSION_CACHE"),
                DEFAULT_SESSION_CACHE_SECONDS,
                minimum=0,
                maximum=60,  # 0 turns the cache off
                unit="seconds",
            ),
            UpstreamConfig.from_env(env),
            parse_number(
                "WXLOGIN_EDGE_LOGIN_RATE",
                env.get("WXLOGIN_EDGE_LOGIN_RATE"),
                DEFAULT_LOGIN_RATE,
                minimum=0,
                unit="logins per second (0: no bound)",
            ),
            parse_number(
                "WXLOGIN_EDGE_LOGIN_BURST",
                env.get("WXLOGIN_EDGE_LOGIN_BURST"),
                DEFAULT_LOGIN_BURST,
                minimum=1,
            ),
            parse_networks("WXLOGIN_EDGE_TRUSTED_PROXIES", env.get("WXLOGIN_EDGE_TRUSTED_PROXIES")),
            metrics_listen=parse_optional_listen(
                "WXLOGIN_EDGE_METRICS_LISTEN", env.get("WXLOGIN_EDGE_METRICS_LISTEN")
            ),
            log_format=parse_log_format("WXLOGIN_LOG_FORMAT", env.get("WXLOGIN_LOG_FORMAT")),
            workers=parse_workers("WXLOGIN_WORKERS", env.get("WXLOGIN_WORKERS")),
            drain_seconds=parse_drain_seconds(env),
            event_loop=parse_event_loop(env),
        )


def parse_networks(
    variable: str, value: str | None
) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """Comma-separated addresses or CIDR networks, e.g. `10.0.0.0/8, 127.0.0.1`."""
    networks = []
    for item in (value or "").split(","):
        if not item.strip():
            continue
        try:
            networks.append(ipaddress.ip_network(item.strip(), strict=False))
        except ValueError:
            raise ConfigError(variable, f"not an address or network: {item.strip()!r}") from None
    return tuple(networks)


def parse_target(variable: str, value: str | None) -> str:
    """A gRPC target: HOST:PORT or any URI grpc understands (dns:///..., unix:...)."""
    target = (value or DEFAULT_UPSTREAM).strip()
    if not target or any(char.isspace() for char in target):
        raise ConfigError(variable, f"expected a gRPC target such as HOST:PORT, got {value!r}")
    return target
