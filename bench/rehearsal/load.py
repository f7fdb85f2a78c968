"""The rehearsal's mixed load, all through the balancer: logins (over gRPC with the client
library, and through the edge), CheckSession over gRPC, GET /v1/session through the edge,
DecryptUserData; every call's outcome kept by kind.

Each login is a new user's (a fresh wx.login() code): no user ever reaches the per-user
session cap, so a session that CheckSession no longer knows at the end was lost, not capped.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Mapping
from typing import Any

import aiohttp

from bench.chaos.load import Outcome, Recorder, Workers, timed
from bench.rehearsal.plan import RehearsalPlan
from bench.rehearsal.stack import Stack
from clients import WxLoginClient
from devtools.devstack import DEV_APP

KINDS = ("login", "check_session", "http_session", "decrypt")
IDEMPOTENT = ("check_session", "http_session")
# One round in this many decrypts the user's data too.
DECRYPT_EVERY = 3
HTTP_TIMEOUT = aiohttp.ClientTimeout(total=10)


async def _http(
    stack: Stack, method: str, path: str, *, token: str = "", body: Mapping[str, str] | None = None
) -> Outcome:
    """One call to the edges through the balancer, as a mini-program makes it (no retry)."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        async with stack.http.request(
            method,
            stack.http_url + path,
            json=body,
            headers=headers,
            ssl=stack.ssl_context,
            timeout=HTTP_TIMEOUT,
        ) as answer:
            text = await answer.text()
            try:
                payload: Any = json.loads(text)
            except ValueError:
                payload = None  # not the edge's JSON: the balancer's own error page
            if answer.status == 200 and isinstance(payload, dict):
                return Outcome(started, loop.time(), "OK", token=str(payload.get("token", "")))
            reason = "" if isinstance(payload, dict) else "not from an edge"
            if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
                reason = str(payload["error"].get("reason", ""))
            return Outcome(started, loop.time(), f"HTTP_{answer.status}", reason)
    except (aiohttp.ClientError, TimeoutError) as error:
        return Outcome(started, loop.time(), "HTTP_ERROR", type(error).__name__)


class MixedLoad(Workers):
    """`plan.workers` users' rounds until stopped."""

    def __init__(self, client: WxLoginClient, stack: Stack, plan: RehearsalPlan) -> None:
        super().__init__()
        self.recorders = {kind: Recorder() for kind in KINDS}
        self._client = client
        self._stack = stack
        self._plan = plan

    async def __aenter__(self) -> MixedLoad:
        self._tasks = [asyncio.create_task(self._worker(n)) for n in range(self._plan.workers)]
        return self

    def _add(self, kind: str, outcome: Outcome) -> Outcome:
        self.recorders[kind].add(outcome)
        return outcome

    async def _login(self, user: str, through_edge: bool) -> Outcome:
        code = await self._stack.emulator.code(user)  # the mini-program's wx.login()
        loop = asyncio.get_running_loop()
        if through_edge:
            body = {"code": code, "app_id": DEV_APP}
            return self._add("login", await _http(self._stack, "POST", "/v1/login", body=body))
        return self._add(
            "login", await timed(self._client.login(code, app_id=DEV_APP), loop.time())
        )

    async def _worker(self, number: int) -> None:
        loop = asyncio.get_running_loop()
        rng = random.Random(number)
        held: list[str] = []  # this worker's acknowledged tokens
        round_ = 0
        while not self._stop.is_set():
            round_ += 1
            user = f"rehearsal-{number}-{round_}"
            login = await self._login(user, through_edge=round_ % 2 == 0)
            if login.ok:
                held.append(login.token)
                if round_ % DECRYPT_EVERY == 0:
                    bundle = await self._stack.emulator.user_data(user)
                    call = self._client.decrypt_user_data(
                        login.token,
                        bundle["encryptedData"],
                        bundle["iv"],
                        raw_data=bundle["rawData"],
                        signature=bundle["signature"],
                    )
                    self._add("decrypt", await timed(call, loop.time()))
            if held:
                token = rng.choice(held)
                check = await timed(self._client.check_session(token), loop.time())
                self._add("check_session", check)
                outcome = await _http(self._stack, "GET", "/v1/session", token=rng.choice(held))
                self._add("http_session", outcome)
            # A failed round rests as long as a good one: a fast-failing outage must not
            # become a busy loop, nor get more calls than the rest of the run.
            await asyncio.sleep(self._plan.pause)
