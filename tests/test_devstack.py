"""`make run` with nothing configured: the whole dev stack starts, answers, and stops clean."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from pathlib import Path

import aiohttp
import grpc

from devtools.devstack import DEV_APP
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


async def test_dev_stack_starts_serves_and_leaves_no_process_behind(tmp_path: Path) -> None:
    """The launcher says it uses the emulator, a login works, and SIGTERM stops every part."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("WXLOGIN_")} | {
        "WXLOGIN_DATA_DIR": str(tmp_path / "data"),
        "WXLOGIN_EMULATOR_LISTEN": "127.0.0.1:0",
        "WXLOGIN_GRPC_LISTEN": "127.0.0.1:0",
        "WXLOGIN_HTTP_LISTEN": "127.0.0.1:0",
    }
    log_file = (tmp_path / "devstack.log").open("wb")  # closed in finally
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "devtools.devstack",
        env=env,
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
        assert "EMULATOR" in banner
        grpc_target = re.search(r"gRPC\s+(\S+)", banner)
        emulator = re.search(r"emulator\s+(http://\S+)", banner)
        assert grpc_target
        assert emulator
        children = _descendants(process.pid)
        assert len(children) >= 3  # mongod, emulator, service (+ edge)

        async with (
            aiohttp.ClientSession() as http,
            http.post(
                emulator.group(1) + "/_dev/login", json={"appid": DEV_APP, "user": "devuser"}
            ) as response,
        ):
            code = (await response.json())["code"]
        async with grpc.aio.insecure_channel(grpc_target.group(1)) as channel:
            stub = auth_pb2_grpc.AuthServiceStub(channel)
            result = await stub.Login(auth_pb2.LoginRequest(app_id=DEV_APP, code=code))
            assert result.token

        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 60) == 0
        await asyncio.sleep(0.5)
        assert not [pid for pid in children if _alive(pid)], "a dev-stack process outlived it"
        assert (tmp_path / "data" / "dev-secret-key").stat().st_mode & 0o777 == 0o600
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        log_file.close()
