"""The server as operators see it: health, reflection, config errors, restarts, shutdown."""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from service.app import RunningService
from service.embedded_mongo import EmbeddedMongo
from service.settings import ConfigError
from tests.conftest import ServiceFactory
from tests.support import APP_A, Emulator, child, error_info, mongod_pids, run_to_exit
from wxlogin.v1 import auth_pb2, auth_pb2_grpc

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def health(port: int, service: str = "") -> int:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=5
        )
        return int(reply.status)


async def test_health_is_serving_for_the_server_and_the_service(service: RunningService) -> None:
    """The standard health service answers SERVING for '' and wxlogin.v1.AuthService."""
    assert await health(service.port) == SERVING
    assert await health(service.port, "wxlogin.v1.AuthService") == SERVING


async def listed_services(port: int) -> set[str]:
    """The services server reflection names (raises UNIMPLEMENTED when reflection is off)."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        async for reply in stub.ServerReflectionInfo(iter([request])):
            return {item.name for item in reply.list_services_response.service}
    raise AssertionError("no reflection reply")


async def test_reflection_lists_the_service_when_enabled(start_service: ServiceFactory) -> None:
    """With WXLOGIN_REFLECTION=true, reflection exposes AuthService (grpcurl without the proto)."""
    async with start_service(reflection=True) as running:
        names = await listed_services(running.port)
    assert "wxlogin.v1.AuthService" in names
    assert "grpc.health.v1.Health" in names


async def test_reflection_is_off_by_default(service: RunningService) -> None:
    """Without WXLOGIN_REFLECTION, the server does not describe itself to whoever asks."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await listed_services(service.port)
    assert caught.value.code() is grpc.StatusCode.UNIMPLEMENTED


async def test_mongodb_down_means_not_serving_and_store_unavailable(
    start_service: ServiceFactory, emu: Emulator, tmp_path: Path
) -> None:
    """When MongoDB stops answering, health turns NOT_SERVING and RPCs say STORE_UNAVAILABLE."""
    mongo = EmbeddedMongo(tmp_path / "doomed")
    uri = await mongo.start()
    try:
        async with (
            start_service(mongodb_uri=uri) as running,
            grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel,
        ):
            stub = auth_pb2_grpc.AuthServiceStub(channel)
            login = await stub.Login(
                auth_pb2.LoginRequest(app_id=APP_A, code=await emu.code(APP_A, "una"))
            )
            await mongo.stop()
            for _ in range(100):
                if await health(running.port) == NOT_SERVING:
                    break
                await asyncio.sleep(0.1)
            assert await health(running.port) == NOT_SERVING
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.Login(
                    auth_pb2.LoginRequest(app_id=APP_A, code=await emu.code(APP_A, "una"))
                )
            info = error_info(caught.value)
            assert (info.code, info.reason) == (
                grpc.StatusCode.UNAVAILABLE,
                "STORE_UNAVAILABLE",
            )
            assert "127.0.0.1" not in info.message
            assert "mongo" not in info.message.lower()
            # A token unknown to this process's cache also needs the store.
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.CheckSession(auth_pb2.CheckSessionRequest(token="wxl1_" + "C" * 43))
            assert error_info(caught.value).reason == "STORE_UNAVAILABLE"
            del login
    finally:
        await mongo.stop()


async def test_bad_configuration_exits_2_with_one_line_naming_the_variable(
    service_env: dict[str, str],
) -> None:
    """`python -m service` with a bad variable: exit 2 and one stderr line naming it, no secret.

    Every other bad value is checked in-process (tests/test_settings.py,
    tests/test_config_values.py); this one proves what the process makes of them.
    """
    exited = await run_to_exit("service", env={**service_env, "WXLOGIN_LOG_LEVEL": "chatty"})
    lines = exited.stderr.strip().splitlines()
    assert exited.returncode == 2
    assert len(lines) == 1, lines
    assert lines[0].startswith("wxlogin: bad configuration: WXLOGIN_LOG_LEVEL: ")
    assert "secret-a-123" not in exited.stderr


@pytest.mark.parametrize(
    ("overrides", "variable"),
    [
        ({"mongodb_uri": "mysql://user:pw@x"}, "WXLOGIN_MONGODB_URI"),
        (
            {"mongodb_uri": "mongodb://user:pw@127.0.0.1:9/?serverSelectionTimeoutMS=300"},
            "WXLOGIN_MONGODB_URI",
        ),
        # Not our address (and past the insecure-listen check, which comes first).
        ({"grpc_listen": "192.0.2.1:50051", "allow_insecure": True}, "WXLOGIN_GRPC_LISTEN"),
    ],
)
async def test_configuration_found_bad_at_start_is_a_config_error_naming_it(
    start_service: ServiceFactory,
    overrides: dict[str, object],
    variable: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """MongoDB not answering, or an address we cannot bind: ConfigError naming it, no password."""
    caplog.set_level(logging.INFO)  # what a service logs by default
    with pytest.raises(ConfigError) as caught:
        async with start_service(**overrides):
            pass
    assert caught.value.variable == variable
    assert str(caught.value).startswith(variable + ": ")
    assert "pw@" not in str(caught.value)
    assert "pw@" not in caplog.text


async def test_sigterm_lets_an_in_flight_login_finish(
    service_env: dict[str, str], emu: Emulator
) -> None:
    """SIGTERM stops accepting new RPCs but lets the in-flight one complete, then exits 0."""
    async with child("service", env=service_env) as (process, port):
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = auth_pb2_grpc.AuthServiceStub(channel)
            await emu.fault(latency_ms=800, times=1)
            code = await emu.code(APP_A, "vic")
            in_flight = asyncio.ensure_future(
                stub.Login(auth_pb2.LoginRequest(app_id=APP_A, code=code), timeout=10)
            )
            await asyncio.sleep(0.3)
            process.send_signal(signal.SIGTERM)
            result = await in_flight
            assert result.user.openid
        assert await asyncio.wait_for(process.wait(), 20) == 0


async def test_embedded_mongod_keeps_sessions_across_a_restart(
    service_env: dict[str, str], emu: Emulator, tmp_path: Path
) -> None:
    """With WXLOGIN_MONGODB_URI unset the service runs its own mongod; data survives restarts."""
    env = {**service_env, "WXLOGIN_MONGODB_URI": "", "WXLOGIN_DATA_DIR": str(tmp_path / "d")}
    async with child("service", env=env) as (process, port):
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = auth_pb2_grpc.AuthServiceStub(channel)
            code = await emu.code(APP_A, "walt")
            login = await stub.Login(auth_pb2.LoginRequest(app_id=APP_A, code=code))
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 30) == 0
    assert not _mongod_running_on(tmp_path / "d"), "mongod outlived the service"
    async with child("service", env=env) as (process, port):
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = auth_pb2_grpc.AuthServiceStub(channel)
            checked = await stub.CheckSession(auth_pb2.CheckSessionRequest(token=login.token))
            assert checked.user == login.user
            again = await stub.Login(
                auth_pb2.LoginRequest(app_id=APP_A, code=await emu.code(APP_A, "walt"))
            )
            assert again.new_user is False
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 30) == 0
    assert not _mongod_running_on(tmp_path / "d")


def _mongod_running_on(data_dir: Path) -> bool:
    """Is any mongod process using this data dir?"""
    return bool(mongod_pids(data_dir))
