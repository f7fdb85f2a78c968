"""The opt-in CheckSession cache of the client library and the edge: fast, never past expiry."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import aiohttp
import grpc
import pytest

from clients import SessionInvalid, User, WxLoginClient
from clients._models import Session
from clients.session_cache import SessionCache
from service.app import RunningService
from tests.conftest import ServiceFactory
from tests.edge_support import running_edge
from tests.support import APP_A, Emulator
from wxlogin.v1 import auth_pb2, auth_pb2_grpc

USER = User("u1", APP_A, "o1")


def test_cache_never_serves_a_session_at_or_past_expires_at() -> None:
    """However fresh the entry, a session whose expires_at has come is not served."""
    now = [datetime(2030, 1, 1, tzinfo=UTC)]
    cache = SessionCache(max_age=60, monotonic=lambda: 0.0, now=lambda: now[0])
    cache.put("tok", Session(USER, now[0] + timedelta(seconds=1)))
    assert cache.get("tok") is not None
    now[0] += timedelta(seconds=1)
    assert cache.get("tok") is None


def test_cache_entries_go_stale_are_dropped_and_bounded() -> None:
    """Older than max_age is a miss; drop() forgets; the size stays within max_entries."""
    clock = [0.0]
    far = datetime(2100, 1, 1, tzinfo=UTC)
    cache = SessionCache(max_age=2, max_entries=5, monotonic=lambda: clock[0])
    cache.put("a", Session(USER, far))
    clock[0] = 2.5
    assert cache.get("a") is None
    cache.put("b", Session(USER, far))
    cache.drop("b")
    assert cache.get("b") is None
    for index in range(20):
        cache.put(f"t{index}", Session(USER, far))
    assert len(cache) == 5
    assert "t19" not in str(cache._entries)  # keys are digests, not tokens


def test_stale_entries_leave_as_new_ones_arrive() -> None:
    """Entries older than max_age go as new ones are put, not only when looked up again."""
    clock = [0.0]
    far = datetime(2100, 1, 1, tzinfo=UTC)
    cache = SessionCache(max_age=2, max_entries=10_000, monotonic=lambda: clock[0])
    for index in range(100):
        cache.put(f"old{index}", Session(USER, far))
    clock[0] = 3.0
    for index in range(60):
        cache.put(f"new{index}", Session(USER, far))
    assert len(cache) == 60  # two stale ones per put: all 100 are gone
    assert cache.get("new0") is not None


def test_an_answer_asked_for_before_a_drop_is_not_remembered() -> None:
    """A check racing a revoke through the same client: its OK must not outlive the revoke."""
    cache = SessionCache(max_age=60)
    far = datetime.now(UTC) + timedelta(hours=1)
    asked_at = cache.generation  # the check asks wxlogin...
    cache.drop("tok")  # ...the revoke drops the token meanwhile...
    cache.put("tok", Session(USER, far), generation=asked_at)  # ...then the OK arrives
    assert cache.get("tok") is None
    cache.put("tok", Session(USER, far), generation=cache.generation)
    assert cache.get("tok") is not None
    cache.clear()
    assert len(cache) == 0


async def _login(stub: auth_pb2_grpc.AuthServiceStub, emu: Emulator, user: str) -> str:
    reply = await stub.Login(auth_pb2.LoginRequest(app_id=APP_A, code=await emu.code(APP_A, user)))
    return reply.token


async def test_client_cache_hides_a_revoke_elsewhere_only_for_max_age(
    service: RunningService, stub: auth_pb2_grpc.AuthServiceStub, emu: Emulator
) -> None:
    """Cached: a revoke through another client shows after max_age; through this one, at once."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as channel:
        client = WxLoginClient(channel, session_cache=SessionCache(max_age=0.5))
        token = await _login(stub, emu, "cache-1")
        first = await client.check_session(token)
        await stub.RevokeSession(auth_pb2.RevokeSessionRequest(token=token))  # elsewhere
        assert await client.check_session(token) == first  # still within max_age
        await asyncio.sleep(0.7)
        with pytest.raises(SessionInvalid):
            await client.check_session(token)

        other = await _login(stub, emu, "cache-2")
        await client.check_session(other)
        await client.revoke_session(other)  # through this client: dropped at once
        with pytest.raises(SessionInvalid):
            await client.check_session(other)

        # Log out everywhere by a token this cache never saw: whose other tokens are
        # cached is unknown here, so none of them is served again.
        one, two = await _login(stub, emu, "cache-3"), await _login(stub, emu, "cache-3")
        await client.check_session(two)
        assert await client.revoke_all_sessions(one) == 2
        with pytest.raises(SessionInvalid):
            await client.check_session(two)


async def test_edge_cache_answers_session_and_respects_logout_and_expiry(
    start_service: ServiceFactory, emu: Emulator
) -> None:
    """The edge with its cache on: logout through it is immediate, expiry is never late."""
    async with (
        start_service(session_ttl=2, expired_session_retention=3600) as running,
        grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel,
        running_edge(f"127.0.0.1:{running.port}", session_cache_seconds=30) as edge,
        aiohttp.ClientSession() as http,
    ):
        stub = auth_pb2_grpc.AuthServiceStub(channel)
        token = await _login(stub, emu, "cache-3")
        headers = {"Authorization": f"Bearer {token}"}
        for _ in range(3):
            async with http.get(edge + "/v1/session", headers=headers) as response:
                assert response.status == 200
        await asyncio.sleep(2.1)  # past expires_at, well inside the 30 s cache window
        async with http.get(edge + "/v1/session", headers=headers) as response:
            assert response.status == 401
            assert (await response.json())["error"]["reason"] == "SESSION_EXPIRED"

        token = await _login(stub, emu, "cache-4")
        headers = {"Authorization": f"Bearer {token}"}
        async with http.get(edge + "/v1/session", headers=headers) as response:
            assert response.status == 200
        async with http.post(edge + "/v1/logout", headers=headers) as response:
            assert response.status == 204
        async with http.get(edge + "/v1/session", headers=headers) as response:
            assert response.status == 401
