"""Load shedding: a bound on RPCs in flight, per kind of work, so overload fails fast.

Without a bound, a stalled MongoDB or WeChat piles up calls (and their memory)
until deadlines or the process give way, and every caller waits the whole way
down. With one, the calls beyond it are refused at once with OVERLOADED
(RESOURCE_EXHAUSTED): clients back off, the work in flight finishes, memory
stays bounded.

Kinds are limited separately so that one stalled dependency does not take the
others down: logins wait on WeChat, so a WeChat stall fills the "login" slots
while CheckSession, answered from the cache or one MongoDB read, keeps its own.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from service.errors import Overloaded

# RPC method -> kind of work; methods not listed count as "session".
RPC_KINDS: Mapping[str, str] = {"Login": "login"}
DEFAULT_LIMITS: Mapping[str, int] = {"login": 512, "session": 4096}


class InFlightLimits:
    """Counts RPCs in flight per kind; `slot()` refuses with Overloaded past the kind's limit."""

    def __init__(self, limits: Mapping[str, int] = DEFAULT_LIMITS) -> None:
        self._limits = dict(limits)
        self._in_flight = dict.fromkeys(self._limits, 0)
        self.shed = dict.fromkeys(self._limits, 0)  # refused calls, for metrics and tests

    @contextmanager
    def slot(self, method: str) -> Iterator[None]:
        """Hold one slot of `method`'s kind for the duration of the call."""
        kind = RPC_KINDS.get(method, "session")
        if self._in_flight[kind] >= self._limits[kind]:
            self.shed[kind] += 1
            raise Overloaded()
        self._in_flight[kind] += 1
        try:
            yield
        finally:
            self._in_flight[kind] -= 1

    def in_flight(self, kind: str) -> int:
        """RPCs of this kind running now."""
        return self._in_flight[kind]
