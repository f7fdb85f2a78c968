"""WXLOGIN_EVENT_LOOP: the service and the edge run on uvloop by default, on asyncio when asked,
and say which one really runs; a bad value is a clear configuration error."""

from __future__ import annotations

import asyncio
import signal
import sys
import uuid

import aiohttp
import grpc
import pytest

from runtime import event_loop
from runtime.config import ConfigError
from runtime.event_loop import ASYNCIO, UVLOOP, VARIABLE, parse_event_loop, run, running_loop_name
from service.settings import Settings
from tests.conftest import b64_secret_key
from tests.support import APP_A, APPS_ENV, Emulator, child, service_and_edge
from wxlogin.v1 import auth_pb2, auth_pb2_grpc

uvloop = pytest.importorskip("uvloop")


def test_unset_means_uvloop_where_it_is_installed() -> None:
    assert parse_event_loop({}) == UVLOOP
    assert parse_event_loop({VARIABLE: ""}) == UVLOOP


def test_either_loop_by_name_any_case() -> None:
    assert parse_event_loop({VARIABLE: "asyncio"}) == ASYNCIO
    assert parse_event_loop({VARIABLE: " UVLOOP "}) == UVLOOP


@pytest.mark.parametrize("value", ["tokio", "uv", "asyncio,uvloop"])
def test_another_value_is_a_configuration_error_naming_the_variable(value: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_event_loop({VARIABLE: value})
    assert raised.value.variable == VARIABLE
    assert repr(value) in str(raised.value)


def test_the_service_settings_carry_the_choice() -> None:
    env = {"WXLOGIN_APPS": APPS_ENV, "WXLOGIN_SECRET_KEY": b64_secret_key()}
    assert Settings.from_env(env).event_loop == UVLOOP
    assert Settings.from_env({**env, VARIABLE: "asyncio"}).event_loop == ASYNCIO


def test_run_runs_the_coroutine_on_the_chosen_loop() -> None:
    async def which() -> tuple[str, str]:
        return running_loop_name(), type(asyncio.get_running_loop()).__module__

    name, module = run(which(), UVLOOP)
    assert name == f"uvloop {uvloop.__version__}"
    assert module.startswith("uvloop")
    name, module = run(which(), ASYNCIO)
    assert name == "asyncio"
    assert module.startswith("asyncio")


async def _login_and_check(port: int, emu: Emulator) -> None:
    """A real Login and CheckSession against the process: the loop carries real calls."""
    code = await emu.code(APP_A, f"loop-{uuid.uuid4().hex[:8]}")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = auth_pb2_grpc.AuthServiceStub(channel)
        login = await stub.Login(auth_pb2.LoginRequest(app_id=APP_A, code=code), timeout=10)
        checked = await stub.CheckSession(
            auth_pb2.CheckSessionRequest(token=login.token), timeout=10
        )
    assert checked.user.user_id == login.user.user_id


async def _stopped_log(process: asyncio.subprocess.Process) -> str:
    process.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(process.wait(), 30) == 0
    assert process.stderr is not None
    return (await process.stderr.read()).decode()


@pytest.mark.parametrize(
    ("setting", "expected"),
    [(None, f"event loop: uvloop {uvloop.__version__}"), ("asyncio", "event loop: asyncio")],
)
async def test_the_service_serves_on_the_loop_it_names(
    service_env: dict[str, str], emu: Emulator, setting: str | None, expected: str
) -> None:
    env = {**service_env, "WXLOGIN_DRAIN_SECONDS": "0"}
    if setting is not None:
        env[VARIABLE] = setting
    async with child("service", env=env) as (process, port):
        await _login_and_check(port, emu)
        log = await _stopped_log(process)
    assert expected in log
    other = "event loop: asyncio" if setting is None else "event loop: uvloop"
    assert other not in log


async def test_the_edge_serves_on_uvloop_by_default(
    service_env: dict[str, str], emu: Emulator
) -> None:
    async with service_and_edge(service_env) as (_, process, port):
        base = f"http://127.0.0.1:{port}"
        body = {"app_id": APP_A, "code": await emu.code(APP_A, "edge-loop")}
        async with aiohttp.ClientSession() as http:
            async with http.post(base + "/v1/login", json=body) as response:
                assert response.status == 200
                token = (await response.json())["token"]
            headers = {"Authorization": f"Bearer {token}"}
            async with http.get(base + "/v1/session", headers=headers) as response:
                assert response.status == 200
        log = await _stopped_log(process)
    assert f"event loop: uvloop {uvloop.__version__}" in log


@pytest.mark.parametrize("module", ["service", "clients.edge"])
async def test_a_bad_value_stops_the_start_naming_the_variable(
    service_env: dict[str, str], module: str
) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        module,
        env={**service_env, VARIABLE: "tokio"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 2
    assert f"{VARIABLE}: expected uvloop or asyncio, got 'tokio'" in err.decode()


def test_without_uvloop_unset_means_asyncio_and_asking_for_it_is_an_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Where uvloop has no wheel (Windows): asyncio's loop, unless uvloop is asked for by name."""
    monkeypatch.setattr(event_loop, "_uvloop", lambda: None)
    assert parse_event_loop({}) == ASYNCIO
    assert parse_event_loop({VARIABLE: "asyncio"}) == ASYNCIO
    with pytest.raises(ConfigError, match="uvloop is not installed"):
        parse_event_loop({VARIABLE: "uvloop"})
