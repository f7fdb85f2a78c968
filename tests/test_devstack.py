"""`make run` with nothing configured: the whole dev stack starts, answers, and stops clean.

Also: WXLOGIN_DEV_MONGO_REPLICAS, and a dev stack whose mongod dies stops too.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import grpc
import pytest

from devtools.devstack import DEV_APP, SERVICE_SECRETS
from devtools.pki import CertificateAuthority
from tests.support import error_info
from wxlogin.v1 import auth_pb2, auth_pb2_grpc


def _descendants(pid: int) -> set[int]:
    """Every live process below `pid`, read from /proc."""
    parents: dict[int, int] = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                stat = (proc / "stat").read_text()
            except OSError:
                continue
            parents[int(proc.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier}
        found |= frontier
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _is_mongod(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip() == "mongod"
    except OSError:
        return False


async def _outlived(pids: set[int], wait_seconds: float = 10.0) -> list[int]:
    """Which of `pids` are still alive after up to `wait_seconds` (a kernel SIGTERM takes time)."""
    for _ in range(int(wait_seconds / 0.1)):
        if not any(_alive(pid) for pid in pids):
            return []
        await asyncio.sleep(0.1)
    return [pid for pid in pids if _alive(pid)]


def _dev_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The caller's environment without WXLOGIN_* (it could name real WeChat), on free ports."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("WXLOGIN_")}
    return env | {
        "WXLOGIN_DATA_DIR": str(tmp_path / "data"),
        "WXLOGIN_EMULATOR_LISTEN": "127.0.0.1:0",
        "WXLOGIN_GRPC_LISTEN": "127.0.0.1:0",
        "WXLOGIN_HTTP_LISTEN": "127.0.0.1:0",
        **extra,
    }


@asynccontextmanager
async def _dev_stack(
    tmp_path: Path, **extra: str
) -> AsyncIterator[tuple[asyncio.subprocess.Process, str]]:
    """`python -m devtools.devstack` with its banner; killed on exit if a test left it running.

    Its stderr goes to tmp_path/devstack.log.
    """
    log_file = (tmp_path / "devstack.log").open("wb")  # closed in finally
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "devtools.devstack",
        env=_dev_env(tmp_path, **extra),
        stdout=asyncio.subprocess.PIPE,
        stderr=log_file,
    )
    try:
        assert process.stdout is not None
        banner = ""
        while "Ctrl-C" not in banner:
            line = await asyncio.wait_for(process.stdout.readline(), 90)
            assert line, (tmp_path / "devstack.log").read_text()[-3000:]
            banner += line.decode()
        yield process, banner
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        log_file.close()


async def _login(banner: str, user: str) -> auth_pb2.LoginResponse:
    """Play wx.login() at the banner's emulator and log in at its gRPC address."""
    grpc_target = re.search(r"gRPC\s+(\S+)", banner)
    emulator = re.search(r"emulator\s+(http://\S+)", banner)
    assert grpc_target
    assert emulator
    async with (
        aiohttp.ClientSession() as http,
        http.post(emulator.group(1) + "/_dev/login", json={"appid": DEV_APP, "user": user}) as got,
    ):
        code = (await got.json())["code"]
    # The banner names the keys file; the demo caller may call every RPC.
    keys_file = re.search(r"keys: (\S+)\)", banner)
    assert keys_file
    keys = await asyncio.to_thread(Path(keys_file.group(1)).read_text)
    demo_key = json.loads(keys)["demo"]
    async with grpc.aio.insecure_channel(grpc_target.group(1)) as channel:
        stub = auth_pb2_grpc.AuthServiceStub(channel)
        return await stub.Login(
            auth_pb2.LoginRequest(app_id=DEV_APP, code=code),
            metadata=(("x-wxlogin-caller-key", demo_key),),
        )


async def test_dev_stack_starts_serves_and_leaves_no_process_behind(tmp_path: Path) -> None:
    """The launcher says it uses the emulator, a login works, and SIGTERM stops every part."""
    async with _dev_stack(tmp_path) as (process, banner):
        assert "EMULATOR" in banner
        children = _descendants(process.pid)
        assert len(children) >= 3  # mongod, emulator, service (+ edge)

        assert (await _login(banner, "devuser")).token
        await _callers_are_required(banner)
        (edge,) = [pid for pid in children if b"clients.edge" in _cmdline(pid)]
        names = _environ_names(edge)
        assert "WXLOGIN_UPSTREAM" in names
        assert names & SERVICE_SECRETS == set(), "the edge holds the service's secrets"

        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 60) == 0
        assert not await _outlived(children), "a dev-stack process outlived it"
        assert (tmp_path / "data" / "dev-secret-key").stat().st_mode & 0o777 == 0o600
        assert (tmp_path / "data" / "dev-caller-keys.json").stat().st_mode & 0o777 == 0o600


