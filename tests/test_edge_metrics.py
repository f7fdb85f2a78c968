"""Edge /metrics (WXLOGIN_EDGE_METRICS_LISTEN): requests by route and status, upstream time."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
from google.protobuf import timestamp_pb2
from prometheus_client import CollectorRegistry

from clients.edge.config import EdgeConfig
from clients.edge.metrics import EdgeMetrics
from runtime.config import ConfigError, ListenAddress
from runtime.metrics_server import serving_metrics
from service.errors import SessionInvalid
from tests.edge_support import USER, FakeUpstream, free_port_target, running_edge
from tests.metrics_support import scrape
from tests.support import child
from wxlogin.v1 import auth_pb2

BEARER = {"Authorization": "Bearer wxl1_" + "b" * 43}


@asynccontextmanager
async def metered_edge(fake: FakeUpstream, **options: Any) -> AsyncIterator[tuple[str, int]]:
    """An in-process edge in front of the fake with metrics on; its URL and metrics port."""
    metrics = EdgeMetrics(CollectorRegistry())
    with serving_metrics("TEST", ListenAddress("127.0.0.1", 0), metrics.registry) as port:
        async with running_edge(fake.target, metrics=metrics, **options) as url:
            yield url, port


async def test_requests_are_counted_by_route_and_status(
    fake: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    """Each answer counts under its route's pattern and status; unknown paths under `unmatched`."""
    fake.auth.will("CheckSession", SessionInvalid())
    async with metered_edge(fake) as (url, port):
        for _ in range(2):
            async with http.post(f"{url}/v1/login", json={"code": "c0de"}) as response:
                assert response.status == 200
        async with http.get(f"{url}/v1/session", headers=BEARER) as response:
            assert response.status == 401
        async with http.get(f"{url}/v1/session") as response:  # no bearer: no call
            assert response.status == 401
        async with http.get(f"{url}/no/such/secret-path") as response:
            assert response.status == 404
        seen = await scrape(http, port)

    requests = "wxlogin_edge_requests_total"
    assert seen.value(requests, route="/v1/login", status="200") == 2
    assert seen.value(requests, route="/v1/session", status="401") == 2
    assert seen.value(requests, route="unmatched", status="404") == 1
    assert "secret-path" not in seen.text  # the pattern, never the path sent
    assert seen.value("wxlogin_edge_request_duration_seconds_count", route="/v1/login") == 2
    upstream = "wxlogin_edge_upstream_duration_seconds_count"
    assert seen.value(upstream, rpc="Login") == 2
    assert seen.value(upstream, rpc="CheckSession") == 1


async def test_answers_from_the_edge_cache_are_not_upstream_calls(
    fake: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    """With the edge's session cache, a repeated check is a request but not an upstream call."""
    # The cache keeps a session only until its expires_at.
    later = timestamp_pb2.Timestamp(seconds=int(time.time()) + 3600)
    fake.auth.will("CheckSession", auth_pb2.CheckSessionResponse(user=USER, expires_at=later))
    async with metered_edge(fake, session_cache_seconds=60) as (url, port):
        for _ in range(3):
            async with http.get(f"{url}/v1/session", headers=BEARER) as response:
                assert response.status == 200
        seen = await scrape(http, port)
    assert len(fake.auth.calls_to("CheckSession")) == 1
    assert seen.value("wxlogin_edge_requests_total", route="/v1/session", status="200") == 3
    assert seen.value("wxlogin_edge_upstream_duration_seconds_count", rpc="CheckSession") == 1


async def test_the_edge_process_serves_metrics_when_configured(
    fake: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    """`python -m clients.edge` with WXLOGIN_EDGE_METRICS_LISTEN serves /metrics there."""
    metrics_port = int(free_port_target().rsplit(":", 1)[1])
    env = {
        "WXLOGIN_HTTP_LISTEN": "127.0.0.1:0",
        "WXLOGIN_UPSTREAM": fake.target,
        "WXLOGIN_EDGE_METRICS_LISTEN": f"127.0.0.1:{metrics_port}",
    }
    async with child("clients.edge", env=env) as (_, port):
        async with http.post(f"http://127.0.0.1:{port}/v1/login", json={"code": "c"}) as response:
            assert response.status == 200
        seen = await scrape(http, metrics_port)
    assert seen.value("wxlogin_edge_requests_total", route="/v1/login", status="200") == 1
    assert seen.value("process_open_fds") > 0


def test_edge_metrics_listen_is_read_and_checked() -> None:
    """WXLOGIN_EDGE_METRICS_LISTEN: unset is off, HOST:PORT is read, anything else refused."""
    assert EdgeConfig.from_env({}).metrics_listen is None
    config = EdgeConfig.from_env({"WXLOGIN_EDGE_METRICS_LISTEN": "127.0.0.1:9465"})
    assert config.metrics_listen == ListenAddress("127.0.0.1", 9465)
    with pytest.raises(ConfigError, match="WXLOGIN_EDGE_METRICS_LISTEN"):
        EdgeConfig.from_env({"WXLOGIN_EDGE_METRICS_LISTEN": "nope"})
