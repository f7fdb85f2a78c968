"""Neither tokens nor session_keys appear in plaintext in MongoDB or in the logs."""

from __future__ import annotations

import base64
import logging
from typing import Any

import grpc
import pytest
from bson import BSON

from tests.support import APP_A, APPS, Emulator
from wxlogin.v1 import auth_pb2, auth_pb2_grpc


async def test_no_plaintext_token_or_session_key_in_the_database_or_logs(
    stub: auth_pb2_grpc.AuthServiceStub, emu: Emulator, db: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Run every RPC (and failures) at DEBUG; search the logs and every stored byte for secrets."""
    caplog.set_level(logging.DEBUG)
    minted = await emu.wx_login(APP_A, "xavier")
    code, session_key = minted["code"], minted["session_key"]
    login = await stub.Login(auth_pb2.LoginRequest(app_id=APP_A, code=code))
    blob = await emu.user_data(APP_A, "xavier")
    await stub.CheckSession(auth_pb2.CheckSessionRequest(token=login.token))
    await stub.DecryptUserData(  # proves the service holds exactly this session_key
        auth_pb2.DecryptUserDataRequest(
            token=login.token,
            encrypted_data=blob["encryptedData"],
            iv=blob["iv"],
            raw_data=blob["rawData"],
            signature=blob["signature"],
        )
    )
    for bad in ("wxl1_" + "D" * 43, login.token[:-1]):
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.CheckSession(auth_pb2.CheckSessionRequest(token=bad))
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.Login(auth_pb2.LoginRequest(app_id=APP_A, code=code))  # reused code
    await stub.RevokeSession(auth_pb2.RevokeSessionRequest(token=login.token))

    # Everything stored, as bytes. Revoke deleted the session, so log in again first.
    again = await emu.wx_login(APP_A, "xavier")
    second = await stub.Login(auth_pb2.LoginRequest(app_id=APP_A, code=again["code"]))
    stored = b"".join([BSON.encode(doc) async for doc in db.sessions.find({})])
    stored += b"".join([BSON.encode(doc) async for doc in db.users.find({})])
    assert await db.sessions.count_documents({}) == 1
    for token in (second.token, second.token.split("_", 1)[1]):
        assert token.encode() not in stored
    for key in (again["session_key"], session_key):
        assert key.encode() not in stored
        assert base64.b64decode(key) not in stored

    text = caplog.text
    for secret in (
        login.token,
        login.token.split("_", 1)[1],
        second.token,
        session_key,
        again["session_key"],
        code,
        APPS[APP_A],
        blob["encryptedData"],
    ):
        assert secret not in text, "a secret reached the logs"
    assert "user_id=" + login.user.user_id in text  # users are logged by user_id
