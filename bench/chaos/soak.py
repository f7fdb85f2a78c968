"""(e) A mixed soak: logins, CheckSession, decrypt and logout through gRPC and the edge, with
the memory and open file descriptors of the service and the edge read at start and end."""

from __future__ import annotations

import asyncio
import os
import random
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from bench import procstat
from bench.chaos.load import client_for, timed
from bench.chaos.results import Context, scenario, target
from bench.chaos.stack import Running, running
from bench.fixtures import login_json
from clients import WxLoginClient
from devtools.devstack import DEV_APP

KEY = "soak"
TITLE = "Mixed soak"
PROCESSES = ("service-1", "edge")
# What a caller does once it holds a token, and how often.
OPERATIONS = {"check": 60, "decrypt": 20, "login": 10, "logout": 10}
SAMPLE_EVERY = 10.0  # seconds between readings of RSS and fds, for the trend
RSS_GROWTH_LIMIT = 1.10
FD_GROWTH_LIMIT = 10


def open_fds(pid: int) -> int:
    """How many file descriptors the process holds now."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def reading(stack: Running) -> dict[str, dict[str, float]]:
    """RSS (MiB) and open fds of the service and the edge, now."""
    return {
        name: {
            "rss_mib": round(procstat.rss_bytes(stack.pids[name]) / procstat.MIB, 1),
            "fds": open_fds(stack.pids[name]),
        }
        for name in PROCESSES
    }


class Caller:
    """One mini-program user: logs in, then checks, decrypts, logs out and logs in again."""

    def __init__(self, stack: Running, name: str, seed: int) -> None:
        self.stack = stack
        self.name = name
        self.rng = random.Random(seed)
        self.token = ""
        self.bundle: dict[str, str] = {}

    def next_operation(self) -> str:
        if not self.token:
            return "login"
        names = list(OPERATIONS)
        return self.rng.choices(names, weights=[OPERATIONS[n] for n in names])[0]

    async def fresh_code(self) -> str:
        return await self.stack.emulator.code(self.name)

    async def after_login(self, token: str) -> None:
        # encryptedData under the session_key this very login brought.
        self.token = token
        self.bundle = await self.stack.emulator.user_data(self.name)


class GrpcCaller(Caller):
    """A backend calling the service through the client library."""

    def __init__(self, stack: Running, name: str, seed: int, client: WxLoginClient) -> None:
        super().__init__(stack, name, seed)
        self.client = client

    async def do(self, operation: str) -> bool:
        loop = asyncio.get_running_loop()
        call: Awaitable[object]
        if operation == "login":
            code = await self.fresh_code()
            outcome = await timed(self.client.login(code, app_id=DEV_APP), loop.time())
            if outcome.ok:
                await self.after_login(outcome.token)
            return outcome.ok
        if operation == "check":
            call = self.client.check_session(self.token)
        elif operation == "decrypt":
            call = self.client.decrypt_user_data(
                self.token,
                self.bundle["encryptedData"],
                self.bundle["iv"],
                raw_data=self.bundle["rawData"],
                signature=self.bundle["signature"],
            )
        else:
            call = self.client.revoke_session(self.token)
            self.token = ""
        return (await timed(call, loop.time())).ok


class EdgeCaller(Caller):
    """A mini-program calling the edge over HTTP."""

    async def do(self, operation: str) -> bool:
        http, edge = self.stack.http, self.stack.edge_url
        bearer = {"Authorization": f"Bearer {self.token}"}
        json_type = {"Content-Type": "application/json"}
        if operation == "login":
            body = login_json(await self.fresh_code())
            async with http.post(edge + "/v1/login", data=body, headers=json_type) as answer:
                if answer.status != 200:
                    return False
                await self.after_login((await answer.json())["token"])
                return True
        if operation == "check":
            async with http.get(edge + "/v1/session", headers=bearer) as answer:
                await answer.read()
                return answer.status == 200
        if operation == "decrypt":
            async with http.post(
                edge + "/v1/user-data/decrypt", json=self.bundle, headers=bearer
            ) as answer:
                await answer.read()
                return answer.status == 200
        async with http.post(edge + "/v1/logout", headers=bearer) as answer:
            self.token = ""
            return answer.status == 204


async def _paced(
    do: Callable[[str], Awaitable[bool]],
    caller: Caller,
    interval: float,
    stop: asyncio.Event,
    counts: Counter[str],
) -> None:
    """Call `do` every `interval` seconds (no faster) until `stop`; count each result."""
    loop = asyncio.get_running_loop()
    next_at = loop.time()
    while not stop.is_set():
        operation = caller.next_operation()
        try:
            ok = await do(operation)
        except (aiohttp.ClientError, TimeoutError):
            ok = False
        counts[f"{operation} {'ok' if ok else 'failed'}"] += 1
        next_at += interval
        await asyncio.sleep(max(0.0, next_at - loop.time()))


async def run(ctx: Context) -> dict[str, Any]:
    """Half the callers through gRPC, half through the edge, paced to `soak_rate` calls/s."""
    plan = ctx.plan
    loop = asyncio.get_running_loop()
    async with (
        running(ctx.workdir, KEY, ctx.http) as stack,
        client_for(stack.grpc_target, plan.login_deadline) as client,
    ):
        idle = reading(stack)
        stop = asyncio.Event()
        counts: Counter[str] = Counter()
        interval = plan.soak_clients / plan.soak_rate
        tasks = []
        for number in range(plan.soak_clients):
            name = f"chaos-e-{number}"
            caller: GrpcCaller | EdgeCaller
            if number % 2 == 0:
                caller = GrpcCaller(stack, name, number, client)
            else:
                caller = EdgeCaller(stack, name, number)
            tasks.append(asyncio.create_task(_paced(caller.do, caller, interval, stop, counts)))
        started = loop.time()
        try:
            await asyncio.sleep(plan.soak_warmup)
            first = reading(stack)
            trend = [{"t": round(loop.time() - started, 1), **first}]
            end_at = started + plan.soak_seconds
            while loop.time() < end_at:
                await asyncio.sleep(min(SAMPLE_EVERY, max(0.0, end_at - loop.time())))
                for task in tasks:
                    if task.done():
                        task.result()  # a caller that crashed says why here
                trend.append({"t": round(loop.time() - started, 1), **reading(stack)})
            last = reading(stack)
            stop.set()
            await asyncio.gather(*tasks)
        finally:
            # Left early (an error, the scenario's time limit): no caller outlives the stack.
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        seconds = loop.time() - started
    calls = sum(counts.values())
    failed = sum(n for key, n in counts.items() if key.endswith("failed"))
    rss_growth = max(last[name]["rss_mib"] / first[name]["rss_mib"] for name in PROCESSES)
    fd_growth = max(last[name]["fds"] - first[name]["fds"] for name in PROCESSES)
    return scenario(
        KEY,
        TITLE,
        figures={
            "seconds": round(seconds, 1),
            "clients": plan.soak_clients,
            "calls": calls,
            "calls_per_s": round(calls / seconds, 1) if seconds else 0.0,
            "failed": failed,
            "by_operation": dict(sorted(counts.items())),
            "idle": idle,
            "start": first,
            "end": last,
            "warmup_s": plan.soak_warmup,
            "trend": trend,
        },
        targets=[
            target("soak_failed", "failed calls = 0", failed, 0),
            target(
                "soak_rss",
                f"RSS at end <= {RSS_GROWTH_LIMIT:.2f} x RSS after warm-up (service, edge)",
                round(rss_growth, 3),
                RSS_GROWTH_LIMIT,
                unit=" x",
            ),
            target(
                "soak_fds",
                f"open fds at end <= after warm-up + {FD_GROWTH_LIMIT} (service, edge)",
                fd_growth,
                FD_GROWTH_LIMIT,
                unit=" fds",
            ),
        ],
    )
