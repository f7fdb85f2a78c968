"""The HTTP edge: every route, the error mapping, request ids, limits, logs and the process."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
import pytest_asyncio

from clients.client import Deadlines, RetryPolicy
from clients.edge.app import MAX_BODY_BYTES
from service import errors as service_errors
from service.app import RunningService
from tests.conftest import ServiceFactory
from tests.edge_support import (
    Delay,
    FakeUpstream,
    free_port_target,
    running_edge,
    ttl_monitor_paused,
)
from tests.support import APP_A, APP_B, APPS, Emulator, child, run_to_exit

OPENAPI_PATH = Path(__file__).parent.parent / "clients" / "edge" / "openapi.json"
QUICK_RETRY = RetryPolicy(initial_backoff=0.01, max_backoff=0.02)
TIMEOUT = aiohttp.ClientTimeout(total=30)

# The mapping the issue asks for, written out: reason -> HTTP status.
EXPECTED_HTTP = {
    "BAD_REQUEST": 400,
    "APP_UNKNOWN": 400,
    "CODE_INVALID": 401,
    "CODE_USED": 401,
    "RATE_LIMITED": 429,
    "OVERLOADED": 429,
    "USER_BLOCKED": 403,
    "WECHAT_UNAVAILABLE": 503,
    "WECHAT_ERROR": 503,
    "SESSION_INVALID": 401,
    "SESSION_EXPIRED": 401,
    "DECRYPT_FAILED": 400,
    "WATERMARK_MISMATCH": 403,
    "WATERMARK_EXPIRED": 400,
    "SIGNATURE_MISMATCH": 400,
    "STORE_UNAVAILABLE": 503,
    "CODE_USER_MISMATCH": 403,
    "SESSION_KEY_STALE": 400,
    # wxlogin refused the edge itself: the user did nothing wrong, and logging in
    # again cannot help, so neither 401 nor 403 (clients/http_errors.py).
    "CALLER_UNAUTHENTICATED": 500,
    "CALLER_FORBIDDEN": 500,
    "INTERNAL": 500,
}
SERVICE_ERRORS = {cls.reason: cls for cls in service_errors.WxLoginError.__subclasses__()}


@pytest_asyncio.fixture
async def edge(service: RunningService) -> AsyncIterator[str]:
    """The edge in-process, calling the real service; yields its base URL."""
    async with running_edge(f"127.0.0.1:{service.port}", retry=QUICK_RETRY) as url:
        yield url


@pytest_asyncio.fixture
async def fake_edge(fake: FakeUpstream) -> AsyncIterator[str]:
    """The edge in-process, calling the fake upstream over a channel the test owns."""
    async with (
        grpc.aio.insecure_channel(fake.target) as channel,
        running_edge(channel, retry=QUICK_RETRY, deadlines=Deadlines(check_session=0.3)) as url,
    ):
        yield url


async def call(
    http: aiohttp.ClientSession, method: str, url: str, **kwargs: Any
) -> tuple[int, Any, aiohttp.typedefs.LooseHeaders]:
    """One request; returns status, parsed JSON body (or None) and headers."""
    kwargs.setdefault("timeout", TIMEOUT)  # a hang fails the test instead of stalling the run
    async with http.request(method, url, **kwargs) as response:
        text = await response.text()
        return response.status, json.loads(text) if text else None, response.headers


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_error(body: Any, code: str, reason: str) -> None:
    """The JSON error body of the contract (README "Errors"), with this code and reason."""
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "reason", "message"}
    assert (body["error"]["code"], body["error"]["reason"]) == (code, reason)
    assert body["error"]["message"]


async def test_full_flow(edge: str, http: aiohttp.ClientSession, emu: Emulator) -> None:
    """Login, session, decrypt with WeChat's field names, logout, then the token is dead."""
    await emu.setup_user(APP_A, "fay", unionid="union-fay")
    code = await emu.code(APP_A, "fay")
    status, login, _ = await call(
        http, "POST", f"{edge}/v1/login", json={"code": code, "app_id": APP_A}
    )
    assert status == 200
    assert set(login) == {"token", "expires_at", "user", "new_user"}
    assert login["new_user"] is True
    assert login["user"]["app_id"] == APP_A
    assert login["user"]["unionid"] == "union-fay"
    assert login["expires_at"].endswith("Z")
    token = login["token"]

    status, session, _ = await call(http, "GET", f"{edge}/v1/session", headers=bearer(token))
    assert status == 200
    assert session == {"user": login["user"], "expires_at": login["expires_at"]}

    bundle = await emu.user_data(APP_A, "fay", data={"nickName": "Fay", "gender": 1})
    status, decrypted, _ = await call(
        http, "POST", f"{edge}/v1/user-data/decrypt", headers=bearer(token), json=bundle
    )
    assert status == 200
    assert decrypted["data"]["nickName"] == "Fay"
    assert decrypted["data"]["gender"] == 1
    assert decrypted["data"]["watermark"]["appid"] == APP_A

    status, body, _ = await call(http, "POST", f"{edge}/v1/logout", headers=bearer(token))
    assert (status, body) == (204, None)
    status, body, headers = await call(http, "GET", f"{edge}/v1/session", headers=bearer(token))
    assert status == 401
    assert_error(body, "UNAUTHENTICATED", "SESSION_INVALID")
    assert headers["WWW-Authenticate"].startswith("Bearer")


