"""One chaos run: every scenario in turn, each on a stack of its own, bounded in time."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
import traceback
from collections.abc import Awaitable, Callable, Collection
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from bench import procstat
from bench.chaos import failover, junk, mongod, soak, wechat
from bench.chaos.plan import ChaosPlan
from bench.chaos.results import Context, not_run
from bench.run import machine

Scenario = Callable[[Context], Awaitable[dict[str, Any]]]
SCENARIOS: tuple[tuple[str, str, Scenario], ...] = (
    (wechat.KEY, wechat.TITLE, wechat.run),
    (mongod.KEY, mongod.TITLE, mongod.run),
    (failover.KEY, failover.TITLE, failover.run),
    (junk.KEY, junk.TITLE, junk.run),
    (soak.KEY, soak.TITLE, soak.run),
)
KEYS = tuple(key for key, _, _ in SCENARIOS)


async def _one(ctx: Context, key: str, title: str, scenario: Scenario) -> dict[str, Any]:
    """Run one scenario; a crash or an overrun becomes its result, not the run's end."""
    started = time.monotonic()
    try:
        result = await asyncio.wait_for(scenario(ctx), ctx.plan.scenario_timeout)
    except TimeoutError:
        result = not_run(
            key, title, f"did not finish in {ctx.plan.scenario_timeout:.0f} s", status="error"
        )
    except Exception as error:
        ctx.log("".join(traceback.format_exception(error)).rstrip())
        result = not_run(key, title, f"{type(error).__name__}: {error}", status="error")
    result["seconds"] = round(time.monotonic() - started, 1)
    return result


def _reap_leftovers(log: Callable[[str], None]) -> int:
    """SIGKILL any child process still there (none should be); how many there were."""
    leftovers = procstat.child_pids(os.getpid())
    for pid, name in leftovers.items():
        log(f"chaos: {name} (pid {pid}) outlived its scenario; killing it")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return len(leftovers)


async def run(
    plan: ChaosPlan, workdir: Path, log: Callable[[str], None], only: Collection[str] = ()
) -> dict[str, Any]:
    """Every scenario (or those in `only`), in order; the results with their targets."""
    started = datetime.now(UTC)
    clock = time.monotonic()
    log(f"wxlogin chaos ({plan.name}); work dir {workdir}")
    results = []
    async with aiohttp.ClientSession() as http:
        ctx = Context(plan, workdir, http, log)
        for key, title, scenario in SCENARIOS:
            if only and key not in only:
                continue
            log(f"{key}: {title}")
            result = await _one(ctx, key, title, scenario)
            for checked in result["targets"]:
                log(f"  {checked['result']:<4} {checked['text']} ({checked['value']})")
            if result["status"] != "ran":
                log(f"  {result['status']}: {result['error']}")
            results.append(result)
    leftovers = _reap_leftovers(log)
    finished = datetime.now(UTC)
    return {
        "meta": {
            "plan": asdict(plan),
            "started": started.isoformat(timespec="seconds"),
            "finished": finished.isoformat(timespec="seconds"),
            "wall_seconds": round(time.monotonic() - clock, 1),
            "machine": machine({}),
            "leftover_processes": leftovers,
        },
        "scenarios": results,
    }
