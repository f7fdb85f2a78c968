"""WXLOGIN_MAX_SESSIONS_PER_USER: a login beyond the cap ends the user's oldest sessions."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from typing import Any

import grpc
import pytest
from bson import ObjectId

from runtime.config import ConfigError
from service.settings import Settings
from service.store import connect
from tests.conftest import StubFactory
from tests.support import APP_A, APPS_ENV, Emulator, child, error_info
from wxlogin.v1 import auth_pb2, auth_pb2_grpc


async def login(stub: auth_pb2_grpc.AuthServiceStub, emu: Emulator, user: str) -> Any:
    """One Login of `user` (app A) with a fresh code."""
    return await stub.Login(auth_pb2.LoginRequest(app_id=APP_A, code=await emu.code(APP_A, user)))


async def live(stub: auth_pb2_grpc.AuthServiceStub, token: str) -> bool:
    """True when CheckSession accepts the token; False on SESSION_INVALID."""
    try:
        await stub.CheckSession(auth_pb2.CheckSessionRequest(token=token))
    except grpc.aio.AioRpcError as error:
        reason = error_info(error).reason
    else:
        return True
    assert reason == "SESSION_INVALID"
    return False


async def live_in_db(db: Any, user_id: str) -> int:
    """How many unexpired sessions MongoDB holds for the user."""
    return int(
        await db.sessions.count_documents(
            {"user_id": ObjectId(user_id), "expires_at": {"$gt": datetime.now(UTC)}}
        )
    )


async def test_a_login_beyond_the_cap_ends_the_oldest(
    start_stub: StubFactory, emu: Emulator, db: Any
) -> None:
    """Cap 3: the 4th and 5th logins end the 1st and 2nd sessions; another user is untouched."""
    async with start_stub(max_sessions_per_user=3) as stub:
        other = await login(stub, emu, "cap-other")
        tokens = []
        for _ in range(5):
            tokens.append((await login(stub, emu, "cap-seq")).token)
            # Checked (so cached in the service) as it goes: the trim must reach the cache.
            assert await live(stub, tokens[-1])
        assert [await live(stub, token) for token in tokens] == [False, False, True, True, True]
        assert await live(stub, other.token)
        user_id = (await stub.CheckSession(auth_pb2.CheckSessionRequest(token=tokens[-1]))).user
        assert await live_in_db(db, user_id.user_id) == 3


async def test_concurrent_logins_of_one_user_never_leave_more_than_the_cap(
    start_stub: StubFactory, emu: Emulator, db: Any
) -> None:
    """30 concurrent logins of one user, cap 5: 5 live sessions, the newest, in MongoDB and RPC."""
    async with start_stub(max_sessions_per_user=5) as stub:
        codes = [await emu.code(APP_A, "cap-burst") for _ in range(30)]
        replies = await asyncio.gather(
            *(stub.Login(auth_pb2.LoginRequest(app_id=APP_A, code=code)) for code in codes)
        )
        user_id = replies[0].user.user_id
        assert await live_in_db(db, user_id) == 5
        alive = [reply for reply in replies if await live(stub, reply.token)]
        assert len(alive) == 5
        # The survivors are the newest: none was issued before any ended one.
        newest_ended = max(reply.expires_at.ToDatetime() for reply in replies if reply not in alive)
        assert all(reply.expires_at.ToDatetime() >= newest_ended for reply in alive)


async def test_two_processes_logging_one_user_in_stay_within_the_cap(
    service_env: dict[str, str], mongod: str, emu: Emulator
) -> None:
    """Two `python -m service` processes, 30 concurrent logins of one user, cap 5: 5 remain."""
    env = {**service_env, "WXLOGIN_MAX_SESSIONS_PER_USER": "5"}
    async with AsyncExitStack() as stack:
        ports = [(await stack.enter_async_context(child("service", env=env)))[1] for _ in range(2)]
        channels = [
            await stack.enter_async_context(grpc.aio.insecure_channel(f"127.0.0.1:{port}"))
            for port in ports
        ]
        stubs = [auth_pb2_grpc.AuthServiceStub(channel) for channel in channels]
        user = f"cap-two-processes-{datetime.now(UTC).timestamp()}"
        codes = [await emu.code(APP_A, user) for _ in range(30)]
        replies = await asyncio.gather(
            *(
                stubs[index % 2].Login(auth_pb2.LoginRequest(app_id=APP_A, code=code))
                for index, code in enumerate(codes)
            )
        )
        client = connect(mongod)
        try:
            # The children use the default database name.
            assert await live_in_db(client["wxlogin"], replies[0].user.user_id) == 5
        finally:
            await client.close()


def test_the_cap_is_read_from_the_environment() -> None:
    """WXLOGIN_MAX_SESSIONS_PER_USER: default 10, a whole number >= 1, else a ConfigError."""
    base = {"WXLOGIN_APPS": APPS_ENV, "WXLOGIN_SECRET_KEY": "A" * 43 + "="}
    assert Settings.from_env(base).max_sessions_per_user == 10
    assert (
        Settings.from_env({**base, "WXLOGIN_MAX_SESSIONS_PER_USER": "3"}).max_sessions_per_user == 3
    )
    for bad in ("0", "-1", "ten", "1.5"):
        with pytest.raises(ConfigError, match="WXLOGIN_MAX_SESSIONS_PER_USER"):
            Settings.from_env({**base, "WXLOGIN_MAX_SESSIONS_PER_USER": bad})