async def test_second_login_is_not_a_new_user(
    edge: str, http: aiohttp.ClientSession, emu: Emulator
) -> None:
    """The same WeChat user logging in again keeps its user_id and has new_user false."""
    first = await call(
        http,
        "POST",
        f"{edge}/v1/login",
        json={"code": await emu.code(APP_B, "gus"), "app_id": APP_B},
    )
    again = await call(
        http,
        "POST",
        f"{edge}/v1/login",
        json={"code": await emu.code(APP_B, "gus"), "app_id": APP_B},
    )
    assert again[1]["new_user"] is False
    assert again[1]["user"] == first[1]["user"]
    assert again[1]["token"] != first[1]["token"]


async def test_app_id_may_be_omitted_with_one_app(
    start_service: ServiceFactory, http: aiohttp.ClientSession, emu: Emulator
) -> None:
    """With exactly one app configured, /v1/login needs no app_id."""
    async with (
        start_service(apps={APP_A: APPS[APP_A]}) as running,
        running_edge(f"127.0.0.1:{running.port}") as edge,
    ):
        status, body, _ = await call(
            http, "POST", f"{edge}/v1/login", json={"code": await emu.code(APP_A, "hal")}
        )
    assert status == 200
    assert body["user"]["app_id"] == APP_A


async def test_service_errors_through_the_edge(
    edge: str, http: aiohttp.ClientSession, emu: Emulator
) -> None:
    """Real failures: unknown app 400, bad and reused codes 401, another app's data 403."""
    url = f"{edge}/v1/login"
    status, body, _ = await call(http, "POST", url, json={"code": "x", "app_id": "wxnope"})
    assert status == 400
    assert_error(body, "INVALID_ARGUMENT", "APP_UNKNOWN")
    status, body, _ = await call(http, "POST", url, json={"code": "x"})  # two apps configured
    assert status == 400
    assert_error(body, "INVALID_ARGUMENT", "BAD_REQUEST")
    status, body, _ = await call(http, "POST", url, json={"code": "bogus", "app_id": APP_A})
    assert status == 401
    assert_error(body, "UNAUTHENTICATED", "CODE_INVALID")
    code = await emu.code(APP_A, "ida")
    status, login, _ = await call(http, "POST", url, json={"code": code, "app_id": APP_A})
    assert status == 200
    # The same code again gets the same answer (idempotent login); WeChat's "used" is 401.
    status, again, _ = await call(http, "POST", url, json={"code": code, "app_id": APP_A})
    assert (status, again["token"]) == (200, login["token"])
    await emu.fault(errcode=40163, times=1)
    used = await emu.code(APP_A, "ida-used")
    status, body, _ = await call(http, "POST", url, json={"code": used, "app_id": APP_A})
    assert status == 401
    assert_error(body, "UNAUTHENTICATED", "CODE_USED")

    bundle = await emu.user_data(APP_A, "ida", watermark_appid=APP_B)
    status, body, _ = await call(
        http,
        "POST",
        f"{edge}/v1/user-data/decrypt",
        headers=bearer(login["token"]),
        json=bundle,
    )
    assert status == 403
    assert_error(body, "PERMISSION_DENIED", "WATERMARK_MISMATCH")
    bundle = await emu.user_data(APP_A, "ida")
    status, body, _ = await call(
        http,
        "POST",
        f"{edge}/v1/user-data/decrypt",
        headers=bearer(login["token"]),
        json={**bundle, "signature": "0" * 40},
    )
    assert status == 400
    assert_error(body, "INVALID_ARGUMENT", "SIGNATURE_MISMATCH")


