"""Acknowledged means durable, and an outage is answered inside the caller's deadline."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import grpc
import pytest

from service.embedded_mongo import EmbeddedMongo
from tests.conftest import ServiceFactory
from tests.support import APP_A, Emulator, check_reason, error_info, mongod_pids
from wxlogin.v1 import auth_pb2, auth_pb2_grpc


async def login_burst(stub: auth_pb2_grpc.AuthServiceStub, emu: Emulator, count: int) -> list[str]:
    """`count` concurrent logins of distinct users; the tokens handed out."""
    codes = await asyncio.gather(*(emu.code(APP_A, f"burst-{i}") for i in range(count)))
    replies = await asyncio.gather(
        *(stub.Login(auth_pb2.LoginRequest(app_id=APP_A, code=code), timeout=10) for code in codes)
    )
    return [reply.token for reply in replies]


async def test_tokens_handed_out_survive_a_mongod_sigkill(
    start_service: ServiceFactory, emu: Emulator, tmp_path: Path
) -> None:
    """mongod SIGKILLed the instant the last Login answers: after a restart every token is valid."""
    data_dir = tmp_path / "crashy"
    mongo = EmbeddedMongo(data_dir)
    uri = await mongo.start()
    lost: list[int] = []
    try:
        for round_number in range(3):
            async with (
                start_service(mongodb_uri=uri, session_cache_seconds=0) as running,
                grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel,
            ):
                stub = auth_pb2_grpc.AuthServiceStub(channel)
                tokens = await login_burst(stub, emu, 40)
                # No await between the last answer and the kill: nothing may flush meanwhile.
                for pid in mongod_pids(data_dir):
                    os.kill(pid, signal.SIGKILL)
            await mongo.stop()  # reaps the killed process
            mongo = EmbeddedMongo(data_dir, port=mongo.port)
            await mongo.start()
            async with (
                start_service(mongodb_uri=uri, session_cache_seconds=0) as running,
                grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel,
            ):
                stub = auth_pb2_grpc.AuthServiceStub(channel)
                reasons = [await check_reason(stub, token) for token in tokens]
                assert set(reasons) <= {"OK", "SESSION_INVALID"}, (round_number, reasons)
                lost.append(reasons.count("SESSION_INVALID"))
    finally:
        await mongo.stop()
    assert lost == [0, 0, 0], f"tokens lost per round: {lost}"


@pytest.mark.parametrize("deadline", [1.0, 2.0])
async def test_mongodb_outage_answers_store_unavailable_before_the_deadline(
    start_service: ServiceFactory, emu: Emulator, tmp_path: Path, deadline: float
) -> None:
    """With MongoDB gone, CheckSession and Login say STORE_UNAVAILABLE, never DEADLINE_EXCEEDED."""
    mongo = EmbeddedMongo(tmp_path / "gone")
    uri = await mongo.start()
    try:
        async with (
            start_service(mongodb_uri=uri, session_cache_seconds=0) as running,
            grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel,
        ):
            stub = auth_pb2_grpc.AuthServiceStub(channel)
            await mongo.stop()
            calls = [
                stub.CheckSession(
                    auth_pb2.CheckSessionRequest(token="wxl1_" + "D" * 43), timeout=deadline
                ),
                stub.Login(
                    auth_pb2.LoginRequest(app_id=APP_A, code=await emu.code(APP_A, "outage")),
                    timeout=deadline,
                ),
            ]
            for call in calls:
                # UNAVAILABLE at all means it came before the deadline: the client
                # would have turned a late answer into DEADLINE_EXCEEDED.
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await call
                assert caught.value.code() is grpc.StatusCode.UNAVAILABLE, caught.value.details()
                assert error_info(caught.value).reason == "STORE_UNAVAILABLE"
    finally:
        await mongo.stop()
