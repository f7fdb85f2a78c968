"""Abuse limits: logins per client address at the edge, per app and per caller at the service,
and unknown tokens answered without MongoDB."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
import pytest_asyncio

from clients.edge.config import EdgeConfig
from clients.edge.login_limit import LoginLimit
from runtime.config import ConfigError
from runtime.token_bucket import TokenBuckets
from service import errors as service_errors
from service.cache import UnknownTokens
from service.settings import Settings
from tests.conftest import StubFactory, b64_secret_key
from tests.edge_support import FakeUpstream, running_edge
from tests.support import APP_A, APP_B, APPS_ENV, Emulator, caller_table, error_info
from wxlogin.v1 import auth_pb2, auth_pb2_grpc


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


# -- the bucket --------------------------------------------------------------------------------


def test_a_bucket_allows_its_burst_then_its_rate() -> None:
    """`burst` takes at once, then one per 1/rate seconds, and says how long to wait."""
    clock = Clock()
    buckets = TokenBuckets(rate=2.0, burst=3, monotonic=clock)
    assert [buckets.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("a") == pytest.approx(0.5)
    assert buckets.take("b") == 0.0  # every key has its own
    clock.now += 0.5
    assert buckets.take("a") == 0.0
    assert buckets.take("a") > 0
    clock.now += 60
    assert [buckets.take("a") for _ in range(4)][-1] > 0  # refilled to the burst, not beyond


def test_buckets_are_bounded_in_number() -> None:
    """A flood of distinct keys keeps at most max_keys buckets."""
    buckets = TokenBuckets(rate=1.0, burst=1, max_keys=100, monotonic=Clock())
    for number in range(1000):
        buckets.take(f"10.0.{number // 256}.{number % 256}")
    assert len(buckets) == 100


# -- the edge: per client address ----------------------------------------------------------------


@pytest_asyncio.fixture
async def limited_edge(fake: FakeUpstream) -> AsyncIterator[str]:
    """The edge on the fake upstream: 2 logins at once per address, then 1 a second."""
    async with running_edge(fake.target, login_limit=LoginLimit(1.0, 2)) as url:
        yield url


async def post_login(
    http: aiohttp.ClientSession, edge: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any], dict[str, str]]:
    async with http.post(f"{edge}/v1/login", json={"code": "c"}, headers=headers) as response:
        return response.status, await response.json(), dict(response.headers)


async def test_the_edge_answers_429_with_retry_after_past_the_limit(
    limited_edge: str, fake: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    """Past its burst an address gets 429 RATE_LIMITED with Retry-After; the service never hears."""
    answers = [await post_login(http, limited_edge) for _ in range(3)]
    assert [status for status, _, _ in answers] == [200, 200, 429]
    _, body, headers = answers[2]
    assert body["error"]["reason"] == "RATE_LIMITED"
    assert body["error"]["code"] == "RESOURCE_EXHAUSTED"
    assert int(headers["Retry-After"]) >= 1
    assert len([call for call in fake.auth.calls if call.method == "Login"]) == 2


async def test_x_forwarded_for_is_ignored_from_strangers(
    limited_edge: str, http: aiohttp.ClientSession
) -> None:
    """Without trusted proxies, a client cannot escape its bucket by inventing X-Forwarded-For."""
    statuses = [
        (await post_login(http, limited_edge, {"X-Forwarded-For": f"203.0.113.{n}"}))[0]
        for n in range(3)
    ]
    assert statuses == [200, 200, 429]


async def test_x_forwarded_for_names_the_client_behind_a_trusted_proxy(
    fake: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    """Behind a trusted proxy each forwarded client has its own bucket; the rightmost untrusted
    hop counts, so a client's own X-Forwarded-For entries change nothing."""
    limit = LoginLimit(1.0, 2, [ipaddress.ip_network("127.0.0.0/8")])
    async with running_edge(fake.target, login_limit=limit) as edge:
        for client in ("198.51.100.1", "198.51.100.2"):
            statuses = [
                (await post_login(http, edge, {"X-Forwarded-For": f"6.6.6.{n}, {client}"}))[0]
                for n in range(3)
            ]
            assert statuses == [200, 200, 429], client


async def test_the_services_retry_after_reaches_the_mini_program(
    fake: FakeUpstream, http: aiohttp.ClientSession
) -> None:
    """A RATE_LIMITED from the service with retry_after_seconds becomes 429 + Retry-After."""
    fake.auth.will("Login", service_errors.RateLimited("too many logins", retry_after_seconds="7"))
    async with running_edge(fake.target) as edge:
        status, body, headers = await post_login(http, edge)
    assert status == 429
    assert body["error"]["reason"] == "RATE_LIMITED"
    assert headers["Retry-After"] == "7"


def test_the_edge_reads_its_login_limit_settings() -> None:
    """WXLOGIN_EDGE_LOGIN_RATE/_BURST/_TRUSTED_PROXIES parse, defaults on, bad values named."""
    defaults = EdgeConfig.from_env({})
    assert defaults.login_rate > 0
    assert defaults.trusted_proxies == ()
    config = EdgeConfig.from_env(
        {
            "WXLOGIN_EDGE_LOGIN_RATE": "0.5",
            "WXLOGIN_EDGE_LOGIN_BURST": "4",
            "WXLOGIN_EDGE_TRUSTED_PROXIES": "10.0.0.0/8, ::1",
        }
    )
    assert (config.login_rate, config.login_burst) == (0.5, 4)
    assert config.trusted_proxies == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("::1"),
    )
    for variable, value in (
        ("WXLOGIN_EDGE_LOGIN_RATE", "-1"),
        ("WXLOGIN_EDGE_LOGIN_BURST", "0"),
        ("WXLOGIN_EDGE_TRUSTED_PROXIES", "10.0.0.0/8, proxy.internal"),
    ):
        with pytest.raises(ConfigError) as caught:
            EdgeConfig.from_env({variable: value})
        assert caught.value.variable == variable


