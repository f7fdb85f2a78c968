"""Simulated mini-program users: the sample's own code (clients/miniprogram/wxlogin.js) under Node.

`bench/chaos/users.js` runs the users; this starts it against a running stack and
reads the one JSON line it prints.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

from devtools.devstack import DEV_APP

USERS_JS = Path(__file__).with_name("users.js")
# users.js ends at most 15 s after its last user started (its GRACE_MS); then some slack.
_EXIT_SLACK = 30.0


class NodeMissing(RuntimeError):
    """No `node` on PATH (`make tools` installs it)."""


async def run_users(
    *, edge: str, emulator: str, lanes: int, seconds: float, deadline: float, prefix: str
) -> dict[str, Any]:
    """`lanes` users at a time for `seconds`, each opening the app through the sample's code."""
    node = shutil.which("node")
    if node is None:
        raise NodeMissing("node is not installed (make tools)")
    options = {
        "edge": edge,
        "emulator": emulator,
        "appId": DEV_APP,
        "lanes": lanes,
        "seconds": seconds,
        "deadlineMs": round(deadline * 1000),
        "prefix": prefix,
    }
    process = await asyncio.create_subprocess_exec(
        node,
        str(USERS_JS),
        json.dumps(options),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), seconds + _EXIT_SLACK)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise RuntimeError(f"users.js still running after {seconds + _EXIT_SLACK:g} s") from None
    if process.returncode != 0:
        raise RuntimeError(f"users.js exited {process.returncode}: {err.decode(errors='replace')}")
    lines = out.decode().strip().splitlines()
    if not lines:
        raise RuntimeError("users.js printed nothing")
    result: dict[str, Any] = json.loads(lines[-1])
    return result
