"""The Node client (clients/node/), run by `node --test` against live services and the emulator.

Started here for it: the service with a callers file, one with 1-second sessions, one over
mTLS, and Python aiohttp backends with `bearer_auth` that the Node middleware must answer
exactly like. Node's own test runner does the checking; this test asserts it passed.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import tarfile
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from clients import connect
from devtools.pki import CertificateAuthority
from tests.conftest import ServiceFactory
from tests.edge_support import free_port_target, ttl_monitor_paused
from tests.support import APP_A, Emulator, caller_table
from tests.test_auth_helpers import QUICK_RETRY, aiohttp_backend

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "clients" / "node"
KEYS = {
    "node-backend": "node-backend-key-0123456789",
    "login-only": "node-login-only-key-012345",
    "token-reader": "node-token-reader-key-0123",
}
# Well-formed, in no callers file.
UNKNOWN_KEY = "node-unknown-key-0123456789"
# The least number of Node tests (test/*.test.js) that must have run and passed.
MIN_NODE_TESTS = 40


def tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.fail(
            f"{name} is not installed (`make tools` installs it): the Node client is untested"
        )
    return found


async def run(*argv: str, cwd: Path, env: dict[str, str], wait: float) -> tuple[int, str]:
    """Run a program to its end, asynchronously: the services answering it live on this loop."""
    process = await asyncio.create_subprocess_exec(
        *argv,
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=env,
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), wait)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode, output.decode(errors="replace")


async def node_modules() -> None:
    """clients/node's dependencies, from its package-lock.json, when they are missing."""
    if (PACKAGE / "node_modules" / ".package-lock.json").exists():
        return
    code, output = await run(
        tool("npm"), "ci", "--no-audit", "--no-fund", cwd=PACKAGE, env=dict(os.environ), wait=300
    )
    assert code == 0, output


@asynccontextmanager
async def python_backend(target: str, caller_key: str | None) -> AsyncIterator[str]:
    """tests/test_auth_helpers' aiohttp backend with bearer_auth, calling wxlogin at `target`."""
    async with (
        connect(target, retry=QUICK_RETRY, caller_key=caller_key) as client,
        aiohttp_backend(client) as url,
    ):
        yield url


async def test_node_client_and_middleware_against_the_live_service(
    start_service: ServiceFactory, emu: Emulator, db: Any, tmp_path: Path
) -> None:
    """`node --test` of clients/node passes: client, errors, deadlines, TLS, middleware parity."""
    node = tool("node")
    await node_modules()
    callers = tmp_path / "callers.toml"
    callers.write_text(
        caller_table("node_backend", KEYS["node-backend"])
        + caller_table("login_only", KEYS["login-only"], rpcs='["Login"]', apps=f'["{APP_A}"]')
        # GetAccessToken is granted only by name (never by "*"): a backend that may fetch it.
        + caller_table("token_reader", KEYS["token-reader"], rpcs='["GetAccessToken"]')
    )
    ca = CertificateAuthority(tmp_path / "pki")
    other_ca = CertificateAuthority(tmp_path / "other", "some other CA")
    server_cert = ca.server()
    client_cert = ca.issue("node-backend", dns=("node-backend.internal",), client=True)
    down = free_port_target()
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(ttl_monitor_paused(db))
        main = await stack.enter_async_context(start_service(callers_file=callers))
        short = await stack.enter_async_context(start_service(session_ttl=1))
        mtls = await stack.enter_async_context(
            start_service(
                tls_cert=server_cert.cert_file,
                tls_key=server_cert.key_file,
                tls_client_ca=ca.cert_file,
            )
        )
        target = f"127.0.0.1:{main.port}"
        env = {
            "TARGET": target,
            "CALLER_KEY": KEYS["node-backend"],
            "LOGIN_ONLY_KEY": KEYS["login-only"],
            "TOKEN_READER_KEY": KEYS["token-reader"],
            "BAD_KEY": UNKNOWN_KEY,
            "SHORT_TTL_TARGET": f"127.0.0.1:{short.port}",
            "TLS_TARGET": f"127.0.0.1:{mtls.port}",
            "TLS_CA": str(ca.cert_file),
            "TLS_CERT": str(client_cert.cert_file),
            "TLS_KEY": str(client_cert.key_file),
            "OTHER_CA": str(other_ca.cert_file),
            "DOWN_TARGET": down,
            "EMULATOR_URL": emu.base_url,
            "APP_ID": APP_A,
            "PY_BACKEND": await stack.enter_async_context(
                python_backend(target, KEYS["node-backend"])
            ),
            "PY_BACKEND_DOWN": await stack.enter_async_context(python_backend(down, None)),
            "PY_BACKEND_BAD_KEY": await stack.enter_async_context(
                python_backend(target, UNKNOWN_KEY)
            ),
        }
        code, report = await run(
            node,
            "--test",
            "--test-reporter=tap",
            # One file at a time: the emulator's faults are global, a test's fault is its own.
            "--test-concurrency=1",
            *sorted(str(path.relative_to(PACKAGE)) for path in PACKAGE.glob("test/*.test.js")),
            cwd=PACKAGE,
            env={**os.environ, **{f"WXLOGIN_TEST_{name}": value for name, value in env.items()}},
            wait=150,
        )
    assert code == 0, report
    passed = re.search(r"^# pass (\d+)$", report, re.MULTILINE)
    failed = re.search(r"^# fail (\d+)$", report, re.MULTILINE)
    assert passed is not None, report
    assert failed is not None, report
    assert int(failed.group(1)) == 0, report
    assert int(passed.group(1)) >= MIN_NODE_TESTS, report  # the tests ran, not just loaded


async def test_node_package_ships_the_proto_and_its_types(tmp_path: Path) -> None:
    """`npm pack` ships the repository's proto, index.d.ts and lib/; tsc accepts the types."""
    await node_modules()
    code, output = await run(
        tool("npm"),
        "pack",
        "--json",
        "--loglevel=error",
        "--pack-destination",
        str(tmp_path),
        cwd=PACKAGE,
        env=dict(os.environ),
        wait=120,
    )
    assert code == 0, output
    packed = json.loads(output[output.index("[") :])[0]
    with tarfile.open(tmp_path / packed["filename"]) as tarball:
        files = {name.removeprefix("package/") for name in tarball.getnames()}
        shipped = tarball.extractfile("package/proto/wxlogin/v1/auth.proto")
        assert shipped is not None
        assert shipped.read() == (ROOT / "protos" / "wxlogin" / "v1" / "auth.proto").read_bytes()
    assert {"index.js", "index.d.ts", "lib/client.js", "lib/errors.js", "package.json"} <= files
    assert not any(name.startswith("test/") for name in files)
    # The copy lives only in the tarball: in the repository protos/ is the one contract.
    assert not (PACKAGE / "proto").exists()
    code, output = await run(
        tool("node"),
        str(PACKAGE / "node_modules" / "typescript" / "bin" / "tsc"),
        "--noEmit",
        "-p",
        "test/",
        cwd=PACKAGE,
        env=dict(os.environ),
        wait=120,
    )
    assert code == 0, output
