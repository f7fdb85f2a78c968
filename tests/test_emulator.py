"""The WeChat emulator, over real HTTP: jscode2session, the /_dev API, faults and the CLI."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from emulator import init_app
from emulator.__main__ import parse_args
from runtime.config import ConfigError, ListenAddress
from tests.support import run_to_exit

APP1, SECRET1 = "wxtest00000000001", "secret-one"
APP2, SECRET2 = "wxtest00000000002", "secret-two"
APPS = {APP1: SECRET1, APP2: SECRET2}
SECRETS = {APP1: SECRET1, APP2: SECRET2}
REPO = Path(__file__).resolve().parent.parent
NO_REQUESTS = {
    "jscode2session_requests": 0,
    "stable_token_requests": 0,
    "getuserphonenumber_requests": 0,
    "checksession_requests": 0,
    "resetusersessionkey_requests": 0,
}


class FakeClock:
    """A clock the tests move by hand."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Emulator:
    """A running emulator plus the client calls the tests make against it."""

    def __init__(self, base: str, http: aiohttp.ClientSession, clock: FakeClock) -> None:
        self.base = base
        self.http = http
        self.clock = clock

    async def dev(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        async with self.http.request(method, self.base + path, json=body) as resp:
            return resp.status, await resp.json()

    async def ok(self, method: str, path: str, body: Any = None) -> Any:
        status, answer = await self.dev(method, path, body)
        assert status == 200, answer
        return answer

    async def login(self, user: str = "alice", appid: str = APP1, **extra: Any) -> str:
        answer = await self.ok("POST", "/_dev/login", {"appid": appid, "user": user, **extra})
        code: str = answer["code"]
        return code

    async def exchange(
        self,
        code: str | None,
        appid: str | None = APP1,
        secret: str | None = None,
        grant_type: str | None = "authorization_code",
    ) -> dict[str, Any]:
        params = {
            "appid": appid,
            "secret": SECRETS.get(appid or "", "") if secret is None else secret,
            "js_code": code,
            "grant_type": grant_type,
        }
        query = {k: v for k, v in params.items() if v is not None}
        async with self.http.get(self.base + "/sns/jscode2session", params=query) as resp:
            assert resp.status == 200
            assert resp.content_type == "text/plain"
            answer: dict[str, Any] = json.loads(await resp.text())
            return answer


@pytest_asyncio.fixture
async def emu() -> AsyncIterator[Emulator]:
    """An emulator on a free loopback port with a fake clock, and a client session."""
    clock = FakeClock()
    runner = web.AppRunner(init_app(APPS, code_ttl=300.0, clock=clock))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    try:
        async with aiohttp.ClientSession() as http:
            yield Emulator(f"http://127.0.0.1:{port}", http, clock)
    finally:
        # cleanup() waits for in-flight handlers, so no task outlives the test's loop work.
        await runner.cleanup()


def decrypt(session_key: str, encrypted: str, iv: str) -> Any:
    """Decrypt user data the way a WeChat backend does."""
    decryptor = Cipher(
        algorithms.AES(base64.b64decode(session_key)), modes.CBC(base64.b64decode(iv))
    ).decryptor()
    padded = decryptor.update(base64.b64decode(encrypted)) + decryptor.finalize()
    unpadder = padding.PKCS7(128).unpadder()
    return json.loads(unpadder.update(padded) + unpadder.finalize())


def signature(raw_data: str, session_key: str) -> str:
    """WeChat's rawData signature, computed independently of the emulator."""
    return hashlib.sha1((raw_data + session_key).encode(), usedforsecurity=False).hexdigest()


# -- jscode2session ---------------------------------------------------------------------------


async def test_exchange_without_unionid(emu: Emulator) -> None:
    """A fresh code exchanges for openid and a 16-byte session_key, and no unionid key."""
    code = await emu.login()
    answer = await emu.exchange(code)
    assert set(answer) == {"openid", "session_key"}
    assert len(base64.b64decode(answer["session_key"], validate=True)) == 16


async def test_exchange_with_unionid(emu: Emulator) -> None:
    """unionid: true derives one id shared across apps; a string is used as given."""
    derived = await emu.ok("POST", "/_dev/users", {"appid": APP1, "user": "bob", "unionid": True})
    other = await emu.ok("POST", "/_dev/users", {"appid": APP2, "user": "bob", "unionid": True})
    assert derived["unionid"] == other["unionid"]
    assert len(derived["unionid"]) == 28
    assert (await emu.exchange(await emu.login("bob")))["unionid"] == derived["unionid"]

    await emu.ok("POST", "/_dev/users", {"appid": APP1, "user": "carol", "unionid": "u-carol"})
    assert (await emu.exchange(await emu.login("carol")))["unionid"] == "u-carol"


async def test_openid_stable_and_per_app(emu: Emulator) -> None:
    """The same user keeps one 28-char openid per app, and gets another one in another app."""
    first = await emu.exchange(await emu.login("dave"))
    again = await emu.exchange(await emu.login("dave"))
    elsewhere = await emu.exchange(await emu.login("dave", appid=APP2), appid=APP2)
    assert first["openid"] == again["openid"]
    assert first["openid"] != elsewhere["openid"]
    assert len(first["openid"]) == 28
    assert first["openid"].startswith("o")


async def test_session_key_rotates_per_login(emu: Emulator) -> None:
    """Each login mints a new session_key and each code returns the one minted with it."""
    old_code = await emu.login()
    new_code = await emu.login()
    new = await emu.exchange(new_code)
    old = await emu.exchange(old_code)
    assert new["session_key"] != old["session_key"]
    # user-data follows the latest login, so it decrypts with the newest code's key only.
    bundle = await emu.ok("POST", "/_dev/user-data", {"appid": APP1, "user": "alice"})
    assert decrypt(new["session_key"], bundle["encryptedData"], bundle["iv"])["watermark"]


async def test_code_reuse_is_40163(emu: Emulator) -> None:
    """A code exchanges once; the second try is 40163."""
    code = await emu.login()
    assert "openid" in await emu.exchange(code)
    assert await emu.exchange(code) == {"errcode": 40163, "errmsg": "code been used"}


async def test_unknown_code_is_40029(emu: Emulator) -> None:
    """A code the emulator never minted is 40029."""
    assert await emu.exchange("nosuchcode") == {"errcode": 40029, "errmsg": "invalid code"}


async def test_other_apps_code_is_40029(emu: Emulator) -> None:
    """A code minted for one app is invalid in another and stays usable in its own."""
    code = await emu.login(appid=APP1)
    assert (await emu.exchange(code, appid=APP2))["errcode"] == 40029
    assert "openid" in await emu.exchange(code, appid=APP1)


async def test_code_expires_after_ttl(emu: Emulator) -> None:
    """A code is good until its TTL (default or per-code) runs out, then it is 40029."""
    default_code = await emu.login()
    short_code = await emu.login(ttl=1)
    emu.clock.advance(1)
    assert (await emu.exchange(short_code))["errcode"] == 40029
    emu.clock.advance(298)
    assert "openid" in await emu.exchange(default_code)
    late_code = await emu.login()
    emu.clock.advance(300)
    assert (await emu.exchange(late_code))["errcode"] == 40029


@pytest.mark.parametrize(
    ("appid", "secret", "code", "grant_type", "errcode"),
    [
        (None, "s", "c", "authorization_code", 41002),
        (APP1, "", "c", "authorization_code", 41004),
        (APP1, SECRET1, None, "authorization_code", 41008),
        (APP1, SECRET1, "c", None, 40002),
        (APP1, SECRET1, "c", "client_credential", 40002),
        ("wxnosuchapp", "s", "c", "authorization_code", 40013),
        (APP1, SECRET2, "c", "authorization_code", 40125),
    ],
)
async def test_bad_parameters(
    emu: Emulator,
    appid: str | None,
    secret: str,
    code: str | None,
    grant_type: str | None,
    errcode: int,
) -> None:
    """Missing or wrong appid, secret, js_code or grant_type get WeChat's errcodes."""
    answer = await emu.exchange(code, appid=appid, secret=secret, grant_type=grant_type)
    assert answer["errcode"] == errcode
    assert set(answer) == {"errcode", "errmsg"}


async def test_wrong_secret_does_not_burn_code(emu: Emulator) -> None:
    """A 40125 is decided before the code is looked at, so the code still works."""
    code = await emu.login()
    assert (await emu.exchange(code, secret="wrong"))["errcode"] == 40125
    assert "openid" in await emu.exchange(code)


async def test_blocked_user_is_40226(emu: Emulator) -> None:
    """A user set up as blocked gets 40226 on exchange."""
    await emu.ok("POST", "/_dev/users", {"appid": APP1, "user": "mallory", "blocked": True})
    answer = await emu.exchange(await emu.login("mallory"))
    assert answer == {"errcode": 40226, "errmsg": "high risk user"}


# -- user data --------------------------------------------------------------------------------


async def test_user_data_decrypts_and_verifies(emu: Emulator) -> None:
    """Default user data decrypts with the code's key, has the app's watermark and signs right."""
    await emu.ok("POST", "/_dev/users", {"appid": APP1, "user": "erin", "unionid": True})
    session = await emu.exchange(await emu.login("erin"))
    bundle = await emu.ok("POST", "/_dev/user-data", {"appid": APP1, "user": "erin"})
    plain = decrypt(session["session_key"], bundle["encryptedData"], bundle["iv"])
    assert plain["watermark"] == {"appid": APP1, "timestamp": int(emu.clock.now)}
    assert plain["openId"] == session["openid"]
    assert plain["unionId"] == session["unionid"]
    raw = json.loads(bundle["rawData"])
    assert raw == {k: v for k, v in plain.items() if k != "watermark"}
    assert bundle["signature"] == signature(bundle["rawData"], session["session_key"])
    assert len(base64.b64decode(bundle["iv"])) == 16


async def test_user_data_custom_data_and_watermark(emu: Emulator) -> None:
    """Given data is encrypted as is, rawData keeps non-ASCII text, watermark can be forged."""
    session = await emu.exchange(await emu.login())
    data = {"phoneNumber": "13800138000", "nickName": "小明"}
    bundle = await emu.ok(
        "POST",
        "/_dev/user-data",
        {
            "appid": APP1,
            "user": "alice",
            "data": data,
            "watermark_appid": APP2,
            "watermark_timestamp": 1234,
        },
    )
    plain = decrypt(session["session_key"], bundle["encryptedData"], bundle["iv"])
    assert plain == {**data, "watermark": {"appid": APP2, "timestamp": 1234}}
    assert bundle["rawData"] == '{"phoneNumber":"13800138000","nickName":"小明"}'
    assert bundle["signature"] == signature(bundle["rawData"], session["session_key"])


async def test_user_data_needs_a_login(emu: Emulator) -> None:
    """user-data for a user without a session_key is 409."""
    await emu.ok("POST", "/_dev/users", {"appid": APP1, "user": "frank"})
    status, answer = await emu.dev("POST", "/_dev/user-data", {"appid": APP1, "user": "frank"})
    assert status == 409
    assert "error" in answer


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        ("/_dev/users", {"appid": "wxnosuchapp", "user": "x"}, 404),
        ("/_dev/login", {"appid": "wxnosuchapp", "user": "x"}, 404),
        ("/_dev/user-data", {"appid": "wxnosuchapp", "user": "x"}, 404),
        ("/_dev/users", {"appid": APP1}, 400),
        ("/_dev/users", [APP1], 400),
        ("/_dev/users", {"appid": APP1, "user": "x", "blocked": "yes"}, 400),
        ("/_dev/login", {"appid": APP1, "user": "x", "ttl": -1}, 400),
        ("/_dev/user-data", {"appid": APP1, "user": "x", "data": [1]}, 400),
        ("/_dev/faults", {"latency": 10}, 400),
        ("/_dev/faults", {"times": 0}, 400),
        ("/_dev/faults", {"http_status": 99}, 400),
        ("/_dev/faults", {"use_code": "yes"}, 400),
        ("/_dev/chaos", {}, 400),
        ("/_dev/chaos", {"rate": 1.5}, 400),
        ("/_dev/chaos", {"rate": True}, 400),
        ("/_dev/chaos", {"rate": 0.3, "kinds": []}, 400),
        ("/_dev/chaos", {"rate": 0.3, "kinds": ["busy", "fire"]}, 400),
        ("/_dev/chaos", {"rate": 0.3, "kinds": ["busy", "busy"]}, 400),
        ("/_dev/chaos", {"rate": 0.3, "stall_ms": -1}, 400),
        ("/_dev/chaos", {"rate": 0.3, "seed": "42"}, 400),
    ],
)
async def test_dev_api_rejects_bad_input(emu: Emulator, path: str, body: Any, status: int) -> None:
    """The dev API answers 404 for unknown apps and 400 with an error for malformed bodies."""
    got, answer = await emu.dev("POST", path, body)
    assert got == status
    assert isinstance(answer["error"], str)


