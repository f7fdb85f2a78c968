"""One rehearsal: the stack up, mixed load through the balancer, and in turn a service
SIGKILLed (and restarted, as systemd would), every service and edge rolled one by one
(SIGTERM, wait, start again, wait until back in rotation), the replica-set primary SIGKILLed;
then every acknowledged token checked. Figures per phase, targets judged PASS or MISS.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.chaos.load import Outcome, reasons, verify_tokens
from bench.chaos.results import target
from bench.rehearsal.load import IDEMPOTENT, KINDS, MixedLoad
from bench.rehearsal.plan import RehearsalPlan
from bench.rehearsal.stack import EDGES, SERVICES, Stack, running
from bench.run import machine
from clients import connect

ROLLING = "rolling_restart"


@dataclass
class Phase:
    """One stretch of the run (loop times), what happened in it, and whether all came back."""

    name: str
    started: float
    ended: float = 0.0
    events: list[str] = field(default_factory=list)
    healthy: bool = False


class Rehearsal:
    """The phases of one run against a started stack, under one load."""

    def __init__(
        self, stack: Stack, load: MixedLoad, plan: RehearsalPlan, log: Callable[[str], None]
    ) -> None:
        self.stack = stack
        self.load = load
        self.plan = plan
        self.log = log
        self.phases: list[Phase] = []
        self._loop = asyncio.get_running_loop()

    def _begin(self, name: str) -> Phase:
        phase = Phase(name, self._loop.time())
        if self.phases:  # phases follow each other without a gap: every call is in one
            self.phases[-1].ended = phase.started
        self.phases.append(phase)
        self.log(f"phase {name}")
        return phase

    def _event(self, phase: Phase, text: str) -> None:
        phase.events.append(f"{self._loop.time() - phase.started:6.2f} s {text}")
        self.log(f"  {text}")

    async def _end(self, phase: Phase, came_back: bool) -> None:
        await asyncio.sleep(self.plan.settle_seconds)
        self.load.check_workers()
        phase.healthy = came_back and await self.stack.all_up()
        phase.ended = self._loop.time()
        self._event(phase, f"every process healthy: {phase.healthy}")

    async def warmup(self) -> None:
        phase = self._begin("warmup")
        await asyncio.sleep(self.plan.warmup_seconds)
        await self._end(phase, True)

    async def kill_service(self) -> None:
        """SIGKILL one service; systemd's Restart=on-failure starts it after RestartSec."""
        phase = self._begin("service_sigkill")
        victim = self.stack.processes[SERVICES[0]]
        await victim.kill()
        self._event(phase, f"{victim.name} SIGKILLed")
        await asyncio.sleep(self.plan.restart_delay)
        await victim.start()
        up = await self.stack.wait_up(victim.name, self.plan.up_limit)
        self._event(phase, f"{victim.name} restarted; in rotation again: {up}")
        await self._end(phase, up)

    async def rolling_restart(self) -> None:
        """Every service, then every edge: SIGTERM, its exit, the same version again, healthy."""
        phase = self._begin(ROLLING)
        came_back = True
        for name in (*SERVICES, *EDGES):
            process = self.stack.processes[name]
            code = await process.terminate(self.plan.stop_limit)
            self._event(phase, f"{name} SIGTERMed, exited {code}")
            await process.start()
            up = await self.stack.wait_up(name, self.plan.up_limit)
            self._event(phase, f"{name} started again; in rotation: {up}")
            came_back &= up
        await self._end(phase, came_back)

    async def kill_primary(self) -> None:
        """SIGKILL the replica set's primary; the old primary rejoins once another leads."""
        phase = self._begin("primary_sigkill")
        replica_set = self.stack.replica_set
        primary = await replica_set.primary_index()
        if primary is None:
            raise RuntimeError("the replica set had no primary before the kill")
        await replica_set.kill(primary)
        self._event(phase, f"primary (member {primary}) SIGKILLed")
        elected = await replica_set.wait_for_primary(self.plan.election_limit)
        self._event(phase, f"member {elected} elected")
        # The old primary rejoins: a write it alone acknowledged would be rolled back now,
        # so only after this does the final CheckSession show whether a token was lost.
        await replica_set.restart(primary)
        await replica_set.wait_healthy(self.plan.up_limit)
        self._event(phase, f"member {primary} rejoined")
        await self._end(phase, True)