async def test_expired_session_is_401_session_expired(
    start_service: ServiceFactory, http: aiohttp.ClientSession, emu: Emulator, db: Any
) -> None:
    """Past the session TTL, /v1/session answers 401 SESSION_EXPIRED."""
    async with (
        ttl_monitor_paused(db),
        start_service(session_ttl=1) as running,
        running_edge(f"127.0.0.1:{running.port}") as edge,
    ):
        _, login, _ = await call(
            http,
            "POST",
            f"{edge}/v1/login",
            json={"code": await emu.code(APP_A, "jan"), "app_id": APP_A},
        )
        await asyncio.sleep(1.1)
        status, body, _ = await call(
            http, "GET", f"{edge}/v1/session", headers=bearer(login["token"])
        )
    assert status == 401
    assert_error(body, "UNAUTHENTICATED", "SESSION_EXPIRED")


@pytest.mark.parametrize(
    ("path", "data"),
    [
        ("/v1/login", b"{not json"),
        ("/v1/login", b""),
        ("/v1/login", b"[1, 2]"),
        ("/v1/login", b"{}"),
        ("/v1/login", b'{"code": 123}'),
        ("/v1/login", b'{"code": ""}'),
        ("/v1/login", b'{"code": "c", "app_id": ["x"]}'),
        ("/v1/login", b'{"code": "\\ud800"}'),
        ("/v1/login", b"\xff\xfe\x00"),
        ("/v1/login", b"[" * 20000 + b"]" * 20000),
        ("/v1/user-data/decrypt", b'{"encryptedData": "abc"}'),
        ("/v1/user-data/decrypt", b'{"iv": "abc", "encryptedData": null}'),
        ("/v1/user-data/decrypt", b'{"iv": "abc", "encryptedData": "x", "rawData": 5}'),
    ],
    ids=[
        "not-json",
        "empty",
        "array",
        "no-code",
        "code-number",
        "code-empty",
        "app-id-list",
        "lone-surrogate",
        "not-utf8",
        "deep-nesting",
        "no-iv",
        "null-data",
        "raw-data-number",
    ],
)
async def test_malformed_bodies_are_400(
    fake: FakeUpstream, fake_edge: str, http: aiohttp.ClientSession, path: str, data: bytes
) -> None:
    """Malformed JSON or a missing or mistyped field is 400 BAD_REQUEST, never sent upstream."""
    status, body, _ = await call(
        http,
        "POST",
        fake_edge + path,
        data=data,
        headers={**bearer("wxl1_token"), "Content-Type": "application/json"},
    )
    assert status == 400
    assert_error(body, "INVALID_ARGUMENT", "BAD_REQUEST")
    assert fake.auth.calls == []


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/v1/session"), ("POST", "/v1/user-data/decrypt"), ("POST", "/v1/logout")],
)
@pytest.mark.parametrize(
    "authorization", [None, "", "Bearer", "Bearer   ", "Basic dXNlcjpwYXNz", "wxl1_token"]
)
async def test_missing_bearer_token_is_401(
    fake: FakeUpstream,
    fake_edge: str,
    http: aiohttp.ClientSession,
    method: str,
    path: str,
    authorization: str | None,
) -> None:
    """Without a Bearer token, protected routes answer 401 SESSION_INVALID with a challenge."""
    headers = {} if authorization is None else {"Authorization": authorization}
    status, body, response_headers = await call(
        http, method, fake_edge + path, headers=headers, json={"encryptedData": "a", "iv": "b"}
    )
    assert status == 401
    assert_error(body, "UNAUTHENTICATED", "SESSION_INVALID")
    assert response_headers["WWW-Authenticate"] == 'Bearer realm="wxlogin"'
    assert fake.auth.calls == []


