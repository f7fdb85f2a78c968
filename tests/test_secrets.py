"""Neither tokens nor session_keys appear in plaintext in MongoDB or in the logs (text or JSON)."""

from __future__ import annotations

import base64
import logging
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from bson import BSON

from tests.log_support import JsonLines, json_logs
from tests.support import APP_A, APPS, Emulator, decrypt_request
from wxlogin.v1 import auth_pb2, auth_pb2_grpc


@pytest.fixture
def json_lines() -> Iterator[JsonLines]:
    """Everything the test logs, also in the JSON form (WXLOGIN_LOG_FORMAT=json)."""
    with json_logs() as lines:
        yield lines


async def test_no_plaintext_token_or_session_key_in_the_database_or_logs(
    stub: auth_pb2_grpc.AuthServiceStub,
    emu: Emulator,
    db: Any,
    caplog: pytest.LogCaptureFixture,
    json_lines: JsonLines,
) -> None:
    """Run every RPC (and failures) at DEBUG; search both log forms and every stored byte."""
    caplog.set_level(logging.DEBUG)
    minted = await emu.wx_login(APP_A, "xavier")
    code, session_key = minted["code"], minted["session_key"]
    login = await stub.Login(auth_pb2.LoginRequest(app_id=APP_A, code=code))
    blob = await emu.user_data(APP_A, "xavier")
    await stub.CheckSession(auth_pb2.CheckSessionRequest(token=login.token))
    await stub.DecryptUserData(  # proves the service holds exactly this session_key
        decrypt_request(login.token, blob)
    )
    for bad in ("wxl1_" + "D" * 43, login.token[:-1]):
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.CheckSession(auth_pb2.CheckSessionRequest(token=bad))
    # The same code again: the same answer, kept sealed in login_codes (checked below).
    replay = await stub.Login(auth_pb2.LoginRequest(app_id=APP_A, code=code))
    assert replay.token == login.token
    await stub.RevokeSession(auth_pb2.RevokeSessionRequest(token=login.token))

    # Everything stored, as bytes. Revoke deleted the session, so log in again first.
    again = await emu.wx_login(APP_A, "xavier")
    second = await stub.Login(auth_pb2.LoginRequest(app_id=APP_A, code=again["code"]))
    stored = b"".join([BSON.encode(doc) async for doc in db.sessions.find({})])
    stored += b"".join([BSON.encode(doc) async for doc in db.users.find({})])
    stored += b"".join([BSON.encode(doc) async for doc in db.login_codes.find({})])
    assert await db.login_codes.count_documents({}) == 2
    for secret in (code, again["code"], login.token, login.token.split("_", 1)[1]):
        assert secret.encode() not in stored
    assert await db.sessions.count_documents({}) == 1
    for token in (second.token, second.token.split("_", 1)[1]):
        assert token.encode() not in stored
    for key in (again["session_key"], session_key):
        assert key.encode() not in stored
        assert base64.b64decode(key) not in stored

    entries = json_lines.entries()  # every line one JSON object
    assert any(entry.get("user_id") == login.user.user_id for entry in entries)
    text = caplog.text + json_lines.text
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
