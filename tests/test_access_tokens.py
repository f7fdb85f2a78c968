"""The access-token broker: one shared token per app, one fetcher, compare-and-set on rejection."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
import pytest_asyncio
from google.protobuf.timestamp_pb2 import Timestamp

import clients
from clients import WxLoginClient
from service import crypto
from service.access_tokens import AccessTokens
from service.crypto import SessionKeyCipher
from service.errors import RateLimited
from service.settings import ConfigError, Settings
from service.store import Store
from service.store import connect as connect_mongo
from service.wechat import WeChatHttp, new_http_session
from service.wechat.stable_token import StableToken
from tests.conftest import SECRET_KEY, ServiceFactory, StubFactory, b64_secret_key
from tests.support import APP_A, APP_B, APPS, caller_table, child, error_info
from wxlogin.v1 import auth_pb2, auth_pb2_grpc


class TokenEmulator:
    """An emulator of its own (the shared one's tokens are every test's), over HTTP."""

    def __init__(self, base: str, http: aiohttp.ClientSession, apps: dict[str, str]) -> None:
        self.base = base
        self.http = http
        self.apps = apps

    async def json(self, method: str, path: str, body: Any = None) -> Any:
        async with self.http.request(method, self.base + path, json=body) as response:
            assert response.status == 200, await response.text()
            return await response.json(content_type=None)

    async def stable_token_requests(self) -> int:
        return int((await self.json("GET", "/_dev/stats"))["stable_token_requests"])

    async def forces_today(self, app_id: str) -> int:
        return int((await self.json("GET", "/_dev/access-tokens"))["apps"][app_id]["forces_today"])

    async def stable_token(self, app_id: str, *, force: bool = False) -> dict[str, Any]:
        """Call stable_token directly, as another system sharing the app would."""
        body = {
            "grant_type": "client_credential",
            "appid": app_id,
            "secret": self.apps[app_id],
            "force_refresh": force,
        }
        answer: dict[str, Any] = await self.json("POST", "/cgi-bin/stable_token", body)
        return answer

    async def accepts(self, token: str, app_id: str) -> bool:
        """Whether WeChat takes `token` (an unknown openid answers 40003 only after it does)."""
        query = {"access_token": token, "openid": "onobody", "signature": "x"}
        query["sig_method"] = "hmac_sha256"
        async with self.http.get(self.base + "/wxa/checksession", params=query) as response:
            errcode = (await response.json(content_type=None))["errcode"]
        return bool(errcode == 40003)


@asynccontextmanager
async def token_emulator(
    apps: dict[str, str], ttl: float = 7200, overlap: float = 300
) -> AsyncIterator[TokenEmulator]:
    """An emulator process of its own with these apps and token lifetimes."""
    listing = ",".join(f"{app}:{secret}" for app, secret in apps.items())
    args = ["--listen", "127.0.0.1:0", "--apps", listing]
    args += ["--access-token-ttl", str(ttl), "--access-token-overlap", str(overlap)]
    async with child("emulator", *args) as (_, port), aiohttp.ClientSession() as http:
        yield TokenEmulator(f"http://127.0.0.1:{port}", http, apps)


@pytest_asyncio.fixture
async def wechat() -> AsyncIterator[TokenEmulator]:
    """The tests' apps on an emulator of their own, WeChat's lifetimes."""
    async with token_emulator(dict(APPS)) as emulator:
        yield emulator


async def get_token(
    stub: auth_pb2_grpc.AuthServiceStub, app_id: str = APP_A, rejected: str = ""
) -> auth_pb2.GetAccessTokenResponse:
    """One GetAccessToken call."""
    request = auth_pb2.GetAccessTokenRequest(app_id=app_id, rejected_token=rejected)
    return await stub.GetAccessToken(request)


async def get_error(stub: auth_pb2_grpc.AuthServiceStub, app_id: str = APP_A) -> Any:
    """The ErrorInfo of a GetAccessToken that must fail."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await get_token(stub, app_id)
    return error_info(caught.value)


