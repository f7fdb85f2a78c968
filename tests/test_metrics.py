"""Service /metrics (WXLOGIN_METRICS_LISTEN): counters move with real calls; bounded labels."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from runtime.config import ListenAddress
from service.app import MONGODB_HEALTH_NAME, RunningService
from service.embedded_mongo import EmbeddedMongo
from service.settings import ConfigError, Settings
from tests.conftest import ServiceFactory, b64_secret_key
from tests.metrics_support import scrape
from tests.support import APP_A, APPS_ENV, Emulator
from wxlogin.v1 import auth_pb2, auth_pb2_grpc

ANY_PORT = ListenAddress("127.0.0.1", 0)
UNKNOWN_TOKEN = "wxl1_" + "A" * 43


@asynccontextmanager
async def metered(
    start_service: ServiceFactory, **overrides: Any
) -> AsyncIterator[tuple[RunningService, auth_pb2_grpc.AuthServiceStub]]:
    """A service with metrics on a free port, and a stub for it."""
    async with (
        start_service(metrics_listen=ANY_PORT, **overrides) as running,
        grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel,
    ):
        assert running.metrics_port
        yield running, auth_pb2_grpc.AuthServiceStub(channel)


async def rpc_error(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


async def test_rpcs_are_counted_by_method_code_and_reason(
    start_service: ServiceFactory, emu: Emulator, http: aiohttp.ClientSession
) -> None:
    """Logins and checks, good and bad, move wxlogin_rpcs_total and the latency histograms."""
    async with metered(start_service) as (running, stub):
        assert running.metrics_port is not None
        code = await emu.code(APP_A, "metrics-ann")
        login = await stub.Login(auth_pb2.LoginRequest(app_id=APP_A, code=code))
        for _ in range(2):
            await stub.CheckSession(auth_pb2.CheckSessionRequest(token=login.token))
        await rpc_error(stub.CheckSession(auth_pb2.CheckSessionRequest(token=UNKNOWN_TOKEN)))
        # The same code again would get the same answer (idempotent login): WeChat says "used".
        await emu.fault(errcode=40163, times=1)
        used = await emu.code(APP_A, "metrics-ann")
        await rpc_error(stub.Login(auth_pb2.LoginRequest(app_id=APP_A, code=used)))
        await rpc_error(stub.Login(auth_pb2.LoginRequest(app_id="wxnot-configured", code="x")))
        seen = await scrape(http, running.metrics_port)

    rpcs = "wxlogin_rpcs_total"
    assert seen.value(rpcs, method="Login", code="OK", reason="") == 1
    assert seen.value(rpcs, method="CheckSession", code="OK", reason="") == 2
    assert seen.value(rpcs, method="CheckSession", reason="SESSION_INVALID") == 1
    assert seen.value(rpcs, method="Login", code="UNAUTHENTICATED", reason="CODE_USED") == 1
    assert seen.value(rpcs, method="Login", code="INVALID_ARGUMENT", reason="APP_UNKNOWN") == 1
    # Every method is there from the start, so a rate over it is 0 rather than absent.
    assert seen.value(rpcs, method="RevokeSession", code="OK") == 0
    assert seen.label_values(rpcs, "caller") == {""}  # no callers file
    latency = "wxlogin_rpc_duration_seconds_count"
    assert seen.value(latency, method="Login") == 3
    assert seen.value(latency, method="CheckSession") == 3
    # The buckets: sub-millisecond for the cache, up to Login's 10 s deadline.
    buckets = {s.labels["le"] for s in seen.matching("wxlogin_rpc_duration_seconds_bucket")}
    assert {"0.0005", "0.1", "10.0", "+Inf"} <= buckets


async def test_wechat_requests_are_counted_by_endpoint_and_errcode(
    start_service: ServiceFactory, emu: Emulator, http: aiohttp.ClientSession
) -> None:
    """Each HTTP attempt at WeChat: errcode -1 then a retry that works, and an invalid code."""
    async with metered(start_service) as (running, stub):
        assert running.metrics_port is not None
        code = await emu.code(APP_A, "metrics-bob")
        await emu.fault(errcode=-1, times=1)
        await stub.Login(auth_pb2.LoginRequest(app_id=APP_A, code=code))
        await rpc_error(stub.Login(auth_pb2.LoginRequest(app_id=APP_A, code="not-a-real-code")))
        seen = await scrape(http, running.metrics_port)

    requests = "wxlogin_wechat_requests_total"
    assert seen.value(requests, endpoint="jscode2session", errcode="-1") == 1
    assert seen.value(requests, endpoint="jscode2session", errcode="0") == 1
    assert seen.value(requests, endpoint="jscode2session", errcode="40029") == 1
    latency = "wxlogin_wechat_request_duration_seconds_count"
    assert seen.value(latency, endpoint="jscode2session") == 3
    assert seen.value("wxlogin_rpcs_total", method="Login", reason="CODE_INVALID") == 1


async def test_wechat_outage_is_counted_without_an_errcode(
    start_service: ServiceFactory, http: aiohttp.ClientSession
) -> None:
    """Nothing listening where WeChat should be: attempts counted as network failures."""
    async with metered(start_service, wechat_api_base="http://127.0.0.1:9", wechat_attempts=2) as (
        running,
        stub,
    ):
        assert running.metrics_port is not None
        error = await rpc_error(stub.Login(auth_pb2.LoginRequest(app_id=APP_A, code="c0de")))
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        seen = await scrape(http, running.metrics_port)
    assert seen.value("wxlogin_wechat_requests_total", errcode="network") == 2
    assert seen.value("wxlogin_rpcs_total", method="Login", reason="WECHAT_UNAVAILABLE") == 1


async def test_cache_store_and_batches_are_measured(
    start_service: ServiceFactory, emu: Emulator, http: aiohttp.ClientSession
) -> None:
    """Session-cache hits and misses and sizes, MongoDB latency per operation, batch sizes."""
    async with metered(start_service) as (running, stub):
        assert running.metrics_port is not None
        code = await emu.code(APP_A, "metrics-cat")
        login = await stub.Login(auth_pb2.LoginRequest(app_id=APP_A, code=code))
        await stub.CheckSession(auth_pb2.CheckSessionRequest(token=login.token))  # hit
        await rpc_error(stub.CheckSession(auth_pb2.CheckSessionRequest(token=UNKNOWN_TOKEN)))
        seen = await scrape(http, running.metrics_port)

    assert seen.value("wxlogin_session_cache_lookups_total", result="hit") == 1
    assert seen.value("wxlogin_session_cache_lookups_total", result="miss") == 1
    assert seen.value("wxlogin_session_cache_entries", cache="sessions") == 1
    assert seen.value("wxlogin_session_cache_entries", cache="unknown_tokens") == 1
    mongodb = "wxlogin_mongodb_operation_duration_seconds_count"
    assert seen.value(mongodb, operation="find_session", outcome="ok") == 1
    assert seen.value(mongodb, operation="insert_sessions", outcome="ok") == 1
    assert seen.value(mongodb, operation="upsert_users", outcome="ok") == 1
    assert seen.value("wxlogin_login_batch_size_count") == 1
    assert seen.value("wxlogin_login_batch_size_sum") == 1
    assert seen.value("wxlogin_logins_waiting") == 0
    assert seen.value("wxlogin_mongodb_up") == 1
    assert seen.value("process_resident_memory_bytes") > 0


async def test_in_flight_and_shed_rpcs(
    start_service: ServiceFactory, emu: Emulator, http: aiohttp.ClientSession
) -> None:
    """A Login waiting on a slow WeChat shows in flight; CheckSession past its bound is shed."""
    async with metered(start_service, max_in_flight_session_calls=0) as (running, stub):
        port = running.metrics_port
        assert port is not None
        code = await emu.code(APP_A, "metrics-dan")
        await emu.fault(latency_ms=1500, times=1)
        login = asyncio.ensure_future(stub.Login(auth_pb2.LoginRequest(app_id=APP_A, code=code)))
        try:
            seen = await scrape(http, port)
            for _ in range(100):  # until the Login has reached the service
                if seen.value("wxlogin_rpcs_in_flight", kind="login") == 1:
                    break
                await asyncio.sleep(0.02)
                seen = await scrape(http, port)
            assert seen.value("wxlogin_rpcs_in_flight", kind="login") == 1
            assert seen.value("wxlogin_rpcs_in_flight", kind="session") == 0
        finally:
            await login
        error = await rpc_error(stub.CheckSession(auth_pb2.CheckSessionRequest(token="t")))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        seen = await scrape(http, port)
    assert seen.value("wxlogin_rpcs_in_flight", kind="login") == 0
    assert seen.value("wxlogin_rpcs_shed_total", kind="session") == 1
    assert seen.value("wxlogin_rpcs_shed_total", kind="login") == 0
    assert seen.value("wxlogin_rpcs_total", method="CheckSession", reason="OVERLOADED") == 1


async def test_callers_are_counted_by_name_refused_ones_too(
    start_service: ServiceFactory, emu: Emulator, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """With a callers file, the caller label names the caller (from the file, bounded).

    Calls the guard refuses are counted like any other: an unknown key under caller
    "", a known caller outside its grant under its name.
    """
    key = "metrics-caller-key-0123456789"
    callers = tmp_path / "callers.toml"
    callers.write_text(
        f'[callers.orders]\nkey_sha256 = "{hashlib.sha256(key.encode()).hexdigest()}"\n'
        'rpcs = ["Login", "CheckSession"]\napps = ["*"]\n'
    )
    async with metered(start_service, callers_file=callers) as (running, stub):
        assert running.metrics_port is not None
        code = await emu.code(APP_A, "metrics-eve")
        metadata = (("x-wxlogin-caller-key", key),)
        login = await stub.Login(auth_pb2.LoginRequest(app_id=APP_A, code=code), metadata=metadata)
        for _ in range(2):
            unknown = await rpc_error(
                stub.CheckSession(
                    auth_pb2.CheckSessionRequest(token=login.token),
                    metadata=(("x-wxlogin-caller-key", "not-a-known-key-000000"),),
                )
            )
            assert unknown.code() == grpc.StatusCode.UNAUTHENTICATED
        forbidden = await rpc_error(
            stub.RevokeSession(auth_pb2.RevokeSessionRequest(token=login.token), metadata=metadata)
        )
        assert forbidden.code() == grpc.StatusCode.PERMISSION_DENIED
        seen = await scrape(http, running.metrics_port)
    assert seen.value("wxlogin_rpcs_total", method="Login", code="OK", caller="orders") == 1
    unauthenticated = {
        "method": "CheckSession",
        "code": "UNAUTHENTICATED",
        "reason": "CALLER_UNAUTHENTICATED",
        "caller": "",
    }
    assert seen.value("wxlogin_rpcs_total", **unauthenticated) == 2
    refused = {"method": "RevokeSession", "code": "PERMISSION_DENIED", "caller": "orders"}
    assert seen.value("wxlogin_rpcs_total", reason="CALLER_FORBIDDEN", **refused) == 1


async def test_no_token_openid_code_or_user_id_in_the_metrics(
    start_service: ServiceFactory, emu: Emulator, http: aiohttp.ClientSession
) -> None:
    """Label values are bounded: nothing a user or a request brings reaches /metrics."""
    async with metered(start_service) as (running, stub):
        assert running.metrics_port is not None
        minted = await emu.wx_login(APP_A, "metrics-fay")
        login = await stub.Login(auth_pb2.LoginRequest(app_id=APP_A, code=minted["code"]))
        await stub.CheckSession(auth_pb2.CheckSessionRequest(token=login.token))
        await rpc_error(stub.Login(auth_pb2.LoginRequest(app_id=APP_A, code="junk-code-123")))
        seen = await scrape(http, running.metrics_port)
    for value in (
        login.token,
        login.user.openid,
        login.user.user_id,
        minted["code"],
        minted["session_key"],
        "junk-code-123",
    ):
        assert value not in seen.text


async def test_openmetrics_and_text_formats_both_parse(
    start_service: ServiceFactory, http: aiohttp.ClientSession
) -> None:
    """Prometheus asks for OpenMetrics (with # EOF); other scrapers get the text format."""
    async with metered(start_service) as (running, _):
        port = running.metrics_port
        seen = await scrape(http, port or 0)
        async with http.get(f"http://127.0.0.1:{port}/metrics") as response:
            plain = await response.text()
            plain_type = response.headers["Content-Type"]
    assert seen.content_type.startswith("application/openmetrics-text")
    assert seen.text.endswith("# EOF\n")
    assert plain_type.startswith("text/plain")
    names = {family.name for family in text_string_to_metric_families(plain)}
    assert {"wxlogin_rpcs", "wxlogin_rpc_duration_seconds", "wxlogin_rpcs_in_flight"} <= names


async def test_metrics_are_off_unless_configured(service: RunningService) -> None:
    """Without WXLOGIN_METRICS_LISTEN there is no /metrics (and nothing is measured)."""
    assert service.metrics_port is None


def test_metrics_listen_is_read_and_checked() -> None:
    """WXLOGIN_METRICS_LISTEN is HOST:PORT; a bad one fails at start naming the variable."""
    env = {"WXLOGIN_APPS": APPS_ENV, "WXLOGIN_SECRET_KEY": b64_secret_key()}
    assert Settings.from_env(env).metrics_listen is None
    listen = Settings.from_env({**env, "WXLOGIN_METRICS_LISTEN": "0.0.0.0:9464"}).metrics_listen
    assert listen == ListenAddress("0.0.0.0", 9464)
    with pytest.raises(ConfigError, match="WXLOGIN_METRICS_LISTEN"):
        Settings.from_env({**env, "WXLOGIN_METRICS_LISTEN": "9464"})


async def test_a_taken_metrics_port_fails_at_start(start_service: ServiceFactory) -> None:
    """A metrics port already in use is a configuration error naming the variable."""
    async with metered(start_service) as (running, _):
        taken = ListenAddress("127.0.0.1", running.metrics_port or 0)
        with pytest.raises(ConfigError, match="WXLOGIN_METRICS_LISTEN"):
            async with start_service(metrics_listen=taken):
                pass


async def health_of(port: int, name: str) -> int:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=name), timeout=5
        )
        return int(reply.status)


