"""Closed-loop login load through the real client library, and what every call ended as."""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, fields
from typing import Any

from bench.fixtures import Emulator
from bench.stats import percentiles_ms
from clients import Deadlines, RetryPolicy, WxLoginClient, WxLoginError, open_channel
from devtools.devstack import DEV_APP
from service.settings import Settings

# A caller that just failed waits this long before its next login, as a real client
# backs off; without it an outage that fails fast would become a busy loop.
PAUSE_AFTER_ERROR = 0.05
# What CheckSession says about a token the service no longer has.
GONE = ("SESSION_INVALID", "SESSION_EXPIRED")
# Users per login worker: after the first round most logins are returning users.
USERS_PER_WORKER = 20


def session_cache_seconds() -> float:
    """How long the service may answer CheckSession from memory (Settings' default)."""
    default = {item.name: item.default for item in fields(Settings)}["session_cache_seconds"]
    assert isinstance(default, float | int)
    return float(default)


@dataclass(frozen=True)
class Outcome:
    """One call: when it started and ended (loop time), and how it ended."""

    started: float
    ended: float
    code: str  # gRPC status name, "OK" on success
    reason: str = ""  # ErrorInfo reason of a failure
    token: str = field(default="", repr=False)

    @property
    def ok(self) -> bool:
        return self.code == "OK"


class Recorder:
    """Every outcome of a load run, in the order calls ended."""

    def __init__(self) -> None:
        self.outcomes: list[Outcome] = []

    def add(self, outcome: Outcome) -> None:
        self.outcomes.append(outcome)

    def tokens(self) -> list[str]:
        return [outcome.token for outcome in self.outcomes if outcome.token]

    def succeeded(self) -> list[Outcome]:
        return [outcome for outcome in self.outcomes if outcome.ok]

    def first_ok_after(self, moment: float) -> float | None:
        """When the first call that succeeded after `moment` ended."""
        ends = [outcome.ended for outcome in self.outcomes if outcome.ok and outcome.ended > moment]
        return min(ends) if ends else None

    def longest_gap(self, since: float, until: float) -> float:
        """The longest stretch within [since, until] with no successful call ending."""
        points = sorted(
            outcome.ended for outcome in self.outcomes if outcome.ok and since < outcome.ended
        )
        points = [since, *[point for point in points if point <= until], until]
        return max(later - earlier for earlier, later in itertools.pairwise(points))

    def summary(self, outcomes: Sequence[Outcome] | None = None) -> dict[str, Any]:
        """Calls, successes, latency percentiles over every call, failures by reason."""
        chosen = self.outcomes if outcomes is None else outcomes
        ok = sum(outcome.ok for outcome in chosen)
        latencies = [(outcome.ended - outcome.started) * 1_000_000 for outcome in chosen]
        return {
            "calls": len(chosen),
            "succeeded": ok,
            "failed": len(chosen) - ok,
            "succeeded_share": round(ok / len(chosen), 4) if chosen else 0.0,
            **percentiles_ms(latencies),
            "max_ms": round(max(latencies) / 1000, 1) if latencies else 0.0,
            "failures": reasons(chosen),
        }


def reasons(outcomes: Iterable[Outcome]) -> dict[str, int]:
    """Failures counted by 'CODE REASON', most frequent first."""
    counted = Counter(
        f"{outcome.code} {outcome.reason}".strip() for outcome in outcomes if not outcome.ok
    )
    return dict(counted.most_common())


@asynccontextmanager
async def client_for(target: str, deadline: float) -> AsyncIterator[WxLoginClient]:
    """A client as a backend holds one (one channel), every call bounded by `deadline`."""
    channel = open_channel(target)
    deadlines = Deadlines(
        login=deadline,
        check_session=deadline,
        decrypt_user_data=deadline,
        revoke_session=deadline,
    )
    try:
        yield WxLoginClient(channel, deadlines=deadlines, retry=RetryPolicy())
    finally:
        await channel.close()


async def timed(call: Awaitable[object], started: float) -> Outcome:
    """Await `call`; its outcome (a LoginResult's token is kept)."""
    loop = asyncio.get_running_loop()
    try:
        result = await call
    except WxLoginError as error:
        return Outcome(started, loop.time(), error.code.name, error.reason)
    return Outcome(started, loop.time(), "OK", token=getattr(result, "token", ""))