# -- faults and stats -------------------------------------------------------------------------


async def test_fault_latency_delays_answer(emu: Emulator) -> None:
    """latency_ms holds the answer back, and the exchange itself still happens."""
    await emu.ok("POST", "/_dev/faults", {"latency_ms": 200, "times": 1})
    code = await emu.login()
    started = time.monotonic()
    assert "openid" in await emu.exchange(code)
    assert time.monotonic() - started >= 0.2
    started = time.monotonic()
    assert (await emu.exchange(code))["errcode"] == 40163
    assert time.monotonic() - started < 0.2


async def test_fault_errcode_keeps_code(emu: Emulator) -> None:
    """A forced errcode answers HTTP 200 without consuming the code."""
    await emu.ok("POST", "/_dev/faults", {"errcode": -1, "times": 1})
    code = await emu.login()
    assert await emu.exchange(code) == {"errcode": -1, "errmsg": "forced"}
    assert "openid" in await emu.exchange(code)


async def test_fault_http_status(emu: Emulator) -> None:
    """http_status answers that status with a non-JSON body, and the code survives."""
    await emu.ok("POST", "/_dev/faults", {"http_status": 502, "times": 1})
    code = await emu.login()
    url = emu.base + "/sns/jscode2session"
    query = {"appid": APP1, "secret": SECRET1, "js_code": code, "grant_type": "authorization_code"}
    async with emu.http.get(url, params=query) as resp:
        assert resp.status == 502
        assert "errcode" not in await resp.text()
    assert "openid" in await emu.exchange(code)


