"""How long and how hard each chaos scenario runs: one plan for `make chaos`, one for the smoke."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ChaosPlan:
    """Durations, client counts and request counts of one run."""

    name: str
    # (a) WeChat failing at random
    wechat_clients: int
    wechat_seconds: float
    # (a) then: mini-program users through the edge (the sample's code under Node)
    users_lanes: int
    users_seconds: float
    # (b), (c): logins before the kill, and after recovery
    outage_clients: int
    warmup_seconds: float
    mongod_down_seconds: float  # how long the standalone mongod stays dead
    after_seconds: float  # load kept up once logins succeed again
    # (d) malformed requests
    junk_http: int
    junk_grpc: int
    # (e) mixed soak
    soak_seconds: float
    soak_warmup: float  # load before the "start" reading of RSS and fds
    soak_clients: int
    soak_rate: float  # calls per second, all clients together
    # Fixed settings, the same in both plans.
    wechat_rate: float = 0.3
    wechat_seed: int = 42
    stall_ms: int = 2000
    login_deadline: float = 5.0  # seconds each Login may take, the service's retries included
    junk_concurrency: int = 32
    junk_seed: int = 7
    # Any scenario still running after this is cancelled and reported as an error.
    scenario_timeout: float = 420.0


FULL = ChaosPlan(
    "full",
    wechat_clients=16,
    wechat_seconds=30.0,
    users_lanes=16,
    users_seconds=60.0,
    outage_clients=8,
    warmup_seconds=5.0,
    mongod_down_seconds=3.0,
    after_seconds=10.0,
    junk_http=10_000,
    junk_grpc=10_000,
    soak_seconds=300.0,
    soak_warmup=15.0,
    soak_clients=8,
    soak_rate=300.0,
)
SMOKE = ChaosPlan(
    "smoke",
    wechat_clients=4,
    wechat_seconds=2.0,
    users_lanes=4,
    users_seconds=2.0,
    outage_clients=4,
    warmup_seconds=1.0,
    mongod_down_seconds=0.5,
    after_seconds=0.5,
    junk_http=300,
    junk_grpc=300,
    soak_seconds=2.0,
    soak_warmup=0.5,
    soak_clients=4,
    soak_rate=100.0,
    scenario_timeout=60.0,
)
