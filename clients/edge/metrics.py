"""The edge's Prometheus series, registered on a registry passed in (tests use a fresh one).

    wxlogin_edge_requests_total{route,status}          requests answered; route is the
                                                       route's pattern, "unmatched" for
                                                       paths that match none
    wxlogin_edge_request_duration_seconds{route}       time to answer, histogram
    wxlogin_edge_upstream_duration_seconds{rpc}        time waiting for wxlogin per RPC
                                                       (answers from the edge's own session
                                                       cache are not counted: no call)
    process_*                                          CPU, memory, open files

Label values are bounded: route patterns (never the path a client sent), HTTP
statuses the edge answers with, RPC names.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector

# The edge adds well under a millisecond to wxlogin's own time: CheckSession's few
# milliseconds, Login's ~100 ms at WeChat, up to the client's 10 s deadline.
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
UNMATCHED = "unmatched"


class EdgeMetrics:
    """Every series of one edge process; children bound once per label set seen."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self._requests = Counter(
            "wxlogin_edge_requests",
            "HTTP requests answered, by route and status",
            ["route", "status"],
            registry=registry,
        )
        self._request_seconds = Histogram(
            "wxlogin_edge_request_duration_seconds",
            "Time to answer an HTTP request",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self._upstream_seconds = Histogram(
            "wxlogin_edge_upstream_duration_seconds",
            "Time waiting for wxlogin, per RPC (retries included)",
            ["rpc"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        ProcessCollector(registry=registry)
        self._request_children: dict[tuple[str, int], Any] = {}
        self._request_latency: dict[str, Any] = {}
        self._upstream_latency: dict[str, Any] = {}

    def request(self, route: str, status: int, seconds: float) -> None:
        """One HTTP request answered."""
        child = self._request_children.get((route, status))
        if child is None:
            child = self._request_children[route, status] = self._requests.labels(
                route, str(status)
            )
        child.inc()
        latency = self._request_latency.get(route)
        if latency is None:
            latency = self._request_latency[route] = self._request_seconds.labels(route)
        latency.observe(seconds)

    def upstream(self, rpc: str, seconds: float) -> None:
        """One call to wxlogin (however it ended)."""
        latency = self._upstream_latency.get(rpc)
        if latency is None:
            latency = self._upstream_latency[rpc] = self._upstream_seconds.labels(rpc)
        latency.observe(seconds)
