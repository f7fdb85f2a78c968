"""The service's Prometheus series, registered on a registry passed in (tests use a fresh one).

    wxlogin_rpcs_total{method,code,reason,caller}        RPCs answered; reason "" when OK,
                                                          caller "" without a callers file
    wxlogin_rpc_duration_seconds{method}                  time to answer, histogram
    wxlogin_rpcs_in_flight{kind}                          RPCs running now (service/limits.py)
    wxlogin_rpcs_shed_total{kind}                         refused with OVERLOADED
    wxlogin_wechat_requests_total{endpoint,errcode}       every HTTP attempt at WeChat: its
                                                          errcode ("0" ok), or the failure
                                                          without one (network, timeout,
                                                          http_5xx, http_4xx, bad_response)
    wxlogin_wechat_request_duration_seconds{endpoint}     time per attempt, histogram
    wxlogin_access_token_refreshes_total{app_id,outcome}  stable_token fetches: ok, error
    wxlogin_access_token_expiry_timestamp_seconds{app_id} the token this process serves
    wxlogin_session_cache_lookups_total{result}           CheckSession's cache: hit, miss
    wxlogin_session_cache_entries{cache}                  sessions, unknown_tokens
    wxlogin_mongodb_operation_duration_seconds{operation,outcome}
    wxlogin_mongodb_up                                    1 while MongoDB answers the pings
    wxlogin_login_batch_size                              logins per MongoDB write (group commit)
    wxlogin_logins_waiting                                logins queued for that write
    process_*                                             CPU, memory, open files

Every label value comes from a bounded set: RPC and endpoint names, the error
table's reasons, the callers file's names, configured app ids. Never a token,
openid, code or user_id.

What every RPC touches is counted in plain Python (`RpcSeries`), not by
prometheus_client's locked children; the rest is bound once, a child per label
set as it is first seen. Values the service already
keeps (in-flight counts, cache sizes and hits, the login queue) are read only
when Prometheus scrapes, by a collector, at no cost per call.
"""

from __future__ import annotations

import math
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator
from itertools import accumulate
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

