"""Login: the code exchange, the user upsert, the session, and every WeChat outcome."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest

from service.app import RunningService
from tests.conftest import StubFactory
from tests.support import APP_A, APP_B, Emulator, error_info
from wxlogin.v1 import auth_pb2, auth_pb2_grpc


async def login(
    stub: auth_pb2_grpc.AuthServiceStub, code: str, app_id: str = APP_A, **kwargs: Any
) -> auth_pb2.LoginResponse:
    return await stub.Login(auth_pb2.LoginRequest(app_id=app_id, code=code), **kwargs)


async def login_error(
    stub: auth_pb2_grpc.AuthServiceStub, code: str, app_id: str = APP_A
) -> tuple[grpc.StatusCode, str, dict[str, str]]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await login(stub, code, app_id)
    info = error_info(caught.value)
    assert info.domain == "wxlogin"
    return info.code, info.reason, dict(info.metadata)


async def test_first_login_creates_user_then_reuses_it(
    stub: auth_pb2_grpc.AuthServiceStub, emu: Emulator, service: RunningService
) -> None:
    """The first login is new_user=true, the next one of the same user reuses the user."""
    first = await login(stub, await emu.code(APP_A, "alice"))
    second = await login(stub, await emu.code(APP_A, "alice"))
    assert first.new_user is True
    assert second.new_user is False
    assert first.user.user_id == second.user.user_id
    assert first.user.app_id == APP_A
    assert first.user.openid.startswith("o")
    assert first.user.unionid == ""
    assert first.token != second.token
    assert len(first.token) >= 43
    ttl = (first.expires_at.ToDatetime(tzinfo=UTC) - datetime.now(UTC)).total_seconds()
    assert 604800 - 60 < ttl <= 604800


async def test_unionid_is_stored_and_kept_when_a_later_login_omits_it(
    stub: auth_pb2_grpc.AuthServiceStub, emu: Emulator, db: Any
) -> None:
    """unionid arrives once and survives a later login that carries none."""
    await emu.setup_user(APP_A, "bob", unionid="union-bob")
    first = await login(stub, await emu.code(APP_A, "bob"))
    assert first.user.unionid == "union-bob"
    await emu.setup_user(APP_A, "bob")  # WeChat stops sending unionid
    second = await login(stub, await emu.code(APP_A, "bob"))
    assert second.user.unionid == "union-bob"
    doc = await db.users.find_one({"app_id": APP_A, "openid": first.user.openid})
    assert doc["unionid"] == "union-bob"
    assert doc["last_login_at"] >= doc["created_at"]


async def test_fifty_concurrent_first_logins_make_one_user(
    stub: auth_pb2_grpc.AuthServiceStub, emu: Emulator, db: Any
) -> None:
    """50 concurrent logins of one new user: one user document, one new_user=true."""
    codes = [await emu.code(APP_A, "crowd") for _ in range(50)]
    results = await asyncio.gather(*(login(stub, code) for code in codes))
    assert sum(result.new_user for result in results) == 1
    assert len({result.user.user_id for result in results}) == 1
    assert await db.users.count_documents({"app_id": APP_A, "openid": results[0].user.openid}) == 1
    # WXLOGIN_MAX_SESSIONS_PER_USER (default 10): the newest 10 of the 50 stay.
    assert await db.sessions.count_documents({"openid": results[0].user.openid}) == 10


async def test_session_is_stored_under_the_token_hash_with_a_sealed_key(
    stub: auth_pb2_grpc.AuthServiceStub, emu: Emulator, db: Any
) -> None:
    """sessions._id is SHA-256(token); session_key is encrypted; a TTL index on expires_at."""
    result = await login(stub, await emu.code(APP_A, "carol"))
    doc = await db.sessions.find_one({"_id": hashlib.sha256(result.token.encode()).hexdigest()})
    assert doc is not None
    assert doc["user_id"] == __import__("bson").ObjectId(result.user.user_id)
    assert doc["app_id"] == APP_A
    assert doc["openid"] == result.user.openid
    assert isinstance(doc["session_key"], bytes)
    assert len(doc["session_key"]) > 16 + 12
    assert doc["expires_at"] == result.expires_at.ToDatetime(tzinfo=UTC)
    indexes = await db.sessions.index_information()
    ttl_index = next(ix for ix in indexes.values() if ix["key"] == [("expires_at", 1)])
    assert ttl_index["expireAfterSeconds"] == 86400  # expired sessions answer EXPIRED for a day
    user_indexes = await db.users.index_information()
    assert user_indexes["app_openid"]["unique"] is True
    assert user_indexes["unionid"]["sparse"] is True


async def test_empty_app_id_means_the_only_app(start_stub: StubFactory, emu: Emulator) -> None:
    """With exactly one app configured, app_id may be empty."""
    async with start_stub(apps={APP_A: "secret-a-123"}) as stub:
        result = await login(stub, await emu.code(APP_A, "d"), "")
        assert result.user.app_id == APP_A


@pytest.mark.parametrize(
    ("app_id", "code", "reason"),
    [
        ("", "somecode", "BAD_REQUEST"),  # two apps configured: app_id is required
        (APP_A, "", "BAD_REQUEST"),
        (APP_A, "x" * 300, "BAD_REQUEST"),
        ("wxnotconfigured00", "somecode", "APP_UNKNOWN"),
    ],
)
async def test_malformed_login_requests(
    stub: auth_pb2_grpc.AuthServiceStub, app_id: str, code: str, reason: str
) -> None:
    """Empty or absurd fields and unknown apps are INVALID_ARGUMENT with their reason."""
    assert await login_error(stub, code, app_id) == (grpc.StatusCode.INVALID_ARGUMENT, reason, {})


async def test_unknown_code_is_code_invalid(
    stub: auth_pb2_grpc.AuthServiceStub, emu: Emulator
) -> None:
    """WeChat 40029 -> UNAUTHENTICATED CODE_INVALID, not retried."""
    before = await emu.requests_seen()
    code, reason, meta = await login_error(stub, "no-such-code")
    assert (code, reason, meta) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "CODE_INVALID",
        {"errcode": "40029"},
    )
    assert await emu.requests_seen() - before == 1


async def test_expired_code_is_code_invalid(
    stub: auth_pb2_grpc.AuthServiceStub, emu: Emulator
) -> None:
    """A code past its lifetime is 40029 at WeChat -> CODE_INVALID."""
    code = await emu.code(APP_A, "late", ttl=0.2)
    await asyncio.sleep(0.4)
    assert (await login_error(stub, code))[1] == "CODE_INVALID"


async def test_reused_code_is_code_used(
    stub: auth_pb2_grpc.AuthServiceStub, emu: Emulator, db: Any
) -> None:
    """WeChat 40163 -> UNAUTHENTICATED CODE_USED (when wxlogin no longer keeps the answer)."""
    code = await emu.code(APP_A, "erin")
    await login(stub, code)
    # Within its 5 minutes the same code gets the same answer (tests/test_idempotent_login.py);
    # without the kept answer, WeChat decides.
    await db.login_codes.delete_many({})
    assert await login_error(stub, code) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "CODE_USED",
        {"errcode": "40163"},
    )


async def test_code_of_another_app_is_invalid(
    stub: auth_pb2_grpc.AuthServiceStub, emu: Emulator
) -> None:
    """A code minted for app B does not log in to app A."""
    code = await emu.code(APP_B, "frank")
    assert (await login_error(stub, code, APP_A))[1] == "CODE_INVALID"


@pytest.mark.parametrize(
    ("errcode", "status", "reason"),
    [
        (45011, grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED"),
        (40226, grpc.StatusCode.PERMISSION_DENIED, "USER_BLOCKED"),
        (40029, grpc.StatusCode.UNAUTHENTICATED, "CODE_INVALID"),
        (40163, grpc.StatusCode.UNAUTHENTICATED, "CODE_USED"),
        (48001, grpc.StatusCode.UNAVAILABLE, "WECHAT_ERROR"),
    ],
)
async def test_wechat_errcodes_map_and_are_never_retried(
    stub: auth_pb2_grpc.AuthServiceStub,
    emu: Emulator,
    errcode: int,
    status: grpc.StatusCode,
    reason: str,
) -> None:
    """Each non-transient errcode maps per the table, after exactly one request."""
    code = await emu.code(APP_A, "gina")
    await emu.fault(errcode=errcode)
    before = await emu.requests_seen()
    assert await login_error(stub, code) == (status, reason, {"errcode": str(errcode)})
    assert await emu.requests_seen() - before == 1


async def test_blocked_user_is_user_blocked(
    stub: auth_pb2_grpc.AuthServiceStub, emu: Emulator
) -> None:
    """A user WeChat flags as high-risk (40226) is PERMISSION_DENIED USER_BLOCKED."""
    await emu.setup_user(APP_A, "mallory", blocked=True)
    code = await emu.code(APP_A, "mallory")
    assert (await login_error(stub, code))[:2] == (
        grpc.StatusCode.PERMISSION_DENIED,
        "USER_BLOCKED",
    )


async def test_wrong_secret_is_wechat_error_with_errcode(
    start_stub: StubFactory, emu: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    """A misconfigured secret (WeChat 40125) is WECHAT_ERROR with the errcode, no secret.

    The operator reads what to fix, once a minute, not once per login.
    """
    caplog.set_level(logging.ERROR, logger="service.wechat")
    async with start_stub(apps={APP_A: "wrong-secret"}) as stub:
        for attempt in range(3):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await login(stub, await emu.code(APP_A, f"hank-{attempt}"))
    info = error_info(caught.value)
    assert (info.code, info.reason, info.metadata) == (
        grpc.StatusCode.UNAVAILABLE,
        "WECHAT_ERROR",
        {"errcode": "40125"},
    )
    assert "wrong-secret" not in info.message
    lines = [r.getMessage() for r in caplog.records if r.name == "service.wechat"]
    assert len(lines) == 1, lines
    assert "jscode2session" in lines[0]
    assert "errcode 40125" in lines[0]
    assert "secret in WXLOGIN_APPS" in lines[0]
    assert "wrong-secret" not in lines[0]


# What WeChat can do that is worth a retry: errcode -1, 5xx, a dropped connection.
transient_faults = pytest.mark.parametrize(
    "fault",
    [{"errcode": -1}, {"http_status": 502}, {"http_status": 503}, {"drop": True}],
    ids=["system-busy", "http-502", "http-503", "dropped-connection"],
)


@transient_faults
async def test_transient_failures_are_retried_then_succeed(
    stub: auth_pb2_grpc.AuthServiceStub, emu: Emulator, fault: dict[str, Any]
) -> None:
    """-1, 5xx and network errors are retried; two failures then success logs in."""
    code = await emu.code(APP_A, "ivan")
    await emu.fault(**fault, times=2)
    before = await emu.requests_seen()
    result = await login(stub, code)
    assert result.user.openid
    assert await emu.requests_seen() - before == 3


@transient_faults
async def test_persistent_transient_failures_give_up_as_unavailable(
    stub: auth_pb2_grpc.AuthServiceStub, emu: Emulator, fault: dict[str, Any]
) -> None:
    """After the bounded attempts (3), a transient failure is WECHAT_UNAVAILABLE."""
    code = await emu.code(APP_A, "judy")
    await emu.fault(**fault)
    before = await emu.requests_seen()
    assert (await login_error(stub, code))[:2] == (
        grpc.StatusCode.UNAVAILABLE,
        "WECHAT_UNAVAILABLE",
    )
    # Exactly 3, dropped connections included: aiohttp's own resend of a GET on a
    # closed keep-alive connection is refused (service/wechat/_http.py).
    assert await emu.requests_seen() - before == 3


async def test_unreachable_wechat_is_unavailable(start_stub: StubFactory, emu: Emulator) -> None:
    """Nothing listening at the WeChat address: WECHAT_UNAVAILABLE, quickly."""
    async with start_stub(wechat_api_base="http://127.0.0.1:9") as stub:
        assert (await login_error(stub, "anycode"))[1] == "WECHAT_UNAVAILABLE"


async def test_slow_wechat_times_out_as_unavailable(
    stub: auth_pb2_grpc.AuthServiceStub, emu: Emulator
) -> None:
    """A WeChat slower than the total timeout (2 s in tests) is WECHAT_UNAVAILABLE."""
    code = await emu.code(APP_A, "kate")
    await emu.fault(latency_ms=2500)
    started = time.monotonic()
    code_, reason, _ = await login_error(stub, code)
    assert (code_, reason) == (grpc.StatusCode.UNAVAILABLE, "WECHAT_UNAVAILABLE")
    assert time.monotonic() - started < 8  # bounded: 3 attempts x 2 s, not forever


async def test_retries_stay_inside_the_callers_deadline(
    stub: auth_pb2_grpc.AuthServiceStub, emu: Emulator
) -> None:
    """1 s deadline, 3 s WeChat: WECHAT_UNAVAILABLE before the deadline, and no late retry."""
    code = await emu.code(APP_A, "leo")
    await emu.fault(latency_ms=3000)
    before = await emu.requests_seen()
    started = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await login(stub, code, timeout=1.0)
    # Our own retryable answer, before the deadline: never a bare DEADLINE_EXCEEDED.
    assert error_info(caught.value).reason == "WECHAT_UNAVAILABLE"
    assert time.monotonic() - started < 1.8
    # A retry after the deadline (or after the 2 s attempt timeout) would arrive by now.
    await asyncio.sleep(2.5)
    assert await emu.requests_seen() - before == 1


async def test_code_spent_by_a_failed_attempt_is_not_blamed_on_the_user(
    stub: auth_pb2_grpc.AuthServiceStub, emu: Emulator
) -> None:
    """If WeChat used the code but the answer was lost, the retry's 40163 is UNAVAILABLE."""
    code = await emu.code(APP_A, "mia")
    await emu.fault(errcode=-1, times=1)
    await emu.fault(errcode=40163, times=1)
    code_, reason, meta = await login_error(stub, code)
    assert (code_, reason, meta) == (
        grpc.StatusCode.UNAVAILABLE,
        "WECHAT_UNAVAILABLE",
        {"errcode": "40163"},
    )


