"""Callers: who may call which RPC for which app (WXLOGIN_CALLERS_FILE), and the secure default."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from clients import (
    CallerForbidden,
    CallerUnauthenticated,
    SessionInvalid,
    UpstreamConfig,
    connect,
)
from clients.edge.config import EdgeConfig
from service.callers import Callers, load_callers
from service.settings import ConfigError, Settings
from tests.conftest import ServiceFactory, b64_secret_key
from tests.edge_support import running_edge
from tests.log_support import captured_logs
from tests.support import APP_A, APP_B, APPS, APPS_ENV, Emulator, child, error_info, run_to_exit
from tests.test_auth_helpers import aiohttp_backend, bearer_metadata, get, grpc_backend, whoami
from wxlogin.v1 import auth_pb2, auth_pb2_grpc

KEYS = {
    "edge": "edge-key-0123456789abcdef",
    "backend-a": "backend-a-key-0123456789",
    "login-only": "login-only-key-012345678",
}
RPCS = ["Login", "CheckSession", "DecryptUserData", "RevokeSession"]


def sha256(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def callers_toml(keys: dict[str, str] = KEYS) -> str:
    return f"""
# what operators write: no key in here, only its SHA-256
[callers.edge]
key_sha256 = "{sha256(keys["edge"])}"
rpcs = ["*"]
apps = ["*"]

[callers.backend-a]
key_sha256 = ["{sha256(keys["backend-a"])}"]
rpcs = ["CheckSession", "DecryptUserData", "RevokeSession"]
apps = ["{APP_A}"]