async def test_bearer_scheme_is_case_insensitive(
    fake: FakeUpstream, fake_edge: str, http: aiohttp.ClientSession
) -> None:
    """`bearer <token>` works too (RFC 6750), and the token reaches CheckSession intact."""
    status, body, _ = await call(
        http, "GET", f"{fake_edge}/v1/session", headers={"Authorization": "bearer wxl1_abc"}
    )
    assert status == 200
    assert body["user"]["user_id"] == "u-1"
    assert fake.auth.calls[0].request.token == "wxl1_abc"


async def test_body_over_the_limit_is_413(
    fake: FakeUpstream, fake_edge: str, http: aiohttp.ClientSession
) -> None:
    """A body over MAX_BODY_BYTES is 413 PAYLOAD_TOO_LARGE, with or without Content-Length."""
    big = json.dumps({"code": "c" * MAX_BODY_BYTES}).encode()
    status, body, _ = await call(http, "POST", f"{fake_edge}/v1/login", data=big)
    assert status == 413
    assert_error(body, "INVALID_ARGUMENT", "PAYLOAD_TOO_LARGE")

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(20):
            yield b" " * 8192

    status, body, _ = await call(
        http, "POST", f"{fake_edge}/v1/user-data/decrypt", data=chunks(), headers=bearer("t")
    )
    assert status == 413
    assert_error(body, "INVALID_ARGUMENT", "PAYLOAD_TOO_LARGE")
    assert fake.auth.calls == []


async def test_unknown_route_and_method(fake_edge: str, http: aiohttp.ClientSession) -> None:
    """Unknown paths are 404 and wrong methods 405 with Allow, both in the JSON error shape."""
    status, body, _ = await call(http, "GET", f"{fake_edge}/v2/nothing")
    assert status == 404
    assert_error(body, "NOT_FOUND", "NOT_FOUND")
    status, body, headers = await call(http, "GET", f"{fake_edge}/v1/login")
    assert status == 405
    assert_error(body, "UNIMPLEMENTED", "METHOD_NOT_ALLOWED")
    assert headers["Allow"] == "POST"


@pytest.mark.parametrize("reason", sorted(EXPECTED_HTTP))
async def test_every_reason_maps_to_its_http_status(
    fake: FakeUpstream, fake_edge: str, http: aiohttp.ClientSession, reason: str
) -> None:
    """Each service reason becomes its HTTP status, with code, reason and message passed on."""
    error = SERVICE_ERRORS[reason]("the service's words")
    fake.auth.will("CheckSession", *[error] * 3)  # UNAVAILABLE ones are retried
    status, body, _ = await call(http, "GET", f"{fake_edge}/v1/session", headers=bearer("t"))
    assert status == EXPECTED_HTTP[reason]
    assert body == {
        "error": {
            "code": service_errors.REASON_CODES[reason].name,
            "reason": reason,
            "message": "the service's words",
        }
    }


def test_expected_table_covers_every_service_reason() -> None:
    """The table above names every reason the service has, so none goes untested."""
    assert set(EXPECTED_HTTP) == set(service_errors.REASON_CODES)


@pytest.mark.parametrize(
    ("step", "status", "code", "reason"),
    [
        (grpc.StatusCode.UNAVAILABLE, 503, "UNAVAILABLE", "SERVICE_UNAVAILABLE"),
        (Delay(2.0), 504, "DEADLINE_EXCEEDED", "DEADLINE_EXCEEDED"),
        (grpc.StatusCode.INTERNAL, 500, "INTERNAL", "INTERNAL"),
        (grpc.StatusCode.UNIMPLEMENTED, 500, "INTERNAL", "INTERNAL"),
        (grpc.StatusCode.UNAUTHENTICATED, 401, "UNAUTHENTICATED", "SESSION_INVALID"),
    ],
    ids=["unavailable", "deadline", "internal", "unimplemented", "unauthenticated"],
)
async def test_statuses_without_error_info(
    fake: FakeUpstream,
    fake_edge: str,
    http: aiohttp.ClientSession,
    step: Any,
    status: int,
    code: str,
    reason: str,
) -> None:
    """A status with no ErrorInfo maps by its code; grpc's own text never reaches the body."""
    fake.auth.will("CheckSession", *[step] * 3)
    got, body, _ = await call(http, "GET", f"{fake_edge}/v1/session", headers=bearer("t"))
    assert got == status
    assert_error(body, code, reason)
    assert "10.1.2.3" not in body["error"]["message"]


