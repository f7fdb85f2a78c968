"""The service on a real 3-member replica set: the RPCs work, and a killed primary is survived."""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

import grpc
import pytest
from bson import ObjectId
from google.protobuf import json_format
from pymongo import AsyncMongoClient

from devtools.replica_set import ReplicaSet
from service.settings import Settings
from tests.conftest import StubFactory
from tests.support import APP_A, Emulator, decrypt_request, error_info
from wxlogin.v1 import auth_pb2


@pytest.fixture
def settings(replica_settings: Settings) -> Settings:
    """Every service in this module runs on the replica set."""
    return replica_settings


async def test_login_check_and_decrypt_work_on_a_replica_set(
    replica_set: ReplicaSet, start_stub: StubFactory, emu: Emulator, db: Any
) -> None:
    """Login, CheckSession and DecryptUserData succeed against a 3-member replica set."""
    hello = await db.client.admin.command("hello")
    assert hello["setName"] == replica_set.name  # really the set, not one member
    assert len(hello["hosts"]) == 3
    async with start_stub() as stub:
        login = await stub.Login(
            auth_pb2.LoginRequest(app_id=APP_A, code=await emu.code(APP_A, "rosa"))
        )
        assert login.new_user
        checked = await stub.CheckSession(auth_pb2.CheckSessionRequest(token=login.token))
        assert checked.user == login.user
        blob = await emu.user_data(APP_A, "rosa", data={"nickName": "Rosa"})
        decrypted = await stub.DecryptUserData(decrypt_request(login.token, blob))
        assert json_format.MessageToDict(decrypted.data)["nickName"] == "Rosa"
    assert await db.sessions.count_documents({}) == 1


async def test_killed_primary_is_replaced_and_rejoins_after_restart(
    replica_set: ReplicaSet, start_stub: StubFactory, emu: Emulator, settings: Settings
) -> None:
    """SIGKILL of the primary: another member is elected, logins go on, the member rejoins."""
    async with start_stub() as stub:
        before = await stub.Login(
            auth_pb2.LoginRequest(app_id=APP_A, code=await emu.code(APP_A, "kim"))
        )
        old = await replica_set.wait_for_primary()
        try:
            await replica_set.kill(old)
            new = await replica_set.wait_for_primary()
            assert new != old
            after = await stub.Login(
                auth_pb2.LoginRequest(app_id=APP_A, code=await emu.code(APP_A, "lee"))
            )
            checked = await stub.CheckSession(auth_pb2.CheckSessionRequest(token=before.token))
            assert checked.user == before.user  # acknowledged before the kill, kept after it

            await replica_set.restart(old)
            await replica_set.wait_healthy()
            assert (await replica_set.member_states())[old] == "SECONDARY"
            # Rejoined means caught up: it has the user written while it was dead.
            assert await _user_reaches(replica_set, old, settings.database, after.user.user_id)
        finally:
            # The set is shared by the session: leave all three members up.
            if replica_set.members[old].pid is None:
                await replica_set.restart(old)
            await replica_set.wait_healthy()


async def _user_reaches(replica_set: ReplicaSet, index: int, database: str, user_id: str) -> bool:
    """Does member `index` itself hold the user within 30 s (replication is asynchronous)?"""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        replica_set.members[index].uri, serverSelectionTimeoutMS=5000
    )
    try:
        for _ in range(150):
            if await client[database].users.find_one({"_id": ObjectId(user_id)}) is not None:
                return True
            await asyncio.sleep(0.2)
        return False
    finally:
        await client.close()


async def test_every_token_handed_out_survives_a_primary_sigkill_under_load(
    replica_set: ReplicaSet, start_stub: StubFactory, emu: Emulator
) -> None:
    """Secondaries lagging, primary SIGKILLed under load: no token handed out is lost."""
    tokens: list[str] = []
    reasons: list[str] = []
    stop = asyncio.Event()

    async def keep_logging_in(stub: Any, worker: int) -> None:
        number = 0
        while not stop.is_set():
            number += 1
            code = await emu.code(APP_A, f"load-{worker}-{number}")
            try:
                reply = await stub.Login(auth_pb2.LoginRequest(app_id=APP_A, code=code), timeout=10)
            except grpc.aio.AioRpcError as error:
                reasons.append(error_info(error).reason)
                await asyncio.sleep(0.05)
            else:
                tokens.append(reply.token)

    async with start_stub(session_cache_seconds=0) as stub:
        workers = [asyncio.ensure_future(keep_logging_in(stub, i)) for i in range(8)]
        try:
            await asyncio.sleep(1.0)
            old_primary = await replica_set.wait_for_primary()
            # A harsh case: the secondaries stall (frozen) under load, then the
            # primary dies. (Measured: with w:1 this run lost no token either: the
            # oplog the primary pushed waited in the frozen members' socket
            # buffers. tests/test_durability.py is the test that catches a weaker
            # write concern; this one checks a real failover end to end.)
            frozen = [
                pid
                for index, member in enumerate(replica_set.members)
                if index != old_primary and (pid := member.pid) is not None
            ]
            for pid in frozen:
                os.kill(pid, signal.SIGSTOP)
            try:
                await asyncio.sleep(1.0)
                before_kill = len(tokens)
                await replica_set.kill(old_primary)
            finally:
                for pid in frozen:
                    os.kill(pid, signal.SIGCONT)
            new_primary = await replica_set.wait_for_primary()
            # Logins go on on the new primary.
            after_election = len(tokens)
            for _ in range(200):
                if len(tokens) >= after_election + 20:
                    break
                await asyncio.sleep(0.05)
        finally:
            stop.set()
            await asyncio.gather(*workers)
            await replica_set.restart(old_primary)
            await replica_set.wait_healthy()
        assert new_primary != old_primary
        del before_kill
        assert len(tokens) >= after_election + 20
        # Every token any caller received is valid, read without any cache.
        lost = []
        for token in tokens:
            try:
                await stub.CheckSession(auth_pb2.CheckSessionRequest(token=token), timeout=5)
            except grpc.aio.AioRpcError as error:
                lost.append(error_info(error).reason)
    assert lost == []
    # During the election callers saw retryable answers only, never INTERNAL.
    assert set(reasons) <= {"STORE_UNAVAILABLE", "OVERLOADED"}, reasons