[callers.login-only]
key_sha256 = "{sha256(keys["login-only"])}"
rpcs = ["Login"]
apps = ["{APP_A}"]
"""


@pytest.fixture
def callers_file(tmp_path: Path) -> Path:
    path = tmp_path / "callers.toml"
    path.write_text(callers_toml())
    return path


def as_caller(name: str | None) -> tuple[tuple[str, str], ...]:
    return () if name is None else (("x-wxlogin-caller-key", KEYS[name]),)


async def failure(call: Any) -> tuple[grpc.StatusCode, str, str]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    info = error_info(caught.value)
    return info.code, info.reason, info.message


@asynccontextmanager
async def guarded(
    start_service: ServiceFactory, callers_file: Path, **overrides: Any
) -> AsyncIterator[tuple[Any, auth_pb2_grpc.AuthServiceStub, grpc.aio.Channel]]:
    async with (
        start_service(callers_file=callers_file, **overrides) as running,
        grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel,
    ):
        yield running, auth_pb2_grpc.AuthServiceStub(channel), channel


async def login(stub: auth_pb2_grpc.AuthServiceStub, emu: Emulator, app: str, user: str) -> str:
    code = await emu.code(app, user)
    reply = await stub.Login(
        auth_pb2.LoginRequest(app_id=app, code=code), metadata=as_caller("edge")
    )
    return reply.token


# -- authentication -------------------------------------------------------------------------


@pytest.mark.parametrize("key", [None, "not-a-key-anyone-has-0000"], ids=["missing", "unknown"])
async def test_missing_or_unknown_key_is_caller_unauthenticated(
    start_service: ServiceFactory, callers_file: Path, key: str | None
) -> None:
    """Without a known key every RPC is UNAUTHENTICATED / CALLER_UNAUTHENTICATED, key not echoed."""
    metadata = () if key is None else (("x-wxlogin-caller-key", key),)
    async with guarded(start_service, callers_file) as (_, stub, _):
        for call in (
            stub.CheckSession(auth_pb2.CheckSessionRequest(token="wxl1_x"), metadata=metadata),
            stub.Login(auth_pb2.LoginRequest(app_id=APP_A, code="c"), metadata=metadata),
        ):
            code, reason, message = await failure(call)
            assert (code, reason) == (grpc.StatusCode.UNAUTHENTICATED, "CALLER_UNAUTHENTICATED")
            assert key is None or key not in message


async def test_health_stays_open(start_service: ServiceFactory, callers_file: Path) -> None:
    """Load balancers check health without any caller credentials."""
    async with guarded(start_service, callers_file) as (_, _, channel):
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_a_known_caller_calls_what_it_is_granted(
    start_service: ServiceFactory, callers_file: Path, emu: Emulator
) -> None:
    """The edge (all RPCs, all apps) logs in; backend-a checks a session of its app."""
    async with guarded(start_service, callers_file) as (_, stub, _):
        token = await login(stub, emu, APP_A, "cal")
        reply = await stub.CheckSession(
            auth_pb2.CheckSessionRequest(token=token), metadata=as_caller("backend-a")
        )
        assert reply.user.app_id == APP_A


# -- authorisation -------------------------------------------------------------------------


async def test_an_rpc_outside_the_grant_is_forbidden(
    start_service: ServiceFactory, callers_file: Path, emu: Emulator
) -> None:
    """backend-a may not Login, login-only may not CheckSession: CALLER_FORBIDDEN."""
    async with guarded(start_service, callers_file) as (_, stub, _):
        before = await emu.requests_seen()
        code, reason, _ = await failure(
            stub.Login(
                auth_pb2.LoginRequest(app_id=APP_A, code=await emu.code(APP_A, "no")),
                metadata=as_caller("backend-a"),
            )
        )
        assert (code, reason) == (grpc.StatusCode.PERMISSION_DENIED, "CALLER_FORBIDDEN")
        assert await emu.requests_seen() == before  # no WeChat quota spent
        code, reason, _ = await failure(
            stub.CheckSession(
                auth_pb2.CheckSessionRequest(token="wxl1_" + "A" * 43),
                metadata=as_caller("login-only"),
            )
        )
        assert (code, reason) == (grpc.StatusCode.PERMISSION_DENIED, "CALLER_FORBIDDEN")


async def test_login_for_another_app_is_forbidden_before_wechat(
    start_service: ServiceFactory, callers_file: Path, emu: Emulator
) -> None:
    """login-only (app A) logging in for app B is CALLER_FORBIDDEN without a jscode2session call."""
    async with guarded(start_service, callers_file) as (_, stub, _):
        code_b = await emu.code(APP_B, "bea")
        before = await emu.requests_seen()
        code, reason, _ = await failure(
            stub.Login(
                auth_pb2.LoginRequest(app_id=APP_B, code=code_b), metadata=as_caller("login-only")
            )
        )
        assert (code, reason) == (grpc.StatusCode.PERMISSION_DENIED, "CALLER_FORBIDDEN")
        assert await emu.requests_seen() == before
        reply = await stub.Login(
            auth_pb2.LoginRequest(app_id=APP_A, code=await emu.code(APP_A, "bea")),
            metadata=as_caller("login-only"),
        )
        assert reply.user.app_id == APP_A


async def test_a_backend_of_app_a_never_touches_app_bs_users(
    start_service: ServiceFactory, callers_file: Path, emu: Emulator
) -> None:
    """With a token of app B, backend-a's check, decrypt and revoke are CALLER_FORBIDDEN."""
    async with guarded(start_service, callers_file) as (_, stub, _):
        token_b = await login(stub, emu, APP_B, "bob")
        blob = await emu.user_data(APP_B, "bob", data={"phoneNumber": "+8613800000001"})
        backend = as_caller("backend-a")
        for call in (
            stub.CheckSession(auth_pb2.CheckSessionRequest(token=token_b), metadata=backend),
            stub.DecryptUserData(
                auth_pb2.DecryptUserDataRequest(
                    token=token_b, encrypted_data=blob["encryptedData"], iv=blob["iv"]
                ),
                metadata=backend,
            ),
            stub.RevokeSession(auth_pb2.RevokeSessionRequest(token=token_b), metadata=backend),
        ):
            code, reason, message = await failure(call)
            assert (code, reason) == (grpc.StatusCode.PERMISSION_DENIED, "CALLER_FORBIDDEN")
            assert "+8613800000001" not in message
        # The forbidden revoke changed nothing.
        reply = await stub.CheckSession(
            auth_pb2.CheckSessionRequest(token=token_b), metadata=as_caller("edge")
        )
        assert reply.user.app_id == APP_B