async def test_request_id_is_passed_upstream_and_echoed(
    fake: FakeUpstream, fake_edge: str, http: aiohttp.ClientSession
) -> None:
    """A caller's X-Request-Id reaches the service as metadata and comes back; else one is made."""
    _, _, headers = await call(
        http, "GET", f"{fake_edge}/v1/session", headers={**bearer("t"), "X-Request-Id": "abc-123"}
    )
    assert headers["X-Request-Id"] == "abc-123"
    assert fake.auth.calls[-1].metadata["x-request-id"] == "abc-123"

    _, _, headers = await call(
        http,
        "POST",
        f"{fake_edge}/v1/login",
        json={"code": "c"},
        headers={"X-Request-Id": "has spaces\tand tabs"},
    )
    made = headers["X-Request-Id"]
    assert made != "has spaces\tand tabs"
    assert len(made) == 32
    assert fake.auth.calls[-1].metadata["x-request-id"] == made

    for method, path in (("GET", "/v1/session"), ("GET", "/nowhere"), ("GET", "/healthz")):
        _, _, headers = await call(
            http, method, fake_edge + path, headers={"X-Request-Id": "rid-on-everything"}
        )
        assert headers["X-Request-Id"] == "rid-on-everything"


async def test_upstream_down_is_503(http: aiohttp.ClientSession) -> None:
    """With nothing at the upstream address: 503 on the RPC routes and /readyz, /healthz fine."""
    async with running_edge(free_port_target(), retry=QUICK_RETRY) as edge:
        status, body, _ = await call(http, "POST", f"{edge}/v1/login", json={"code": "c"})
        assert status == 503
        assert_error(body, "UNAVAILABLE", "SERVICE_UNAVAILABLE")
        status, body, _ = await call(http, "GET", f"{edge}/v1/session", headers=bearer("t"))
        assert status == 503
        status, body, _ = await call(http, "GET", f"{edge}/readyz")
        assert status == 503
        assert_error(body, "UNAVAILABLE", "SERVICE_UNAVAILABLE")
        status, body, _ = await call(http, "GET", f"{edge}/healthz")
        assert (status, body) == (200, {"status": "ok"})


async def test_readyz_follows_the_upstream_health(
    fake: FakeUpstream, fake_edge: str, http: aiohttp.ClientSession
) -> None:
    """/readyz is 200 while wxlogin reports SERVING and 503 while it does not."""
    assert (await call(http, "GET", f"{fake_edge}/readyz"))[:2] == (200, {"status": "ready"})
    await fake.set_serving(False)
    status, body, _ = await call(http, "GET", f"{fake_edge}/readyz")
    assert status == 503
    assert_error(body, "UNAVAILABLE", "SERVICE_UNAVAILABLE")


async def test_readyz_scope_edge_ignores_the_upstream(
    fake: FakeUpstream, fake_edge: str, http: aiohttp.ClientSession
) -> None:
    """/readyz?scope=edge (the load balancer's check) stays 200 while wxlogin is not serving."""
    await fake.set_serving(False)
    assert (await call(http, "GET", f"{fake_edge}/readyz"))[0] == 503
    status, body, _ = await call(http, "GET", f"{fake_edge}/readyz?scope=edge")
    assert (status, body) == (200, {"status": "ready"})
    status, body, _ = await call(http, "GET", f"{fake_edge}/readyz?scope=all")
    assert status == 400
    assert_error(body, "INVALID_ARGUMENT", "BAD_REQUEST")


