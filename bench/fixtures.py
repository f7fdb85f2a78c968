"""What the scenarios send, made against a running dev stack: tokens, codes, canned answers.

Everything is obtained the way a mini-program would: codes from the emulator's
`wx.login()` stand-in, tokens from a real Login, encryptedData from the emulator under
the user's session_key. The real answers to each request are captured too, so the bare
baselines can answer with the very same bytes.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field

import aiohttp
import grpc

from bench.baselines import CannedGrpc, CannedHttp
from devtools.devstack import DEV_APP
from wxlogin.v1 import auth_pb2

AUTH = "/wxlogin.v1.AuthService/"
# Login codes are minted for users drawn from this pool, so after the first few
# thousand logins most are returning users, as in a real app.
LOGIN_USERS = 1000
# The user whose phone codes GetPhoneNumber exchanges (set up with a phone number).
PHONE_USER = "bench-phone"

# gRPC metadata of every call: a caller key, where the stack has callers.
Metadata = Sequence[tuple[str, str]]


class Emulator:
    """The emulator's dev endpoints, as the mini-program side of the benchmark."""

    def __init__(self, base_url: str, http: aiohttp.ClientSession) -> None:
        self._base_url = base_url
        self._http = http
        self._minted = 0

    async def _post(self, path: str, body: dict[str, str]) -> dict[str, str]:
        async with self._http.post(self._base_url + path, json=body) as response:
            payload: dict[str, str] = await response.json()
            if response.status != 200:
                raise RuntimeError(f"emulator {path} answered {response.status}: {payload}")
            return payload

    async def code(self, user: str) -> str:
        """Play wx.login() for `user`: one fresh single-use code."""
        return (await self._post("/_dev/login", {"appid": DEV_APP, "user": user}))["code"]

    async def codes(self, count: int, concurrency: int = 32) -> list[str]:
        """`count` fresh codes for users of the login pool, minted `concurrency` at a time."""
        gate = asyncio.Semaphore(concurrency)
        first = self._minted
        self._minted += count

        async def one(index: int) -> str:
            async with gate:
                return await self.code(f"bench-login-{index % LOGIN_USERS}")

        return list(await asyncio.gather(*(one(first + i) for i in range(count))))

    async def phone_user(self) -> None:
        """Set up PHONE_USER with a phone number, so phone codes can be minted for it."""
        await self._post(
            "/_dev/users", {"appid": DEV_APP, "user": PHONE_USER, "phone": "13800138000"}
        )

    async def phone_codes(self, count: int, concurrency: int = 32) -> list[str]:
        """`count` fresh getPhoneNumber codes for PHONE_USER (see `phone_user`)."""
        gate = asyncio.Semaphore(concurrency)

        async def one() -> str:
            async with gate:
                body = {"appid": DEV_APP, "user": PHONE_USER}
                return (await self._post("/_dev/phone-code", body))["code"]

        return list(await asyncio.gather(*(one() for _ in range(count))))

    async def user_data(self, user: str) -> dict[str, str]:
        """encryptedData, iv, rawData and signature under the user's current session_key."""
        return await self._post("/_dev/user-data", {"appid": DEV_APP, "user": user})


def login_request(code: str) -> bytes:
    """A LoginRequest for `code`, as protobuf bytes."""
    return auth_pb2.LoginRequest(app_id=DEV_APP, code=code).SerializeToString()


def phone_request(token: str, code: str) -> bytes:
    """A GetPhoneNumberRequest for the session `token` and a phone code, as protobuf bytes."""
    return auth_pb2.GetPhoneNumberRequest(token=token, phone_code=code).SerializeToString()


def login_json(code: str) -> bytes:
    """The edge's POST /v1/login body for `code`."""
    return json.dumps({"code": code, "app_id": DEV_APP}, separators=(",", ":")).encode()


async def _capture(
    channel: grpc.aio.Channel, method: str, request: bytes, metadata: Metadata = ()
) -> CannedGrpc:
    """Call the real service once and keep its exact answer (or status and trailers)."""
    call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(AUTH + method)
    try:
        response = await call(request, timeout=10, metadata=metadata)
    except grpc.aio.AioRpcError as error:
        trailers = tuple(
            (key, value)
            for key, value in error.trailing_metadata() or ()
            if not key.startswith("grpc-") or key.endswith("-bin")
        )
        return CannedGrpc(b"", error.code().value[0], error.details() or "", trailers)
    return CannedGrpc(response)


