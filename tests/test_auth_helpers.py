"""Drop-in auth for backends: the aiohttp middleware and the grpc.aio server interceptor."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import grpc
import pytest
import pytest_asyncio
from aiohttp import web
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from clients import RetryPolicy, WxLoginClient, connect
from clients.aiohttp_auth import USER, bearer_auth
from clients.edge.server import serving
from clients.grpc_auth import BearerAuthInterceptor, current_user
from service.app import RunningService
from tests.edge_support import free_port_target
from tests.support import APP_A, Emulator, error_info

QUICK_RETRY = RetryPolicy(initial_backoff=0.01, max_backoff=0.02)
WHOAMI = "/test.Backend/Whoami"
WHOAMI_STREAM = "/test.Backend/WhoamiStream"


@pytest_asyncio.fixture
async def client(service: RunningService) -> AsyncIterator[WxLoginClient]:
    """A backend's client of the real service."""
    async with connect(f"127.0.0.1:{service.port}", retry=QUICK_RETRY) as made:
        yield made


async def log_in(client: WxLoginClient, emu: Emulator, user: str) -> str:
    """Play a mini-program logging in; returns its token."""
    return (await client.login(await emu.code(APP_A, user), app_id=APP_A)).token


# -- aiohttp ---------------------------------------------------------------------------------


@asynccontextmanager
async def aiohttp_backend(client: WxLoginClient) -> AsyncIterator[str]:
    """A backend app whose only auth code is the one-line middleware."""

    async def me(request: web.Request) -> web.Response:
        user = request[USER]
        return web.json_response({"user_id": user.user_id, "openid": user.openid})

    async def ping(request: web.Request) -> web.Response:
        return web.json_response({"pong": True})

    app = web.Application(
        middlewares=[bearer_auth(client, public=lambda request: request.path == "/ping")]
    )
    app.router.add_get("/me", me)
    app.router.add_get("/ping", ping)
    async with serving(app, "127.0.0.1", 0, shutdown_grace=1.0) as port:
        yield f"http://127.0.0.1:{port}"


async def get(http: aiohttp.ClientSession, url: str, token: str | None = None) -> tuple[int, Any]:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    async with http.get(url, headers=headers, timeout=aiohttp.ClientTimeout(total=30)) as response:
        return response.status, await response.json()


async def test_middleware_puts_the_user_on_the_request(
    client: WxLoginClient, emu: Emulator, http: aiohttp.ClientSession
) -> None:
    """With a live token the handler gets request[USER]; public routes need none."""
    token = await log_in(client, emu, "lena")
    session = await client.check_session(token)
    async with aiohttp_backend(client) as backend:
        status, body = await get(http, f"{backend}/me", token)
        assert status == 200
        assert body == {"user_id": session.user.user_id, "openid": session.user.openid}
        assert await get(http, f"{backend}/ping") == (200, {"pong": True})


@pytest.mark.parametrize("token", [None, "wxl1_" + "Z" * 43, "garbage"])
async def test_middleware_answers_401_without_a_live_token(
    client: WxLoginClient, http: aiohttp.ClientSession, token: str | None
) -> None:
    """Missing, unknown or malformed tokens get 401 in the edge's JSON error shape."""
    async with aiohttp_backend(client) as backend:
        status, body = await get(http, f"{backend}/me", token)
    assert status == 401
    assert body["error"]["code"] == "UNAUTHENTICATED"
    assert body["error"]["reason"] == "SESSION_INVALID"


async def test_middleware_rejects_a_revoked_token(
    client: WxLoginClient, emu: Emulator, http: aiohttp.ClientSession
) -> None:
    """After logout the same token is 401 SESSION_INVALID."""
    token = await log_in(client, emu, "milo")
    await client.revoke_session(token)
    async with aiohttp_backend(client) as backend:
        status, body = await get(http, f"{backend}/me", token)
    assert (status, body["error"]["reason"]) == (401, "SESSION_INVALID")


async def test_middleware_answers_503_when_wxlogin_is_down(http: aiohttp.ClientSession) -> None:
    """wxlogin unreachable is 503 SERVICE_UNAVAILABLE, not a 401 that would force a re-login."""
    async with (
        connect(free_port_target(), retry=QUICK_RETRY) as down,
        aiohttp_backend(down) as backend,
    ):
        status, body = await get(http, f"{backend}/me", "wxl1_" + "Z" * 43)
    assert (status, body["error"]["reason"]) == (503, "SERVICE_UNAVAILABLE")


