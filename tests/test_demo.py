"""`make demo`: the walkthrough runs to the end, on its own stack and on a running one."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path

from tests.conftest import ServiceFactory
from tests.support import APP_A, child, run_to_exit


async def run_demo(*args: str, env: Mapping[str, str] | None = None) -> tuple[int, str]:
    """Run `python -m devtools.demo ARGS` to completion; exit code and all output."""
    exited = await run_to_exit("devtools.demo", *args, wait=90, env=env)
    return exited.returncode, exited.stdout + exited.stderr


async def test_demo_starts_its_own_stack_and_shows_every_step() -> None:
    """With --own-stack the demo starts a temporary stack and shows login to expiry."""
    code, output = await run_demo("--own-stack")
    assert code == 0, output
    for shown in ("SESSION_INVALID", "SESSION_EXPIRED", '"nickName": "Alice"', "204"):
        assert shown in output, output
    # Issue 12: the same code again, log out everywhere, the cap, sliding expiry.
    for shown in (
        "The same code again",
        '{"revoked": 2}',
        "ended to make room",
        "Two user_ids, one account_id",
        "moved from",
    ):
        assert shown in output, output
    # Issue 11: a stale session_key, its recovery with a fresh code, and the phone number.
    for shown in ("SESSION_KEY_STALE", '"nickName": "Alice, fresh"', '"country_code": "86"'):
        assert shown in output, output
    assert '"phone_number": "138****8000"' in output  # masked, as apps show a number
    # Issue 10: a backend calls over gRPC with its caller key; others are refused.
    for shown in (
        "CallerForbidden CALLER_FORBIDDEN",
        "CallerUnauthenticated CALLER_UNAUTHENTICATED",
    ):
        assert shown in output, output
    assert "wxl1_" in output
    assert not any(len(word) >= 48 and word.startswith("wxl1_") for word in output.split())


async def test_demo_uses_a_running_stack(
    start_service: ServiceFactory, emulator_url: str, tmp_path: Path
) -> None:
    """Pointed at a running stack, the demo uses it, calling the service as a backend with
    WXLOGIN_CALLER_KEY, and explains what its long sessions don't let it wait for."""
    keys = {"edge": "demo-test-edge-key-0123456789", "backend": "demo-test-backend-key-012345"}
    callers = tmp_path / "callers.toml"
    callers.write_text(
        "".join(
            f'[callers.{name}]\nkey_sha256 = "{hashlib.sha256(key.encode()).hexdigest()}"\n'
            f'rpcs = [{rpcs}]\napps = ["*"]\n'
            for (name, key), rpcs in zip(
                keys.items(), ('"*"', '"CheckSession", "DecryptUserData"'), strict=True
            )
        )
    )
    async with start_service(callers_file=callers) as service:
        target = f"127.0.0.1:{service.port}"
        env = {
            "WXLOGIN_HTTP_LISTEN": "127.0.0.1:0",
            "WXLOGIN_UPSTREAM": target,
            "WXLOGIN_CALLER_KEY": keys["edge"],
        }
        async with child("clients.edge", env=env) as (_, port):
            code, output = await run_demo(
                "--edge",
                f"http://127.0.0.1:{port}",
                "--emulator",
                emulator_url,
                "--app-id",
                APP_A,
                "--grpc",
                target,
                env={"WXLOGIN_CALLER_KEY": keys["backend"], "WXLOGIN_DATA_DIR": str(tmp_path)},
            )
    assert code == 0, output
    assert "the running dev stack" in output
    assert "too long to wait" in output
    assert "SESSION_INVALID" in output
    assert "CallerForbidden CALLER_FORBIDDEN" in output
    assert "CallerUnauthenticated CALLER_UNAUTHENTICATED" in output
    for key in keys.values():
        assert key not in output