async def test_fault_drop_closes_connection(
    emu: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    """drop closes the connection with no response at all, and the server logs no error."""
    await emu.ok("POST", "/_dev/faults", {"drop": True})
    # aiohttp's client retries an idempotent request once on a dropped connection, so the fault
    # must outlast that retry for the caller to see the error.
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await emu.exchange("anycode")
    assert (await emu.ok("GET", "/_dev/stats"))["jscode2session_requests"] == 2

    host, port = emu.base.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"GET /sns/jscode2session HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()
    await writer.wait_closed()

    await emu.ok("DELETE", "/_dev/faults")
    assert (await emu.exchange(await emu.login()))["openid"]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


async def test_fault_times_counts_down_in_fifo_order(emu: Emulator) -> None:
    """Faults apply in the order queued, each for its own number of requests."""
    await emu.ok("POST", "/_dev/faults", {"errcode": 45011, "times": 2})
    listed = await emu.ok("POST", "/_dev/faults", {"errcode": -1, "times": 1})
    assert [f["errcode"] for f in listed["faults"]] == [45011, -1]
    code = await emu.login()
    assert [(await emu.exchange(code))["errcode"] for _ in range(3)] == [45011, 45011, -1]
    assert (await emu.ok("GET", "/_dev/faults"))["faults"] == []
    assert "openid" in await emu.exchange(code)


async def test_fault_without_times_lasts_until_cleared(emu: Emulator) -> None:
    """A fault with no times applies to every request until DELETE /_dev/faults."""
    await emu.ok("POST", "/_dev/faults", {"errcode": -1})
    code = await emu.login()
    for _ in range(3):
        assert (await emu.exchange(code))["errcode"] == -1
    assert await emu.ok("DELETE", "/_dev/faults") == {"faults": []}
    assert "openid" in await emu.exchange(code)


async def test_faults_combine_latency_and_errcode(emu: Emulator) -> None:
    """latency and errcode in one fault delay a forced error."""
    await emu.ok("POST", "/_dev/faults", {"latency_ms": 100, "errcode": -1, "times": 1})
    started = time.monotonic()
    assert (await emu.exchange("anycode"))["errcode"] == -1
    assert time.monotonic() - started >= 0.1


async def test_faults_spare_other_endpoints(emu: Emulator) -> None:
    """Faults touch only jscode2session; the dev API and healthz keep working."""
    await emu.ok("POST", "/_dev/faults", {"drop": True})
    assert await emu.ok("GET", "/healthz") == {"status": "ok"}
    assert await emu.login()


async def test_stats_count_every_request(emu: Emulator) -> None:
    """Every jscode2session request counts, faulted ones included, until reset."""
    await emu.ok("POST", "/_dev/faults", {"errcode": -1, "times": 1})
    await emu.exchange("a")
    await emu.exchange("b", appid=None)
    assert await emu.ok("GET", "/_dev/stats") == {**NO_REQUESTS, "jscode2session_requests": 2}
    assert await emu.ok("POST", "/_dev/stats/reset") == NO_REQUESTS
    assert await emu.ok("GET", "/_dev/stats") == NO_REQUESTS


async def test_fault_use_code_spends_the_code(emu: Emulator) -> None:
    """use_code exchanges (spends) the code before the forced answer, unlike a plain errcode."""
    await emu.ok("POST", "/_dev/faults", {"errcode": -1, "use_code": True, "times": 1})
    code = await emu.login()
    assert (await emu.exchange(code))["errcode"] == -1
    assert (await emu.exchange(code))["errcode"] == 40163


# -- chaos ------------------------------------------------------------------------------------


async def raw_exchange(emu: Emulator, code: str) -> str:
    """One jscode2session request on a connection of its own, classified as the caller sees it.

    A raw socket, not aiohttp: aiohttp re-sends a request whose connection dropped, which
    would make the emulator draw twice for one request here.
    """
    host, port = emu.base.removeprefix("http://").split(":")
    query = f"appid={APP1}&secret={SECRET1}&js_code={code}&grant_type=authorization_code"
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        f"GET /sns/jscode2session?{query} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
    )
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    await writer.wait_closed()
    if not raw:
        return "drop"
    status = int(raw.split(b" ", 2)[1])
    if status != 200:
        return f"http{status}"
    answer = json.loads(raw.partition(b"\r\n\r\n")[2])
    if answer.get("errcode") == -1:
        return "busy"
    return "openid" if "openid" in answer else f"errcode{answer.get('errcode')}"


