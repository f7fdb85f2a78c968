"""Limits: RPCs in flight per kind of work (load shedding), and logins per app and per caller.

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

import math
from collections.abc import Mapping

from runtime.token_bucket import TokenBuckets
from service.callers import Caller
from service.errors import Overloaded, RateLimited

# RPC method -> kind of work; methods not listed count as "session". "login" is
# the WeChat-bound kind: every call waits on a WeChat round trip.
RPC_KINDS: Mapping[str, str] = {
    "Login": "login",
    "GetPhoneNumber": "login",
    "CheckSessionKey": "login",
    "ResetSessionKey": "login",
}
DEFAULT_LIMITS: Mapping[str, int] = {"login": 512, "session": 4096}


class InFlightLimits:
    """Counts RPCs in flight per kind; `slot()` refuses with Overloaded past the kind's limit."""

    def __init__(self, limits: Mapping[str, int] = DEFAULT_LIMITS) -> None:
        self._limits = dict(limits)
        self._in_flight = dict.fromkeys(self._limits, 0)
        self.shed = dict.fromkeys(self._limits, 0)  # refused calls, for metrics and tests
        # One reusable slot per kind (its count lives here): entered on every RPC, so
        # a plain class, ~0.5 us where the @contextmanager generator cost 2.3 us.
        self._slots = {kind: _Slot(self, kind) for kind in self._limits}

    def slot(self, method: str) -> _Slot:
        """Hold one slot of `method`'s kind for the duration of the call (a `with` block)."""
        return self._slots[RPC_KINDS.get(method, "session")]

    def in_flight(self, kind: str) -> int:
        """RPCs of this kind running now."""
        return self._in_flight[kind]


class _Slot:
    """`with limits.slot(method):`, shared by every call of one kind; holds no state of its own."""

    __slots__ = ("_kind", "_limits")

    def __init__(self, limits: InFlightLimits, kind: str) -> None:
        self._limits = limits
        self._kind = kind

    def __enter__(self) -> None:
        limits, kind = self._limits, self._kind
        if limits._in_flight[kind] >= limits._limits[kind]:
            limits.shed[kind] += 1
            raise Overloaded()
        limits._in_flight[kind] += 1

    def __exit__(self, *exc_info: object) -> None:
        self._limits._in_flight[self._kind] -= 1


class LoginRates:
    """Logins per app and per caller, as token buckets: junk codes must not spend WeChat's quota.

    Every Login costs one jscode2session call against the app's WeChat quota,
    whether its code is real or junk; once WeChat answers 45011 it does so for
    every user of the app. A bound per app keeps one flood from getting there;
    a bound per caller (its `login_rate` in the callers file) keeps one
    backend's flood from using up the app's share. Refusals are RATE_LIMITED
    with `retry_after_seconds` in the ErrorInfo metadata.
    """

    def __init__(self, per_app: float, *, burst_seconds: float = 2.0) -> None:
        self._burst_seconds = burst_seconds
        self._apps = None if per_app <= 0 else self._buckets(per_app)
        self._callers: dict[str, TokenBuckets] = {}

    def _buckets(self, rate: float) -> TokenBuckets:
        return TokenBuckets(rate, max(1.0, rate * self._burst_seconds))

    def admit(self, app_id: str, caller: Caller | None) -> None:
        """Spend one login of `app_id` (and of `caller`, if it has a rate); RateLimited if none."""
        if caller is not None and caller.login_rate is not None:
            buckets = self._callers.get(caller.name)
            if buckets is None or buckets.rate != caller.login_rate:
                # First login of this caller, or a reloaded file changed its rate.
                buckets = self._callers[caller.name] = self._buckets(caller.login_rate)
            _spend(buckets, "", "this caller")
        if self._apps is not None:
            _spend(self._apps, app_id, "this app")


def _spend(buckets: TokenBuckets, key: str, whose: str) -> None:
    wait = buckets.take(key)
    if wait > 0:
        raise RateLimited(
            f"too many logins for {whose}; retry later",
            retry_after_seconds=str(max(1, math.ceil(wait))),
        )