async def test_code_spent_then_reply_dropped_is_unavailable_not_code_used(
    stub: auth_pb2_grpc.AuthServiceStub, emu: Emulator
) -> None:
    """WeChat spends the code and the reply is lost: WECHAT_UNAVAILABLE, one retry, 2 requests."""
    code = await emu.code(APP_A, "nina")
    await emu.fault(drop=True, use_code=True, times=1)
    before = await emu.requests_seen()
    code_, reason, meta = await login_error(stub, code)
    assert (code_, reason, meta) == (
        grpc.StatusCode.UNAVAILABLE,
        "WECHAT_UNAVAILABLE",
        {"errcode": "40163"},
    )
    # The dropped attempt and our one retry; no hidden resend in between.
    assert await emu.requests_seen() - before == 2


async def test_login_expiry_follows_the_configured_ttl(
    start_stub: StubFactory, emu: Emulator
) -> None:
    """WXLOGIN_SESSION_TTL sets expires_at."""
    async with start_stub(session_ttl=3600) as stub:
        result = await login(stub, await emu.code(APP_A, "ned"))
    expires = result.expires_at.ToDatetime(tzinfo=UTC)
    assert abs(expires - (datetime.now(UTC) + timedelta(seconds=3600))) < timedelta(seconds=30)


async def test_users_are_per_app(stub: auth_pb2_grpc.AuthServiceStub, emu: Emulator) -> None:
    """The same WeChat user in two apps is two users, each new once, with its own openid."""
    await emu.setup_user(APP_A, "omar", unionid=True)
    await emu.setup_user(APP_B, "omar", unionid=True)
    in_a = await login(stub, await emu.code(APP_A, "omar"), APP_A)
    in_b = await login(stub, await emu.code(APP_B, "omar"), APP_B)
    assert in_a.new_user
    assert in_b.new_user
    assert in_a.user.user_id != in_b.user.user_id
    assert in_a.user.openid != in_b.user.openid
    assert (in_a.user.app_id, in_b.user.app_id) == (APP_A, APP_B)
    assert in_a.user.unionid == in_b.user.unionid != ""
