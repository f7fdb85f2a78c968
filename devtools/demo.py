"""`make demo`: a simulated mini-program walks through wxlogin's whole flow, one step per line.

Uses the dev stack at the default addresses when one is running (`make run`);
otherwise starts a temporary one (emulator, embedded mongod, service, edge) on
free ports with 3-second sessions, so the expired-token step needs no long wait.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from devtools.devstack import DEV_APP, DevStack

DEFAULT_EDGE = "http://127.0.0.1:8080"
DEFAULT_EMULATOR = "http://127.0.0.1:9090"
# Short enough to watch a session expire, long enough for the steps before it.
OWN_STACK_SESSION_TTL = 3
# Against a running stack with longer sessions the expiry step is explained, not awaited.
MAX_EXPIRY_WAIT = 10.0
USER = "demo-alice"


@dataclass(frozen=True)
class Stack:
    """Where the simulated mini-program sends its requests."""

    edge_url: str
    emulator_url: str
    app_id: str
    description: str


class DemoFailed(Exception):
    """wxlogin answered something the walkthrough did not expect."""


class Walkthrough:
    """Plays the mini-program and narrates each request and answer."""

    def __init__(self, http: aiohttp.ClientSession, stack: Stack) -> None:
        self._http = http
        self._stack = stack
        self._step = 0

    def say(self, title: str) -> None:
        self._step += 1
        print(f"\n[{self._step}] {title}", flush=True)

    async def _send(
        self, method: str, url: str, *, body: Mapping[str, Any] | None = None, token: str = ""
    ) -> tuple[int, Any]:
        shown = url.removeprefix(self._stack.edge_url)
        auth = f"  Authorization: Bearer {_short(token)}" if token else ""
        print(f"    -> {method} {shown}{auth}" + (f" {_compact(body)}" if body else ""))
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with self._http.request(method, url, json=body, headers=headers) as response:
            text = await response.text()
            return response.status, json.loads(text) if text else None

    async def _expect(
        self, status: int, method: str, path: str, *, body: Any = None, token: str = ""
    ) -> Any:
        got, answer = await self._send(method, self._stack.edge_url + path, body=body, token=token)
        if got >= 400:
            error = answer["error"]
            print(f'    <- {got} {error["code"]} {error["reason"]}: "{error["message"]}"')
        else:
            print(f"    <- {got}" + (f" {_compact(_redacted(answer))}" if answer else ""))
        if got != status:
            raise DemoFailed(f"expected HTTP {status} from {method} {path}, got {got}")
        return answer

    async def run(self) -> None:
        stack = self._stack
        print(f"wxlogin demo: a simulated mini-program against {stack.description}")
        print(
            f"    edge {stack.edge_url}, WeChat emulator {stack.emulator_url}, app {stack.app_id}"
        )

        self.say("wx.login() in the mini-program: WeChat (here, the emulator) hands out a code")
        _, login_code = await self._send(
            "POST",
            f"{stack.emulator_url}/_dev/login",
            body={"appid": stack.app_id, "user": USER},
        )
        code = login_code["code"]
        print(f"    <- code {code!r}: valid 5 minutes, single use")

        self.say("The mini-program sends the code to wxlogin, which asks WeChat who it is")
        login = await self._expect(
            200, "POST", "/v1/login", body={"code": code, "app_id": stack.app_id}
        )
        token = login["token"]
        print("    The token is ours and opaque; WeChat's session_key never leaves the server.")

        self.say("Every later request carries the token; backends check it with CheckSession")
        await self._expect(200, "GET", "/v1/session", token=token)

        self.say("The same code again: WeChat codes are single-use")
        await self._expect(401, "POST", "/v1/login", body={"code": code, "app_id": stack.app_id})

        self.say(
            "wx.getUserProfile() gives encryptedData; wxlogin decrypts it with the session_key"
        )
        _, bundle = await self._send(
            "POST",
            f"{stack.emulator_url}/_dev/user-data",
            body={"appid": stack.app_id, "user": USER, "data": {"nickName": "Alice"}},
        )
        print(f"    <- encryptedData {bundle['encryptedData'][:24]}... iv, rawData, signature")
        await self._expect(200, "POST", "/v1/user-data/decrypt", body=bundle, token=token)

        self.say("An invalid token: 401 SESSION_INVALID tells the mini-program to log in again")
        await self._expect(401, "GET", "/v1/session", token="wxl1_" + "x" * 43)

        self.say("Log out, then the same token is dead")
        await self._expect(204, "POST", "/v1/logout", token=token)
        await self._expect(401, "GET", "/v1/session", token=token)

        self.say("An expired token: 401 SESSION_EXPIRED")
        second = await self._expect(
            200,
            "POST",
            "/v1/login",
            body={"code": await self._code(), "app_id": stack.app_id},
        )
        expires_at = datetime.fromisoformat(second["expires_at"].replace("Z", "+00:00"))
        wait = (expires_at - datetime.now(UTC)).total_seconds() + 0.3
        if wait > MAX_EXPIRY_WAIT:
            print(
                f"    This stack's sessions last until {second['expires_at']}: too long to wait."
                "\n    Stop `make run` and run `make demo` again: it then starts its own stack"
                f" with {OWN_STACK_SESSION_TTL}-second sessions."
            )
        else:
            print(f"    (sessions on this stack last seconds; waiting {wait:.1f} s)")
            await asyncio.sleep(max(wait, 0))
            await self._expect(401, "GET", "/v1/session", token=second["token"])
        print(
            "\nThat is wxlogin: codes in, opaque tokens out, sessions and decryption in one place."
        )

    async def _code(self) -> str:
        async with self._http.post(
            f"{self._stack.emulator_url}/_dev/login",
            json={"appid": self._stack.app_id, "user": USER},
        ) as response:
            return str((await response.json())["code"])


def _short(token: str) -> str:
    # The demo is a dev tool, but tokens are secrets by habit: never printed whole.
    return token[:9] + "..." if len(token) > 12 else token


def _redacted(answer: Any) -> Any:
    if isinstance(answer, dict) and isinstance(answer.get("token"), str):
        return {**answer, "token": _short(answer["token"])}
    return answer


def _compact(value: Any) -> str:
    """JSON on one line, long strings (codes, ciphertext, ids) cut so a step fits the screen."""
    return json.dumps(_shortened(value), ensure_ascii=False)


def _shortened(value: Any, keep: int = 24) -> Any:
    if isinstance(value, str) and len(value) > keep + 4:
        return value[:keep] + "..."
    if isinstance(value, dict):
        return {key: _shortened(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_shortened(item) for item in value]
    return value


async def _answers(http: aiohttp.ClientSession, url: str) -> bool:
    try:
        async with http.get(url, timeout=aiohttp.ClientTimeout(total=1)) as response:
            return response.status == 200
    except (aiohttp.ClientError, TimeoutError):
        return False


@asynccontextmanager
async def own_stack(data_dir: Path) -> AsyncIterator[Stack]:
    """A temporary dev stack on free ports with short sessions; stopped on exit."""
    # WXLOGIN_* from the caller's shell could point at real WeChat: the demo
    # always plays against the emulator.
    env = {key: value for key, value in os.environ.items() if not key.startswith("WXLOGIN_")}
    env["WXLOGIN_SESSION_TTL"] = str(OWN_STACK_SESSION_TTL)
    stack = DevStack(
        data_dir,
        env=env,
        emulator_listen="127.0.0.1:0",
        grpc_listen="127.0.0.1:0",
        http_listen="127.0.0.1:0",
        log_dir=data_dir / "logs",
        callers=True,  # as `make run` does: the edge calls with its caller key
    )
    print("No dev stack at the default addresses: starting a temporary one...", flush=True)
    async with stack:
        yield Stack(
            stack.edge_url,
            stack.emulator_url,
            DEV_APP,
            f"a temporary dev stack ({OWN_STACK_SESSION_TTL}-second sessions)",
        )


async def demo(args: argparse.Namespace) -> int:
    """Find or start a stack, then walk through the flow; returns the exit code."""
    async with aiohttp.ClientSession() as http:
        running = not args.own_stack and (
            await _answers(http, f"{args.edge}/readyz")
            and await _answers(http, f"{args.emulator}/healthz")
        )
        try:
            if running:
                stack = Stack(args.edge, args.emulator, args.app_id, "the running dev stack")
                await Walkthrough(http, stack).run()
            else:
                with tempfile.TemporaryDirectory(prefix="wxlogin-demo-") as tmp:
                    async with own_stack(Path(tmp)) as stack:
                        await Walkthrough(http, stack).run()
        except DemoFailed as failure:
            print(f"\ndemo: unexpected answer: {failure}", file=sys.stderr)
            return 1
        except aiohttp.ClientError as error:
            print(f"\ndemo: request failed: {error}", file=sys.stderr)
            return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m devtools.demo`."""
    parser = argparse.ArgumentParser(prog="python -m devtools.demo", description=__doc__)
    parser.add_argument("--edge", default=DEFAULT_EDGE, help=f"edge URL ({DEFAULT_EDGE})")
    parser.add_argument(
        "--emulator", default=DEFAULT_EMULATOR, help=f"emulator URL ({DEFAULT_EMULATOR})"
    )
    parser.add_argument("--app-id", default=DEV_APP, help=f"app id ({DEV_APP})")
    parser.add_argument("--own-stack", action="store_true", help="always start a temporary stack")
    args = parser.parse_args(argv)
    args.edge = args.edge.rstrip("/")
    args.emulator = args.emulator.rstrip("/")
    try:
        return asyncio.run(demo(args))
    except Exception as error:  # ChildError, EmbeddedMongoError, OSError: one line, not a trace
        print(f"demo: cannot run: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