async def test_a_backend_revokes_its_own_apps_sessions(
    start_service: ServiceFactory, callers_file: Path, emu: Emulator
) -> None:
    """backend-a revokes an app A session; an unknown token is fine, as for everyone."""
    async with guarded(start_service, callers_file) as (_, stub, _):
        token = await login(stub, emu, APP_A, "ann")
        backend = as_caller("backend-a")
        await stub.RevokeSession(auth_pb2.RevokeSessionRequest(token=token), metadata=backend)
        await stub.RevokeSession(
            auth_pb2.RevokeSessionRequest(token="wxl1_" + "Z" * 43), metadata=backend
        )
        _, reason, _ = await failure(
            stub.CheckSession(auth_pb2.CheckSessionRequest(token=token), metadata=backend)
        )
        assert reason == "SESSION_INVALID"


# -- logs -----------------------------------------------------------------------------------


async def test_log_lines_of_a_call_name_its_caller_never_its_key(
    start_service: ServiceFactory, callers_file: Path, emu: Emulator
) -> None:
    """Each line of a call ends with caller=NAME (then its request id); no key in any line.

    A refused caller's line has its request id too, and a known caller refused an
    RPC is named on it.
    """
    async with guarded(start_service, callers_file) as (_, stub, _):
        with captured_logs("text", logging.INFO) as stream:
            await login(stub, emu, APP_A, "lou")
            await failure(
                stub.CheckSession(
                    auth_pb2.CheckSessionRequest(token="wxl1_" + "Q" * 43),
                    metadata=(*as_caller("backend-a"), ("x-request-id", "req-known-caller")),
                )
            )
            await failure(
                stub.CheckSession(
                    auth_pb2.CheckSessionRequest(token="wxl1_" + "Q" * 43),
                    metadata=(
                        ("x-wxlogin-caller-key", "stolen-key-attempt-123456"),
                        ("x-request-id", "req-stolen-key"),
                    ),
                )
            )
    lines = stream.getvalue().splitlines()
    login_lines = [line for line in lines if "service.auth: login " in line]
    assert login_lines
    assert all(" caller=edge request_id=" in line for line in login_lines)
    failed = [line for line in lines if "CheckSession failed" in line]
    assert len(failed) == 1
    assert failed[0].endswith(
        "CheckSession failed: SESSION_INVALID caller=backend-a request_id=req-known-caller"
    )
    refused = [line for line in lines if "CALLER_UNAUTHENTICATED" in line]
    assert len(refused) == 1
    assert refused[0].endswith("request_id=req-stolen-key")
    assert "caller=" not in refused[0]
    for key in (*KEYS.values(), "stolen-key-attempt-123456"):
        assert key not in stream.getvalue()


# -- the file, and reloading it ---------------------------------------------------------------