async def chaos_run(emu: Emulator, setting: dict[str, Any], requests: int) -> list[str]:
    """Set chaos, send `requests` exchanges of unknown codes one after another, classify each."""
    await emu.ok("POST", "/_dev/chaos", setting)
    return [await raw_exchange(emu, f"nosuchcode{i}") for i in range(requests)]


async def test_chaos_rate_and_kinds_over_200_requests(emu: Emulator) -> None:
    """With rate 0.3 about 30% of 200 requests fail, every kind occurs, and the counts match."""
    outcomes = await chaos_run(emu, {"rate": 0.3, "seed": 42, "stall_ms": 1}, 200)
    report = await emu.ok("GET", "/_dev/chaos")
    assert report["chaos"] == {
        "rate": 0.3,
        "seed": 42,
        "kinds": ["busy", "http5xx", "drop", "stall"],
        "stall_ms": 1,
    }
    assert report["requests"] == 200
    injected = report["injected"]
    assert 40 <= sum(injected.values()) <= 80
    assert all(count > 0 for count in injected.values()), injected
    assert outcomes.count("busy") == injected["busy"]
    assert outcomes.count("drop") == injected["drop"]
    statuses = {outcome for outcome in outcomes if outcome.startswith("http")}
    assert statuses <= {"http500", "http502", "http503"}
    assert sum(outcome in statuses for outcome in outcomes) == injected["http5xx"]
    # A stall answers normally (late): an unknown code's 40029, like an untouched request.
    normal = 200 - injected["busy"] - injected["drop"] - injected["http5xx"]
    assert outcomes.count("errcode40029") == normal


async def test_chaos_is_deterministic_for_a_seed(emu: Emulator) -> None:
    """The same seed gives the same faults in the same order; another seed, others."""
    setting = {"rate": 0.5, "seed": 7, "stall_ms": 0}
    first = await chaos_run(emu, setting, 60)
    again = await chaos_run(emu, setting, 60)
    other = await chaos_run(emu, {**setting, "seed": 8}, 60)
    assert first == again
    assert first != other


async def test_chaos_drop_spends_the_code_and_busy_does_not(emu: Emulator) -> None:
    """A dropped answer comes after WeChat used the code (40163 next); busy leaves it usable."""
    code = await emu.login()
    await emu.ok("POST", "/_dev/chaos", {"rate": 1, "kinds": ["drop"]})
    assert await raw_exchange(emu, code) == "drop"
    await emu.ok("POST", "/_dev/chaos", {"rate": 1, "kinds": ["busy"]})
    other = await emu.login("bob")
    assert await raw_exchange(emu, other) == "busy"
    await emu.ok("DELETE", "/_dev/chaos")
    assert (await emu.exchange(code))["errcode"] == 40163
    assert "openid" in await emu.exchange(other)