@dataclass
class Fixtures:
    """Requests per scenario (protobuf bytes) and the real answers the baselines replay."""

    token: str = ""
    grpc_requests: dict[str, bytes] = field(default_factory=dict)
    canned_grpc: dict[str, CannedGrpc] = field(default_factory=dict)
    canned_http: dict[str, CannedHttp] = field(default_factory=dict)

    def canned_json(self) -> str:
        return json.dumps(
            {
                "grpc": {key: canned.as_json() for key, canned in self.canned_grpc.items()},
                "http": {key: canned.as_json() for key, canned in self.canned_http.items()},
            }
        )


async def login(channel: grpc.aio.Channel, code: str, metadata: Metadata = ()) -> tuple[str, bytes]:
    """Log in with `code`; the token and the raw LoginResponse."""
    call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(AUTH + "Login")
    raw = await call(login_request(code), timeout=10, metadata=metadata)
    return auth_pb2.LoginResponse.FromString(raw).token, raw


async def prepare(
    grpc_target: str,
    edge_url: str,
    emulator: Emulator,
    http: aiohttp.ClientSession,
    metadata: Metadata = (),
) -> Fixtures:
    """Log users in, build each scenario's request and capture the real answers
    (`metadata`: the caller key every call carries)."""
    fixtures = Fixtures()
    async with grpc.aio.insecure_channel(grpc_target) as channel:
        fixtures.token, login_response = await login(
            channel, await emulator.code("bench-check"), metadata
        )
        fixtures.canned_grpc["login"] = CannedGrpc(login_response)

        check = auth_pb2.CheckSessionRequest(token=fixtures.token).SerializeToString()
        # Well formed (so it costs a database lookup) but never issued.
        unknown_token = "wxl1_" + secrets.token_urlsafe(32)
        unknown = auth_pb2.CheckSessionRequest(token=unknown_token).SerializeToString()

        # The decrypting user logs in once and is never minted a code again: the
        # emulator encrypts under the session_key of the user's latest wx.login().
        decrypt_token, _ = await login(channel, await emulator.code("bench-decrypt"), metadata)
        bundle = await emulator.user_data("bench-decrypt")
        decrypt = auth_pb2.DecryptUserDataRequest(
            token=decrypt_token,
            encrypted_data=bundle["encryptedData"],
            iv=bundle["iv"],
            raw_data=bundle["rawData"],
            signature=bundle["signature"],
        ).SerializeToString()

        # Served from memory once wxlogin holds the app's token: the first call fetches it.
        access_token = auth_pb2.GetAccessTokenRequest(app_id=DEV_APP).SerializeToString()

        for key, method, request in (
            ("check_valid", "CheckSession", check),
            ("check_unknown", "CheckSession", unknown),
            ("decrypt", "DecryptUserData", decrypt),
            ("access_token", "GetAccessToken", access_token),
        ):
            fixtures.grpc_requests[key] = request
            fixtures.canned_grpc[key] = await _capture(channel, method, request, metadata)

        await emulator.phone_user()
        (phone_code,) = await emulator.phone_codes(1)
        fixtures.canned_grpc["phone_number"] = await _capture(
            channel, "GetPhoneNumber", phone_request(fixtures.token, phone_code), metadata
        )

    if edge_url:
        headers = {"Authorization": f"Bearer {fixtures.token}"}
        async with http.get(edge_url + "/v1/session", headers=headers) as response:
            fixtures.canned_http["edge_session"] = CannedHttp(
                "GET", "/v1/session", response.status, response.content_type, await response.read()
            )
        body = login_json(await emulator.code("bench-edge"))
        async with http.post(
            edge_url + "/v1/login", data=body, headers={"Content-Type": "application/json"}
        ) as response:
            fixtures.canned_http["edge_login"] = CannedHttp(
                "POST", "/v1/login", response.status, response.content_type, await response.read()
            )
    return fixtures


def require_ok(fixtures: Fixtures, expected_failures: Sequence[str] = ("check_unknown",)) -> None:
    """Fail before measuring anything if a fixture did not get the answer it should."""
    for key, canned in fixtures.canned_grpc.items():
        if (canned.code != 0) != (key in expected_failures):
            raise RuntimeError(f"preparing {key}: the service answered status {canned.code}")
    for key, answer in fixtures.canned_http.items():
        if answer.status != 200:
            raise RuntimeError(f"preparing {key}: the edge answered HTTP {answer.status}")