# -- one service, a real emulator --------------------------------------------------------------


async def test_the_token_is_fetched_once_and_served_from_memory(
    start_stub: StubFactory, wechat: TokenEmulator
) -> None:
    """Many calls, two processes on one MongoDB: one stable_token request, one token."""
    async with (
        start_stub(wechat_api_base=wechat.base) as one,
        start_stub(wechat_api_base=wechat.base) as two,
    ):
        first = await get_token(one)
        again = await asyncio.gather(*(get_token(stub) for stub in [one, two] * 20))
        assert {reply.access_token for reply in again} == {first.access_token}
        assert await wechat.stable_token_requests() == 1
        left = first.expires_at.ToDatetime(tzinfo=UTC) - datetime.now(UTC)
        assert 7000 < left.total_seconds() <= 7200
        assert await wechat.accepts(first.access_token, APP_A)
        other = await get_token(two, APP_B)
        assert other.access_token != first.access_token
        assert await wechat.stable_token_requests() == 2


async def test_the_token_is_sealed_at_rest(
    start_stub: StubFactory, wechat: TokenEmulator, db: Any
) -> None:
    """access_tokens holds one document per app: the token sealed, its hash, expiry, lease."""
    async with start_stub(wechat_api_base=wechat.base) as stub:
        token = (await get_token(stub)).access_token
    doc = await db.access_tokens.find_one({"_id": APP_A})
    assert doc is not None
    assert token.encode() not in bytes(doc["token"])
    assert token not in repr(doc)
    assert doc["token_sha256"] == crypto.token_id(token)
    assert doc["version"] == 1
    assert doc["expires_at"] > doc["refresh_at"] > datetime.now(UTC)
    assert await db.access_tokens.count_documents({}) == 1


async def test_a_storm_of_rejections_makes_one_refresh(
    start_stub: StubFactory, wechat: TokenEmulator
) -> None:
    """50 callers report the same rejected token to two processes: one stable_token request."""
    async with (
        start_stub(wechat_api_base=wechat.base) as one,
        start_stub(wechat_api_base=wechat.base) as two,
    ):
        old = (await get_token(one)).access_token
        await get_token(two)
        forced = (await wechat.stable_token(APP_A, force=True))["access_token"]  # someone else
        assert not await wechat.accepts(old, APP_A)
        before = await wechat.stable_token_requests()
        replies = await asyncio.gather(*(get_token(s, rejected=old) for s in [one, two] * 25))
        assert {reply.access_token for reply in replies} == {forced}
        assert await wechat.stable_token_requests() == before + 1
        # A rejection of a token that is no longer current changes nothing.
        assert (await get_token(one, rejected=old)).access_token == forced
        assert (await get_token(two, rejected="some-other-token")).access_token == forced
        assert await wechat.stable_token_requests() == before + 1


async def test_force_mode_only_when_normal_mode_repeats_the_rejected_token(
    start_stub: StubFactory, wechat: TokenEmulator
) -> None:
    """Normal mode hands back the rejected token: one forced refresh, for 20 callers."""
    async with start_stub(wechat_api_base=wechat.base) as stub:
        old = (await get_token(stub)).access_token
        await wechat.json("POST", "/_dev/access-tokens/invalidate", {"appid": APP_A})
        before = await wechat.stable_token_requests()
        replies = await asyncio.gather(*(get_token(stub, rejected=old) for _ in range(20)))
        new = {reply.access_token for reply in replies}
        assert len(new) == 1
        assert old not in new
        assert await wechat.accepts(new.pop(), APP_A)
        assert await wechat.stable_token_requests() == before + 2  # normal, then forced
        assert await wechat.forces_today(APP_A) == 1


