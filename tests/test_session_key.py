"""One current session_key per user: the newest key decrypts, a fresh code helps, stale is said."""

from __future__ import annotations

import base64
import os
import uuid
from typing import Any

import aiohttp
import grpc
import pytest
from bson import ObjectId

import clients
from clients import connect
from service.app import RunningService
from tests.conftest import StubFactory
from tests.edge_support import running_edge
from tests.support import APP_A, Emulator, error_info
from wxlogin.v1 import auth_pb2, auth_pb2_grpc


def name(prefix: str) -> str:
    """A user name no other test uses (the emulator is shared by the whole run)."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def login(stub: auth_pb2_grpc.AuthServiceStub, emu: Emulator, user: str) -> str:
    """Play wx.login() and log in with the code; the token."""
    code = await emu.code(APP_A, user)
    return (await stub.Login(auth_pb2.LoginRequest(app_id=APP_A, code=code))).token


async def decrypt(
    stub: auth_pb2_grpc.AuthServiceStub,
    emu: Emulator,
    token: str,
    user: str,
    code: str = "",
    *,
    signed: bool = True,
) -> str:
    """DecryptUserData of data WeChat encrypted under the user's current key: "ok" or a reason."""
    blob = await emu.user_data(APP_A, user, data={"nickName": user})
    request = auth_pb2.DecryptUserDataRequest(
        token=token,
        encrypted_data=blob["encryptedData"],
        iv=blob["iv"],
        raw_data=blob["rawData"] if signed else "",
        signature=blob["signature"] if signed else "",
        code=code,
    )
    try:
        reply = await stub.DecryptUserData(request)
    except grpc.aio.AioRpcError as error:
        return error_info(error).reason
    assert reply.data.fields["nickName"].string_value == user
    return "ok"


async def test_an_older_session_decrypts_with_the_newest_login_key(
    stub: auth_pb2_grpc.AuthServiceStub, emu: Emulator
) -> None:
    """After a second login, the first session's token decrypts data under the new key."""
    user = name("nora")
    first = await login(stub, emu, user)
    second = await login(stub, emu, user)  # WeChat rotated the key: only the new one is valid
    assert await decrypt(stub, emu, first, user) == "ok"
    assert await decrypt(stub, emu, second, user) == "ok"


async def test_a_key_stored_by_another_process_is_found(
    start_stub: StubFactory, emu: Emulator
) -> None:
    """A process that cached the old key re-reads MongoDB when decryption fails, and succeeds."""
    user = name("otto")
    async with start_stub() as one, start_stub() as two:
        token = await login(one, emu, user)
        assert await decrypt(one, emu, token, user) == "ok"  # `one` now caches this key
        await login(two, emu, user)  # the newest key, stored by the other process
        assert await decrypt(one, emu, token, user) == "ok"


async def test_a_fresh_code_makes_its_key_current(
    stub: auth_pb2_grpc.AuthServiceStub, emu: Emulator, db: Any
) -> None:
    """wx.login() without a Login: the code sent with the data is exchanged and its key kept."""
    user = name("pia")
    minted = await emu.wx_login(APP_A, user)
    reply = await stub.Login(auth_pb2.LoginRequest(app_id=APP_A, code=minted["code"]))
    before = (await db.users.find_one({"_id": ObjectId(reply.user.user_id)}))["session_key"]
    code = await emu.code(APP_A, user)  # WeChat rotates the key; wxlogin has not seen it yet
    assert await decrypt(stub, emu, reply.token, user, code=code) == "ok"
    after = (await db.users.find_one({"_id": ObjectId(reply.user.user_id)}))["session_key"]
    assert after != before
    # The key the code brought is now the user's: the next call needs no code.
    assert await decrypt(stub, emu, reply.token, user) == "ok"


