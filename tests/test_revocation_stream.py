"""Instant revocation: on a replica set every process drops revoked sessions from its cache."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import grpc
import pytest

from devtools.replica_set import ReplicaSet
from service.app import RunningService
from service.settings import Settings
from tests.conftest import ServiceFactory, settings_on
from tests.support import APP_A, Emulator, check_reason
from wxlogin.v1 import auth_pb2, auth_pb2_grpc

# Without the stream, a revoked session would stay cached this long in the other process.
LONG_CACHE = 600.0


@pytest.fixture
def settings(replica_settings: Settings) -> Settings:
    """Every service in this module runs on the replica set (unless a test says otherwise)."""
    return replica_settings


@asynccontextmanager
async def two_services(
    start_service: ServiceFactory, **overrides: Any
) -> AsyncIterator[tuple[list[RunningService], list[auth_pb2_grpc.AuthServiceStub]]]:
    """Two service "processes" (own stores, caches, watchers) on the test's database."""
    async with AsyncExitStack() as stack:
        services = [await stack.enter_async_context(start_service(**overrides)) for _ in range(2)]
        stubs = []
        for running in services:
            channel = await stack.enter_async_context(
                grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
            )
            stubs.append(auth_pb2_grpc.AuthServiceStub(channel))
        yield services, stubs


async def until_invalid(stub: auth_pb2_grpc.AuthServiceStub, token: str) -> None:
    """Poll until the token is SESSION_INVALID there (callers bound it with wait_for)."""
    while await check_reason(stub, token) == "OK":  # noqa: ASYNC110 - polling a remote answer
        await asyncio.sleep(0.005)


async def login(stub: auth_pb2_grpc.AuthServiceStub, emu: Emulator, user: str) -> str:
    """A token of `user` (app A)."""
    code = await emu.code(APP_A, user)
    return str((await stub.Login(auth_pb2.LoginRequest(app_id=APP_A, code=code))).token)


async def test_a_revocation_reaches_the_other_processes_cache(
    start_service: ServiceFactory, emu: Emulator
) -> None:
    """Revoked through one process, a session cached for 600 s in the other is dropped there."""
    async with two_services(start_service, session_cache_seconds=LONG_CACHE) as (services, stubs):
        assert all(running.revocations and running.revocations.watching for running in services)
        token = await login(stubs[0], emu, "stream-one")
        assert await check_reason(stubs[1], token) == "OK"  # cached in the second process now
        await stubs[0].RevokeSession(auth_pb2.RevokeSessionRequest(token=token))
        await asyncio.wait_for(until_invalid(stubs[1], token), 10)


async def test_log_out_everywhere_and_the_cap_reach_the_other_process(
    start_service: ServiceFactory, emu: Emulator
) -> None:
    """Sessions ended by RevokeAllSessions or by the cap are dropped from the other cache too."""
    async with two_services(
        start_service, session_cache_seconds=LONG_CACHE, max_sessions_per_user=2
    ) as (_, stubs):
        tokens = [await login(stubs[0], emu, "stream-all") for _ in range(2)]
        for token in tokens:
            assert await check_reason(stubs[1], token) == "OK"
        await login(stubs[0], emu, "stream-all")  # the cap ends the first
        await asyncio.wait_for(until_invalid(stubs[1], tokens[0]), 10)
        assert await check_reason(stubs[1], tokens[1]) == "OK"
        await stubs[0].RevokeAllSessions(auth_pb2.RevokeAllSessionsRequest(token=tokens[1]))
        await asyncio.wait_for(until_invalid(stubs[1], tokens[1]), 10)


async def test_a_stream_broken_by_a_failover_resumes_from_its_token(
    replica_set: ReplicaSet, start_service: ServiceFactory, emu: Emulator
) -> None:
    """Primary SIGKILLed: revocations made after it still reach the other process's cache."""
    async with two_services(start_service, session_cache_seconds=LONG_CACHE) as (services, stubs):
        tokens = [await login(stubs[0], emu, f"stream-failover-{i}") for i in range(2)]
        for token in tokens:
            assert await check_reason(stubs[1], token) == "OK"
        old = await replica_set.wait_for_primary()
        try:
            await replica_set.kill(old)
            await replica_set.wait_for_primary()
            for token in tokens:  # retried by the client side until the new primary takes it
                for _ in range(50):
                    try:
                        await stubs[0].RevokeSession(auth_pb2.RevokeSessionRequest(token=token))
                        break
                    except grpc.aio.AioRpcError:
                        await asyncio.sleep(0.2)
            for token in tokens:
                await asyncio.wait_for(until_invalid(stubs[1], token), 30)
        finally:
            # The set is shared by the session: leave all three members up.
            await replica_set.restart(old)
            await replica_set.wait_healthy()
        watcher = services[1].revocations
        assert watcher is not None
        assert watcher.dropped >= 2


async def test_a_stream_that_cannot_resume_clears_the_cache_and_starts_afresh(
    start_service: ServiceFactory, emu: Emulator, db: Any
) -> None:
    """Sessions dropped (stream invalidated, token unusable): cache cleared, a new stream."""
    async with two_services(start_service, session_cache_seconds=LONG_CACHE) as (_, stubs):
        token = await login(stubs[0], emu, "stream-wiped")
        assert await check_reason(stubs[1], token) == "OK"
        # A wipe deletes no document one by one: only the cleared cache forgets the token.
        await db.sessions.drop()
        await asyncio.wait_for(until_invalid(stubs[1], token), 20)
        # And the fresh stream carries revocations again.
        fresh = await login(stubs[0], emu, "stream-wiped")
        assert await check_reason(stubs[1], fresh) == "OK"
        await stubs[0].RevokeSession(auth_pb2.RevokeSessionRequest(token=fresh))
        await asyncio.wait_for(until_invalid(stubs[1], fresh), 20)


async def test_on_a_standalone_mongod_the_cache_bound_stays(
    mongod: str, emulator_url: str, start_service: ServiceFactory, emu: Emulator
) -> None:
    """No change streams: no watcher, and the other process answers from its cache (bounded)."""
    standalone = settings_on(mongod, emulator_url)
    async with two_services(
        start_service, mongodb_uri=standalone.mongodb_uri, session_cache_seconds=LONG_CACHE
    ) as (services, stubs):
        assert not any(running.revocations and running.revocations.watching for running in services)
        token = await login(stubs[0], emu, "standalone")
        assert await check_reason(stubs[1], token) == "OK"
        await stubs[0].RevokeSession(auth_pb2.RevokeSessionRequest(token=token))
        assert await check_reason(stubs[0], token) == "SESSION_INVALID"
        # The documented price on a standalone mongod: cached elsewhere until the bound.
        assert await check_reason(stubs[1], token) == "OK"
