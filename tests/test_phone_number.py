"""GetPhoneNumber: a getPhoneNumber code for the session user's number, with the shared token."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from typing import Any

import aiohttp
import grpc
import pytest

import clients
from clients import connect
from service.app import RunningService
from service.phone_numbers import PhoneNumber
from service.wechat import PhoneInfo
from tests.conftest import StubFactory
from tests.edge_support import running_edge
from tests.support import APP_A, APPS, Emulator, error_info
from tests.test_access_tokens import TokenEmulator, token_emulator
from wxlogin.v1 import auth_pb2, auth_pb2_grpc


def name(prefix: str) -> str:
    """A user name no other test uses (the emulator is shared by the whole run)."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def dev(http: aiohttp.ClientSession, base: str, path: str, body: Any) -> dict[str, Any]:
    """POST to an emulator's dev API."""
    async with http.post(base + path, json=body) as response:
        answer: dict[str, Any] = await response.json()
        assert response.status == 200, answer
        return answer


async def phone_user(
    stub: auth_pb2_grpc.AuthServiceStub,
    http: aiohttp.ClientSession,
    base: str,
    phone: str = "13800138000",
    country_code: str = "86",
) -> tuple[str, str, str]:
    """A user set up with a phone, logged in: (user, token, a fresh phone code)."""
    user = name("phone")
    setup = {"appid": APP_A, "user": user, "phone": phone, "country_code": country_code}
    await dev(http, base, "/_dev/users", setup)
    code = (await dev(http, base, "/_dev/login", {"appid": APP_A, "user": user}))["code"]
    token = (await stub.Login(auth_pb2.LoginRequest(app_id=APP_A, code=code))).token
    phone_code = (await dev(http, base, "/_dev/phone-code", {"appid": APP_A, "user": user}))["code"]
    return user, token, phone_code


async def get_number(
    stub: auth_pb2_grpc.AuthServiceStub, token: str, phone_code: str
) -> auth_pb2.GetPhoneNumberResponse:
    """One GetPhoneNumber call."""
    return await stub.GetPhoneNumber(
        auth_pb2.GetPhoneNumberRequest(token=token, phone_code=phone_code)
    )


async def number_error(
    stub: auth_pb2_grpc.AuthServiceStub, token: str, phone_code: str
) -> tuple[grpc.StatusCode, str, dict[str, str]]:
    """The code, reason and metadata of a GetPhoneNumber that must fail."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await get_number(stub, token, phone_code)
    info = error_info(caught.value)
    return info.code, info.reason, dict(info.metadata)


async def test_the_number_of_the_sessions_user(
    stub: auth_pb2_grpc.AuthServiceStub,
    emu: Emulator,
    emulator_url: str,
    http: aiohttp.ClientSession,
    db: Any,
) -> None:
    """The number's fields come back, country_code a string, watermark time set; nothing stored."""
    _, token, phone_code = await phone_user(stub, http, emulator_url)
    reply = await get_number(stub, token, phone_code)
    assert (reply.phone_number, reply.pure_phone_number, reply.country_code) == (
        "13800138000",
        "13800138000",
        "86",
    )
    age = datetime.now(UTC) - reply.watermark_time.ToDatetime(tzinfo=UTC)
    assert abs(age.total_seconds()) < 300
    for collection in await db.list_collection_names():
        async for doc in db[collection].find({}):
            assert "13800138000" not in repr(doc), collection


async def test_a_number_outside_china_keeps_its_country_code(
    stub: auth_pb2_grpc.AuthServiceStub, emulator_url: str, http: aiohttp.ClientSession
) -> None:
    """phone_number carries +1, pure_phone_number does not, country_code is "1"."""
    _, token, phone_code = await phone_user(stub, http, emulator_url, "4155550100", "1")
    reply = await get_number(stub, token, phone_code)
    assert (reply.phone_number, reply.pure_phone_number, reply.country_code) == (
        "+1 4155550100",
        "4155550100",
        "1",
    )


async def test_a_phone_code_works_once(
    stub: auth_pb2_grpc.AuthServiceStub, emulator_url: str, http: aiohttp.ClientSession
) -> None:
    """A used phone code is CODE_USED, an unknown one CODE_INVALID: both UNAUTHENTICATED."""
    _, token, phone_code = await phone_user(stub, http, emulator_url)
    await get_number(stub, token, phone_code)
    used = await number_error(stub, token, phone_code)
    assert used[:2] == (grpc.StatusCode.UNAUTHENTICATED, "CODE_USED")
    unknown = await number_error(stub, token, "nosuchphonecode")
    assert unknown[:2] == (grpc.StatusCode.UNAUTHENTICATED, "CODE_INVALID")
    assert unknown[2]["errcode"] == "40029"
    # The advice is the button's, not wx.login()'s (that would not get a new phone code).
    for phone_code_again in (phone_code, "nosuchphonecode"):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await get_number(stub, token, phone_code_again)
        message = error_info(caught.value).message
        assert "getPhoneNumber" in message, message
        assert "wx.login" not in message, message