# -- the service: per app and per caller ----------------------------------------------------------


async def login_reason(
    stub: auth_pb2_grpc.AuthServiceStub, emu: Emulator, app: str, **kw: Any
) -> str:
    """ "ok", or the reason Login failed with (RATE_LIMITED carries retry_after_seconds)."""
    request = auth_pb2.LoginRequest(app_id=app, code=await emu.code(app, "flood"))
    try:
        await stub.Login(request, **kw)
    except grpc.aio.AioRpcError as error:
        info = error_info(error)
        if info.reason == "RATE_LIMITED":
            assert int(info.metadata["retry_after_seconds"]) >= 1
        return info.reason
    return "ok"


async def test_logins_per_app_are_bounded_before_wechat(
    start_stub: StubFactory, emu: Emulator
) -> None:
    """Past an app's burst Login is RATE_LIMITED without a jscode2session call; other apps go on."""
    async with start_stub(login_rate_per_app=1.0) as stub:
        assert [await login_reason(stub, emu, APP_A) for _ in range(2)] == ["ok", "ok"]
        before = await emu.requests_seen()
        assert await login_reason(stub, emu, APP_A) == "RATE_LIMITED"
        assert await emu.requests_seen() == before
        assert await login_reason(stub, emu, APP_B) == "ok"


async def test_logins_per_caller_follow_its_login_rate(
    start_stub: StubFactory, emu: Emulator, tmp_path: Path
) -> None:
    """A caller with login_rate = 1 gets its burst of 2; another caller is not held back by it."""
    keys = {"slow": "slow-caller-key-00000001", "fast": "fast-caller-key-00000001"}
    callers = tmp_path / "callers.toml"
    text = caller_table("slow", keys["slow"], extra="login_rate = 1\n")
    text += caller_table("fast", keys["fast"])
    await asyncio.to_thread(callers.write_text, text)
    slow = {"metadata": (("x-wxlogin-caller-key", keys["slow"]),)}
    fast = {"metadata": (("x-wxlogin-caller-key", keys["fast"]),)}
    async with start_stub(callers_file=callers) as stub:
        outcomes = [await login_reason(stub, emu, APP_A, **slow) for _ in range(3)]
        assert outcomes == ["ok", "ok", "RATE_LIMITED"]
        assert await login_reason(stub, emu, APP_A, **fast) == "ok"


def test_the_login_rate_is_read_from_the_environment() -> None:
    """WXLOGIN_LOGIN_RATE: logins per second per app, 0 for no bound; negative is an error."""
    env = {"WXLOGIN_APPS": APPS_ENV, "WXLOGIN_SECRET_KEY": b64_secret_key()}
    assert Settings.from_env(env).login_rate_per_app > 0
    assert Settings.from_env({**env, "WXLOGIN_LOGIN_RATE": "0"}).login_rate_per_app == 0
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({**env, "WXLOGIN_LOGIN_RATE": "-3"})
    assert caught.value.variable == "WXLOGIN_LOGIN_RATE"


# -- unknown tokens --------------------------------------------------------------------------------


async def session_reads(db: Any) -> int:
    """How many reads of `sessions` MongoDB's profiler has seen in this test's database."""
    return int(
        await db.system.profile.count_documents(
            {"ns": f"{db.name}.sessions", "op": {"$in": ["query", "find"]}}
        )
    )


async def test_a_repeated_unknown_token_reaches_mongodb_once(
    start_stub: StubFactory, db: Any, emu: Emulator
) -> None:
    """The same unknown token 50 times: one MongoDB read, 50 SESSION_INVALID; new tokens work."""
    await db.command({"profile": 2})
    try:
        async with start_stub() as stub:
            unknown = auth_pb2.CheckSessionRequest(token="wxl1_" + "U" * 43)
            for _ in range(50):
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await stub.CheckSession(unknown)
                assert error_info(caught.value).reason == "SESSION_INVALID"
            assert await session_reads(db) == 1
            code = await emu.code(APP_A, "known")
            token = (await stub.Login(auth_pb2.LoginRequest(app_id=APP_A, code=code))).token
            reply = await stub.CheckSession(auth_pb2.CheckSessionRequest(token=token))
            assert reply.user.app_id == APP_A
    finally:
        await db.command({"profile": 0})


def test_unknown_tokens_are_forgotten_after_max_age_and_bounded() -> None:
    """An entry lives max_age seconds; the number of entries is bounded; 0 turns it off."""
    clock = Clock()
    unknown = UnknownTokens(5.0, max_entries=10, monotonic=clock)
    unknown.add("a")
    assert "a" in unknown
    clock.now += 5.1
    assert "a" not in unknown
    for number in range(100):
        unknown.add(str(number))
    assert len(unknown) == 10
    off = UnknownTokens(0)
    off.add("a")
    assert "a" not in off