async def test_a_code_of_another_user_is_refused(
    stub: auth_pb2_grpc.AuthServiceStub, emu: Emulator
) -> None:
    """A code that exchanges to another openid is PERMISSION_DENIED CODE_USER_MISMATCH."""
    user, other = name("quin"), name("rafe")
    token = await login(stub, emu, user)
    blob = await emu.user_data(APP_A, user)
    request = auth_pb2.DecryptUserDataRequest(
        token=token,
        encrypted_data=blob["encryptedData"],
        iv=blob["iv"],
        code=await emu.code(APP_A, other),
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.DecryptUserData(request)
    info = error_info(caught.value)
    assert (info.code, info.reason) == (grpc.StatusCode.PERMISSION_DENIED, "CODE_USER_MISMATCH")
    # The user's own key is untouched by the refused code.
    assert await decrypt(stub, emu, token, user) == "ok"


@pytest.mark.parametrize(("spent", "reason"), [(False, "CODE_INVALID"), (True, "CODE_USED")])
async def test_a_bad_code_is_refused_like_at_login(
    stub: auth_pb2_grpc.AuthServiceStub, emu: Emulator, spent: bool, reason: str
) -> None:
    """An unknown code is CODE_INVALID, a spent one CODE_USED, as Login answers them."""
    user = name("sage")
    token = await login(stub, emu, user)
    code = await emu.code(APP_A, user) if spent else "nosuchcode"
    if spent:
        assert await decrypt(stub, emu, token, user, code=code) == "ok"
    assert await decrypt(stub, emu, token, user, code=code) == reason


async def test_the_users_key_is_sealed_at_rest(
    stub: auth_pb2_grpc.AuthServiceStub, emu: Emulator, db: Any
) -> None:
    """The user's document holds its current key sealed: never the key WeChat sent."""
    user = name("tess")
    minted = await emu.wx_login(APP_A, user)
    reply = await stub.Login(auth_pb2.LoginRequest(app_id=APP_A, code=minted["code"]))
    doc = await db.users.find_one({"_id": ObjectId(reply.user.user_id)})
    assert doc is not None
    sealed = bytes(doc["session_key"])
    assert minted["session_key"].encode() not in sealed
    assert minted["session_key"] not in repr(doc)
    assert doc["session_key_at"] is not None


async def test_a_user_stored_without_a_key_uses_the_sessions(
    start_stub: StubFactory, emu: Emulator, db: Any
) -> None:
    """A user stored before keys were kept per user decrypts with the session's own key."""
    user = name("ugo")
    async with start_stub() as stub:
        token = await login(stub, emu, user)
    users = await db.users.update_many({}, {"$unset": {"session_key": "", "session_key_at": ""}})
    assert users.modified_count >= 1
    async with start_stub() as fresh:  # nothing cached: only MongoDB to go by
        assert await decrypt(fresh, emu, token, user) == "ok"


async def stats(http: aiohttp.ClientSession, base: str) -> dict[str, int]:
    """The emulator's request counts per endpoint."""
    async with http.get(base + "/_dev/stats") as response:
        answer: dict[str, int] = await response.json()
        return answer


async def test_a_stale_key_is_session_key_stale_and_a_code_fixes_it(
    stub: auth_pb2_grpc.AuthServiceStub, emu: Emulator
) -> None:
    """wx.login() ran, its code never reached us: SESSION_KEY_STALE; that code then decrypts."""
    user = name("vera")
    token = await login(stub, emu, user)
    code = await emu.code(APP_A, user)
    assert await decrypt(stub, emu, token, user) == "SESSION_KEY_STALE"
    assert await decrypt(stub, emu, token, user, code=code) == "ok"


async def test_stale_is_failed_precondition_saying_what_to_do(
    stub: auth_pb2_grpc.AuthServiceStub, emu: Emulator
) -> None:
    """SESSION_KEY_STALE is FAILED_PRECONDITION and tells the caller to send a wx.login() code."""
    user = name("wes")
    token = await login(stub, emu, user)
    await emu.code(APP_A, user)
    blob = await emu.user_data(APP_A, user)
    request = auth_pb2.DecryptUserDataRequest(
        token=token, encrypted_data=blob["encryptedData"], iv=blob["iv"]
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.DecryptUserData(request)
    info = error_info(caught.value)
    assert (info.code, info.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "SESSION_KEY_STALE")
    assert "wx.login()" in info.message
    assert "code" in info.message


async def test_bad_data_under_a_current_key_is_decrypt_failed_asked_once(
    stub: auth_pb2_grpc.AuthServiceStub,
    emu: Emulator,
    emulator_url: str,
    http: aiohttp.ClientSession,
) -> None:
    """Garbage under a key WeChat calls current: DECRYPT_FAILED; WeChat is asked once a minute."""
    token = await login(stub, emu, name("xia"))
    request = auth_pb2.DecryptUserDataRequest(
        token=token,
        encrypted_data=base64.b64encode(os.urandom(64)).decode(),
        iv=base64.b64encode(os.urandom(16)).decode(),
    )
    before = await stats(http, emulator_url)
    for _ in range(3):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.DecryptUserData(request)
        assert error_info(caught.value).reason == "DECRYPT_FAILED"
    after = await stats(http, emulator_url)
    assert after["checksession_requests"] == before["checksession_requests"] + 1


async def test_without_an_answer_from_wechat_it_stays_decrypt_failed(
    stub: auth_pb2_grpc.AuthServiceStub, emu: Emulator
) -> None:
    """WeChat cannot say whether the key is current (checksession down): the failure stands."""
    user = name("yan")
    token = await login(stub, emu, user)
    await emu.code(APP_A, user)
    await emu.fault(endpoint="checksession", errcode=-1)
    assert await decrypt(stub, emu, token, user, signed=False) == "DECRYPT_FAILED"
    assert await decrypt(stub, emu, token, user) == "SIGNATURE_MISMATCH"


async def test_check_session_never_asks_wechat(
    stub: auth_pb2_grpc.AuthServiceStub,
    emu: Emulator,
    emulator_url: str,
    http: aiohttp.ClientSession,
) -> None:
    """CheckSession costs no WeChat request of any kind, even when the key went stale."""
    user = name("zed")
    token = await login(stub, emu, user)
    await emu.code(APP_A, user)
    before = await stats(http, emulator_url)
    for _ in range(20):
        await stub.CheckSession(auth_pb2.CheckSessionRequest(token=token))
    assert await stats(http, emulator_url) == before


# -- the edge and the client library ------------------------------------------------------------


async def test_the_edge_takes_a_code_with_the_data(
    service: RunningService, emu: Emulator, http: aiohttp.ClientSession
) -> None:
    """POST /v1/user-data/decrypt: 400 SESSION_KEY_STALE without the code, 200 with it."""
    async with (
        grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as channel,
        running_edge(f"127.0.0.1:{service.port}") as edge,
    ):
        stub = auth_pb2_grpc.AuthServiceStub(channel)
        user = name("abe")
        token = await login(stub, emu, user)
        code = await emu.code(APP_A, user)  # the mini-program's wx.login() before the data
        blob = await emu.user_data(APP_A, user, data={"nickName": user})
        body = {"encryptedData": blob["encryptedData"], "iv": blob["iv"]}
        bearer = {"Authorization": f"Bearer {token}"}
        url = f"{edge}/v1/user-data/decrypt"
        async with http.post(url, json=body, headers=bearer) as response:
            assert response.status == 400
            error = (await response.json())["error"]
            assert (error["code"], error["reason"]) == ("FAILED_PRECONDITION", "SESSION_KEY_STALE")
        async with http.post(url, json={**body, "code": code}, headers=bearer) as response:
            assert response.status == 200
            assert (await response.json())["data"]["nickName"] == user


async def test_the_client_sends_the_code_and_names_staleness(
    service: RunningService, emu: Emulator
) -> None:
    """decrypt_user_data(code=...) decrypts; without the code, clients.SessionKeyStale."""
    async with (
        grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as channel,
        connect(f"127.0.0.1:{service.port}") as client,
    ):
        user = name("bea")
        token = await login(auth_pb2_grpc.AuthServiceStub(channel), emu, user)
        code = await emu.code(APP_A, user)
        blob = await emu.user_data(APP_A, user, data={"nickName": user})
        with pytest.raises(clients.SessionKeyStale) as caught:
            await client.decrypt_user_data(token, blob["encryptedData"], blob["iv"])
        assert caught.value.code is grpc.StatusCode.FAILED_PRECONDITION
        data = await client.decrypt_user_data(token, blob["encryptedData"], blob["iv"], code=code)
        assert data.data["nickName"] == user
        other = await emu.code(APP_A, name("cid"))
        with pytest.raises(clients.CodeUserMismatch):
            await client.decrypt_user_data(token, blob["encryptedData"], blob["iv"], code=other)
