"""Test helpers: drive the emulator's dev endpoints and read ErrorInfo from gRPC errors."""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from runtime.process import LISTENING, dies_with_parent
from wxlogin.v1 import auth_pb2, auth_pb2_grpc

APP_A = "wxtest0000000000aa"
APP_B = "wxtest0000000000bb"
APPS = {APP_A: "secret-a-123", APP_B: "secret-b-456"}
# Children stop at once on SIGTERM unless a test asks for a drain (runtime/serve.py).
QUICK_STOP = {"WXLOGIN_DRAIN_SECONDS": "0"}
APPS_ENV = ",".join(f"{appid}:{secret}" for appid, secret in APPS.items())


@dataclass(frozen=True)
class ErrorInfo:
    """What a client branches on."""

    code: grpc.StatusCode
    reason: str
    domain: str
    metadata: Mapping[str, str]
    message: str


def decrypt_request(
    token: str, blob: Mapping[str, Any], **overrides: str
) -> auth_pb2.DecryptUserDataRequest:
    """DecryptUserData of what the emulator's /_dev/user-data gave, signature included."""
    fields = {
        "token": token,
        "encrypted_data": blob["encryptedData"],
        "iv": blob["iv"],
        "raw_data": blob["rawData"],
        "signature": blob["signature"],
    }
    fields.update(overrides)
    return auth_pb2.DecryptUserDataRequest(**fields)


def error_info(error: grpc.aio.AioRpcError) -> ErrorInfo:
    """The status code and ErrorInfo detail of a failed call (fails if there is none)."""
    metadata = error.trailing_metadata() or ()
    details = next(value for key, value in metadata if key == "grpc-status-details-bin")
    status = rpc_status.status_pb2.Status.FromString(details)
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return ErrorInfo(
                error.code(), info.reason, info.domain, dict(info.metadata), status.message
            )
    raise AssertionError("no ErrorInfo in status details")


def caller_table(
    name: str, key: str, rpcs: str = '["*"]', apps: str = '["*"]', extra: str = ""
) -> str:
    """One [callers.NAME] table of a callers file: the key's SHA-256, as production stores it.

    `rpcs` and `apps` are TOML arrays as written (e.g. '["*", "GetAccessToken"]');
    `extra`, more lines (e.g. "login_rate = 1\n").
    """
    digest = hashlib.sha256(key.encode()).hexdigest()
    return f'[callers.{name}]\nkey_sha256 = "{digest}"\nrpcs = {rpcs}\napps = {apps}\n{extra}\n'


async def check_reason(stub: auth_pb2_grpc.AuthServiceStub, token: str) -> str:
    """ "OK" when CheckSession accepts the token, else the ErrorInfo reason it answers."""
    try:
        await stub.CheckSession(auth_pb2.CheckSessionRequest(token=token), timeout=5)
    except grpc.aio.AioRpcError as error:
        return error_info(error).reason
    return "OK"