async def login_worker(
    client: WxLoginClient,
    emulator: Emulator,
    name: str,
    stop: asyncio.Event,
    recorder: Recorder,
) -> None:
    """Log in again and again (a fresh code each time) until `stop` is set."""
    loop = asyncio.get_running_loop()
    count = 0
    while not stop.is_set():
        # The code is minted outside the timed call: it is the mini-program's wx.login().
        code = await emulator.code(f"{name}-{count % USERS_PER_WORKER}")
        count += 1
        outcome = await timed(client.login(code, app_id=DEV_APP), loop.time())
        recorder.add(outcome)
        if not outcome.ok:
            await asyncio.sleep(PAUSE_AFTER_ERROR)


class Workers:
    """Load workers started and stopped together: the chaos run's and the rehearsal's.

    `async with`: workers still running when the block is left early are cancelled.
    Subclasses fill `_tasks` (each worker watches `_stop`).
    """

    def __init__(self) -> None:
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def __aexit__(self, *exc_info: object) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def stop(self) -> float:
        """Let calls in flight finish, start no new ones; when the last one ended."""
        self._stop.set()
        await asyncio.gather(*self._tasks)
        return asyncio.get_running_loop().time()

    def check_workers(self) -> None:
        """A worker that crashed says why here."""
        for task in self._tasks:
            if task.done() and not task.cancelled():
                task.result()


class LoginLoad(Workers):
    """`clients` login workers on one client."""

    def __init__(
        self, client: WxLoginClient, emulator: Emulator, clients: int, prefix: str
    ) -> None:
        super().__init__()
        self.recorder = Recorder()
        self._tasks = [
            asyncio.create_task(
                login_worker(client, emulator, f"{prefix}-{n}", self._stop, self.recorder)
            )
            for n in range(clients)
        ]

    async def __aenter__(self) -> LoginLoad:
        return self

    async def wait_for_ok_after(self, moment: float, most: float) -> float | None:
        """Until a login that ended after `moment` succeeded (at most `most` seconds); when."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + most
        while loop.time() < give_up:
            found = self.recorder.first_ok_after(moment)
            if found is not None:
                return found
            self.check_workers()
            await asyncio.sleep(0.05)
        return self.recorder.first_ok_after(moment)


def survival_figures(
    recorder: Recorder, verdict: Mapping[str, Any], outage: Iterable[Outcome]
) -> dict[str, Any]:
    """What a fault scenario reports of its tokens (`verify_tokens`' verdict) and its load;
    `outage`: the calls that ended during the fault."""
    return {
        "tokens_issued": len(recorder.tokens()),
        "tokens_lost": verdict["lost"],
        "tokens_unverified": verdict["unverified"],
        "check_failures": verdict["failures"],
        "lost_logins_s": verdict["lost_logins_s"],
        "outage_failures": reasons(outage),
        "internal_answers": sum(o.code == "INTERNAL" for o in recorder.outcomes),
        "load": recorder.summary(),
    }


async def verify_tokens(
    client: WxLoginClient,
    recorder: Recorder,
    last_issued: float,
    *,
    since: float,
    concurrency: int = 16,
) -> dict[str, Any]:
    """CheckSession on every token, once none can still be answered from the service's cache.

    A token counts as lost when the service no longer knows it (SESSION_INVALID or
    SESSION_EXPIRED); any other failure leaves it unverified, reported apart.
    """
    loop = asyncio.get_running_loop()
    # Login puts each new session in the CheckSession cache; only past its freshness
    # limit does CheckSession prove the session is in MongoDB.
    await asyncio.sleep(max(0.0, last_issued + session_cache_seconds() + 0.5 - loop.time()))
    gate = asyncio.Semaphore(concurrency)

    async def check(token: str) -> Outcome:
        async with gate:
            return await timed(client.check_session(token), loop.time())

    logins = recorder.succeeded()
    checked = await asyncio.gather(*(check(login.token) for login in logins))
    lost = [login for login, check in zip(logins, checked, strict=True) if check.reason in GONE]
    failed = sum(not outcome.ok for outcome in checked)
    return {
        "checked": len(checked),
        "lost": len(lost),
        "unverified": failed - len(lost),
        "failures": reasons(checked),
        # When each lost token's login started and ended, in seconds from `since` (the
        # fault): says whether the losses cluster around it.
        "lost_logins_s": [
            [round(login.started - since, 3), round(login.ended - since, 3)] for login in lost
        ],
    }