# -- grpc.aio --------------------------------------------------------------------------------


def _identity(data: bytes) -> bytes:
    return data


@asynccontextmanager
async def grpc_backend(client: WxLoginClient) -> AsyncIterator[grpc.aio.Channel]:
    """A grpc.aio backend with the interceptor; yields a channel to it."""

    async def whoami(request: bytes, context: Any) -> bytes:
        await asyncio.sleep(0.05)  # overlap concurrent calls: each must see its own user
        return current_user().user_id.encode()

    async def whoami_stream(request: bytes, context: Any) -> AsyncIterator[bytes]:
        for _ in range(2):
            yield current_user().openid.encode()

    handlers = {
        "Whoami": grpc.unary_unary_rpc_method_handler(
            whoami, request_deserializer=_identity, response_serializer=_identity
        ),
        "WhoamiStream": grpc.unary_stream_rpc_method_handler(
            whoami_stream, request_deserializer=_identity, response_serializer=_identity
        ),
    }
    server = grpc.aio.server(interceptors=[BearerAuthInterceptor(client)])
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("test.Backend", handlers),)
    )
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield channel
    finally:
        await server.stop(None)  # nothing in flight is worth waiting for in a test


def whoami(channel: grpc.aio.Channel) -> Callable[..., Any]:
    return channel.unary_unary(
        WHOAMI, request_serializer=_identity, response_deserializer=_identity
    )


def bearer_metadata(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


async def test_interceptor_gives_handlers_the_user(client: WxLoginClient, emu: Emulator) -> None:
    """Handlers read current_user(); concurrent calls each see their own caller."""
    tokens = [await log_in(client, emu, name) for name in ("nia", "otto")]
    expected = [(await client.check_session(token)).user for token in tokens]
    async with grpc_backend(client) as channel:
        answers = await asyncio.gather(
            *(whoami(channel)(b"", metadata=bearer_metadata(token), timeout=10) for token in tokens)
        )
        assert [answer.decode() for answer in answers] == [user.user_id for user in expected]
        stream = channel.unary_stream(
            WHOAMI_STREAM, request_serializer=_identity, response_deserializer=_identity
        )
        replies = [
            reply async for reply in stream(b"", metadata=bearer_metadata(tokens[0]), timeout=10)
        ]
        assert replies == [expected[0].openid.encode()] * 2


@pytest.mark.parametrize(
    "metadata",
    [(), (("authorization", "Basic abc"),), bearer_metadata("wxl1_" + "Q" * 43)],
    ids=["none", "not-bearer", "unknown-token"],
)
async def test_interceptor_rejects_with_unauthenticated(
    client: WxLoginClient, metadata: tuple[tuple[str, str], ...]
) -> None:
    """Without a live token the RPC ends UNAUTHENTICATED with ErrorInfo SESSION_INVALID."""
    async with grpc_backend(client) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await whoami(channel)(b"", metadata=metadata, timeout=10)
        stream = channel.unary_stream(
            WHOAMI_STREAM, request_serializer=_identity, response_deserializer=_identity
        )
        with pytest.raises(grpc.aio.AioRpcError) as streamed:
            _ = [reply async for reply in stream(b"", metadata=metadata, timeout=10)]
    for error in (caught.value, streamed.value):
        info = error_info(error)
        assert (info.code, info.reason, info.domain) == (
            grpc.StatusCode.UNAUTHENTICATED,
            "SESSION_INVALID",
            "wxlogin",
        )


async def test_interceptor_leaves_health_checks_public(client: WxLoginClient) -> None:
    """Load balancers reach grpc.health.v1 without a token."""
    async with grpc_backend(client) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=10
        )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_interceptor_answers_unavailable_when_wxlogin_is_down() -> None:
    """wxlogin unreachable ends the RPC UNAVAILABLE, so callers retry instead of re-login."""
    async with (
        connect(free_port_target(), retry=QUICK_RETRY) as down,
        grpc_backend(down) as channel,
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await whoami(channel)(b"", metadata=bearer_metadata("wxl1_" + "Q" * 43), timeout=10)
    assert error_info(caught.value).code is grpc.StatusCode.UNAVAILABLE
    assert error_info(caught.value).reason == "SERVICE_UNAVAILABLE"


def test_current_user_outside_an_rpc_is_an_error() -> None:
    """current_user() outside an authenticated RPC raises LookupError instead of guessing."""
    with pytest.raises(LookupError):
        current_user()