async def test_reload_takes_a_new_file_and_keeps_the_old_one_if_bad(
    start_service: ServiceFactory,
    callers_file: Path,
    emu: Emulator,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """After reload a new key works, the replaced one is refused; a broken file changes nothing."""
    new_keys = {**KEYS, "backend-a": "backend-a-rotated-key-99"}
    async with guarded(start_service, callers_file) as (running, stub, _):
        token = await login(stub, emu, APP_A, "ray")
        check = auth_pb2.CheckSessionRequest(token=token)
        # Accepted before the reload; refused after it: nothing of the old file lingers.
        await stub.CheckSession(check, metadata=as_caller("backend-a"))
        await asyncio.to_thread(callers_file.write_text, callers_toml(new_keys))
        running.reload()
        await stub.CheckSession(check, metadata=(("x-wxlogin-caller-key", new_keys["backend-a"]),))
        _, reason, _ = await failure(stub.CheckSession(check, metadata=as_caller("backend-a")))
        assert reason == "CALLER_UNAUTHENTICATED"

        await asyncio.to_thread(callers_file.write_text, "[callers.broken\n")
        running.reload()
        assert "callers not reloaded" in caplog.text
        await stub.CheckSession(check, metadata=(("x-wxlogin-caller-key", new_keys["backend-a"]),))


async def test_sighup_reloads_the_callers_file(
    service_env: dict[str, str], callers_file: Path, emu: Emulator
) -> None:
    """`python -m service` re-reads WXLOGIN_CALLERS_FILE on SIGHUP and keeps serving."""
    env = {**service_env, "WXLOGIN_CALLERS_FILE": str(callers_file)}
    rotated = {**KEYS, "edge": "edge-key-after-sighup-42"}
    async with (
        child("service", env=env) as (process, port),
        connect(f"127.0.0.1:{port}", caller_key=KEYS["edge"]) as old_edge,
        connect(f"127.0.0.1:{port}", caller_key=rotated["edge"]) as new_edge,
    ):
        result = await old_edge.login(await emu.code(APP_A, "hal"), app_id=APP_A)
        with pytest.raises(CallerUnauthenticated):
            await new_edge.check_session(result.token)
        await asyncio.to_thread(callers_file.write_text, callers_toml(rotated))
        process.send_signal(signal.SIGHUP)
        for _ in range(100):
            try:
                await new_edge.check_session(result.token)
                break
            except CallerUnauthenticated:
                await asyncio.sleep(0.05)
        assert (await new_edge.check_session(result.token)).user.app_id == APP_A
        with pytest.raises(CallerUnauthenticated):
            await old_edge.check_session(result.token)
        assert process.returncode is None


def test_the_callers_file_is_parsed_into_grants(callers_file: Path) -> None:
    """Keys are found by hash, "*" grants all, a list grants those only."""
    callers = load_callers(callers_file, apps=APPS, rpcs=RPCS)
    assert isinstance(callers, Callers)
    edge = callers.by_key(KEYS["edge"])
    backend = callers.by_key(KEYS["backend-a"])
    assert edge is not None
    assert backend is not None
    assert edge.name == "edge"
    assert edge.may_call("Login")
    assert edge.may_act_for(APP_B)
    assert backend.may_call("CheckSession")
    assert not backend.may_call("Login")
    assert backend.may_act_for(APP_A)
    assert not backend.may_act_for(APP_B)
    assert callers.by_key("nope-nope-nope-nope") is None
    assert KEYS["edge"] not in repr(edge)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("[callers.a\n", "not valid TOML"),
        ("", "no [callers.NAME] tables"),
        ('[callers.a]\nrpcs = ["*"]\napps = ["*"]\n', "give key_sha256 or identity"),
        (f'[callers.a]\nkey_sha256 = "{"0" * 64}"\napps = ["*"]\n', "rpcs: required"),
        (f'[callers.a]\nkey_sha256 = "{"0" * 64}"\nrpcs = ["*"]\n', "apps: required"),
        (
            f'[callers.a]\nkey_sha256 = "{"0" * 64}"\nrpcs = ["Logn"]\napps = ["*"]\n',
            "unknown RPC 'Logn'",
        ),
        (
            f'[callers.a]\nkey_sha256 = "{"0" * 64}"\nrpcs = ["*"]\napps = ["wxnope"]\n',
            "unknown app 'wxnope'",
        ),
        (
            '[callers.a]\nkey_sha256 = "the-key-itself-pasted-here"\nrpcs = ["*"]\napps = ["*"]\n',
            "64 lowercase hex digits",
        ),
        (
            f'[callers.a]\nkey = "{"0" * 64}"\nrpcs = ["*"]\napps = ["*"]\n',
            "unknown field 'key'",
        ),
        (
            f'[callers.a]\nkey_sha256 = "{"0" * 64}"\nrpcs = ["*"]\napps = ["*"]\n'
            f'[callers.b]\nkey_sha256 = "{"0" * 64}"\nrpcs = ["*"]\napps = ["*"]\n',
            "another caller's",
        ),
        ('[callers."a b"]\nidentity = "x"\nrpcs = ["*"]\napps = ["*"]\n', "names are letters"),
    ],
    ids=[
        "toml",
        "empty",
        "no-credential",
        "no-rpcs",
        "no-apps",
        "bad-rpc",
        "bad-app",
        "pasted-key",
        "unknown-field",
        "shared-key",
        "bad-name",
    ],
)
def test_a_bad_callers_file_is_one_line_naming_the_variable(
    tmp_path: Path, text: str, problem: str
) -> None:
    """Each mistake is a ConfigError naming WXLOGIN_CALLERS_FILE and what is wrong, no secret."""
    path = tmp_path / "callers.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_callers(path, apps=APPS, rpcs=RPCS)
    assert caught.value.variable == "WXLOGIN_CALLERS_FILE"
    assert problem in str(caught.value)
    assert "\n" not in str(caught.value)
    assert "the-key-itself-pasted-here" not in str(caught.value)


