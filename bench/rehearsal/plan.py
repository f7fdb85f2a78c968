"""How long each phase of the rehearsal runs and how hard: one plan for `make rehearsal`, one
for the smoke in `make test`."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RehearsalPlan:
    """Durations, load and limits of one rehearsal."""

    name: str
    workers: int  # concurrent mini-program users driving the mixed load
    pause: float  # seconds each worker rests between two rounds (keeps the load paced)
    warmup_seconds: float  # load before the first fault
    settle_seconds: float  # load kept after each fault once everything is back
    # WXLOGIN_DRAIN_SECONDS of every service and edge: above the balancer's detection time
    # (~1 s for the edges, ~2-3 s for the services with deploy/haproxy/haproxy.cfg).
    drain_seconds: float
    restart_delay: float = 1.0  # RestartSec of the systemd units: the pause before a restart
    stop_limit: float = 40.0  # TimeoutStopSec of the units: SIGKILL after this
    up_limit: float = 60.0  # longest wait for a process to be back in rotation
    election_limit: float = 60.0  # longest wait for a new primary
    # Any rehearsal still running after this is cancelled (every loop is bounded anyway).
    timeout: float = 900.0


FULL = RehearsalPlan(
    "full", workers=8, pause=0.05, warmup_seconds=10.0, settle_seconds=10.0, drain_seconds=5.0
)
SMOKE = RehearsalPlan(
    "smoke",
    workers=3,
    pause=0.1,
    warmup_seconds=1.0,
    settle_seconds=1.0,
    drain_seconds=3.0,
    up_limit=45.0,
    timeout=360.0,
)
