"""Sliding expiry: WXLOGIN_SESSION_TTL idle, renewed by use, up to WXLOGIN_SESSION_MAX_TTL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta
from typing import Any

import grpc
import pytest
import pytest_asyncio

from runtime.config import ConfigError
from service.cache import SessionCache
from service.crypto import SessionKeyCipher, token_id
from service.errors import SessionExpired
from service.records import utc_now_ms
from service.sessions import Sessions
from service.settings import Settings
from service.store import Store, connect
from service.wechat import WeChatClient, new_http_session
from tests.conftest import SECRET_KEY, ServiceFactory
from tests.edge_support import ttl_monitor_paused
from tests.support import APP_A, APPS, APPS_ENV, Emulator
from wxlogin.v1 import auth_pb2, auth_pb2_grpc

IDLE = 100
ABSOLUTE = 300


class Clock:
    """The service's idea of now, moved by the test (MongoDB keeps real time)."""

    def __init__(self) -> None:
        self.now = utc_now_ms()

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


SessionsFactory = Callable[..., Sessions]


@pytest_asyncio.fixture
async def parts(settings: Settings) -> AsyncIterator[tuple[Store, WeChatClient]]:
    """A real store (its own database) and a WeChat client for the emulator."""
    client = connect(settings.mongodb_uri or "")
    store = Store(client[settings.database], SessionKeyCipher(SECRET_KEY))
    await store.ensure_indexes()
    http = new_http_session()
    try:
        yield store, WeChatClient(http, settings.wechat_api_base, APPS)
    finally:
        await store.close()
        await http.close()
        await client.close()


@pytest.fixture
def make_sessions(parts: tuple[Store, WeChatClient]) -> SessionsFactory:
    """Sessions on the shared store with a given clock and cache (one per "process")."""
    store, wechat = parts

    def make(clock: Clock, cache_seconds: float = 5.0) -> Sessions:
        return Sessions(
            store,
            wechat,
            APPS,
            session_ttl=IDLE,
            session_max_ttl=ABSOLUTE,
            cache=SessionCache(cache_seconds),
            now=clock,
        )

    return make


async def stored(db: Any, token: str) -> dict[str, Any]:
    """The session document behind a token."""
    doc = await db.sessions.find_one({"_id": token_id(token)})
    assert doc is not None
    return dict(doc)


async def test_an_active_user_stays_until_the_absolute_limit(
    make_sessions: SessionsFactory, emu: Emulator, db: Any
) -> None:
    """Checked every 60 s (idle 100 s), a session lives exactly its absolute 300 s."""
    clock = Clock()
    sessions = make_sessions(clock)
    login = await sessions.login(APP_A, await emu.code(APP_A, "slider"), deadline=None)
    assert login.expires_at == clock.now + timedelta(seconds=IDLE)
    limit = clock.now + timedelta(seconds=ABSOLUTE)
    for _ in range(4):  # t = 60, 120, 180, 240
        clock.advance(60)
        record = await sessions.check(login.token)
        # Renewed: the answer carries the new expiry, the same token still works.
        assert record.expires_at == min(clock.now + timedelta(seconds=IDLE), limit)
        await sessions.settle()
        assert (await stored(db, login.token))["expires_at"] == record.expires_at
    clock.advance(59)  # t = 299: still live, and nothing left to renew
    assert (await sessions.check(login.token)).expires_at == limit
    clock.advance(1)  # t = 300
    with pytest.raises(SessionExpired):
        await sessions.check(login.token)
    assert (await stored(db, login.token))["renewals"] == 4


async def test_an_idle_user_is_logged_out_after_the_idle_limit(
    make_sessions: SessionsFactory, emu: Emulator, db: Any
) -> None:
    """Unused for 100 s (idle limit), a session is SESSION_EXPIRED, long before 300 s."""
    clock = Clock()
    sessions = make_sessions(clock)
    login = await sessions.login(APP_A, await emu.code(APP_A, "idler"), deadline=None)
    clock.advance(40)
    await sessions.check(login.token)  # used, but with more than half its idle life left
    clock.advance(60)
    with pytest.raises(SessionExpired):
        await sessions.check(login.token)
    assert "renewals" not in await stored(db, login.token)


async def test_renewal_is_written_once_per_half_idle_lifetime(
    make_sessions: SessionsFactory, emu: Emulator, db: Any
) -> None:
    """Many checks by two processes (no cache in one) of a due session: one renewal write."""
    clock = Clock()
    first, second = make_sessions(clock), make_sessions(clock, cache_seconds=0)
    login = await first.login(APP_A, await emu.code(APP_A, "busy"), deadline=None)
    clock.advance(10)
    await first.check(login.token)  # not due: 90 s of 100 left
    await first.settle()
    assert "renewals" not in await stored(db, login.token)
    clock.advance(45)  # due: 45 s left
    await asyncio.gather(*(s.check(login.token) for s in (first, second) * 10))
    await first.settle()
    await second.settle()
    clock.advance(20)
    await asyncio.gather(*(s.check(login.token) for s in (first, second) * 10))
    await first.settle()
    await second.settle()
    doc = await stored(db, login.token)
    assert doc["renewals"] == 1
    assert doc["expires_at"] >= login.expires_at + timedelta(seconds=45)


async def test_check_session_answers_the_renewed_expiry_over_grpc(
    start_service: ServiceFactory, emu: Emulator, db: Any
) -> None:
    """Through gRPC: past half its idle life a check answers a later expires_at, same token."""
    async with (
        ttl_monitor_paused(db),
        start_service(session_ttl=4, session_max_ttl=60) as running,
        grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel,
    ):
        stub = auth_pb2_grpc.AuthServiceStub(channel)
        login = await stub.Login(
            auth_pb2.LoginRequest(app_id=APP_A, code=await emu.code(APP_A, "grpc-slider"))
        )
        logged_in_until = login.expires_at.ToDatetime()
        for _ in range(2):  # 4.4 s in all: longer than the 4 s idle lifetime
            await asyncio.sleep(2.2)
            reply = await stub.CheckSession(auth_pb2.CheckSessionRequest(token=login.token))
            assert reply.expires_at.ToDatetime() > logged_in_until
            logged_in_until = reply.expires_at.ToDatetime()
        await running.sessions.settle()
        doc = await stored(db, login.token)
        assert doc["expires_at"].replace(tzinfo=None) == logged_in_until


def test_the_lifetimes_are_read_from_the_environment() -> None:
    """Defaults 7 days idle and 30 days absolute; an absolute shorter than idle fails."""
    base = {"WXLOGIN_APPS": APPS_ENV, "WXLOGIN_SECRET_KEY": "A" * 43 + "="}
    settings = Settings.from_env(base)
    assert (settings.session_ttl, settings.session_max_ttl) == (604800, 2592000)
    short = Settings.from_env(
        {**base, "WXLOGIN_SESSION_TTL": "60", "WXLOGIN_SESSION_MAX_TTL": "60"}
    )
    assert (short.session_ttl, short.session_max_ttl) == (60, 60)
    with pytest.raises(ConfigError, match="WXLOGIN_SESSION_MAX_TTL"):
        Settings.from_env({**base, "WXLOGIN_SESSION_MAX_TTL": "3600"})