def test_callers_settings_are_read_from_the_environment(callers_file: Path) -> None:
    """WXLOGIN_CALLERS_FILE must name a file; the booleans take true or false only."""
    env = {"WXLOGIN_APPS": APPS_ENV, "WXLOGIN_SECRET_KEY": b64_secret_key()}
    settings = Settings.from_env(
        {**env, "WXLOGIN_CALLERS_FILE": str(callers_file), "WXLOGIN_REFLECTION": "TRUE"}
    )
    assert settings.callers_file == callers_file
    assert settings.reflection
    assert not settings.allow_insecure
    for variable, value in (
        ("WXLOGIN_CALLERS_FILE", str(callers_file) + ".missing"),
        ("WXLOGIN_ALLOW_INSECURE", "yes"),
        ("WXLOGIN_REFLECTION", "1"),
    ):
        with pytest.raises(ConfigError) as caught:
            Settings.from_env({**env, variable: value})
        assert caught.value.variable == variable


# -- the client library ------------------------------------------------------------------------


async def test_the_client_sends_its_caller_key_and_raises_caller_errors(
    start_service: ServiceFactory, callers_file: Path, emu: Emulator
) -> None:
    """connect(caller_key=...) authenticates; CALLER_* are CallerError, not Unauthenticated."""
    async with start_service(callers_file=callers_file) as running:
        target = f"127.0.0.1:{running.port}"
        async with connect(target, caller_key=KEYS["edge"]) as edge:
            token = (await edge.login(await emu.code(APP_B, "cid"), app_id=APP_B)).token
            with pytest.raises(SessionInvalid):
                await edge.check_session("wxl1_" + "N" * 43)
        async with connect(target) as nobody:
            with pytest.raises(CallerUnauthenticated) as unauthenticated:
                await nobody.check_session(token)
            assert unauthenticated.value.reason == "CALLER_UNAUTHENTICATED"
        async with connect(target, caller_key=KEYS["backend-a"]) as backend:
            with pytest.raises(CallerForbidden):
                await backend.check_session(token)


# -- secure by default -------------------------------------------------------------------------


