"""`make demo`: the walkthrough runs to the end, on its own stack and on a running one."""

from __future__ import annotations

from service.app import RunningService
from tests.support import APP_A, child, run_to_exit


async def run_demo(*args: str) -> tuple[int, str]:
    """Run `python -m devtools.demo ARGS` to completion; exit code and all output."""
    exited = await run_to_exit("devtools.demo", *args, wait=90)
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
    assert "wxl1_" in output
    assert not any(len(word) >= 48 and word.startswith("wxl1_") for word in output.split())


async def test_demo_uses_a_running_stack(service: RunningService, emulator_url: str) -> None:
    """Pointed at a running edge and emulator, the demo uses them and explains long sessions."""
    env = {"WXLOGIN_HTTP_LISTEN": "127.0.0.1:0", "WXLOGIN_UPSTREAM": f"127.0.0.1:{service.port}"}
    async with child("clients.edge", env=env) as (_, port):
        code, output = await run_demo(
            "--edge", f"http://127.0.0.1:{port}", "--emulator", emulator_url, "--app-id", APP_A
        )
    assert code == 0, output
    assert "the running dev stack" in output
    assert "too long to wait" in output
    assert "SESSION_INVALID" in output