async def test_chaos_stall_then_answers_normally(emu: Emulator) -> None:
    """A stall holds the answer back and then exchanges the code as usual."""
    await emu.ok("POST", "/_dev/chaos", {"rate": 1, "kinds": ["stall"], "stall_ms": 50})
    assert "openid" in await emu.exchange(await emu.login())
    assert (await emu.ok("GET", "/_dev/chaos"))["injected"]["stall"] == 1


async def test_chaos_yields_to_queued_faults_and_stops_on_delete(emu: Emulator) -> None:
    """Queued faults go first; DELETE stops chaos but keeps its counts readable."""
    answer = await emu.ok("POST", "/_dev/chaos", {"rate": 1, "kinds": ["busy"]})
    assert isinstance(answer["chaos"]["seed"], int)  # chosen when not given, so repeatable
    await emu.ok("POST", "/_dev/faults", {"errcode": 45011, "times": 1})
    assert (await emu.exchange("anycode"))["errcode"] == 45011
    assert (await emu.exchange("anycode"))["errcode"] == -1
    stopped = await emu.ok("DELETE", "/_dev/chaos")
    assert stopped["chaos"] is None
    assert stopped["requests"] == 1
    assert stopped["injected"] == {"busy": 1, "http5xx": 0, "drop": 0, "stall": 0}
    assert (await emu.exchange("anycode"))["errcode"] == 40029


# -- stable_token, phone numbers, wxa session keys --------------------------------------------


async def wechat_post(emu: Emulator, path: str, body: Any, **query: str) -> dict[str, Any]:
    """POST a JSON body to one of WeChat's endpoints; the answer is JSON labelled text/plain."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with emu.http.post(emu.base + path, data=data, params=query) as resp:
        assert resp.status == 200
        answer: dict[str, Any] = json.loads(await resp.text())
        return answer


async def wechat_get(emu: Emulator, path: str, **query: str) -> dict[str, Any]:
    """GET one of WeChat's endpoints with a query."""
    async with emu.http.get(emu.base + path, params=query) as resp:
        assert resp.status == 200
        answer: dict[str, Any] = json.loads(await resp.text())
        return answer


async def stable_token(
    emu: Emulator, appid: str = APP1, *, force: bool = False, secret: str | None = None
) -> dict[str, Any]:
    """One stable_token call."""
    body = {
        "grant_type": "client_credential",
        "appid": appid,
        "secret": SECRETS[appid] if secret is None else secret,
        "force_refresh": force,
    }
    return await wechat_post(emu, "/cgi-bin/stable_token", body)


def hmac_signature(session_key: str) -> str:
    """WeChat's login-state signature, computed independently of the emulator."""
    return hmac.new(session_key.encode(), b"", hashlib.sha256).hexdigest()


async def checksession(
    emu: Emulator, token: str, openid: str, session_key: str, sig_method: str = "hmac_sha256"
) -> int:
    """wxa/checksession's errcode for a signature made with `session_key`."""
    answer = await wechat_get(
        emu,
        "/wxa/checksession",
        access_token=token,
        openid=openid,
        signature=hmac_signature(session_key),
        sig_method=sig_method,
    )
    errcode: int = answer["errcode"]
    return errcode


async def token_errcode(emu: Emulator, token: str) -> int:
    """What an API that takes an access_token says about `token`: 0 when it is accepted."""
    # An unknown openid is 40003, answered only after the token was accepted.
    errcode = await checksession(emu, token, "onobody", "key")
    return 0 if errcode == 40003 else errcode


async def test_stable_token_normal_mode_overlaps_old_and_new(emu: Emulator) -> None:
    """Normal mode repeats one token until 5 min before expiry, then mints the next; both work."""
    first = await stable_token(emu)
    assert set(first) == {"access_token", "expires_in"}
    assert first["expires_in"] == 7200
    emu.clock.advance(7200 - 301)
    again = await stable_token(emu)
    assert again == {"access_token": first["access_token"], "expires_in": 301}
    emu.clock.advance(2)  # now 299 s left: inside the overlap window
    second = await stable_token(emu)
    assert second["access_token"] != first["access_token"]
    assert second["expires_in"] == 7200
    assert await token_errcode(emu, first["access_token"]) == 0
    assert await token_errcode(emu, second["access_token"]) == 0
    assert (await stable_token(emu))["access_token"] == second["access_token"]
    emu.clock.advance(299)
    assert await token_errcode(emu, first["access_token"]) == 42001
    assert await token_errcode(emu, second["access_token"]) == 0
    assert (await stable_token(emu, APP2))["access_token"] != second["access_token"]


async def test_stable_token_force_invalidates_old_ones_at_once(emu: Emulator) -> None:
    """A forced refresh mints a new token and every earlier one answers 40001 from then on."""
    old = (await stable_token(emu))["access_token"]
    forced = await stable_token(emu, force=True)
    assert forced["access_token"] != old
    assert forced["expires_in"] == 7200
    assert await token_errcode(emu, old) == 40001
    assert await token_errcode(emu, forced["access_token"]) == 0
    assert (await stable_token(emu))["access_token"] == forced["access_token"]


