"""Idempotent login: the same code again gets the same session, from any process, 1 WeChat call."""

from __future__ import annotations

import asyncio
import hashlib
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest

import clients
from clients import RetryPolicy
from clients import connect as connect_client
from service import errors as service_errors
from service.store import connect
from tests.conftest import StubFactory
from tests.edge_support import FakeUpstream
from tests.support import APP_A, Emulator, child, error_info
from wxlogin.v1 import auth_pb2, auth_pb2_grpc


def login(stub: auth_pb2_grpc.AuthServiceStub, code: str) -> Any:
    """One Login call for app A (awaitable)."""
    return stub.Login(auth_pb2.LoginRequest(app_id=APP_A, code=code))


def code_id(code: str, app_id: str = APP_A) -> str:
    """What wxlogin keeps a code's answer under."""
    return hashlib.sha256(f"{app_id}\n{code}".encode()).hexdigest()


async def test_the_same_code_again_gets_the_same_session(
    stub: auth_pb2_grpc.AuthServiceStub, emu: Emulator, db: Any
) -> None:
    """A retried code answers the first login again (same token, new_user too), not CODE_USED."""
    code = await emu.code(APP_A, "retrier")
    before = await emu.requests_seen()
    first = await login(stub, code)
    again = await login(stub, code)
    assert again.SerializeToString() == first.SerializeToString()
    assert first.new_user
    assert await emu.requests_seen() == before + 1
    assert await db.sessions.count_documents({"openid": first.user.openid}) == 1
    # Kept sealed: neither the token nor the code is in the document.
    doc = await db.login_codes.find_one({"_id": code_id(code)})
    assert doc["state"] == "done"
    assert first.token.encode() not in bytes(doc["result"])
    assert code not in str(doc)
    checked = await stub.CheckSession(auth_pb2.CheckSessionRequest(token=again.token))
    assert checked.user.user_id == first.user.user_id


async def test_twenty_requests_for_one_code_across_two_processes(
    service_env: dict[str, str], mongod: str, emu: Emulator
) -> None:
    """20 concurrent requests, 2 service processes: 1 jscode2session, 1 session, 20 same answers."""
    async with AsyncExitStack() as stack:
        stubs = []
        for _ in range(2):
            _, port = await stack.enter_async_context(child("service", env=service_env))
            channel = await stack.enter_async_context(
                grpc.aio.insecure_channel(f"127.0.0.1:{port}")
            )
            # Connected before the burst, so that both really take part.
            await asyncio.wait_for(channel.channel_ready(), 10)
            stubs.append(auth_pb2_grpc.AuthServiceStub(channel))
        user = f"twenty-{datetime.now(UTC).timestamp()}"
        code = await emu.code(APP_A, user)
        # WeChat answers slowly: every other request arrives while the first is out.
        await emu.fault(latency_ms=300, times=1)
        before = await emu.requests_seen()
        replies = await asyncio.gather(*(login(stubs[i % 2], code) for i in range(20)))
        assert await emu.requests_seen() == before + 1
        assert len({reply.SerializeToString() for reply in replies}) == 1
        client = connect(mongod)
        try:  # the children use the default database name
            sessions = client["wxlogin"].sessions
            assert await sessions.count_documents({"openid": replies[0].user.openid}) == 1
        finally:
            await client.close()


async def test_a_bad_code_fails_the_same_way_without_asking_again(
    stub: auth_pb2_grpc.AuthServiceStub, emu: Emulator
) -> None:
    """An invalid code: CODE_INVALID for 5 concurrent requests and a later one, 1 WeChat call."""
    before = await emu.requests_seen()
    outcomes = await asyncio.gather(
        *(login(stub, "not-a-real-code") for _ in range(5)), return_exceptions=True
    )
    later = await asyncio.gather(login(stub, "not-a-real-code"), return_exceptions=True)
    for outcome in [*outcomes, *later]:
        assert isinstance(outcome, grpc.aio.AioRpcError)
        assert error_info(outcome).reason == "CODE_INVALID"
    assert await emu.requests_seen() == before + 1


async def test_a_failure_worth_retrying_leaves_the_code_free(
    start_stub: StubFactory, emu: Emulator
) -> None:
    """WeChat busy (code not spent): WECHAT_UNAVAILABLE, and the same code then logs in."""
    async with start_stub(wechat_attempts=1) as stub:
        code = await emu.code(APP_A, "busy-then-fine")
        await emu.fault(errcode=-1, times=1)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await login(stub, code)
        assert error_info(caught.value).reason == "WECHAT_UNAVAILABLE"
        reply = await login(stub, code)
        assert reply.token


async def test_a_claim_whose_owner_died_is_taken_over(
    stub: auth_pb2_grpc.AuthServiceStub, emu: Emulator, db: Any
) -> None:
    """A code claimed by a process that crashed (lease over) is exchanged by the next request."""
    code = await emu.code(APP_A, "orphan")
    now = datetime.now(UTC)
    await db.login_codes.insert_one(
        {
            "_id": code_id(code),
            "state": "pending",
            "owner": "crashed",
            "lease_until": now - timedelta(seconds=1),
            "expires_at": now + timedelta(minutes=5),
        }
    )
    reply = await login(stub, code)
    assert reply.token
    doc = await db.login_codes.find_one({"_id": code_id(code)})
    assert (doc["state"], doc["owner"]) == ("done", doc["owner"])
    assert doc["owner"] != "crashed"


async def test_the_client_library_retries_a_login_whose_answer_was_lost(
    fake: FakeUpstream,
) -> None:
    """Client: Login is retried (same code) when no answer came, never on WECHAT_UNAVAILABLE."""
    quick = RetryPolicy(attempts=3, initial_backoff=0.01, max_backoff=0.02)
    async with connect_client(fake.target, retry=quick) as client:
        fake.auth.will("Login", grpc.StatusCode.UNAVAILABLE)  # no ErrorInfo: answer lost
        assert (await client.login("the-code")).token
        assert [call.request.code for call in fake.auth.calls_to("Login")] == ["the-code"] * 2
        fake.auth.will("Login", service_errors.WeChatUnavailable())
        with pytest.raises(clients.WeChatUnavailable):
            await client.login("other-code")
        assert len(fake.auth.calls_to("Login")) == 3


async def test_a_claim_stands_no_longer_than_its_callers_deadline(
    stub: auth_pb2_grpc.AuthServiceStub, emu: Emulator, db: Any
) -> None:
    """Login with a 3 s deadline: its claim's lease ends within ~4 s (30 s without one)."""
    timed_code, untimed_code = await emu.code(APP_A, "leased"), await emu.code(APP_A, "leased")
    before = datetime.now(UTC)
    await stub.Login(auth_pb2.LoginRequest(app_id=APP_A, code=timed_code), timeout=3)
    await login(stub, untimed_code)
    timed = await db.login_codes.find_one({"_id": code_id(timed_code)})
    untimed = await db.login_codes.find_one({"_id": code_id(untimed_code)})
    assert timed["lease_until"] <= before + timedelta(seconds=4.5)
    assert untimed["lease_until"] >= before + timedelta(seconds=29)