@pytest.mark.parametrize(
    ("errcode", "code", "reason", "hint"),
    [
        (40164, grpc.StatusCode.UNAVAILABLE, "WECHAT_ERROR", "IP whitelist"),
        (40125, grpc.StatusCode.UNAVAILABLE, "WECHAT_ERROR", "secret in WXLOGIN_APPS"),
        (40013, grpc.StatusCode.UNAVAILABLE, "WECHAT_ERROR", "check WXLOGIN_APPS"),
        (45009, grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED", "daily quota"),
    ],
)
async def test_operator_errcodes_name_the_errcode_and_the_fix(
    start_stub: StubFactory,
    wechat: TokenEmulator,
    caplog: pytest.LogCaptureFixture,
    errcode: int,
    code: grpc.StatusCode,
    reason: str,
    hint: str,
) -> None:
    """40164, 40125, 40013, 45009: a reason with the errcode in metadata, a log line saying why."""
    fault = {"endpoint": "stable_token", "errcode": errcode, "times": 1}
    await wechat.json("POST", "/_dev/faults", fault)
    caplog.set_level(logging.ERROR, logger="service.wechat")
    async with start_stub(wechat_api_base=wechat.base) as stub:
        info = await get_error(stub)
        assert (info.code, info.reason) == (code, reason)
        assert info.metadata["errcode"] == str(errcode)
        assert APPS[APP_A] not in info.message
        lines = [r.getMessage() for r in caplog.records if r.name == "service.wechat"]
        assert any(f"errcode {errcode}" in line and hint in line for line in lines), lines
        # Not cached: once WeChat answers again, so do we.
        assert (await get_token(stub)).access_token


async def test_a_wrong_secret_is_40125_for_real(
    start_stub: StubFactory, wechat: TokenEmulator
) -> None:
    """The emulator refuses a wrong secret with 40125: WECHAT_ERROR, errcode in metadata."""
    apps = {APP_A: "not-the-secret", APP_B: APPS[APP_B]}
    async with start_stub(wechat_api_base=wechat.base, apps=apps) as stub:
        info = await get_error(stub)
        assert (info.reason, info.metadata["errcode"]) == ("WECHAT_ERROR", "40125")
        assert "not-the-secret" not in info.message


async def test_an_unknown_app_is_app_unknown(
    start_stub: StubFactory, wechat: TokenEmulator
) -> None:
    """An app_id that is not configured is APP_UNKNOWN, before WeChat is asked."""
    async with start_stub(wechat_api_base=wechat.base) as stub:
        info = await get_error(stub, "wxnotconfigured00")
        assert info.reason == "APP_UNKNOWN"
        assert await wechat.stable_token_requests() == 0


# -- the broker's force rules, with a clock the test moves -----------------------------------


class Clock:
    """A clock the tests move by hand, for the broker."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC).timestamp()

    def __call__(self) -> float:
        return self.now


@pytest_asyncio.fixture
async def broker_parts(
    settings: Settings, wechat: TokenEmulator
) -> AsyncIterator[tuple[Store, StableToken]]:
    """A real Store and a real StableToken (over HTTP to the emulator) to build brokers on."""
    client = connect_mongo(settings.mongodb_uri or "")
    store = Store(client[settings.database], SessionKeyCipher(SECRET_KEY))
    await store.ensure_indexes()
    async with new_http_session() as http:
        yield store, StableToken(WeChatHttp(http, wechat.base, total_timeout=2.0), dict(APPS))
    await store.close()
    await client.close()


async def test_force_mode_waits_30s_between_refreshes(
    broker_parts: tuple[Store, StableToken], wechat: TokenEmulator
) -> None:
    """A second forced refresh within 30 s is RATE_LIMITED with retry_after_seconds; later, fine."""
    clock = Clock()
    broker = AccessTokens(*broker_parts, dict(APPS), clock=clock)
    first = await broker.get(APP_A)
    await wechat.json("POST", "/_dev/access-tokens/invalidate", {"appid": APP_A})
    second = await broker.get(APP_A, first.token)
    assert second.token != first.token
    await wechat.json("POST", "/_dev/access-tokens/invalidate", {"appid": APP_A})
    clock.now += 10
    with pytest.raises(RateLimited) as caught:
        await broker.get(APP_A, second.token)
    assert caught.value.metadata["retry_after_seconds"] == "20"
    clock.now += 20
    await wechat.json("POST", "/_dev/clock", {"advance": 30})
    third = await broker.get(APP_A, second.token)
    assert third.token not in (first.token, second.token)
    assert await wechat.forces_today(APP_A) == 2


async def test_force_mode_stops_at_the_daily_limit(
    broker_parts: tuple[Store, StableToken], wechat: TokenEmulator
) -> None:
    """Past the daily number of forced refreshes the broker refuses, saying when to retry."""
    clock = Clock()
    broker = AccessTokens(*broker_parts, dict(APPS), clock=clock, force_per_day=1)
    token = (await broker.get(APP_A)).token
    await wechat.json("POST", "/_dev/access-tokens/invalidate", {"appid": APP_A})
    token = (await broker.get(APP_A, token)).token
    await wechat.json("POST", "/_dev/access-tokens/invalidate", {"appid": APP_A})
    clock.now += 60
    with pytest.raises(RateLimited) as caught:
        await broker.get(APP_A, token)
    assert 0 < int(caught.value.metadata["retry_after_seconds"]) <= 86400
    assert await wechat.forces_today(APP_A) == 1


async def test_the_same_token_again_is_not_refreshed_in_a_loop(
    broker_parts: tuple[Store, StableToken], wechat: TokenEmulator
) -> None:
    """A proactive refresh that gets the same token back schedules the next one later."""
    clock = Clock()
    # Refresh 400 s before expiry: earlier than WeChat's 300 s window, so it repeats the token.
    broker = AccessTokens(*broker_parts, dict(APPS), clock=clock, refresh_before=400)
    first = await broker.get(APP_A)
    clock.now += 7200 - 399
    await wechat.json("POST", "/_dev/clock", {"advance": 7200 - 399})
    broker.start()
    try:
        for _ in range(100):  # the refresher runs at once: the token is due
            if broker.fetches == 2:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
        assert broker.fetches == 2
        assert (await broker.get(APP_A)).token == first.token
    finally:
        await broker.aclose()
    assert await wechat.stable_token_requests() == 2


# -- four service processes on one MongoDB --------------------------------------------------------


async def test_four_processes_share_one_token_and_one_fetcher(
    service_env: dict[str, str],
) -> None:
    """4 processes: one stable_token per refresh, each token everyone's, a storm makes one."""
    app = "wxtok" + uuid.uuid4().hex[:12]
    apps = {app: "secret-" + uuid.uuid4().hex[:8]}
    # Tokens live 8 s and are replaced in their last 4; the broker refreshes 3 s before expiry.
    async with (
        token_emulator(apps, ttl=8, overlap=4) as wechat,
        contextlib.AsyncExitStack() as stack,
    ):
        env = {
            **service_env,
            "WXLOGIN_APPS": f"{app}:{apps[app]}",
            "WXLOGIN_WECHAT_API_BASE": wechat.base,
            "WXLOGIN_ACCESS_TOKEN_REFRESH_BEFORE": "3",
        }
        stubs = []
        for _ in range(4):
            _, port = await stack.enter_async_context(child("service", env=env))
            channel = await stack.enter_async_context(
                grpc.aio.insecure_channel(f"127.0.0.1:{port}")
            )
            stubs.append(auth_pb2_grpc.AuthServiceStub(channel))

        first = await asyncio.gather(*(get_token(stub, app) for stub in stubs * 5))
        assert len({reply.access_token for reply in first}) == 1
        assert await wechat.stable_token_requests() == 1

        # Watch two refreshes happen: every token seen is, at some moment, every process's.
        agreed: set[str] = set()
        seen: set[str] = set()
        for _ in range(120):
            round_ = {(await get_token(stub, app)).access_token for stub in stubs}
            seen |= round_
            if len(round_) == 1:
                agreed |= round_
            if len(agreed) >= 3:
                break
            await asyncio.sleep(0.25)
        assert len(agreed) >= 3, (len(agreed), len(seen))
        assert agreed == seen
        # One request per token: no process fetched one of its own, none was wasted.
        assert await wechat.stable_token_requests() == len(seen)

        # Someone else forces a refresh; 50 callers across the 4 report the old token.
        current = (await get_token(stubs[0], app)).access_token
        forced = (await wechat.stable_token(app, force=True))["access_token"]
        before = await wechat.stable_token_requests()
        replies = await asyncio.gather(
            *(get_token(stub, app, rejected=current) for stub in stubs * 13)
        )
        assert len(replies) >= 50
        assert {reply.access_token for reply in replies} == {forced}
        assert await wechat.stable_token_requests() == before + 1


# -- who may call it ---------------------------------------------------------------------------

GRANT_KEYS = {
    "star": "star-caller-key-0123456789",
    "named": "named-caller-key-012345678",
    "star-and-named": "star-named-key-0123456789",
}


def grant_file(path: Path) -> Path:
    """A callers file: "*" alone, GetAccessToken by name, and both."""
    rpcs = {
        "star": '["*"]',
        "named": '["GetAccessToken"]',
        "star-and-named": '["*", "GetAccessToken"]',
    }
    path.write_text(
        "".join(caller_table(name, key, rpcs[name]) for name, key in GRANT_KEYS.items())
    )
    return path


async def test_only_callers_granted_it_by_name_get_the_token(
    start_stub: StubFactory, wechat: TokenEmulator, tmp_path: Path
) -> None:
    """rpcs = ["*"] does not grant GetAccessToken; naming it does, with or without "*"."""
    async with start_stub(
        wechat_api_base=wechat.base, callers_file=grant_file(tmp_path / "c")
    ) as stub:
        for name, allowed in (("star", False), ("named", True), ("star-and-named", True)):
            call = stub.GetAccessToken(
                auth_pb2.GetAccessTokenRequest(app_id=APP_A),
                metadata=(("x-wxlogin-caller-key", GRANT_KEYS[name]),),
            )
            if allowed:
                assert (await call).access_token
                continue
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call
            info = error_info(caught.value)
            assert (info.code, info.reason) == (
                grpc.StatusCode.PERMISSION_DENIED,
                "CALLER_FORBIDDEN",
            )
        # "*" still grants everything else.
        check = stub.CheckSession(
            auth_pb2.CheckSessionRequest(token="wxl1_" + "x" * 43),
            metadata=(("x-wxlogin-caller-key", GRANT_KEYS["star"]),),
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await check
        assert error_info(caught.value).reason == "SESSION_INVALID"
    assert await wechat.stable_token_requests() == 1


async def test_exposed_without_callers_nobody_gets_the_token(
    start_stub: StubFactory, wechat: TokenEmulator
) -> None:
    """Beyond loopback with WXLOGIN_ALLOW_INSECURE and no callers file: CALLER_FORBIDDEN."""
    async with start_stub(
        wechat_api_base=wechat.base, grpc_listen="0.0.0.0:0", allow_insecure=True
    ) as stub:
        info = await get_error(stub)
        assert (info.code, info.reason) == (grpc.StatusCode.PERMISSION_DENIED, "CALLER_FORBIDDEN")
        assert "WXLOGIN_CALLERS_FILE" in info.message
    assert await wechat.stable_token_requests() == 0


# -- the client library's cache ----------------------------------------------------------------


class TokenServicer(auth_pb2_grpc.AuthServiceServicer):
    """GetAccessToken only: hands out numbered tokens with a given lifetime, records requests."""

    def __init__(self, lifetime: float) -> None:
        self.lifetime = lifetime
        self.requests: list[auth_pb2.GetAccessTokenRequest] = []

    async def GetAccessToken(
        self, request: auth_pb2.GetAccessTokenRequest, context: Any
    ) -> auth_pb2.GetAccessTokenResponse:
        self.requests.append(request)
        expires = Timestamp()
        expires.FromDatetime(datetime.now(UTC) + timedelta(seconds=self.lifetime))
        return auth_pb2.GetAccessTokenResponse(
            access_token=f"token-{len(self.requests)}", expires_at=expires
        )


@asynccontextmanager
async def token_server(lifetime: float) -> AsyncIterator[tuple[TokenServicer, WxLoginClient]]:
    """A real grpc.aio server with TokenServicer, and a client of it."""
    server = grpc.aio.server()
    servicer = TokenServicer(lifetime)
    auth_pb2_grpc.add_AuthServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with clients.connect(f"127.0.0.1:{port}") as client:
            yield servicer, client
    finally:
        await server.stop(None)


async def test_the_client_serves_the_token_from_memory() -> None:
    """Concurrent and repeated get_access_token calls make one RPC while the token lasts."""
    async with token_server(7200) as (servicer, client):
        tokens = await asyncio.gather(*(client.get_access_token(APP_A) for _ in range(20)))
        tokens.append(await client.get_access_token(APP_A))
        assert {token.access_token for token in tokens} == {"token-1"}
        assert len(servicer.requests) == 1
        assert "token-1" not in repr(tokens[0])
        await client.get_access_token(APP_B)  # one per app
        assert len(servicer.requests) == 2


async def test_the_client_honours_expires_at() -> None:
    """A token at (or past) its expires_at is never served from memory: each call asks."""
    async with token_server(-1) as (servicer, client):
        first = await client.get_access_token(APP_A)
        second = await client.get_access_token(APP_A)
        assert (first.access_token, second.access_token) == ("token-1", "token-2")
        assert len(servicer.requests) == 2


async def test_the_client_passes_a_rejection_on_once() -> None:
    """rejected_token of the cached token goes to wxlogin; of an older one, it is answered here."""
    async with token_server(7200) as (servicer, client):
        first = await client.get_access_token(APP_A)
        replies = await asyncio.gather(
            *(client.get_access_token(APP_A, rejected_token=first.access_token) for _ in range(10))
        )
        assert {reply.access_token for reply in replies} == {"token-2"}
        assert [request.rejected_token for request in servicer.requests] == ["", "token-1"]
        again = await client.get_access_token(APP_A, rejected_token=first.access_token)
        assert again.access_token == "token-2"
        assert len(servicer.requests) == 2


async def test_the_client_gets_a_token_wechat_accepts(
    start_service: ServiceFactory, wechat: TokenEmulator
) -> None:
    """End to end: the client's token works at (emulated) WeChat; a rejection replaces it."""
    async with (
        start_service(wechat_api_base=wechat.base) as service,
        clients.connect(f"127.0.0.1:{service.port}") as client,
    ):
        token = await client.get_access_token(APP_A)
        assert await wechat.accepts(token.access_token, APP_A)
        await wechat.stable_token(APP_A, force=True)
        assert not await wechat.accepts(token.access_token, APP_A)
        fresh = await client.get_access_token(APP_A, rejected_token=token.access_token)
        assert await wechat.accepts(fresh.access_token, APP_A)


# -- configuration ---------------------------------------------------------------------------------


def test_refresh_before_is_read_and_checked() -> None:
    """WXLOGIN_ACCESS_TOKEN_REFRESH_BEFORE: 240 s by default, inside WeChat's 300 s window."""
    env = {"WXLOGIN_APPS": "wxa:s", "WXLOGIN_SECRET_KEY": b64_secret_key()}
    assert Settings.from_env(env).access_token_refresh_before == 240
    set_ = {**env, "WXLOGIN_ACCESS_TOKEN_REFRESH_BEFORE": "30"}
    assert Settings.from_env(set_).access_token_refresh_before == 30
    for bad in ("0", "300", "soon"):
        with pytest.raises(ConfigError) as caught:
            Settings.from_env({**env, "WXLOGIN_ACCESS_TOKEN_REFRESH_BEFORE": bad})
        assert caught.value.variable == "WXLOGIN_ACCESS_TOKEN_REFRESH_BEFORE"