def _environ_names(pid: int) -> set[str]:
    """The names of a process's environment variables."""
    entries = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return {entry.partition(b"=")[0].decode() for entry in entries if entry}


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


async def _callers_are_required(banner: str) -> None:
    """No key: CALLER_UNAUTHENTICATED; the banner's grpcurl key (the backend's) may check."""
    grpc_target = re.search(r"gRPC\s+(\S+)", banner)
    backend_key = re.search(r"-H 'x-wxlogin-caller-key: (\S+)'", banner)
    assert grpc_target
    assert backend_key
    request = auth_pb2.CheckSessionRequest(token="wxl1_" + "D" * 43)
    async with grpc.aio.insecure_channel(grpc_target.group(1)) as channel:
        stub = auth_pb2_grpc.AuthServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.CheckSession(request)
        assert error_info(caught.value).reason == "CALLER_UNAUTHENTICATED"
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.CheckSession(
                request, metadata=(("x-wxlogin-caller-key", backend_key.group(1)),)
            )
        assert error_info(caught.value).reason == "SESSION_INVALID"  # past the caller check


@pytest.mark.parametrize(
    ("replicas", "mongods", "banner_says"),
    [("1", 1, "embedded mongod (standalone)"), ("3", 3, "embedded 3-member replica set")],
)
async def test_dev_stack_stops_everything_when_a_mongod_dies(
    tmp_path: Path, replicas: str, mongods: int, banner_says: str
) -> None:
    """Banner names the MongoDB; a SIGKILLed mongod: one line naming it, exit 1, no leftovers."""
    async with _dev_stack(tmp_path, WXLOGIN_DEV_MONGO_REPLICAS=replicas) as (process, banner):
        assert f"MongoDB   {banner_says}" in banner
        assert (await _login(banner, "mona")).token  # the service really runs on it
        children = _descendants(process.pid)
        mongod_pids = sorted(pid for pid in children if _is_mongod(pid))
        assert len(mongod_pids) == mongods

        os.kill(mongod_pids[-1], signal.SIGKILL)
        assert await asyncio.wait_for(process.wait(), 60) == 1
        assert not await _outlived(children), "a dev-stack process outlived it"
    said = [
        line
        for line in (tmp_path / "devstack.log").read_text().splitlines()
        if line.startswith("devstack:")
    ]
    assert len(said) == 1, said
    assert "mongod" in said[0]
    assert "SIGKILL" in said[0]
    assert "stopping everything" in said[0]


@pytest.mark.parametrize("replicas", ["2", "three", "0"])
async def test_dev_stack_rejects_a_bad_replica_count(tmp_path: Path, replicas: str) -> None:
    """WXLOGIN_DEV_MONGO_REPLICAS other than 1 or 3: one line naming it, exit 1, nothing started."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "devtools.devstack",
        env=_dev_env(tmp_path, WXLOGIN_DEV_MONGO_REPLICAS=replicas),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 1
    assert out == b""  # no banner: nothing ran
    lines = err.decode().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("devstack: WXLOGIN_DEV_MONGO_REPLICAS:")
    assert repr(replicas) in lines[0]
    assert not (tmp_path / "data").exists()


async def test_dev_stack_runs_the_service_over_tls(tmp_path: Path) -> None:
    """WXLOGIN_TLS_* for the service and WXLOGIN_UPSTREAM_CA for the edge: the stack comes up."""
    authority = CertificateAuthority(tmp_path / "pki")
    server = authority.server()
    tls = {
        "WXLOGIN_TLS_CERT": str(server.cert_file),
        "WXLOGIN_TLS_KEY": str(server.key_file),
        "WXLOGIN_UPSTREAM_CA": str(authority.cert_file),
    }
    async with _dev_stack(tmp_path, **tls) as (process, banner):
        edge = re.search(r"HTTP edge\s+(http://\S+)", banner)
        assert edge
        async with (
            aiohttp.ClientSession() as http,
            http.get(edge.group(1) + "/readyz") as ready,
        ):
            assert ready.status == 200  # the edge reaches the service over TLS
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 60) == 0
