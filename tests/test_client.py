"""WxLoginClient: typed results, the exception tree, deadlines and the retry rule."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import grpc
import pytest
import pytest_asyncio
from google.protobuf import struct_pb2

import clients
from clients import _errors
from clients.client import Deadlines, RetryPolicy, WxLoginClient, connect
from service import errors as service_errors
from service.app import RunningService
from tests.conftest import ServiceFactory
from tests.edge_support import (
    Delay,
    FakeUpstream,
    free_port_target,
    ttl_monitor_paused,
)
from tests.support import APP_A, Emulator
from wxlogin.v1 import auth_pb2

QUICK_RETRY = RetryPolicy(attempts=3, initial_backoff=0.01, max_backoff=0.02)

# Every error class the service can raise, by reason.
SERVICE_ERRORS = {
    cls.reason: cls
    for cls in service_errors.WxLoginError.__subclasses__()
    if cls.reason in service_errors.REASON_CODES
}


@pytest_asyncio.fixture
async def client(service: RunningService) -> AsyncIterator[WxLoginClient]:
    """A client of the real service."""
    async with connect(f"127.0.0.1:{service.port}", retry=QUICK_RETRY) as made:
        yield made


@pytest_asyncio.fixture
async def fake_client(fake: FakeUpstream) -> AsyncIterator[WxLoginClient]:
    """A client of the fake upstream, with quick retries."""
    async with connect(fake.target, retry=QUICK_RETRY) as made:
        yield made


async def test_round_trip_against_the_service(client: WxLoginClient, emu: Emulator) -> None:
    """Login, check, decrypt and revoke return plain typed results."""
    await emu.setup_user(APP_A, "cleo", unionid="union-cleo")
    login = await client.login(await emu.code(APP_A, "cleo"), app_id=APP_A, request_id="rid-1")
    assert login.new_user
    assert login.user.app_id == APP_A
    assert login.user.unionid == "union-cleo"
    assert login.expires_at > datetime.now(UTC)
    assert login.token not in repr(login)

    session = await client.check_session(login.token)
    assert session == clients.Session(user=login.user, expires_at=login.expires_at)

    bundle = await emu.user_data(APP_A, "cleo", data={"nickName": "Cleo", "gender": 2})
    data = await client.decrypt_user_data(
        login.token,
        bundle["encryptedData"],
        bundle["iv"],
        raw_data=bundle["rawData"],
        signature=bundle["signature"],
    )
    assert data.data["nickName"] == "Cleo"
    assert data.data["gender"] == 2
    assert isinstance(data.data["gender"], int)  # not 2.0, despite protobuf's Struct
    assert data.watermark_time is not None

    await client.revoke_session(login.token)
    with pytest.raises(clients.SessionInvalid):
        await client.check_session(login.token)
    await client.revoke_session(login.token)  # idempotent


async def test_service_failures_raise_their_classes(client: WxLoginClient, emu: Emulator) -> None:
    """What the real service answers arrives as the matching exception class."""
    code = await emu.code(APP_A, "dora")
    first = await client.login(code, app_id=APP_A)
    # The same code again: the same session (idempotent login), not CodeUsed...
    assert (await client.login(code, app_id=APP_A)).token == first.token
    # ...which comes when WeChat says the code was used.
    await emu.fault(errcode=40163, times=1)
    with pytest.raises(clients.CodeUsed) as used:
        await client.login(await emu.code(APP_A, "dora"), app_id=APP_A)
    assert used.value.reason == "CODE_USED"
    assert used.value.metadata["errcode"] == "40163"
    with pytest.raises(clients.CodeInvalid):
        await client.login("not-a-real-code", app_id=APP_A)
    with pytest.raises(clients.AppUnknown):
        await client.login("whatever", app_id="wxnot-configured")
    with pytest.raises(clients.BadRequest):
        await client.login("", app_id=APP_A)
    with pytest.raises(clients.SessionInvalid) as invalid:
        await client.check_session("wxl1_" + "A" * 43)
    assert isinstance(invalid.value, clients.Unauthenticated)
    assert invalid.value.code is grpc.StatusCode.UNAUTHENTICATED


async def test_expired_session_raises_session_expired(
    start_service: ServiceFactory, emu: Emulator, db: Any
) -> None:
    """A token past its TTL raises SessionExpired, an Unauthenticated."""
    async with (
        ttl_monitor_paused(db),
        start_service(session_ttl=1) as running,
        connect(f"127.0.0.1:{running.port}") as client,
    ):
        login = await client.login(await emu.code(APP_A, "eve"), app_id=APP_A)
        await asyncio.sleep(1.1)
        with pytest.raises(clients.SessionExpired):
            await client.check_session(login.token)


@pytest.mark.parametrize("reason", sorted(SERVICE_ERRORS))
async def test_every_service_reason_has_its_class(
    fake: FakeUpstream, fake_client: WxLoginClient, reason: str
) -> None:
    """Each reason in the service's table becomes the client class of that name and code."""
    fake.auth.will("RevokeSession", *[SERVICE_ERRORS[reason]("told you")] * 3)
    with pytest.raises(clients.WxLoginError) as caught:
        await fake_client.revoke_session("wxl1_token")
    error = caught.value
    assert type(error) is _errors.BY_REASON[reason]
    assert error.reason == reason
    assert error.code is service_errors.REASON_CODES[reason]
    assert error.message == "told you"


def test_client_knows_every_service_reason() -> None:
    """Every reason in the service's table has a class of the same gRPC code here."""
    assert set(SERVICE_ERRORS) == set(service_errors.REASON_CODES)
    for reason, code in service_errors.REASON_CODES.items():
        assert _errors.BY_REASON[reason].code is code


