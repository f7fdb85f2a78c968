"""`make demo`: a simulated mini-program walks through wxlogin's whole flow, one step per line.

Uses the dev stack at the default addresses when one is running (`make run`),
calling its service as a backend with the caller keys `make run` keeps in .data/
(or WXLOGIN_CALLER_KEY) and WXLOGIN_UPSTREAM_CA/_CERT/_KEY for TLS;
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
from collections.abc import AsyncIterator, Awaitable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

import clients
from clients import TlsConfig, UpstreamConfig
from devtools.devstack import CALLER_KEYS_FILE, DEV_APP, DEV_APPS, DevStack

DEFAULT_EDGE = "http://127.0.0.1:8080"
DEFAULT_EMULATOR = "http://127.0.0.1:9090"
DEFAULT_GRPC = "127.0.0.1:50051"
# Short enough to watch a session expire, long enough for the steps before it
# (the first token is used until the logout step, after the phone number's).
OWN_STACK_SESSION_TTL = 5
# Few, so that the cap step needs few logins.
OWN_STACK_MAX_SESSIONS = 3
# Against a running stack with longer sessions the expiry step is explained, not awaited.
MAX_EXPIRY_WAIT = 10.0
USER = "demo-alice"
# The person of the linked-accounts step, a user of both dev apps.
LINKED_USER = "demo-bob"


@dataclass(frozen=True)
class Stack:
    """Where the simulated mini-program sends its requests."""

    edge_url: str
    emulator_url: str
    app_id: str
    description: str
    # WXLOGIN_MAX_SESSIONS_PER_USER of the stack (a running one: the default is assumed).
    max_sessions: int = 10
    # Where backends call the service (gRPC), and how: TLS and caller keys by caller name.
    grpc_target: str = DEFAULT_GRPC
    tls: TlsConfig | None = None
    caller_keys: Mapping[str, str] = field(default_factory=dict)


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
        await self._as_a_backend(token)

        self.say("The same code again (the answer was lost, the mini-program retried)")
        print("    WeChat codes are single-use, but wxlogin keeps the answer (sealed) for the")
        print(
            "    code's 5 minutes: the retry gets the same session, and WeChat is not asked again."
        )
        again = await self._expect(
            200, "POST", "/v1/login", body={"code": code, "app_id": stack.app_id}
        )
        if again["token"] != token:
            raise DemoFailed("the same code gave another token")

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

        self.say(
            "wx.login() runs again (a pre-fetch, another page): WeChat replaces the session_key"
        )
        await self._send(
            "POST",
            f"{stack.emulator_url}/_dev/login",
            body={"appid": stack.app_id, "user": USER},
        )
        print("    <- a code the mini-program never sends: wxlogin still holds the old key")
        bundle = await self._user_data("Alice again")
        print("    Data fetched now is encrypted under the new key; wxlogin asks WeChat")
        print("    (wxa/checksession) whether its key is still current, and says what to do:")
        await self._expect(400, "POST", "/v1/user-data/decrypt", body=bundle, token=token)

        self.say("The recovery, and the pattern that never fails: code first, then encryptedData")
        fresh = await self._code()
        print(f"    <- wx.login() code {fresh[:12]}..., then the data, then both together")
        bundle = await self._user_data("Alice, fresh")
        await self._expect(
            200, "POST", "/v1/user-data/decrypt", body={**bundle, "code": fresh}, token=token
        )

        self.say("The getPhoneNumber button hands the mini-program a code for the phone number")
        await self._send(
            "POST",
            f"{stack.emulator_url}/_dev/users",
            body={"appid": stack.app_id, "user": USER, "phone": "13800138000"},
        )
        _, minted = await self._send(
            "POST",
            f"{stack.emulator_url}/_dev/phone-code",
            body={"appid": stack.app_id, "user": USER},
        )
        print("    wxlogin exchanges it with the app's shared access_token (and stores nothing):")
        await self._expect(
            200, "POST", "/v1/phone-number", body={"code": minted["code"]}, token=token
        )

        self.say("An invalid token: 401 SESSION_INVALID tells the mini-program to log in again")
        await self._expect(401, "GET", "/v1/session", token="wxl1_" + "x" * 43)

        self.say("Log out, then the same token is dead")
        await self._expect(204, "POST", "/v1/logout", token=token)
        await self._expect(401, "GET", "/v1/session", token=token)

        self.say("Log out everywhere: the phone and the tablet were both logged in")
        devices = [
            await self._expect(
                200,
                "POST",
                "/v1/login",
                body={"code": await self._code(), "app_id": stack.app_id},
            )
            for _ in ("phone", "tablet")
        ]
        await self._expect(200, "POST", "/v1/logout", body={"all": True}, token=devices[0]["token"])
        print("    The tablet's token is dead too:")
        await self._expect(401, "GET", "/v1/session", token=devices[1]["token"])
        print(
            "    With several service processes on a replica set, each drops revoked sessions"
            "\n    from its cache within milliseconds (a change stream on the deletions); on one"
            "\n    mongod, as here, another process's cache may answer for up to 5 s."
        )

        cap = stack.max_sessions
        self.say(f"At most {cap} live sessions per user: one more login ends the oldest")
        tokens = []
        for _ in range(cap + 1):
            body = {"code": await self._code(), "app_id": stack.app_id}
            async with self._http.post(f"{stack.edge_url}/v1/login", json=body) as response:
                tokens.append((await response.json())["token"])
        print(
            f"    ({cap + 1} logins of {USER}: {_short(tokens[0])} first,"
            f" {_short(tokens[-1])} last)"
        )
        print("    The first one was ended to make room (WXLOGIN_MAX_SESSIONS_PER_USER):")
        await self._expect(401, "GET", "/v1/session", token=tokens[0])
        await self._expect(200, "GET", "/v1/session", token=tokens[-1])

        other_app = _other_dev_app(stack.app_id)
        self.say("Linked accounts: one person in two mini-programs, one account_id")
        if other_app is None:
            print("    (needs the dev stack's two apps; this stack's other app is unknown)")
        else:
            print("    Both apps are bound to one WeChat Open Platform account, so WeChat sends")
            print("    the same unionid for the person in each: wxlogin links them.")
            accounts = []
            for app in (stack.app_id, other_app):
                await self._send(
                    "POST",
                    f"{stack.emulator_url}/_dev/users",
                    body={"appid": app, "user": LINKED_USER, "unionid": True},
                )
                body = {"code": await self._code(app, LINKED_USER), "app_id": app}
                answer = await self._expect(200, "POST", "/v1/login", body=body)
                accounts.append(answer["user"]["account_id"])
            if accounts[0] != accounts[1]:
                raise DemoFailed("the two apps' users of one unionid have two account_ids")
            print(f"    Two user_ids, one account_id {accounts[0]!r}.")

        self.say("Sliding expiry: a session in use is renewed (same token, later expires_at)")
        used = await self._expect(
            200, "POST", "/v1/login", body={"code": await self._code(), "app_id": stack.app_id}
        )
        until = _instant(used["expires_at"])
        idle = (until - datetime.now(UTC)).total_seconds()
        if idle / 2 > MAX_EXPIRY_WAIT:
            print(
                "    WXLOGIN_SESSION_TTL is the idle lifetime: a check past half of it restarts it,"
                "\n    up to WXLOGIN_SESSION_MAX_TTL after the login. This stack's is too long to"
                " wait for."
            )
        else:
            wait = idle / 2 + 0.3
            print(f"    (waiting {wait:.1f} s: past half of the {idle:.0f}-second idle lifetime)")
            await asyncio.sleep(wait)
            checked = await self._expect(200, "GET", "/v1/session", token=used["token"])
            if _instant(checked["expires_at"]) <= until:
                raise DemoFailed("a check past half the idle lifetime did not renew the session")
            print(f"    expires_at moved from {used['expires_at']} to {checked['expires_at']}")

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

    async def _as_a_backend(self, token: str) -> None:
        """A backend calls the service itself (gRPC, the client library), as a known caller."""
        stack = self._stack
        self.say("A backend checks the same token over gRPC, as a caller the service knows")
        key = stack.caller_keys.get("backend")
        if key is None:
            print(
                "    (no caller keys found: set WXLOGIN_CALLER_KEY, or run `make run` here, which"
                f"\n    keeps them in .data/{CALLER_KEYS_FILE})"
            )
            return
        scheme = "TLS" if stack.tls is not None else "plaintext, loopback"
        print(f"    clients.connect({stack.grpc_target!r}, caller_key=<backend's key>)  ({scheme})")
        async with clients.connect(stack.grpc_target, tls=stack.tls, caller_key=key) as backend:
            session = await backend.check_session(token)
            print(f"    <- user_id {session.user.user_id}, expires_at {session.expires_at:%c}")
            print("    The same backend asking for the app's WeChat access_token, not granted it:")
            await self._refused(backend.get_access_token(stack.app_id), "CALLER_FORBIDDEN")
        print("    And a caller without a key (x-wxlogin-caller-key) is not served at all:")
        async with clients.connect(stack.grpc_target, tls=stack.tls) as stranger:
            await self._refused(stranger.check_session(token), "CALLER_UNAUTHENTICATED")
        granted = stack.caller_keys.get("demo")
        if granted is not None:
            print(
                "    A caller granted GetAccessToken by name gets the token every replica shares:"
            )
            async with clients.connect(
                stack.grpc_target, tls=stack.tls, caller_key=granted
            ) as owner:
                shared = await owner.get_access_token(stack.app_id)
            print(
                f"    <- access_token {_short(shared.access_token)}, "
                f"expires_at {shared.expires_at:%c}"
            )

    async def _refused(self, call: Awaitable[Any], reason: str) -> None:
        try:
            await call
        except clients.CallerError as refused:
            print(f"    <- {type(refused).__name__} {refused.reason}: {refused.message!r}")
            if refused.reason != reason:
                raise DemoFailed(f"expected {reason}, got {refused.reason}") from None
            return
        # A service started without WXLOGIN_CALLERS_FILE (on loopback) serves everyone.
        print("    <- answered: this service has no callers file, so it serves every caller")

    async def _user_data(self, nick_name: str) -> dict[str, Any]:
        """What an API such as wx.getUserProfile gives: encrypted under the current key."""
        body = {"appid": self._stack.app_id, "user": USER, "data": {"nickName": nick_name}}
        async with self._http.post(f"{self._stack.emulator_url}/_dev/user-data", json=body) as r:
            bundle: dict[str, Any] = await r.json()
        print(f"    <- encryptedData {bundle['encryptedData'][:24]}... ({nick_name!r})")
        return bundle

    async def _code(self, app_id: str = "", user: str = USER) -> str:
        async with self._http.post(
            f"{self._stack.emulator_url}/_dev/login",
            json={"appid": app_id or self._stack.app_id, "user": user},
        ) as response:
            return str((await response.json())["code"])


def _other_dev_app(app_id: str) -> str | None:
    """The dev stack's other app, when `app_id` is one of its two."""
    apps = [pair.split(":", 1)[0] for pair in DEV_APPS.split(",")]
    return next((app for app in apps if app != app_id), None) if app_id in apps else None