class Emulator:
    """The WeChat emulator's dev endpoints, over real HTTP."""

    def __init__(self, base_url: str, http: aiohttp.ClientSession) -> None:
        self.base_url = base_url
        self._http = http

    async def _post(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        async with self._http.post(self.base_url + path, json=body) as response:
            payload: dict[str, Any] = await response.json()
            assert response.status == 200, payload
            return payload

    async def setup_user(self, appid: str, user: str, **fields: Any) -> dict[str, Any]:
        return await self._post("/_dev/users", {"appid": appid, "user": user, **fields})

    async def code(self, appid: str, user: str, **fields: Any) -> str:
        """Play wx.login(): a fresh single-use code for the named user."""
        return str((await self.wx_login(appid, user, **fields))["code"])

    async def wx_login(self, appid: str, user: str, **fields: Any) -> dict[str, Any]:
        """Play wx.login() and also see the dev-only session_key minted with the code."""
        return await self._post("/_dev/login", {"appid": appid, "user": user, **fields})

    async def user_data(self, appid: str, user: str, **fields: Any) -> dict[str, Any]:
        return await self._post("/_dev/user-data", {"appid": appid, "user": user, **fields})

    async def fault(self, **fault: Any) -> None:
        await self._post("/_dev/faults", fault)

    async def clear_faults(self) -> None:
        async with self._http.delete(self.base_url + "/_dev/faults") as response:
            assert response.status == 200

    async def requests_seen(self) -> int:
        async with self._http.get(self.base_url + "/_dev/stats") as response:
            return int((await response.json())["jscode2session_requests"])


def edge_env(grpc_port: int, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for `python -m clients.edge` on a free port, in front of the service
    child listening on `grpc_port`; `extra` on top."""
    return {
        "WXLOGIN_UPSTREAM": f"127.0.0.1:{grpc_port}",
        "WXLOGIN_HTTP_LISTEN": "127.0.0.1:0",
        **(extra or {}),
    }


@asynccontextmanager
async def child(
    *module_args: str, env: Mapping[str, str] | None = None, ready_timeout: float = 60.0
) -> AsyncIterator[tuple[asyncio.subprocess.Process, int]]:
    """Run `python -m ...` and yield it with the port from its 'listening on' line."""
    async with program(
        [sys.executable, "-m", *module_args],
        env={**os.environ, **QUICK_STOP, **(env or {})},
        ready_timeout=ready_timeout,
    ) as started:
        yield started


@asynccontextmanager
async def program(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: Path | None = None,
    ready_timeout: float = 60.0,
) -> AsyncIterator[tuple[asyncio.subprocess.Process, int]]:
    """Run `argv` with exactly `env` and yield it with the port from its 'listening on' line."""
    process = await asyncio.create_subprocess_exec(
        # A killed test run leaves no emulator or service behind.
        *dies_with_parent(argv),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=dict(env),
        cwd=cwd,
    )
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), ready_timeout)
        match = LISTENING.search(line)
        if match is None:
            assert process.stderr is not None
            err = await asyncio.wait_for(process.stderr.read(), 10)
            raise AssertionError(f"{argv} did not start: {line!r} {err[-2000:]!r}")
        yield process, int(match.group(1))
    finally:
        await stop_process(process)


async def stop_process(process: asyncio.subprocess.Process, grace: float = 20) -> None:
    """SIGTERM, then SIGKILL after `grace` seconds; nothing if it has exited already."""
    if process.returncode is None:
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), grace)
        except TimeoutError:
            process.kill()
            await process.wait()


@dataclass(frozen=True)
class Exited:
    """How a `python -m ...` run ended."""

    returncode: int
    stdout: str
    stderr: str


async def run_to_exit(
    *module_args: str, env: Mapping[str, str] | None = None, wait: float = 30.0
) -> Exited:
    """Run `python -m MODULE ARGS...` until it exits; for start-up failures and one-shot tools."""
    process = await asyncio.create_subprocess_exec(
        *dies_with_parent([sys.executable, "-m", *module_args]),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **QUICK_STOP, **(env or {})},
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), wait)
    assert process.returncode is not None
    return Exited(
        process.returncode, stdout.decode(errors="replace"), stderr.decode(errors="replace")
    )


def mongod_pids(data_dir: Path) -> list[int]:
    """The pids of mongod processes whose command line names `data_dir`."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        named = str(data_dir).encode() in b" ".join(cmdline)
        if cmdline and cmdline[0].endswith(b"mongod") and named:
            pids.append(int(entry.name))
    return pids


@asynccontextmanager
async def service_and_edge(
    service_env: Mapping[str, str], edge_extra: Mapping[str, str] | None = None
) -> AsyncIterator[tuple[asyncio.subprocess.Process, asyncio.subprocess.Process, int]]:
    """A service child and an edge child in front of it: (service, edge, the edge's port)."""
    async with (
        child("service", env=service_env) as (service, grpc_port),
        child("clients.edge", env=edge_env(grpc_port, edge_extra)) as (edge, port),
    ):
        yield service, edge, port