# CheckSession is answered in well under a millisecond from the cache and in a
# few from MongoDB; Login waits ~100 ms on WeChat and up to its 10 s deadline.
RPC_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
# A WeChat round trip is tens to hundreds of milliseconds; the per-call timeout is 5 s.
WECHAT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
# A MongoDB read or a journaled write: about a millisecond to tens; an election, seconds.
MONGODB_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
# Group commit writes at most 256 logins at once (service/batching.py).
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    """Every series of one service process; `track` adds the ones read at scrape time."""

    def __init__(self, registry: CollectorRegistry, *, methods: Iterable[str] = ()) -> None:
        self.registry = registry
        # Counted on the loop in plain Python, read at scrape time (`RpcSeries`).
        self._rpc_series = RpcSeries(RPC_BUCKETS)
        registry.register(self._rpc_series)
        self._wechat = Counter(
            "wxlogin_wechat_requests",
            "HTTP attempts at WeChat, by endpoint and errcode (or the failure without one)",
            ["endpoint", "errcode"],
            registry=registry,
        )
        self._wechat_seconds = Histogram(
            "wxlogin_wechat_request_duration_seconds",
            "Time per HTTP attempt at WeChat",
            ["endpoint"],
            buckets=WECHAT_BUCKETS,
            registry=registry,
        )
        # Fed by the access-token broker (service/access_tokens.py) through the methods below.
        self._access_token_refreshes = Counter(
            "wxlogin_access_token_refreshes",
            "access_token fetches from WeChat (stable_token) by this process, by app and "
            "outcome (ok, error)",
            ["app_id", "outcome"],
            registry=registry,
        )
        self._access_token_expiry = Gauge(
            "wxlogin_access_token_expiry_timestamp_seconds",
            "When the current access_token of each app expires (Unix time)",
            ["app_id"],
            registry=registry,
        )
        self._mongodb_seconds = Histogram(
            "wxlogin_mongodb_operation_duration_seconds",
            "Time per MongoDB operation, by operation and outcome (ok, unavailable, error, "
            "cancelled)",
            ["operation", "outcome"],
            buckets=MONGODB_BUCKETS,
            registry=registry,
        )
        self.mongodb_up = Gauge(
            "wxlogin_mongodb_up", "1 while MongoDB answers the health pings", registry=registry
        )
        self.login_batch_size = Histogram(
            "wxlogin_login_batch_size",
            "Logins written to MongoDB together (group commit)",
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        ProcessCollector(registry=registry)
        # Bound as they are first seen: a dict lookup per call.
        self._wechat_children: dict[tuple[str, str], Any] = {}
        self._wechat_latency: dict[str, Any] = {}
        self._mongodb_children: dict[tuple[str, str], Any] = {}
        for method in methods:
            # Present from the start, so that a rate over them is 0, not absent.
            self._rpc_series.declare(method)

    def rpc(self, method: str, code: str, reason: str, caller: str, seconds: float) -> None:
        """One RPC answered: `code` the gRPC code's name, `reason` "" when OK."""
        self._rpc_series.add(method, code, reason, caller, seconds)

    def wechat_request(self, endpoint: str, errcode: str, seconds: float) -> None:
        """One HTTP attempt at WeChat and what came of it (see the module docstring)."""
        child = self._wechat_children.get((endpoint, errcode))
        if child is None:
            child = self._wechat_children[endpoint, errcode] = self._wechat.labels(
                endpoint, errcode
            )
        child.inc()
        latency = self._wechat_latency.get(endpoint)
        if latency is None:
            latency = self._wechat_latency[endpoint] = self._wechat_seconds.labels(endpoint)
        latency.observe(seconds)

    def access_token_refresh(self, app_id: str, outcome: str) -> None:
        """One stable_token fetch by this process: outcome "ok" or "error"."""
        self._access_token_refreshes.labels(app_id, outcome).inc()

    def access_token_expires(self, app_id: str, epoch_seconds: float) -> None:
        """The app's current access_token, as this process serves it, expires then."""
        self._access_token_expiry.labels(app_id).set(epoch_seconds)

    def mongodb_operation(self, operation: str, outcome: str, seconds: float) -> None:
        """One MongoDB operation (service/store/) and how it ended."""
        child = self._mongodb_children.get((operation, outcome))
        if child is None:
            child = self._mongodb_children[operation, outcome] = self._mongodb_seconds.labels(
                operation, outcome
            )
        child.observe(seconds)

    def track(self, **sources: Any) -> None:
        """Read these objects' own counts at each scrape (see `StateCollector`)."""
        self.registry.register(StateCollector(**sources))


class RpcSeries(Collector):
    """wxlogin_rpcs_total and wxlogin_rpc_duration_seconds, counted in plain Python per call.

    Every RPC adds to both, so they are the metrics' only per-call cost. prometheus_client's
    Counter.inc and Histogram.observe take a lock each and walk the buckets in Python:
    4.4 us per RPC, measured, where a cached CheckSession's own work is ~25 us. Here a call
    adds to one dict entry, one bucket found by bisect and a sum (~1 us). Only the event
    loop's thread writes; the scrape, on the metrics server's thread, copies each dict and
    list in one C call, which the GIL keeps whole. The count is the buckets' total, so a
    scrape never sees a count without its bucket.
    """

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = bounds
        if list(bounds) != sorted(set(bounds)) or not all(0 < b < math.inf for b in bounds):
            raise ValueError("bucket bounds must be finite, positive and increasing")
        self._labels = [floatToGoString(bound) for bound in bounds] + ["+Inf"]  # type: ignore[no-untyped-call]
        # (method, code, reason, caller) -> RPCs answered so, and since when (Unix time).
        self._counts: dict[tuple[str, str, str, str], int] = {}
        self._created: dict[tuple[str, str, str, str], float] = {}
        # method -> a count per bucket (not cumulative; the last one is +Inf), then the sum.
        self._latency: dict[str, list[float]] = {}

    def declare(self, method: str) -> None:
        """Show `method` from the start, with OK at 0 and an empty histogram."""
        key = (method, "OK", "", "")
        if key not in self._counts:
            self._created[key] = time.time()
            self._counts[key] = 0
        self._latency.setdefault(method, [0.0] * (len(self._bounds) + 2))

    def add(self, method: str, code: str, reason: str, caller: str, seconds: float) -> None:
        """One RPC answered."""
        key = (method, code, reason, caller)
        counts = self._counts
        count = counts.get(key)
        if count is None:  # a new label set: once per set
            self._created[key] = time.time()
            count = 0
        counts[key] = count + 1
        latency = self._latency.get(method)
        if latency is None:
            latency = self._latency[method] = [0.0] * (len(self._bounds) + 2)
        latency[bisect_left(self._bounds, seconds)] += 1  # le: a bound counts as within
        latency[-1] += seconds

    def collect(self) -> Iterator[Metric]:
        # dict.copy() copies in C, running no Python code between items (list(d.items())
        # could, through the garbage collector), so the loop cannot change it meanwhile.
        counts, created = self._counts.copy(), self._created.copy()
        rpcs, seconds = self._families()
        for key, count in counts.items():
            rpcs.add_metric(list(key), count, created=created.get(key))
        yield rpcs
        for method, latency in self._latency.copy().items():
            snapshot = list(latency)
            cumulative = list(accumulate(snapshot[:-1]))
            seconds.add_metric(
                [method], list(zip(self._labels, cumulative, strict=True)), snapshot[-1]
            )
        yield seconds

    def describe(self) -> Iterator[Metric]:
        # The names, without samples: the registry knows them (clashes, ?name[]= scrapes).
        yield from self._families()

    @staticmethod
    def _families() -> tuple[CounterMetricFamily, HistogramMetricFamily]:
        return CounterMetricFamily(
            "wxlogin_rpcs",
            "RPCs answered, by method, gRPC code, wxlogin reason and caller",
            labels=["method", "code", "reason", "caller"],
        ), HistogramMetricFamily(
            "wxlogin_rpc_duration_seconds", "Time to answer an RPC", labels=["method"]
        )


class StateCollector(Collector):
    """Series read from the objects that keep the counts anyway, when Prometheus scrapes.

    The scrape runs on the metrics server's thread; it only reads ints and
    lengths, which the GIL keeps whole.
    """

    def __init__(
        self,
        *,
        limits: Any = None,  # service.limits.InFlightLimits
        session_cache: Any = None,  # service.cache.SessionCache
        unknown_tokens: Any = None,  # service.cache.UnknownTokens
        logins_waiting: Callable[[], int] | None = None,
    ) -> None:
        self._limits = limits
        self._cache = session_cache
        self._unknown = unknown_tokens
        self._logins_waiting = logins_waiting

    def collect(self) -> Iterator[Metric]:
        if self._limits is not None:
            kinds = list(self._limits.shed)
            in_flight = GaugeMetricFamily(
                "wxlogin_rpcs_in_flight", "RPCs running now, by kind of work", labels=["kind"]
            )
            shed = CounterMetricFamily(
                "wxlogin_rpcs_shed",
                "RPCs refused with OVERLOADED (too many in flight), by kind of work",
                labels=["kind"],
            )
            for kind in kinds:
                in_flight.add_metric([kind], self._limits.in_flight(kind))
                shed.add_metric([kind], self._limits.shed[kind])
            yield in_flight
            yield shed
        if self._cache is not None:
            lookups = CounterMetricFamily(
                "wxlogin_session_cache_lookups",
                "CheckSession's in-process session cache: hits and misses",
                labels=["result"],
            )
            lookups.add_metric(["hit"], self._cache.hits)
            lookups.add_metric(["miss"], self._cache.misses)
            yield lookups
        entries = GaugeMetricFamily(
            "wxlogin_session_cache_entries", "Entries in the in-process caches", labels=["cache"]
        )
        if self._cache is not None:
            entries.add_metric(["sessions"], len(self._cache))
        if self._unknown is not None:
            entries.add_metric(["unknown_tokens"], len(self._unknown))
        yield entries
        if self._logins_waiting is not None:
            yield GaugeMetricFamily(
                "wxlogin_logins_waiting",
                "Logins waiting for their MongoDB write (group commit queue)",
                value=self._logins_waiting(),
            )

    def describe(self) -> Iterator[Metric]:
        # Nothing to describe ahead: registering must not call collect() (and read state).
        return iter(())