def test_unknown_reason_falls_back_to_its_code_group() -> None:
    """A reason from a newer service keeps its name and gets the class of its gRPC code."""
    error = _errors.error_for(grpc.StatusCode.UNAUTHENTICATED, "TOKEN_REVOKED_BY_ADMIN", "no")
    assert type(error) is clients.Unauthenticated
    assert error.reason == "TOKEN_REVOKED_BY_ADMIN"
    odd = _errors.error_for(grpc.StatusCode.DATA_LOSS, None, "10.0.0.1:50051 exploded")
    assert type(odd) is clients.InternalError
    assert "10.0.0.1" not in odd.message


IDEMPOTENT: dict[str, Callable[[WxLoginClient], Awaitable[object]]] = {
    "CheckSession": lambda client: client.check_session("wxl1_token"),
    "DecryptUserData": lambda client: client.decrypt_user_data("wxl1_token", "ZGF0YQ==", "aXY="),
    "RevokeSession": lambda client: client.revoke_session("wxl1_token"),
}


@pytest.mark.parametrize("method", sorted(IDEMPOTENT))
async def test_idempotent_calls_retry_unavailable(
    fake: FakeUpstream, fake_client: WxLoginClient, method: str
) -> None:
    """UNAVAILABLE twice, then OK: an idempotent call succeeds on its third attempt."""
    fake.auth.will(method, grpc.StatusCode.UNAVAILABLE, service_errors.StoreUnavailable())
    await IDEMPOTENT[method](fake_client)
    assert len(fake.auth.calls_to(method)) == 3


async def test_login_is_never_retried(fake: FakeUpstream, fake_client: WxLoginClient) -> None:
    """WECHAT_UNAVAILABLE: Login fails after one attempt (retries only for a lost answer)."""
    fake.auth.will("Login", service_errors.WeChatUnavailable())
    with pytest.raises(clients.WeChatUnavailable):
        await fake_client.login("code")
    assert len(fake.auth.calls_to("Login")) == 1


async def test_retries_are_bounded(fake: FakeUpstream, fake_client: WxLoginClient) -> None:
    """A service that stays UNAVAILABLE is tried `attempts` times, then the error is raised."""
    fake.auth.will("CheckSession", *[grpc.StatusCode.UNAVAILABLE] * 10)
    with pytest.raises(clients.ServiceUnavailable) as caught:
        await fake_client.check_session("wxl1_token")
    assert len(fake.auth.calls_to("CheckSession")) == QUICK_RETRY.attempts
    assert "10.1.2.3" not in caught.value.message  # grpc's own text stays out


async def test_other_failures_are_not_retried(
    fake: FakeUpstream, fake_client: WxLoginClient
) -> None:
    """Only UNAVAILABLE is retried: SESSION_EXPIRED fails after one attempt."""
    fake.auth.will("CheckSession", service_errors.SessionExpired())
    with pytest.raises(clients.SessionExpired):
        await fake_client.check_session("wxl1_token")
    assert len(fake.auth.calls_to("CheckSession")) == 1


def _nan(data: struct_pb2.Struct) -> None:
    data.fields["a"].number_value = float("nan")


def _150_deep(data: struct_pb2.Struct) -> None:
    """{"a": {"a": ... }} 150 levels deep, built in place (a copy would not decode either)."""
    for _ in range(149):
        data = data.fields["a"].struct_value


@pytest.mark.parametrize("fill", [_nan, _150_deep], ids=["NaN", "depth-150"])
async def test_an_answer_the_client_cannot_read_is_an_internal_error(
    fake: FakeUpstream, fake_client: WxLoginClient, fill: Callable[[struct_pb2.Struct], None]
) -> None:
    """Data no JSON can hold, or a reply grpc could not decode: InternalError, never a crash.

    A backend branches on WxLoginError; a ValueError or AttributeError from inside the
    client (what these were) reached the edge as an unhandled error and a traceback.
    """
    reply = auth_pb2.DecryptUserDataResponse()
    fill(reply.data)
    fake.auth.will("DecryptUserData", reply)
    with pytest.raises(clients.InternalError):
        await fake_client.decrypt_user_data("wxl1_token", "ZGF0YQ==", "aXY=")


async def test_deadline_covers_the_whole_call(fake: FakeUpstream) -> None:
    """A call that outlives its deadline raises DeadlineExceeded, on time."""
    fake.auth.will("CheckSession", Delay(2.0))
    async with connect(fake.target, deadlines=Deadlines(check_session=0.2)) as client:
        started = asyncio.get_running_loop().time()
        with pytest.raises(clients.DeadlineExceeded):
            await client.check_session("wxl1_token")
        assert asyncio.get_running_loop().time() - started < 1.0


async def test_unreachable_service_is_service_unavailable() -> None:
    """Nothing listening: ServiceUnavailable after bounded retries, with no address in it."""
    target = free_port_target()
    async with connect(target, retry=QUICK_RETRY) as client:
        with pytest.raises(clients.ServiceUnavailable) as caught:
            await client.check_session("wxl1_token")
        assert target not in str(caught.value)
        assert not await client.serving()


async def test_request_id_travels_as_metadata(
    fake: FakeUpstream, fake_client: WxLoginClient
) -> None:
    """request_id is sent as x-request-id metadata; none, or a malformed one, is not sent."""
    await fake_client.check_session("wxl1_token", request_id="req-42")
    await fake_client.check_session("wxl1_token")
    await fake_client.check_session("wxl1_token", request_id="not\u00e9 a valid\nid")
    first, second, third = fake.auth.calls_to("CheckSession")
    assert first.metadata["x-request-id"] == "req-42"
    assert "x-request-id" not in second.metadata
    assert "x-request-id" not in third.metadata  # dropped, and the call still went through
