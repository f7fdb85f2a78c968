"""CheckSession and RevokeSession: valid, unknown, malformed, expired and revoked tokens."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import grpc
import pytest

from tests.conftest import ServiceFactory
from tests.support import APP_A, Emulator, error_info
from wxlogin.v1 import auth_pb2, auth_pb2_grpc


async def check_error(stub: auth_pb2_grpc.AuthServiceStub, token: str) -> tuple[Any, str]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.CheckSession(auth_pb2.CheckSessionRequest(token=token))
    info = error_info(caught.value)
    return info.code, info.reason


async def test_valid_token_returns_the_user(
    stub: auth_pb2_grpc.AuthServiceStub, emu: Emulator
) -> None:
    """A fresh token checks out with the same user and expiry Login returned."""
    await emu.setup_user(APP_A, "oscar", unionid="union-oscar")
    login = await stub.Login(
        auth_pb2.LoginRequest(app_id=APP_A, code=await emu.code(APP_A, "oscar"))
    )
    checked = await stub.CheckSession(auth_pb2.CheckSessionRequest(token=login.token))
    assert checked.user == login.user
    assert checked.expires_at == login.expires_at


@pytest.mark.parametrize(
    ("token", "status", "reason"),
    [
        ("wxl1_" + "A" * 43, grpc.StatusCode.UNAUTHENTICATED, "SESSION_INVALID"),  # unknown
        ("not-a-token", grpc.StatusCode.UNAUTHENTICATED, "SESSION_INVALID"),  # malformed
        ("wxl1_" + "\u00e9" * 43, grpc.StatusCode.UNAUTHENTICATED, "SESSION_INVALID"),
        ("", grpc.StatusCode.INVALID_ARGUMENT, "BAD_REQUEST"),  # empty field
    ],
    ids=["unknown", "malformed", "non-ascii", "empty"],
)
async def test_bad_tokens(
    stub: auth_pb2_grpc.AuthServiceStub, token: str, status: grpc.StatusCode, reason: str
) -> None:
    """Unknown and malformed tokens are SESSION_INVALID; an empty one is BAD_REQUEST."""
    assert await check_error(stub, token) == (status, reason)


async def test_expired_token_is_rejected_while_its_document_still_exists(
    start_service: ServiceFactory, emu: Emulator, db: Any
) -> None:
    """Past expires_at the token is SESSION_EXPIRED even before the TTL monitor deletes it."""
    admin = db.client.admin
    await admin.command({"setParameter": 1, "ttlMonitorEnabled": False})
    try:
        async with (
            start_service(session_ttl=1, expired_session_retention=0) as running,
            grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel,
        ):
            stub = auth_pb2_grpc.AuthServiceStub(channel)
            login = await stub.Login(
                auth_pb2.LoginRequest(app_id=APP_A, code=await emu.code(APP_A, "pia"))
            )
            await stub.CheckSession(auth_pb2.CheckSessionRequest(token=login.token))  # cached
            await asyncio.sleep(1.2)
            session_id = hashlib.sha256(login.token.encode()).hexdigest()
            assert await db.sessions.count_documents({"_id": session_id}) == 1
            assert await check_error(stub, login.token) == (
                grpc.StatusCode.UNAUTHENTICATED,
                "SESSION_EXPIRED",
            )
    finally:
        await admin.command({"setParameter": 1, "ttlMonitorEnabled": True})
    # The TTL index does clean up eventually (the test mongod checks every second).
    for _ in range(100):
        if await db.sessions.count_documents({"_id": session_id}) == 0:
            break
        await asyncio.sleep(0.1)
    assert await db.sessions.count_documents({"_id": session_id}) == 0


async def test_revoked_token_is_invalid(stub: auth_pb2_grpc.AuthServiceStub, emu: Emulator) -> None:
    """RevokeSession ends a session at once, and is idempotent."""
    login = await stub.Login(
        auth_pb2.LoginRequest(app_id=APP_A, code=await emu.code(APP_A, "quinn"))
    )
    await stub.CheckSession(auth_pb2.CheckSessionRequest(token=login.token))
    await stub.RevokeSession(auth_pb2.RevokeSessionRequest(token=login.token))
    await stub.RevokeSession(auth_pb2.RevokeSessionRequest(token=login.token))
    assert await check_error(stub, login.token) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "SESSION_INVALID",
    )


async def test_revoke_through_another_process_is_seen_after_the_cache_window(
    start_service: ServiceFactory, emu: Emulator
) -> None:
    """A second service process revokes; the first stops accepting within its cache window."""
    async with (
        start_service(session_cache_seconds=0.5) as first,
        start_service(session_cache_seconds=0.5) as second,
        grpc.aio.insecure_channel(f"127.0.0.1:{first.port}") as channel_one,
        grpc.aio.insecure_channel(f"127.0.0.1:{second.port}") as channel_two,
    ):
        one, two = (
            auth_pb2_grpc.AuthServiceStub(channel_one),
            auth_pb2_grpc.AuthServiceStub(channel_two),
        )
        login = await one.Login(
            auth_pb2.LoginRequest(app_id=APP_A, code=await emu.code(APP_A, "rae"))
        )
        await one.CheckSession(auth_pb2.CheckSessionRequest(token=login.token))
        await two.RevokeSession(auth_pb2.RevokeSessionRequest(token=login.token))
        await asyncio.sleep(0.7)
        assert (await check_error(one, login.token))[1] == "SESSION_INVALID"
