"""Load shedding: past the bounds, calls fail fast with OVERLOADED; other work goes on."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import grpc

from service.embedded_mongo import EmbeddedMongo
from tests.conftest import ServiceFactory, StubFactory
from tests.support import APP_A, Emulator, error_info, mongod_pids
from wxlogin.v1 import auth_pb2, auth_pb2_grpc


async def outcome(call: grpc.aio.UnaryUnaryCall[object, object]) -> str:
    """ "OK" or the ErrorInfo reason of a finished call."""
    try:
        await call
    except grpc.aio.AioRpcError as error:
        return error_info(error).reason
    return "OK"


async def test_stalled_wechat_sheds_logins_and_check_session_goes_on(
    start_stub: StubFactory, emu: Emulator
) -> None:
    """3 login slots, WeChat stalled: 7 of 10 logins are OVERLOADED at once; CheckSession works."""
    async with start_stub(max_in_flight_logins=3) as stub:
        token = (
            await stub.Login(auth_pb2.LoginRequest(app_id=APP_A, code=await emu.code(APP_A, "x")))
        ).token
        codes = [await emu.code(APP_A, f"stall-{i}") for i in range(10)]
        await emu.fault(latency_ms=1500, times=10)
        logins = [
            asyncio.ensure_future(
                outcome(stub.Login(auth_pb2.LoginRequest(app_id=APP_A, code=code), timeout=10))
            )
            for code in codes
        ]
        await asyncio.sleep(0.5)  # the 3 admitted ones are now waiting on WeChat
        shed_already = [task.result() for task in logins if task.done()]
        checked = await stub.CheckSession(auth_pb2.CheckSessionRequest(token=token), timeout=2)
        results = await asyncio.gather(*logins)
    assert shed_already == ["OVERLOADED"] * 7
    assert sorted(results) == ["OK"] * 3 + ["OVERLOADED"] * 7
    assert checked.user.openid


async def test_stalled_mongodb_bounds_the_login_queue(
    start_service: ServiceFactory, emu: Emulator, tmp_path: Path
) -> None:
    """mongod frozen: logins past the waiting bound are OVERLOADED; the rest finish after."""
    data_dir = tmp_path / "frozen"
    mongo = EmbeddedMongo(data_dir)
    uri = await mongo.start()
    try:
        async with (
            start_service(mongodb_uri=uri, max_waiting_logins=2) as running,
            grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel,
        ):
            stub = auth_pb2_grpc.AuthServiceStub(channel)
            # Connected first: the 0.5 s below is for the first login to reach its
            # write, not for the channel to connect on a busy machine.
            await asyncio.wait_for(channel.channel_ready(), 10)
            codes = [await emu.code(APP_A, f"frozen-{i}") for i in range(12)]
            pids = mongod_pids(data_dir)
            for pid in pids:
                os.kill(pid, signal.SIGSTOP)
            try:
                first = asyncio.ensure_future(
                    outcome(
                        stub.Login(auth_pb2.LoginRequest(app_id=APP_A, code=codes[0]), timeout=8)
                    )
                )
                await asyncio.sleep(0.5)  # its write is out, and stuck
                rest = [
                    asyncio.ensure_future(
                        outcome(
                            stub.Login(auth_pb2.LoginRequest(app_id=APP_A, code=code), timeout=8)
                        )
                    )
                    for code in codes[1:]
                ]
                await asyncio.sleep(1.0)
                shed_while_frozen = sum(
                    1 for task in rest if task.done() and task.result() == "OVERLOADED"
                )
            finally:
                for pid in pids:
                    os.kill(pid, signal.SIGCONT)
            results = [await first, *await asyncio.gather(*rest)]
    finally:
        await mongo.stop()
    # 11 arrived behind a stuck write: 2 may wait, the other 9 are shed at once.
    assert shed_while_frozen == 9
    assert results.count("OVERLOADED") == 9
    assert set(results) <= {"OK", "OVERLOADED", "STORE_UNAVAILABLE"}
