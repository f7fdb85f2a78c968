"""Request ids end to end: the caller's x-request-id (or one made up) on every line of its call."""

from __future__ import annotations

import json
import re
from pathlib import Path

import aiohttp
import grpc
import pytest

from tests.log_support import captured_logs, json_logs
from tests.support import APP_A, Emulator, service_and_edge
from wxlogin.v1 import auth_pb2, auth_pb2_grpc

GENERATED = re.compile(r"[0-9a-f]{32}")


async def test_the_callers_request_id_is_on_every_line_of_its_call(
    stub: auth_pb2_grpc.AuthServiceStub, emu: Emulator
) -> None:
    """A Login that logs from WeChat's layer and the domain: each line carries the caller's id."""
    code = await emu.code(APP_A, "rid-ann")
    await emu.fault(errcode=-1, times=1)  # one retried attempt: a WARNING from service.wechat
    with json_logs() as lines:
        reply = await stub.Login(
            auth_pb2.LoginRequest(app_id=APP_A, code=code),
            metadata=(("x-request-id", "backend-req-7"),),
        )
    entries = lines.of("service")
    assert {entry["logger"] for entry in entries} >= {"service.wechat", "service.auth"}
    assert all(entry.get("request_id") == "backend-req-7" for entry in entries), entries
    login_line = next(e for e in entries if e["message"].startswith("login user_id="))
    assert login_line["user_id"] == reply.user.user_id


async def test_calls_without_a_request_id_get_one_each(
    stub: auth_pb2_grpc.AuthServiceStub, emu: Emulator
) -> None:
    """A backend that sends none: the service makes one per call, the same on all its lines."""
    ids = []
    for user in ("rid-bob", "rid-cat"):
        code = await emu.code(APP_A, user)
        with json_logs() as lines:
            await stub.Login(auth_pb2.LoginRequest(app_id=APP_A, code=code))
        found = {entry.get("request_id") for entry in lines.of("service")}
        assert len(found) == 1
        (request_id,) = found
        assert isinstance(request_id, str)
        assert GENERATED.fullmatch(request_id)
        ids.append(request_id)
    assert ids[0] != ids[1]


@pytest.mark.parametrize(
    "sent",
    [
        "has a space",
        "wxl1_" + "T" * 43,  # a token sent as a request id would be logged on every line
        "x" * 129,
    ],
)
async def test_request_ids_that_could_harm_a_log_are_replaced(
    stub: auth_pb2_grpc.AuthServiceStub, sent: str
) -> None:
    """Ids that could break a line, or that carry a token, are replaced by a generated one."""
    with json_logs() as lines, pytest.raises(grpc.aio.AioRpcError):
        await stub.Login(
            auth_pb2.LoginRequest(app_id="wxnot-configured", code="c"),
            metadata=(("x-request-id", sent),),
        )
    entries = lines.of("service")
    assert entries  # "Login failed: APP_UNKNOWN"
    assert all(GENERATED.fullmatch(entry["request_id"]) for entry in entries)
    assert sent not in lines.text


async def test_text_lines_end_with_the_request_id(stub: auth_pb2_grpc.AuthServiceStub) -> None:
    """In the text form too, a call's lines name its request id."""
    with captured_logs("text") as stream, pytest.raises(grpc.aio.AioRpcError):
        await stub.Login(
            auth_pb2.LoginRequest(app_id="wxnot-configured", code="c"),
            metadata=(("x-request-id", "text-req-1"),),
        )
    lines = [line for line in stream.getvalue().splitlines() if "Login failed" in line]
    assert lines
    assert lines[0].endswith(
        "INFO service.servicer: Login failed: APP_UNKNOWN request_id=text-req-1"
    )


async def test_the_edges_request_id_reaches_the_service_logs(
    service_env: dict[str, str], emu: Emulator, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """Real processes, JSON logs: one X-Request-Id in the edge's access line and the service's."""
    json_env = {"WXLOGIN_LOG_FORMAT": "json", "WXLOGIN_LOG_LEVEL": "DEBUG"}
    async with service_and_edge({**service_env, **json_env}, json_env) as (
        service,
        edge,
        http_port,
    ):
        code = await emu.code(APP_A, "rid-dan")
        await emu.fault(errcode=-1, times=1)
        async with http.post(
            f"http://127.0.0.1:{http_port}/v1/login",
            json={"app_id": APP_A, "code": code},
            headers={"X-Request-Id": "mini-req-99"},
        ) as response:
            assert response.status == 200
            assert response.headers["X-Request-Id"] == "mini-req-99"
    assert service.stderr is not None
    assert edge.stderr is not None
    service_lines = [json.loads(line) for line in (await service.stderr.read()).splitlines()]
    edge_lines = [json.loads(line) for line in (await edge.stderr.read()).splitlines()]

    access = [e for e in edge_lines if e["logger"] == "aiohttp.access"]
    assert [e["request_id"] for e in access] == ["mini-req-99"]
    of_call = [e for e in service_lines if e.get("request_id") == "mini-req-99"]
    assert {e["logger"] for e in of_call} >= {"service.wechat", "service.auth"}
    # Every line the domain wrote for a login belongs to that call.
    for entry in service_lines:
        if entry["logger"] in ("service.wechat", "service.auth"):
            assert entry.get("request_id") == "mini-req-99", entry