async def test_health_per_dependency_follows_mongodb_and_not_wechat(
    start_service: ServiceFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """MongoDB's own health name (and AuthService) go NOT_SERVING with it; WeChat down does not."""
    names = ("", "wxlogin.v1.AuthService", MONGODB_HEALTH_NAME)
    serving = health_pb2.HealthCheckResponse.SERVING
    not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
    mongo = EmbeddedMongo(tmp_path / "doomed")
    uri = await mongo.start()
    try:
        async with metered(
            start_service, mongodb_uri=uri, wechat_api_base="http://127.0.0.1:9"
        ) as (running, stub):
            port = running.metrics_port
            assert port is not None
            error = await rpc_error(stub.Login(auth_pb2.LoginRequest(app_id=APP_A, code="c0de")))
            assert error.code() == grpc.StatusCode.UNAVAILABLE  # WeChat is unreachable ...
            for name in names:  # ... and we stay in the load balancer: CheckSession works
                assert await health_of(running.port, name) == serving
            assert (await scrape(http, port)).value("wxlogin_mongodb_up") == 1

            await mongo.stop()
            for _ in range(100):
                if (await scrape(http, port)).value("wxlogin_mongodb_up") == 0:
                    break
                await asyncio.sleep(0.1)
            seen = await scrape(http, port)
            assert seen.value("wxlogin_mongodb_up") == 0
            for name in names:
                assert await health_of(running.port, name) == not_serving
    finally:
        await mongo.stop()


async def test_access_token_refreshes_and_expiry_are_reported(
    start_service: ServiceFactory, emu: Emulator, http: aiohttp.ClientSession
) -> None:
    """A failed and a good stable_token fetch are counted by outcome; the expiry is the token's."""
    await emu.fault(endpoint="stable_token", errcode=40164, times=1)
    async with metered(start_service) as (running, stub):
        assert running.metrics_port is not None
        request = auth_pb2.GetAccessTokenRequest(app_id=APP_A)
        failed = await rpc_error(stub.GetAccessToken(request))
        assert failed.code() == grpc.StatusCode.UNAVAILABLE
        reply = await stub.GetAccessToken(request)
        seen = await scrape(http, running.metrics_port)
    refreshes = "wxlogin_access_token_refreshes_total"
    assert seen.value(refreshes, app_id=APP_A, outcome="error") == 1
    assert seen.value(refreshes, app_id=APP_A, outcome="ok") == 1
    expiry = seen.value("wxlogin_access_token_expiry_timestamp_seconds", app_id=APP_A)
    assert abs(expiry - reply.expires_at.seconds) <= 1
