"""The sample mini-program code, run by Node against the live edge, service and emulator."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from pathlib import Path

import pytest

from service.app import RunningService
from tests.support import APP_A, child

ROOT = Path(__file__).parent.parent


async def test_miniprogram_sample_against_the_live_edge(
    service: RunningService, emulator_url: str
) -> None:
    """`node --test clients/miniprogram/` passes against a real edge (Node is required)."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed: the mini-program sample cannot be tested")
    env = {"WXLOGIN_HTTP_LISTEN": "127.0.0.1:0", "WXLOGIN_UPSTREAM": f"127.0.0.1:{service.port}"}
    async with child("clients.edge", env=env) as (_, port):
        # Async, not subprocess.run: the service answering Node lives on this event loop.
        process = await asyncio.create_subprocess_exec(
            node,
            "--test",
            "clients/miniprogram/",
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env={
                **os.environ,
                "WXLOGIN_EDGE_URL": f"http://127.0.0.1:{port}",
                "WXLOGIN_EMULATOR_URL": emulator_url,
                "WXLOGIN_APP_ID": APP_A,
            },
        )
        output, _ = await asyncio.wait_for(process.communicate(), 60)
    report = output.decode(errors="replace")
    assert process.returncode == 0, report
    passed = re.search(r"^# pass (\d+)$", report, re.MULTILINE)
    assert passed is not None, report
    assert int(passed.group(1)) >= 11, report  # the Node tests ran, not just loaded