async def test_stable_token_force_is_30s_apart_and_20_a_day(emu: Emulator) -> None:
    """Force mode: 45011 within 30 s of the last one, 45009 after 20 in a day, fine next day."""
    emu.clock.now = 1_700_006_400.0  # a UTC midnight: the day below does not roll over
    assert "access_token" in await stable_token(emu, force=True)
    emu.clock.advance(29)
    assert (await stable_token(emu, force=True))["errcode"] == 45011
    emu.clock.advance(1)
    for _ in range(19):
        assert "access_token" in await stable_token(emu, force=True)
        emu.clock.advance(30)
    assert (await stable_token(emu, force=True))["errcode"] == 45009
    usable = (await stable_token(emu))["access_token"]
    assert await token_errcode(emu, usable) == 0  # normal mode still works
    assert "access_token" in await stable_token(emu, APP2, force=True)  # counted per app
    listed = await emu.ok("GET", "/_dev/access-tokens")
    assert listed["apps"][APP1]["forces_today"] == 20
    emu.clock.advance(86400)
    assert "access_token" in await stable_token(emu, force=True)


@pytest.mark.parametrize(
    ("body", "errcode"),
    [
        ({"grant_type": "client_credential", "appid": APP1, "secret": SECRET2}, 40125),
        ({"grant_type": "client_credential", "appid": "wxnosuchapp", "secret": "s"}, 40013),
        ({"grant_type": "authorization_code", "appid": APP1, "secret": SECRET1}, 40002),
        ({"grant_type": "client_credential", "secret": SECRET1}, 41002),
        ({"grant_type": "client_credential", "appid": APP1}, 41004),
        (b"not json", 47001),
    ],
)
async def test_stable_token_bad_parameters(emu: Emulator, body: Any, errcode: int) -> None:
    """Wrong secret, unknown app, wrong grant type, missing fields, a non-JSON body: errcodes."""
    answer = await wechat_post(emu, "/cgi-bin/stable_token", body)
    assert answer["errcode"] == errcode
    assert "access_token" not in answer


async def test_unknown_and_missing_access_tokens(emu: Emulator) -> None:
    """A token never issued is 40014, none at all 41001, on every endpoint that takes one."""
    assert await token_errcode(emu, "emu_made_up") == 40014
    answer = await wechat_post(emu, "/wxa/business/getuserphonenumber", {"code": "x"})
    assert answer["errcode"] == 41001
    answer = await wechat_get(emu, "/wxa/resetusersessionkey", access_token="emu_made_up")
    assert answer["errcode"] == 40014


async def test_dev_invalidate_leaves_only_force_mode(emu: Emulator) -> None:
    """An invalidated token answers 40001 while normal mode still returns it; force fixes it."""
    token = (await stable_token(emu))["access_token"]
    assert await emu.ok("POST", "/_dev/access-tokens/invalidate", {"appid": APP1}) == {
        "invalidated": True
    }
    assert await token_errcode(emu, token) == 40001
    assert (await stable_token(emu))["access_token"] == token
    fresh = (await stable_token(emu, force=True))["access_token"]
    assert await token_errcode(emu, fresh) == 0


async def phone_number(emu: Emulator, token: str, code: str) -> dict[str, Any]:
    """One getuserphonenumber call."""
    return await wechat_post(
        emu, "/wxa/business/getuserphonenumber", {"code": code}, access_token=token
    )


async def test_phone_code_gives_the_number_once(emu: Emulator) -> None:
    """A phone code gives phone_info with a string countryCode and the app's watermark, once."""
    await emu.ok("POST", "/_dev/users", {"appid": APP1, "user": "pat", "phone": "13800138000"})
    code = (await emu.ok("POST", "/_dev/phone-code", {"appid": APP1, "user": "pat"}))["code"]
    token = (await stable_token(emu))["access_token"]
    answer = await phone_number(emu, token, code)
    assert answer == {
        "errcode": 0,
        "errmsg": "ok",
        "phone_info": {
            "phoneNumber": "13800138000",
            "purePhoneNumber": "13800138000",
            "countryCode": "86",
            "watermark": {"timestamp": int(emu.clock.now), "appid": APP1},
        },
    }
    assert (await phone_number(emu, token, code))["errcode"] == 40163


async def test_phone_code_expiry_app_and_foreign_numbers(emu: Emulator) -> None:
    """Phone codes expire after 5 min, are invalid with another app's token; +cc outside China."""
    await emu.ok(
        "POST",
        "/_dev/users",
        {"appid": APP1, "user": "ann", "phone": "4155550100", "country_code": "1"},
    )
    token = (await stable_token(emu))["access_token"]
    other_app = (await stable_token(emu, APP2))["access_token"]
    code = (await emu.ok("POST", "/_dev/phone-code", {"appid": APP1, "user": "ann"}))["code"]
    assert (await phone_number(emu, other_app, code))["errcode"] == 40029
    info = (await phone_number(emu, token, code))["phone_info"]
    assert (info["phoneNumber"], info["purePhoneNumber"], info["countryCode"]) == (
        "+1 4155550100",
        "4155550100",
        "1",
    )
    late = (await emu.ok("POST", "/_dev/phone-code", {"appid": APP1, "user": "ann"}))["code"]
    emu.clock.advance(300)
    assert (await phone_number(emu, token, late))["errcode"] == 40029
    assert (await phone_number(emu, token, "nosuchcode"))["errcode"] == 40029


async def test_phone_code_needs_a_phone(emu: Emulator) -> None:
    """The dev API refuses a phone code for a user set up without a phone (409) and bad input."""
    await emu.ok("POST", "/_dev/users", {"appid": APP1, "user": "nophone"})
    status, _ = await emu.dev("POST", "/_dev/phone-code", {"appid": APP1, "user": "nophone"})
    assert status == 409
    status, _ = await emu.dev("POST", "/_dev/users", {"appid": APP1, "user": "x", "phone": "1-2"})
    assert status == 400