def _phase_figures(
    phase: Phase, load: MixedLoad, lost_ends: list[float], since: float
) -> dict[str, Any]:
    """What the client saw in one phase: calls and failures by kind, tokens, the login gap."""

    def within(outcome: Outcome) -> bool:
        return phase.started <= outcome.ended < phase.ended

    chosen = {kind: [o for o in load.recorders[kind].outcomes if within(o)] for kind in KINDS}
    logins = load.recorders["login"]
    return {
        "phase": phase.name,
        "seconds": round(phase.ended - phase.started, 1),
        "requests": {kind: len(outcomes) for kind, outcomes in chosen.items()},
        "failed": {kind: sum(not o.ok for o in outcomes) for kind, outcomes in chosen.items()},
        "failures": {kind: reasons(outcomes) for kind, outcomes in chosen.items() if outcomes},
        "tokens_issued": sum(o.ok for o in chosen["login"]),
        "tokens_lost": sum(phase.started <= since + end < phase.ended for end in lost_ends),
        "longest_login_gap_s": round(logins.longest_gap(phase.started, phase.ended), 3),
        "healthy": phase.healthy,
        "events": phase.events,
    }


def _targets(phases: list[dict[str, Any]], lost: int) -> list[dict[str, Any]]:
    rolling = next(p for p in phases if p["phase"] == ROLLING)
    idempotent = sum(rolling["failed"][kind] for kind in IDEMPOTENT)
    logins = rolling["requests"]["login"]
    login_share = round(100 * rolling["failed"]["login"] / logins, 3) if logins else None
    return [
        target("tokens_lost", "acknowledged tokens lost = 0", lost, 0),
        target(
            "rolling_idempotent",
            "failed CheckSession + GET /v1/session during the rolling restart = 0",
            idempotent,
            0,
        ),
        target(
            "rolling_logins",
            "failed logins during the rolling restart <= 0.1 %",
            login_share,
            0.1,
            unit=" %",
        ),
        target(
            "healthy",
            "every process back healthy after every phase",
            int(all(phase["healthy"] for phase in phases)),
            1,
            at_least=True,
        ),
    ]


async def rehearse(
    plan: RehearsalPlan, workdir: Path, log: Callable[[str], None]
) -> dict[str, Any]:
    """The whole rehearsal; its results (phases, verification, targets)."""
    started = datetime.now(UTC)
    load_before = os.getloadavg()
    loop = asyncio.get_running_loop()
    clock = loop.time()
    log(f"wxlogin rehearsal ({plan.name}); work dir {workdir}")
    async with running(workdir, plan) as stack:
        log(f"stack up: balancer gRPC {stack.grpc_target}, HTTP {stack.http_url}")
        async with connect(stack.grpc_target, tls=stack.tls, caller_key=stack.caller_key) as client:
            async with MixedLoad(client, stack, plan) as load:
                run = Rehearsal(stack, load, plan, log)
                since = loop.time()
                await run.warmup()
                await run.kill_service()
                await run.rolling_restart()
                await run.kill_primary()
                stopped = await load.stop()
                # Rounds in flight when the last phase ended belong to it.
                run.phases[-1].ended = stopped
            tokens = len(load.recorders["login"].succeeded())
            log(f"checking every acknowledged token ({tokens})")
            verdict = await verify_tokens(client, load.recorders["login"], stopped, since=since)
    lost_ends = [end for _, end in verdict["lost_logins_s"]]
    phases = [_phase_figures(phase, load, lost_ends, since) for phase in run.phases]
    return {
        "meta": {
            "plan": asdict(plan),
            "started": started.isoformat(timespec="seconds"),
            "wall_seconds": round(loop.time() - clock, 1),
            "machine": machine({}),
            # Other work on the machine: 1-minute load averages before and after the run.
            "load_average": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        },
        "phases": phases,
        "verification": {k: verdict[k] for k in ("checked", "lost", "unverified", "failures")},
        "targets": _targets(phases, verdict["lost"]),
    }