@pytest.mark.parametrize(
    ("token", "phone_code", "reason"),
    [
        ("wxl1_" + "x" * 43, "somecode", "SESSION_INVALID"),
        ("", "somecode", "BAD_REQUEST"),
        ("wxl1_" + "x" * 43, "", "BAD_REQUEST"),
        ("wxl1_" + "x" * 43, "c" * 300, "BAD_REQUEST"),
    ],
)
async def test_bad_requests_never_reach_wechat(
    stub: auth_pb2_grpc.AuthServiceStub,
    emulator_url: str,
    http: aiohttp.ClientSession,
    token: str,
    phone_code: str,
    reason: str,
) -> None:
    """An unknown token or an empty or absurd phone code is refused before WeChat is asked."""
    async with http.get(emulator_url + "/_dev/stats") as response:
        before = await response.json()
    assert (await number_error(stub, token, phone_code))[1] == reason
    async with http.get(emulator_url + "/_dev/stats") as response:
        assert await response.json() == before


async def test_a_rejected_access_token_is_refreshed_once_and_the_call_retried(
    start_stub: StubFactory,
) -> None:
    """WeChat refuses the token (someone forced a new one): one refresh, one retry, the number."""
    async with (
        token_emulator(dict(APPS)) as wechat,
        start_stub(wechat_api_base=wechat.base) as stub,
    ):
        _, token, first_code = await phone_user(stub, wechat.http, wechat.base)
        await get_number(stub, token, first_code)  # the service now holds a token
        await wechat.stable_token(APP_A, force=True)  # ...which someone else's force kills
        before = await stats(wechat)
        _, token, phone_code = await phone_user(stub, wechat.http, wechat.base, "13900000000")
        reply = await get_number(stub, token, phone_code)
        assert reply.pure_phone_number == "13900000000"
        after = await stats(wechat)
        assert after["getuserphonenumber_requests"] - before["getuserphonenumber_requests"] == 2
        assert after["stable_token_requests"] - before["stable_token_requests"] == 1


async def test_a_token_rejected_twice_is_not_retried_again(start_stub: StubFactory) -> None:
    """40001 again after the refresh: WECHAT_ERROR with the errcode, after exactly two tries."""
    async with (
        token_emulator(dict(APPS)) as wechat,
        start_stub(wechat_api_base=wechat.base) as stub,
    ):
        _, token, phone_code = await phone_user(stub, wechat.http, wechat.base)
        fault = {"endpoint": "getuserphonenumber", "errcode": 40001, "times": 2}
        await wechat.json("POST", "/_dev/faults", fault)
        code, reason, metadata = await number_error(stub, token, phone_code)
        assert (code, reason, metadata["errcode"]) == (
            grpc.StatusCode.UNAVAILABLE,
            "WECHAT_ERROR",
            "40001",
        )
        assert (await stats(wechat))["getuserphonenumber_requests"] == 2
        # The phone code was never spent: it still works.
        assert (await get_number(stub, token, phone_code)).country_code == "86"


async def stats(wechat: TokenEmulator) -> dict[str, int]:
    """The emulator's request counts per endpoint."""
    answer: dict[str, int] = await wechat.json("GET", "/_dev/stats")
    return answer


def test_the_number_is_never_in_a_repr() -> None:
    """PhoneNumber and PhoneInfo keep the number out of repr (and so out of log lines)."""
    number = PhoneNumber("+1 4155550100", "4155550100", "1", None)
    info = PhoneInfo("+1 4155550100", "4155550100", "1", APP_A, 1)
    assert not re.search(r"4155550100", repr(number) + repr(info))


# -- the edge and the client library ------------------------------------------------------------


async def test_the_edge_answers_post_phone_number(
    service: RunningService, emulator_url: str, http: aiohttp.ClientSession
) -> None:
    """POST /v1/phone-number {code} with the bearer: the number's fields; errors as documented."""
    async with (
        grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as channel,
        running_edge(f"127.0.0.1:{service.port}") as edge,
    ):
        stub = auth_pb2_grpc.AuthServiceStub(channel)
        _, token, phone_code = await phone_user(stub, http, emulator_url, "13700000000")
        bearer = {"Authorization": f"Bearer {token}"}
        url = f"{edge}/v1/phone-number"
        async with http.post(url, json={"code": phone_code}, headers=bearer) as response:
            assert response.status == 200
            body = await response.json()
        assert set(body) == {"phone_number", "pure_phone_number", "country_code", "watermark_time"}
        assert (body["pure_phone_number"], body["country_code"]) == ("13700000000", "86")
        assert body["watermark_time"].endswith("Z")
        async with http.post(url, json={"code": phone_code}, headers=bearer) as response:
            assert response.status == 401
            assert (await response.json())["error"]["reason"] == "CODE_USED"
        async with http.post(url, json={"code": phone_code}) as response:
            assert response.status == 401
            assert (await response.json())["error"]["reason"] == "SESSION_INVALID"
        async with http.post(url, json={}, headers=bearer) as response:
            assert response.status == 400
            assert (await response.json())["error"]["reason"] == "BAD_REQUEST"


async def test_the_client_gets_the_number(
    service: RunningService, emulator_url: str, http: aiohttp.ClientSession
) -> None:
    """client.get_phone_number: a PhoneNumber without the number in repr; CodeUsed once spent."""
    async with (
        grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as channel,
        connect(f"127.0.0.1:{service.port}") as client,
    ):
        stub = auth_pb2_grpc.AuthServiceStub(channel)
        _, token, phone_code = await phone_user(stub, http, emulator_url, "13600000000")
        number = await client.get_phone_number(token, phone_code)
        assert (number.phone_number, number.pure_phone_number) == ("13600000000", "13600000000")
        assert number.country_code == "86"
        assert number.watermark_time is not None
        assert "13600000000" not in repr(number)
        with pytest.raises(clients.CodeUsed):
            await client.get_phone_number(token, phone_code)