def _instant(stamp: str) -> datetime:
    """An RFC 3339 time as the edge writes it (2025-01-31T08:00:00.000Z)."""
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def _short(token: str) -> str:
    # The demo is a dev tool, but tokens are secrets by habit: never printed whole.
    return token[:9] + "..." if len(token) > 12 else token


def _redacted(answer: Any) -> Any:
    if isinstance(answer, dict) and isinstance(answer.get("token"), str):
        return {**answer, "token": _short(answer["token"])}
    if isinstance(answer, dict) and isinstance(answer.get("phone_number"), str):
        # Personal data: shown the way apps show it, middle digits hidden.
        return {
            key: _masked(value) if key.endswith("phone_number") else value
            for key, value in answer.items()
        }
    return answer


def _masked(number: str) -> str:
    return number[:-8] + "****" + number[-4:] if len(number) >= 8 else "****"


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
    env["WXLOGIN_MAX_SESSIONS_PER_USER"] = str(OWN_STACK_MAX_SESSIONS)
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
            max_sessions=OWN_STACK_MAX_SESSIONS,
            grpc_target=stack.grpc_target,
            caller_keys=dict(stack.caller_keys),
        )


def _backend_credentials(env: Mapping[str, str]) -> dict[str, Any]:
    """How the demo calls a running stack's service: WXLOGIN_UPSTREAM_* for TLS, and the
    dev stack's caller keys (its data dir), or WXLOGIN_CALLER_KEY as the backend's key.

    Raises ConfigError (shown as one line) on a bad WXLOGIN_UPSTREAM_* or key.
    """
    upstream = UpstreamConfig.from_env(env)
    keys: dict[str, str] = {}
    path = Path(env.get("WXLOGIN_DATA_DIR") or ".data") / CALLER_KEYS_FILE
    if path.is_file():
        keys = {name: str(key) for name, key in json.loads(path.read_text()).items()}
    if upstream.caller_key is not None:
        keys = {"backend": upstream.caller_key}
    return {"tls": upstream.tls, "caller_keys": keys}


async def demo(args: argparse.Namespace) -> int:
    """Find or start a stack, then walk through the flow; returns the exit code."""
    async with aiohttp.ClientSession() as http:
        running = not args.own_stack and (
            await _answers(http, f"{args.edge}/readyz")
            and await _answers(http, f"{args.emulator}/healthz")
        )
        try:
            if running:
                stack = Stack(
                    args.edge,
                    args.emulator,
                    args.app_id,
                    "the running dev stack",
                    grpc_target=args.grpc,
                    **_backend_credentials(os.environ),
                )
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
    parser.add_argument(
        "--grpc", default=DEFAULT_GRPC, help=f"service gRPC target ({DEFAULT_GRPC})"
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
