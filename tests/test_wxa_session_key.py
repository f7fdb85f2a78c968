"""CheckSessionKey and ResetSessionKey: WeChat's wxa/checksession and wxa/resetusersessionkey."""

from __future__ import annotations

import uuid
from typing import Any

import aiohttp
import grpc
import pytest

import clients
from clients import connect
from service.app import RunningService
from tests.conftest import StubFactory
from tests.support import APP_A, APPS, Emulator, error_info
from tests.test_access_tokens import token_emulator
from wxlogin.v1 import auth_pb2, auth_pb2_grpc


def name(prefix: str) -> str:
    """A user name no other test uses (the emulator is shared by the whole run)."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def login(stub: auth_pb2_grpc.AuthServiceStub, emu: Emulator, user: str) -> str:
    """Play wx.login() and log in with the code; the token."""
    code = await emu.code(APP_A, user)
    return (await stub.Login(auth_pb2.LoginRequest(app_id=APP_A, code=code))).token


async def key_valid(stub: auth_pb2_grpc.AuthServiceStub, token: str) -> bool:
    """CheckSessionKey's answer."""
    reply = await stub.CheckSessionKey(auth_pb2.CheckSessionKeyRequest(token=token))
    return bool(reply.valid)


async def reset(stub: auth_pb2_grpc.AuthServiceStub, token: str) -> None:
    """One ResetSessionKey call."""
    await stub.ResetSessionKey(auth_pb2.ResetSessionKeyRequest(token=token))


async def decrypts(
    stub: auth_pb2_grpc.AuthServiceStub, emu: Emulator, token: str, user: str
) -> str:
    """DecryptUserData of data under the user's key at WeChat: "ok" or the reason."""
    blob = await emu.user_data(APP_A, user)
    request = auth_pb2.DecryptUserDataRequest(
        token=token, encrypted_data=blob["encryptedData"], iv=blob["iv"]
    )
    try:
        await stub.DecryptUserData(request)
    except grpc.aio.AioRpcError as error:
        return error_info(error).reason
    return "ok"


async def stats(http: aiohttp.ClientSession, base: str) -> dict[str, int]:
    """The emulator's request counts per endpoint."""
    async with http.get(base + "/_dev/stats") as response:
        answer: dict[str, int] = await response.json()
        return answer


async def test_the_key_is_valid_until_the_user_calls_wx_login_again(
    stub: auth_pb2_grpc.AuthServiceStub, emu: Emulator
) -> None:
    """valid=true for the key of the latest login; false once WeChat rotated it (87009)."""
    user = name("val")
    token = await login(stub, emu, user)
    assert await key_valid(stub, token)
    await emu.code(APP_A, user)  # wx.login() again: WeChat's key changes, ours does not
    assert not await key_valid(stub, token)
    await login(stub, emu, user)  # a Login brings the new key: valid again, for every session
    assert await key_valid(stub, token)


async def test_a_reset_key_becomes_the_users_current_one(
    stub: auth_pb2_grpc.AuthServiceStub,
    emu: Emulator,
    emulator_url: str,
    http: aiohttp.ClientSession,
) -> None:
    """After ResetSessionKey, data WeChat encrypts under the new key decrypts; the key is valid."""
    user = name("rst")
    token = await login(stub, emu, user)
    before = await stats(http, emulator_url)
    await reset(stub, token)
    after = await stats(http, emulator_url)
    assert after["resetusersessionkey_requests"] == before["resetusersessionkey_requests"] + 1
    assert await decrypts(stub, emu, token, user) == "ok"
    assert await key_valid(stub, token)


async def test_a_reset_with_a_stale_key_is_session_key_stale(
    stub: auth_pb2_grpc.AuthServiceStub, emu: Emulator
) -> None:
    """WeChat's 87009 on a reset: FAILED_PRECONDITION SESSION_KEY_STALE (a code is needed)."""
    user = name("stl")
    token = await login(stub, emu, user)
    await emu.code(APP_A, user)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await reset(stub, token)
    info = error_info(caught.value)
    assert (info.code, info.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "SESSION_KEY_STALE")
    assert "wx.login()" in info.message


@pytest.mark.parametrize("rpc", ["CheckSessionKey", "ResetSessionKey"])
async def test_an_unknown_token_never_reaches_wechat(
    stub: auth_pb2_grpc.AuthServiceStub, emulator_url: str, http: aiohttp.ClientSession, rpc: str
) -> None:
    """SESSION_INVALID for an unknown token, without a WeChat request."""
    before = await stats(http, emulator_url)
    request_type = getattr(auth_pb2, f"{rpc}Request")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await getattr(stub, rpc)(request_type(token="wxl1_" + "x" * 43))
    assert error_info(caught.value).reason == "SESSION_INVALID"
    assert await stats(http, emulator_url) == before


async def test_a_rejected_access_token_is_refreshed_and_the_check_retried(
    start_stub: StubFactory, http: aiohttp.ClientSession
) -> None:
    """The service's token was replaced by a force elsewhere: one refresh, one retry, an answer."""
    async with (
        token_emulator(dict(APPS)) as wechat,
        start_stub(wechat_api_base=wechat.base) as stub,
    ):
        user = name("ref")
        code = (await wechat.json("POST", "/_dev/login", {"appid": APP_A, "user": user}))["code"]
        token = (await stub.Login(auth_pb2.LoginRequest(app_id=APP_A, code=code))).token
        assert await key_valid(stub, token)
        await wechat.stable_token(APP_A, force=True)
        before: dict[str, Any] = await wechat.json("GET", "/_dev/stats")
        assert await key_valid(stub, token)
        after: dict[str, Any] = await wechat.json("GET", "/_dev/stats")
        assert after["checksession_requests"] - before["checksession_requests"] == 2
        assert after["stable_token_requests"] - before["stable_token_requests"] == 1


async def test_the_client_checks_and_resets_the_key(service: RunningService, emu: Emulator) -> None:
    """check_session_key and reset_session_key; a stale key is clients.SessionKeyStale."""
    async with (
        grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as channel,
        connect(f"127.0.0.1:{service.port}") as client,
    ):
        stub = auth_pb2_grpc.AuthServiceStub(channel)
        user = name("cli")
        token = await login(stub, emu, user)
        assert await client.check_session_key(token)
        await client.reset_session_key(token)
        assert await client.check_session_key(token)
        await emu.code(APP_A, user)
        assert not await client.check_session_key(token)
        with pytest.raises(clients.SessionKeyStale):
            await client.reset_session_key(token)