async def test_listening_beyond_loopback_needs_tls_and_callers(
    start_service: ServiceFactory, callers_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """0.0.0.0 without TLS fails naming WXLOGIN_ALLOW_INSECURE; with it set, it starts, loudly."""
    with pytest.raises(ConfigError) as caught:
        async with start_service(grpc_listen="0.0.0.0:0", callers_file=callers_file):
            pass
    assert caught.value.variable == "WXLOGIN_ALLOW_INSECURE"
    assert "TLS" in str(caught.value)
    assert "callers" not in caught.value.problem.split("without", 1)[1]
    async with start_service(grpc_listen="0.0.0.0:0", allow_insecure=True) as running:
        assert running.port
    assert "INSECURE" in caplog.text
    assert "WXLOGIN_CALLERS_FILE" in caplog.text


async def test_a_public_listen_address_stops_the_process_in_one_line(
    service_env: dict[str, str],
) -> None:
    """`python -m service` on 0.0.0.0 with nothing secured exits 2 naming WXLOGIN_ALLOW_INSECURE."""
    exited = await run_to_exit("service", env={**service_env, "WXLOGIN_GRPC_LISTEN": "0.0.0.0:0"})
    lines = exited.stderr.strip().splitlines()
    assert exited.returncode == 2
    assert len(lines) == 1, lines
    assert lines[0].startswith("wxlogin: bad configuration: WXLOGIN_ALLOW_INSECURE: ")


# -- the edge ------------------------------------------------------------------------------------


async def test_the_edge_calls_with_its_key_and_answers_500_without_one(
    start_service: ServiceFactory, callers_file: Path, emu: Emulator, http: aiohttp.ClientSession
) -> None:
    """With WXLOGIN_CALLER_KEY the edge logs users in; with a wrong key it is a 500, not a 401."""
    async with start_service(callers_file=callers_file) as running:
        target = f"127.0.0.1:{running.port}"
        config = EdgeConfig.from_env(
            {"WXLOGIN_UPSTREAM": target, "WXLOGIN_CALLER_KEY": KEYS["edge"]}
        )
        assert KEYS["edge"] not in repr(config)
        async with running_edge(target, security=config.security) as edge:
            body = {"code": await emu.code(APP_A, "eve"), "app_id": APP_A}
            async with http.post(f"{edge}/v1/login", json=body) as response:
                assert response.status == 200
        wrong = UpstreamConfig(caller_key="a-key-nobody-was-given-0")
        async with running_edge(target, security=wrong) as edge:
            body = {"code": await emu.code(APP_A, "eve"), "app_id": APP_A}
            async with http.post(f"{edge}/v1/login", json=body) as response:
                assert response.status == 500
                assert "WWW-Authenticate" not in response.headers
                error = (await response.json())["error"]
                assert error["reason"] == "CALLER_UNAUTHENTICATED"


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"WXLOGIN_CALLER_KEY": "short"}, "WXLOGIN_CALLER_KEY"),
        ({"WXLOGIN_CALLER_KEY": "has a space in it, sadly"}, "WXLOGIN_CALLER_KEY"),
        ({"WXLOGIN_UPSTREAM_CERT": "/nonexistent/cert.pem"}, "WXLOGIN_UPSTREAM_KEY"),
        ({"WXLOGIN_UPSTREAM_CA": "/nonexistent/ca.pem"}, "WXLOGIN_UPSTREAM_CA"),
    ],
)
def test_bad_upstream_settings_name_their_variable(env: dict[str, str], variable: str) -> None:
    """A caller key of the wrong shape or a missing PEM file is a ConfigError naming it, no echo."""
    with pytest.raises(ConfigError) as caught:
        UpstreamConfig.from_env(env)
    assert caught.value.variable == variable
    assert "has a space" not in str(caught.value)


# -- backends built on the client library ------------------------------------------------------


async def test_backend_helpers_turn_a_refused_backend_into_a_server_error(
    start_service: ServiceFactory,
    callers_file: Path,
    emu: Emulator,
    http: aiohttp.ClientSession,
) -> None:
    """A backend whose own key wxlogin refuses answers 500 / INTERNAL, never 401."""
    async with start_service(callers_file=callers_file) as running:
        target = f"127.0.0.1:{running.port}"
        async with connect(target, caller_key=KEYS["edge"]) as edge:
            token = (await edge.login(await emu.code(APP_A, "bo"), app_id=APP_A)).token
        async with connect(target, caller_key="a-key-nobody-was-given-1") as refused:
            async with aiohttp_backend(refused) as url:
                status, body = await get(http, url, token)
                assert status == 500
                assert body["error"]["reason"] == "CALLER_UNAUTHENTICATED"
            async with grpc_backend(refused) as channel:
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await whoami(channel)(b"", metadata=bearer_metadata(token))
                assert caught.value.code() is grpc.StatusCode.INTERNAL
