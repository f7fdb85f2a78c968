"""The bench's moving parts during a run: processes by name, pinning, measuring, problems.

Fairness rules every scenario goes through `Rig.compare` for:
- The process under test (a service process, or the edge) and its bare baseline get the
  same core (`Cores.server`); the load generator, the bench itself and every dependency
  (mongod, the emulator, and the service when the edge is under test) share the other.
  So a ratio compares one Python process on one core with another on the same core.
- Baseline and scenario alternate (A B, then B A, ...), so drift on a shared machine hits
  both sides alike; each side's rounds are merged.
- CPU and throughput cover the same window: the load generator's own measured seconds.

`Rig.side_by_side`, for the few-percent costs of a setting, bends the first two rules
on purpose: both processes share the server core at the same time, and their two load
generators share the other (see its docstring).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench import procstat
from bench.check import CheckResult
from bench.loadgen import LoadResult
from bench.plan import Cores, Plan
from bench.stats import weighted_percentiles_ms

RETRY_PAUSE = 5.0  # seconds to let somebody else's burst pass before repeating a run
Runner = Callable[[], Awaitable[LoadResult]]
Check = Callable[[], Awaitable[CheckResult]]


@dataclass(frozen=True)
class Measured:
    """One load run, what the sampled processes used, and what others used meanwhile."""

    result: LoadResult
    usage: dict[str, procstat.Usage]
    foreign_cores: float


@dataclass
class Side:
    """One side of a comparison (the scenario or its baseline), merged over its rounds."""

    runs: list[LoadResult] = field(default_factory=list)
    usage: list[dict[str, procstat.Usage]] = field(default_factory=list)
    foreign: list[float] = field(default_factory=list)  # cores others used, per run

    def add(self, measured: Measured) -> None:
        self.runs.append(measured.result)
        self.usage.append(measured.usage)
        self.foreign.append(measured.foreign_cores)

    def summary(self) -> dict[str, Any]:
        requests = sum(run.requests for run in self.runs)
        seconds = sum(run.seconds for run in self.runs)
        groups = [group for run in self.runs for group in run.latency_groups()]
        processes: dict[str, dict[str, float]] = {}
        for name in self.usage[0] if self.usage else ():
            busy = sum(usage[name].cpu_seconds for usage in self.usage)
            wall = sum(usage[name].wall_seconds for usage in self.usage)
            peak = max(usage[name].peak_rss_bytes for usage in self.usage)
            processes[name] = {
                "cpu_cores": round(busy / wall, 3) if wall else 0.0,
                "peak_rss_mib": round(peak / procstat.MIB, 1),
            }
        machine = processes.pop(procstat.MACHINE, {"cpu_cores": 0.0})
        return {
            "rps": round(requests / seconds, 1) if seconds else 0.0,
            "requests": requests,
            "seconds": round(seconds, 2),
            **weighted_percentiles_ms(groups),
            "failed": sum(run.failed for run in self.runs),
            "bad_status": sum(run.bad_status for run in self.runs),
            "exhausted": any(run.exhausted for run in self.runs),
            "rounds_rps": [round(run.rps, 1) for run in self.runs],
            "processes": processes,
            "machine_busy_cores": machine["cpu_cores"],
            "foreign_cores": [round(cores, 3) for cores in self.foreign],
            "tool": self.runs[0].tool if self.runs else "",
        }


class Rig:
    """Everything a scenario needs: the plan, the cores, the processes, an HTTP client."""

    def __init__(
        self,
        plan: Plan,
        cores: Cores,
        workdir: Path,
        http: aiohttp.ClientSession,
        log: Callable[[str], None],
    ) -> None:
        self.plan = plan
        self.cores = cores
        self.workdir = workdir
        self.http = http
        self.log = log
        self.processes: dict[str, int] = {}  # name -> pid, e.g. "service-1", "bare-grpc"
        self.problems: list[str] = []  # anything that makes the run untrustworthy
        self.profiles: dict[str, str] = {}  # scenario key -> py-spy summary
        self.warnings: list[str] = []  # runs disturbed by other people's work
        self._retry_budget = plan.retry_budget  # seconds all repeated runs may take together

    # -- pinning ------------------------------------------------------------------------------

    def arrange(self, under_test: Collection[str]) -> None:
        """`under_test` and the bare baselines on the server core, the rest elsewhere."""
        if not self.cores.pinned:
            return
        for name, pid in self.processes.items():
            server_side = name in under_test or name.startswith("bare-")
            procstat.pin(pid, self.cores.server if server_side else self.cores.load)

    def unpin(self, names: Collection[str]) -> None:
        """Let processes run on every core (the scaling comparison)."""
        every = self.cores.every or tuple(sorted(os.sched_getaffinity(0)))
        for name in names:
            procstat.pin(self.processes[name], every)

    # -- measuring ----------------------------------------------------------------------------

    async def measure(self, runner: Runner, names: Collection[str], label: str) -> Measured:
        """One load run while sampling `names`, over the run's own measured seconds.

        If other people's processes kept the machine busy meanwhile, the run is thrown
        away and repeated after a pause (plan.retries times at most); a run still
        disturbed after that is kept and listed in `warnings`.
        """
        pids = {name: self.processes[name] for name in names}
        for attempt in range(self.plan.retries + 1):
            started = time.monotonic()
            async with procstat.Sampler(pids) as sampler:
                result = await runner()
            measured = Measured(
                result,
                sampler.usage(result.seconds, result.window_end),
                sampler.foreign_cores(result.seconds, result.window_end),
            )
            if measured.foreign_cores <= self.plan.foreign_limit:
                break
            note = f"{label}: other processes used {measured.foreign_cores:.2f} cores"
            if attempt == self.plan.retries or self._retry_budget <= 0:
                self.warnings.append(note)
                break
            self.log(f"  {note}; pausing, then running it again")
            await asyncio.sleep(RETRY_PAUSE)
            self._retry_budget -= time.monotonic() - started
        return measured

    async def compare(
        self,
        *,
        key: str,
        title: str,
        driven_by: str,
        subject: Runner,
        subject_processes: Sequence[str],
        baseline: Runner,
        baseline_process: str,
        check: Check,
        baseline_check: Check,
        rounds: int | None = None,
    ) -> dict[str, Any]:
        """Alternate baseline and subject for `rounds` rounds, check samples, summarise.

        `subject_processes[0]` is the process under test (pinned to the server core); the
        others are sampled for the record. `rounds` defaults to plan.rounds.
        """
        self.arrange(subject_processes[:1])
        sides = {"subject": Side(), "baseline": Side()}
        runners = {"subject": subject, "baseline": baseline}
        sampled = {"subject": subject_processes, "baseline": [baseline_process]}
        for number in range(rounds or self.plan.rounds):
            order = ("baseline", "subject") if number % 2 == 0 else ("subject", "baseline")
            for side in order:
                label = f"{key} {side} round {number + 1}"
                measured = await self.measure(runners[side], sampled[side], label)
                sides[side].add(measured)
                self.log(
                    f"  {key:<14} {side:<8} round {number + 1}: {measured.result.rps:9.1f} req/s"
                )
        subject_summary = sides["subject"].summary()
        baseline_summary = sides["baseline"].summary()
        base_rps = baseline_summary["rps"]
        entry: dict[str, Any] = {
            "key": key,
            "title": title,
            "driven_by": driven_by,
            "process_under_test": subject_processes[0],
            "subject": subject_summary,
            "baseline": {"name": baseline_process, **baseline_summary},
            "ratio": round(subject_summary["rps"] / base_rps, 3) if base_rps else 0.0,
            "check": (await check()).as_json(),
            "baseline_check": (await baseline_check()).as_json(),
        }
        if key in self.profiles:
            entry["profile"] = self.profiles[key]
        self.flag(key, entry)
        return entry

    async def side_by_side(
        self,
        *,
        key: str,
        title: str,
        subject: Runner,
        subject_process: str,
        reference: Runner,
        reference_process: str,
    ) -> dict[str, Any]:
        """Two processes on the server core *at once*, each under its own load: their cost ratio.

        The ratio is the subject's requests per CPU-second over the reference's, each
        over its own load generator's measured seconds (the two start together and
        run equally long). Alternating runs (`compare`) see this shared machine's
        speed change from one round to the next by up to ~10 %; side by side, such
        changes hit both processes alike, so rounds agree within ~2 % and a cost of
        a few percent can be told from noise. Which load starts first alternates by
        round. Sharing a core costs each process ~10 % (switches, caches), which may
        understate a difference a little: these ratios are for costs of a few
        percent between two of our own stacks, not for the targets against bare.
        """
        self.arrange([subject_process, reference_process])
        names = (subject_process, reference_process)
        pids = {name: self.processes[name] for name in names}
        totals = {name: [0, 0.0] for name in names}  # requests, CPU seconds
        rounds = []
        for number in range(self.plan.fine_rounds):
            async with procstat.Sampler(pids) as sampler:
                if number % 2 == 0:
                    results = list(await asyncio.gather(subject(), reference()))
                else:
                    results = list(reversed(await asyncio.gather(reference(), subject())))
            foreign = sampler.foreign_cores(results[0].seconds, results[0].window_end)
            if foreign > self.plan.foreign_limit:
                self.warnings.append(
                    f"{key} side by side round {number + 1}: "
                    f"other processes used {foreign:.2f} cores"
                )
            efficiency = []
            for name, result in zip(names, results, strict=True):
                cpu = sampler.usage(result.seconds, result.window_end)[name].cpu_seconds
                totals[name][0] += result.requests
                totals[name][1] += cpu
                efficiency.append(result.requests / cpu if cpu > 0 else 0.0)
                if result.failed or result.bad_status or result.requests <= 0:
                    self.problems.append(
                        f"{key} {name}: {result.requests} answered, {result.failed} failed, "
                        f"{result.bad_status} bad status"
                    )
            ratio = efficiency[0] / efficiency[1] if efficiency[1] else 0.0
            rounds.append(round(ratio, 3))
            self.log(f"  {key:<14} side by side round {number + 1}: {ratio:.3f}")
        per_cpu = {
            name: requests / cpu if cpu > 0 else 0.0 for name, (requests, cpu) in totals.items()
        }
        reference_rate = per_cpu[reference_process]
        return {
            "key": key,
            "title": title,
            "subject": subject_process,
            "reference": reference_process,
            "requests_per_cpu_second": {name: round(rate, 1) for name, rate in per_cpu.items()},
            "rounds": rounds,
            "ratio": round(per_cpu[subject_process] / reference_rate, 3) if reference_rate else 0.0,
        }

    def flag(self, key: str, entry: Mapping[str, Any]) -> None:
        """Record every error a comparison saw; any of them fails the run."""
        for side in ("subject", "baseline"):
            summary = entry[side]
            if summary["failed"] or summary["bad_status"]:
                self.problems.append(
                    f"{key} {side}: {summary['failed']} failed, {summary['bad_status']} bad status"
                )
            if summary["exhausted"]:
                self.problems.append(f"{key} {side}: ran out of single-use codes mid-run")
            if summary["requests"] <= 0:
                self.problems.append(f"{key} {side}: no request succeeded")
        for which in ("check", "baseline_check"):
            checked = entry[which]
            if checked["errors"] or not checked["sampled"]:
                self.problems.append(f"{key} {which}: {checked['first_error'] or 'no samples'}")
