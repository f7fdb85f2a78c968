"""Graceful drain: on SIGTERM, not ready first (health, /readyz), still serving, then closing."""

from __future__ import annotations

import asyncio
import signal
import uuid

import aiohttp
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.support import APP_A, Emulator, child, service_and_edge
from wxlogin.v1 import auth_pb2, auth_pb2_grpc

NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVING = health_pb2.HealthCheckResponse.SERVING
# Longer than any test needs; a SIGINT while draining ends it (runtime/serve.drain).
LONG_DRAIN = {"WXLOGIN_DRAIN_SECONDS": "120"}
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]


async def health(port: int, service: str = "") -> int:
    """Health over a new connection: what a load balancer's next check sees."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=OWN_CONNECTION) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=5
        )
        return int(reply.status)


async def test_the_service_reports_not_serving_and_still_answers_until_the_drain_ends(
    service_env: dict[str, str], emu: Emulator
) -> None:
    """SIGTERM (twice): NOT_SERVING, new connections still log in; a SIGINT ends it; exit 0."""
    async with child("service", env={**service_env, **LONG_DRAIN}) as (process, port):
        assert await health(port) == SERVING
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as open_channel:
            stub = auth_pb2_grpc.AuthServiceStub(open_channel)
            process.send_signal(signal.SIGTERM)
            for _ in range(300):
                if await health(port) == NOT_SERVING:
                    break
                await asyncio.sleep(0.05)
            assert await health(port) == NOT_SERVING
            process.send_signal(signal.SIGTERM)  # a repeated SIGTERM changes nothing
            assert await health(port, "wxlogin.v1.AuthService") == NOT_SERVING
            user = f"drain-{uuid.uuid4().hex[:8]}"
            code = await emu.code(APP_A, user)
            # The listener still accepts: a new connection gets a real answer.
            async with grpc.aio.insecure_channel(
                f"127.0.0.1:{port}", options=OWN_CONNECTION
            ) as channel:
                fresh = auth_pb2_grpc.AuthServiceStub(channel)
                request = auth_pb2.LoginRequest(app_id=APP_A, code=code)
                login = await fresh.Login(request, timeout=10)
            checked = await stub.CheckSession(auth_pb2.CheckSessionRequest(token=login.token))
            assert checked.user.user_id == login.user.user_id
        assert process.returncode is None  # still draining
        process.send_signal(signal.SIGINT)  # a SIGINT while draining ends it
        assert await asyncio.wait_for(process.wait(), 30) == 0
        assert process.stderr is not None
        log = (await process.stderr.read()).decode()
    assert "draining: not ready, still serving for 120s" in log
    assert "SIGINT while draining: drain cut short" in log


async def test_a_zero_drain_closes_at_once(service_env: dict[str, str]) -> None:
    """WXLOGIN_DRAIN_SECONDS=0: SIGTERM goes straight to closing; exit 0, no drain line."""
    async with child("service", env={**service_env, "WXLOGIN_DRAIN_SECONDS": "0"}) as (
        process,
        _,
    ):
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 30) == 0
        assert process.stderr is not None
        assert "draining: not ready" not in (await process.stderr.read()).decode()


async def test_the_edge_answers_503_on_readyz_and_serves_until_the_drain_ends(
    service_env: dict[str, str], emu: Emulator
) -> None:
    """SIGTERM to the edge: /readyz 503, /healthz and POST /v1/login still 200; then exit 0."""
    async with service_and_edge(service_env, LONG_DRAIN) as (_, process, port):
        base = f"http://127.0.0.1:{port}"
        # A new connection per request, as a balancer's checks make them.
        connector = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(connector=connector) as http:
            async with http.get(base + "/readyz") as response:
                assert response.status == 200
            process.send_signal(signal.SIGTERM)
            for _ in range(300):
                async with http.get(base + "/readyz") as response:
                    if response.status == 503:
                        reason = (await response.json())["error"]["reason"]
                        break
                await asyncio.sleep(0.05)
            assert response.status == 503
            assert reason == "SERVICE_UNAVAILABLE"
            async with http.get(base + "/healthz") as response:
                assert response.status == 200  # alive: no restart, please
            body = {"app_id": APP_A, "code": await emu.code(APP_A, "edge-drain")}
            async with http.post(base + "/v1/login", json=body) as response:
                assert response.status == 200
        assert process.returncode is None
        process.send_signal(signal.SIGINT)  # ends the drain
        assert await asyncio.wait_for(process.wait(), 30) == 0