async def test_readyz_against_the_real_service(edge: str, http: aiohttp.ClientSession) -> None:
    """The real service's health service makes /readyz answer 200."""
    assert (await call(http, "GET", f"{edge}/readyz"))[0] == 200


async def test_openapi_document_is_served(fake_edge: str, http: aiohttp.ClientSession) -> None:
    """/openapi.json is the committed document, byte for byte."""
    async with http.get(f"{fake_edge}/openapi.json", timeout=TIMEOUT) as response:
        assert response.status == 200
        assert response.content_type == "application/json"
        assert await response.read() == OPENAPI_PATH.read_bytes()


async def test_access_log_carries_no_token(
    edge: str, http: aiohttp.ClientSession, emu: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    """Access log lines name method, path, status and request id, but never the token."""
    caplog.set_level(logging.INFO, logger="aiohttp.access")
    _, login, _ = await call(
        http,
        "POST",
        f"{edge}/v1/login",
        json={"code": await emu.code(APP_A, "kim"), "app_id": APP_A},
    )
    token = login["token"]
    await call(http, "GET", f"{edge}/v1/session", headers=bearer(token))
    await call(http, "GET", f"{edge}/v1/session?token={token}", headers={"X-Request-Id": "r-77"})
    await call(http, "POST", f"{edge}/v1/logout", headers=bearer(token))
    lines = [record.getMessage() for record in caplog.records if record.name == "aiohttp.access"]
    assert len(lines) == 4
    assert all(token not in line for line in caplog.text.splitlines())
    assert all(token not in line for line in lines)
    assert any('"GET /v1/session" 200' in line for line in lines)
    assert any("request_id=r-77" in line for line in lines)


async def test_edge_process_announces_its_port_and_stops_on_sigterm(
    service: RunningService, http: aiohttp.ClientSession
) -> None:
    """`python -m clients.edge` on port 0 prints its URL, serves, and exits 0 on SIGTERM."""
    env = {"WXLOGIN_HTTP_LISTEN": "127.0.0.1:0", "WXLOGIN_UPSTREAM": f"127.0.0.1:{service.port}"}
    async with child("clients.edge", env=env) as (process, port):
        assert (await call(http, "GET", f"http://127.0.0.1:{port}/readyz"))[0] == 200
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 15) == 0


async def test_edge_finishes_in_flight_requests_on_sigint(
    fake: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    """A request in flight when SIGINT arrives still gets its answer; then the edge exits 0."""
    fake.auth.will("CheckSession", Delay(0.5))
    env = {"WXLOGIN_HTTP_LISTEN": "127.0.0.1:0", "WXLOGIN_UPSTREAM": fake.target}
    async with child("clients.edge", env=env) as (process, port):
        request = asyncio.ensure_future(
            call(http, "GET", f"http://127.0.0.1:{port}/v1/session", headers=bearer("t"))
        )
        await asyncio.wait_for(fake.auth.called.wait(), 10)
        process.send_signal(signal.SIGINT)
        assert (await request)[0] == 200
        assert await asyncio.wait_for(process.wait(), 15) == 0


async def test_bad_configuration_exits_2_naming_the_variable() -> None:
    """A bad variable stops `python -m clients.edge` at start: exit 2, one stderr line naming it.

    Each bad value is checked in-process in tests/test_edge_config.py; this one
    proves what the process makes of them.
    """
    exited = await run_to_exit("clients.edge", env={"WXLOGIN_HTTP_LISTEN": "no-port"})
    assert exited.returncode == 2
    assert exited.stdout == ""
    lines = exited.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("edge: bad configuration: WXLOGIN_HTTP_LISTEN: ")


async def test_port_in_use_exits_1(http: aiohttp.ClientSession) -> None:
    """Listening on a taken port fails at start with exit 1 and one line."""
    async with running_edge(free_port_target()) as taken:
        exited = await run_to_exit(
            "clients.edge", env={"WXLOGIN_HTTP_LISTEN": taken.removeprefix("http://")}
        )
    assert exited.returncode == 1
    assert exited.stderr.strip().startswith("edge: cannot start")