async def test_checksession_accepts_only_the_current_key(emu: Emulator) -> None:
    """checksession: the current session_key's hmac is ok; an older key's, or garbage, 87009."""
    old = await emu.ok("POST", "/_dev/login", {"appid": APP1, "user": "kim"})
    token = (await stable_token(emu))["access_token"]
    assert await checksession(emu, token, old["openid"], old["session_key"]) == 0
    assert await checksession(emu, token, old["openid"], "not-the-key") == 87009
    new = await emu.ok("POST", "/_dev/login", {"appid": APP1, "user": "kim"})
    assert await checksession(emu, token, old["openid"], old["session_key"]) == 87009
    assert await checksession(emu, token, new["openid"], new["session_key"]) == 0
    assert await checksession(emu, token, new["openid"], new["session_key"], "md5") == 40097
    other_app = (await stable_token(emu, APP2))["access_token"]
    assert await checksession(emu, other_app, new["openid"], new["session_key"]) == 40003


async def test_resetusersessionkey_rotates_the_key(emu: Emulator) -> None:
    """A reset signed with the current key returns a new one; the old one is then 87009."""
    login = await emu.ok("POST", "/_dev/login", {"appid": APP1, "user": "lee"})
    token = (await stable_token(emu))["access_token"]
    query = {"access_token": token, "openid": login["openid"], "sig_method": "hmac_sha256"}
    stale = await wechat_get(
        emu, "/wxa/resetusersessionkey", **query, signature=hmac_signature("wrong")
    )
    assert stale["errcode"] == 87009
    answer = await wechat_get(
        emu, "/wxa/resetusersessionkey", **query, signature=hmac_signature(login["session_key"])
    )
    assert answer["errcode"] == 0
    assert answer["openid"] == login["openid"]
    new_key = answer["session_key"]
    assert new_key != login["session_key"]
    assert len(base64.b64decode(new_key)) == 16
    assert await checksession(emu, token, login["openid"], login["session_key"]) == 87009
    assert await checksession(emu, token, login["openid"], new_key) == 0
    bundle = await emu.ok("POST", "/_dev/user-data", {"appid": APP1, "user": "lee"})
    assert decrypt(new_key, bundle["encryptedData"], bundle["iv"])["watermark"]["appid"] == APP1


async def test_stats_count_each_endpoint(emu: Emulator) -> None:
    """/_dev/stats counts requests per WeChat endpoint, refused ones included."""
    token = (await stable_token(emu))["access_token"]
    await stable_token(emu, secret="wrong")
    await phone_number(emu, token, "nosuchcode")
    await checksession(emu, token, "onobody", "key")
    await wechat_get(emu, "/wxa/resetusersessionkey", access_token=token)
    await emu.exchange("nosuchcode")
    assert await emu.ok("GET", "/_dev/stats") == {
        "jscode2session_requests": 1,
        "stable_token_requests": 2,
        "getuserphonenumber_requests": 1,
        "checksession_requests": 1,
        "resetusersessionkey_requests": 1,
    }


async def test_faults_can_target_one_endpoint(emu: Emulator) -> None:
    """A fault for stable_token answers there only, in order; jscode2session is untouched."""
    await emu.ok("POST", "/_dev/faults", {"endpoint": "stable_token", "errcode": 40164, "times": 1})
    listed = await emu.ok("POST", "/_dev/faults", {"errcode": -1, "times": 1})
    assert [f["endpoint"] for f in listed["faults"]] == ["stable_token", "jscode2session"]
    assert (await stable_token(emu)) == {"errcode": 40164, "errmsg": "forced"}
    assert "access_token" in await stable_token(emu)
    assert (await emu.exchange("anycode"))["errcode"] == -1
    status, answer = await emu.dev("POST", "/_dev/faults", {"endpoint": "nosuch"})
    assert status == 400
    assert "endpoint" in answer["error"]


async def test_phone_fault_with_use_code_spends_the_code(emu: Emulator) -> None:
    """use_code on getuserphonenumber spends the phone code before the forced answer."""
    await emu.ok("POST", "/_dev/users", {"appid": APP1, "user": "uma", "phone": "13900000000"})
    code = (await emu.ok("POST", "/_dev/phone-code", {"appid": APP1, "user": "uma"}))["code"]
    token = (await stable_token(emu))["access_token"]
    fault = {"endpoint": "getuserphonenumber", "errcode": -1, "use_code": True, "times": 1}
    await emu.ok("POST", "/_dev/faults", fault)
    assert (await phone_number(emu, token, code))["errcode"] == -1
    assert (await phone_number(emu, token, code))["errcode"] == 40163


async def test_dev_clock_moves_time_forward() -> None:
    """POST /_dev/clock advances the emulator's own clock: codes and tokens expire by it."""
    runner = web.AppRunner(init_app(APPS, access_token_ttl=60, access_token_overlap=10))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        async with aiohttp.ClientSession() as http:
            emu = Emulator(f"http://127.0.0.1:{runner.addresses[0][1]}", http, FakeClock())
            code = await emu.login()
            first = await stable_token(emu)
            assert 59 <= first["expires_in"] <= 60
            assert await emu.ok("POST", "/_dev/clock", {"advance": 55}) == {"offset": 55}
            assert (await stable_token(emu))["access_token"] != first["access_token"]
            await emu.ok("POST", "/_dev/clock", {"advance": 300})
            assert (await emu.exchange(code))["errcode"] == 40029
            status, _ = await emu.dev("POST", "/_dev/clock", {"advance": -1})
            assert status == 400
    finally:
        await runner.cleanup()


