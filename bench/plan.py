"""How long and how hard a run loads each scenario, and which cores go to whom."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Plan:
    """Durations, rounds and concurrency: one plan for `make bench`, one for the smoke test."""

    name: str
    duration: float  # measured seconds per run
    warmup: float  # seconds of load before measuring starts
    rounds: int  # baseline/scenario alternations per scenario
    # Rounds where a few percent decide: the caller-key comparison (its target leaves
    # little margin; round to round this machine varies by ~10 %) and every
    # side-by-side cost run (Rig.side_by_side).
    fine_rounds: int
    rss_first: int  # CheckSession calls before the first RSS reading
    rss_total: int  # ... and in all, before the second
    samples: int  # real-client checks per scenario
    clients: int = 16  # h2load connections (and bench.driver channels)
    streams: int = 4  # streams in flight per connection: 16 x 4 = 64 concurrent
    connections: int = 64  # wrk connections, one request in flight on each
    profile: bool = False  # an extra run per scenario under py-spy
    # A run during which other people's processes kept more than `foreign_limit` cores
    # busy is thrown away and repeated, up to `retries` times (a shared machine).
    retries: int = 2
    foreign_limit: float = 0.3
    retry_budget: float = 120.0  # seconds all repeated runs may take together (10 min cap)
    quiet_wait: float = 60.0  # seconds to wait at the start for the machine to be idle
    # `--only`: these scenario keys and nothing else (no memory, costs or scaling runs
    # unless named); empty: everything.
    only: tuple[str, ...] = ()

    def runs(self, key: str) -> bool:
        """Whether this run includes the scenario (or measurement) `key`."""
        return not self.only or key in self.only

    @property
    def concurrency(self) -> int:
        return self.clients * self.streams


FULL = Plan(
    "full",
    duration=5.0,
    warmup=1.0,
    rounds=2,
    fine_rounds=4,
    rss_first=10_000,
    rss_total=200_000,
    samples=200,
)
SMOKE = Plan(
    "smoke",
    duration=1.0,
    warmup=0.3,
    rounds=1,
    fine_rounds=1,
    rss_first=1_000,
    rss_total=3_000,
    samples=20,
    retries=0,  # the smoke test checks that everything works, not how fast
    quiet_wait=0.0,
)


@dataclass(frozen=True)
class Cores:
    """The core the process under test (and its baseline) gets, and the ones everything else gets.

    With two cores or more: the first for the process under test, the rest for the load
    generator, the bench and the dependencies. With one core nothing can be separated and
    nothing is pinned.
    """

    server: tuple[int, ...]
    load: tuple[int, ...]

    @classmethod
    def detect(cls) -> Cores:
        available = sorted(os.sched_getaffinity(0))
        if len(available) < 2:
            return cls((), ())
        return cls((available[0],), tuple(available[1:]))

    @property
    def pinned(self) -> bool:
        return bool(self.server)

    @property
    def every(self) -> tuple[int, ...]:
        return self.server + self.load