# -- command line -----------------------------------------------------------------------------


async def test_cli_serves_and_stops_on_sigterm() -> None:
    """python -m emulator announces its port on stdout, serves, and exits 0 on SIGTERM."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WXLOGIN_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "emulator",
        "--listen",
        "127.0.0.1:0",
        cwd=REPO,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 10)).decode()
        assert line.startswith("emulator listening on http://127.0.0.1:")
        base = line.removeprefix("emulator listening on ").strip()
        assert not base.endswith(":0")
        async with (
            aiohttp.ClientSession() as http,
            http.get(base + "/healthz") as resp,
        ):
            assert await resp.json() == {"status": "ok"}
        proc.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(proc.communicate(), 10)
        assert proc.returncode == 0, stderr.decode()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_cli_bad_arguments_exit_2() -> None:
    """`python -m emulator` with a bad argument: exit 2, one stderr line naming it, no secret.

    Each bad argument is checked in-process below; this one proves what the
    process makes of them.
    """
    exited = await run_to_exit("emulator", "--apps", "wxa:topsecret,wxa:topsecret", wait=10)
    assert exited.returncode == 2
    assert exited.stdout == ""
    lines = exited.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("emulator: error: --apps: ")
    assert "topsecret" not in exited.stderr


@pytest.mark.parametrize(
    ("args", "variable"),
    [
        (["--apps", "wxapp-without-secret"], "--apps"),
        (["--apps", "wxa:topsecret,wxa:topsecret"], "--apps"),
        (["--apps", "wxa:topsecret,broken"], "--apps"),
        (["--listen", "nowhere"], "--listen"),
        (["--code-ttl", "0"], "--code-ttl"),
        (["--code-ttl", "nan"], "--code-ttl"),
    ],
)
def test_cli_bad_values_name_the_flag_and_no_secret(args: list[str], variable: str) -> None:
    """A bad flag value is a one-line ConfigError naming the flag, never echoing a secret."""
    with pytest.raises(ConfigError) as caught:
        parse_args(args, {})
    assert caught.value.variable == variable
    assert "\n" not in str(caught.value)
    assert "topsecret" not in str(caught.value)


@pytest.mark.parametrize(
    ("environ", "variable"),
    [
        ({"WXLOGIN_EMULATOR_LISTEN": "nowhere"}, "WXLOGIN_EMULATOR_LISTEN"),
        ({"WXLOGIN_APPS": "wxa:topsecret,wxa"}, "WXLOGIN_APPS"),
    ],
)
def test_cli_bad_environment_names_the_variable(environ: dict[str, str], variable: str) -> None:
    """Without flags, a bad WXLOGIN_* variable is a ConfigError naming it and no secret."""
    with pytest.raises(ConfigError) as caught:
        parse_args([], environ)
    assert caught.value.variable == variable
    assert "topsecret" not in str(caught.value)


def test_cli_unknown_flag_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    """An unknown flag exits 2 with argparse's one error line, not its usage block."""
    with pytest.raises(SystemExit) as caught:
        parse_args(["--no-such-flag"], {})
    assert caught.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.strip().splitlines() == ["emulator: error: unrecognized arguments: --no-such-flag"]


def test_cli_flags_win_over_environment_and_defaults_fill_the_rest() -> None:
    """--listen and --apps override their variables; unset, the dev defaults apply."""
    environ = {"WXLOGIN_EMULATOR_LISTEN": "nowhere", "WXLOGIN_APPS": "wxa:topsecret,wxa"}
    config = parse_args(["--listen", "[::1]:0", "--apps", "wx1:s1"], environ)
    assert config.listen == ListenAddress("::1", 0)
    assert config.apps == {"wx1": "s1"}
    defaults = parse_args([], {})
    assert str(defaults.listen) == "127.0.0.1:9090"
    assert set(defaults.apps) == {"wxdev0000000000001", "wxdev0000000000002"}
    assert defaults.code_ttl == 300.0


@pytest.mark.parametrize(
    ("args", "variable"),
    [
        (["--access-token-ttl", "0"], "--access-token-ttl"),
        (["--access-token-ttl", "inf"], "--access-token-ttl"),
        (["--access-token-ttl", "60", "--access-token-overlap", "60"], "--access-token-overlap"),
        (["--access-token-overlap", "-1"], "--access-token-overlap"),
    ],
)
def test_cli_bad_token_lifetimes_name_the_flag(args: list[str], variable: str) -> None:
    """A non-positive token lifetime, or an overlap not shorter than it, names its flag."""
    with pytest.raises(ConfigError) as caught:
        parse_args(args, {})
    assert caught.value.variable == variable


def test_cli_token_lifetimes_default_to_wechats() -> None:
    """Unset, tokens live 7200 s with a 300 s overlap; the flags shorten both for tests."""
    defaults = parse_args([], {})
    assert (defaults.access_token_ttl, defaults.access_token_overlap) == (7200.0, 300.0)
    short = parse_args(["--access-token-ttl", "12", "--access-token-overlap", "6"], {})
    assert (short.access_token_ttl, short.access_token_overlap) == (12.0, 6.0)
