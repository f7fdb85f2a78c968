"""CPU time, resident memory and core pinning of processes, straight from /proc."""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections.abc import Callable, Iterable, Mapping
from contextlib import suppress
from dataclasses import dataclass
from types import TracebackType

_TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")
_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
MIB = 1024 * 1024


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of the whole process (all its threads) so far."""
    with open(f"/proc/{pid}/stat") as stat:
        # The command name (field 2) may hold spaces: split after its closing parenthesis.
        fields = stat.read().rpartition(")")[2].split()
    # utime and stime are fields 14 and 15 of stat(5); fields[0] here is field 3.
    return (int(fields[11]) + int(fields[12])) / _TICKS_PER_SECOND


MACHINE = "(machine)"  # pseudo process name: every core's busy time, whoever used it
_TASKS = "(tasks)"  # the same, without interrupt handling: what processes' own times add up to


def _machine_fields() -> list[int]:
    # user nice system idle iowait irq softirq steal ... (proc_stat(5), first line)
    with open("/proc/stat") as stat:
        return [int(value) for value in stat.readline().split()[1:9]]


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent busy since boot, interrupt handling included."""
    user, nice, system, _, _, irq, softirq, _ = _machine_fields()
    return (user + nice + system + irq + softirq) / _TICKS_PER_SECOND


def tasks_busy_seconds() -> float:
    """CPU seconds all cores spent running processes (user + system, no interrupts).

    Loopback traffic at tens of thousands of requests a second costs softirq time that no
    process's own CPU time includes, so only this is comparable with a sum over processes.
    """
    user, nice, system = _machine_fields()[:3]
    return (user + nice + system) / _TICKS_PER_SECOND


async def wait_until_quiet(limit: float, most: float, log: Callable[[str], None]) -> float:
    """Wait (at most `most` seconds) until under `limit` cores are busy; the last reading."""
    waited = 0.0
    while True:
        before = tasks_busy_seconds()
        await asyncio.sleep(1.0)
        busy = tasks_busy_seconds() - before
        if busy <= limit or waited >= most:
            return busy
        if waited == 0:
            log(f"the machine is busy ({busy:.2f} cores); waiting up to {most:.0f} s for quiet")
        waited += 1.0


@dataclass(frozen=True)
class ThreadTimes:
    """One thread's name, CPU seconds and context switches so far."""

    name: str
    cpu_seconds: float
    voluntary_switches: int
    involuntary_switches: int


def thread_times(pid: int) -> dict[int, ThreadTimes]:
    """Every thread of a process, by thread id."""
    threads: dict[int, ThreadTimes] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        with suppress(OSError, ValueError):
            with open(f"/proc/{pid}/task/{tid}/stat") as stat:
                raw = stat.read()
            fields = raw.rpartition(")")[2].split()
            switches = {"voluntary_ctxt_switches": 0, "nonvoluntary_ctxt_switches": 0}
            with open(f"/proc/{pid}/task/{tid}/status") as status:
                for line in status:
                    key, _, value = line.partition(":")
                    if key in switches:
                        switches[key] = int(value)
            threads[int(tid)] = ThreadTimes(
                raw[raw.index("(") + 1 : raw.rindex(")")],
                (int(fields[11]) + int(fields[12])) / _TICKS_PER_SECOND,
                switches["voluntary_ctxt_switches"],
                switches["nonvoluntary_ctxt_switches"],
            )
    return threads


def _status_kib(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise LookupError(f"{key} not in /proc/{pid}/status")


def rss_bytes(pid: int) -> int:
    """Resident set size now (VmRSS)."""
    return _status_kib(pid, "VmRSS") * 1024


def peak_rss_bytes(pid: int) -> int:
    """The process's lifetime peak resident set size (VmHWM)."""
    return _status_kib(pid, "VmHWM") * 1024


def pin(pid: int, cpus: Iterable[int]) -> None:
    """Pin every thread of a process (not just its main thread) to `cpus`.

    sched_setaffinity on a pid moves only that one thread; threads created later inherit
    from their creator, so pinning all current threads pins the process for good.
    """
    wanted = set(cpus)
    for tid in os.listdir(f"/proc/{pid}/task"):
        with suppress(ProcessLookupError, FileNotFoundError):  # a thread that just ended
            os.sched_setaffinity(int(tid), wanted)


def child_pids(parent: int) -> dict[int, str]:
    """Direct children of `parent`, pid -> command name (finds the embedded mongod)."""
    found: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with suppress(OSError):
            with open(f"/proc/{entry}/stat") as stat:
                raw = stat.read()
            name = raw[raw.index("(") + 1 : raw.rindex(")")]
            if int(raw.rpartition(")")[2].split()[1]) == parent:
                found[int(entry)] = name
    return found


def descendant_pids(parent: int) -> list[int]:
    """Every process below `parent`: children, and theirs (a service's worker processes)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with suppress(OSError, ValueError):
            with open(f"/proc/{entry}/stat") as stat:
                raw = stat.read()
            parents[int(entry)] = int(raw.rpartition(")")[2].split()[1])
    found: list[int] = []
    below = [parent]
    while below:
        pid = below.pop()
        children = [child for child, of in parents.items() if of == pid]
        found += children
        below += children
    return found


@dataclass
class Usage:
    """What one process used over a window of wall time."""

    cpu_seconds: float = 0.0
    wall_seconds: float = 0.0
    peak_rss_bytes: int = 0

    @property
    def cpu_cores(self) -> float:
        """1.0 is one core kept busy for the whole window."""
        return self.cpu_seconds / self.wall_seconds if self.wall_seconds > 0 else 0.0


class Sampler:
    """Samples CPU time and RSS of named processes while a load runs (`async with`).

    CPU is kept as a time series, so that afterwards `usage(seconds, end)` can report
    exactly the load generator's measured window, whatever warm-up, start-up or
    tear-down came before or after it. RSS is polled for the peak during the whole run
    (VmHWM would be the peak over the process's whole life).
    """

    def __init__(self, pids: Mapping[str, int], *, interval: float = 0.1) -> None:
        self.pids = {**pids, MACHINE: 0, _TASKS: 0}
        self._interval = interval
        self._series: list[tuple[float, dict[str, float]]] = []
        # CPU of this process and everything below it (stacks and their worker processes,
        # baselines, load generator) by pid: what the machine did beyond that was somebody
        # else's work.
        self._ours: list[tuple[float, dict[int, float]]] = []
        self._peak_rss = dict.fromkeys(self.pids, 0)
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Sampler:
        self._sample()
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._task is not None
        self._task.cancel()
        with suppress(asyncio.CancelledError):
            await self._task
        self._sample()

    def _sample(self) -> None:
        now = time.monotonic()
        cpu: dict[str, float] = {}
        for name, pid in self.pids.items():
            with suppress(OSError):
                if name in (MACHINE, _TASKS):
                    cpu[name] = machine_busy_seconds() if name == MACHINE else tasks_busy_seconds()
                    continue
                cpu[name] = cpu_seconds(pid)
                self._peak_rss[name] = max(self._peak_rss[name], rss_bytes(pid))
        self._series.append((now, cpu))
        ours: dict[int, float] = {}
        for pid in [os.getpid(), *descendant_pids(os.getpid())]:
            with suppress(OSError):
                ours[pid] = cpu_seconds(pid)
        self._ours.append((now, ours))

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            self._sample()

    def _cpu_at(self, name: str, moment: float) -> float:
        """CPU seconds used by `moment`, interpolated between the samples around it."""
        points = [(t, cpu[name]) for t, cpu in self._series if name in cpu]
        if not points:
            return 0.0
        if moment <= points[0][0]:
            return points[0][1]
        for (t0, c0), (t1, c1) in itertools.pairwise(points):
            if t0 <= moment <= t1:
                return c0 + (c1 - c0) * (moment - t0) / max(t1 - t0, 1e-9)
        return points[-1][1]

    def foreign_cores(self, seconds: float, end: float | None = None) -> float:
        """Cores busy with other people's work (not this bench's processes) in the window."""
        end = min(self._series[-1][0], end or self._series[-1][0])
        first = max(
            i for i, (t, _) in enumerate(self._ours) if t <= max(end - seconds, self._ours[0][0])
        )
        last = min(i for i, (t, _) in enumerate(self._ours) if t >= end)
        (t0, ours0), (t1, ours1) = self._ours[first], self._ours[last]
        if t1 <= t0:
            return 0.0
        ours = sum(cpu - ours0.get(pid, 0.0) for pid, cpu in ours1.items())
        machine0, machine1 = self._series[first][1], self._series[last][1]
        busy = machine1.get(_TASKS, 0.0) - machine0.get(_TASKS, 0.0)
        return max(0.0, busy - ours) / (t1 - t0)

    def usage(self, seconds: float, end: float | None = None) -> dict[str, Usage]:
        """Per process: CPU over the `seconds` before `end` (default: the run's end), peak RSS."""
        end = min(self._series[-1][0], end or self._series[-1][0])
        start = max(end - seconds, self._series[0][0])
        return {
            name: Usage(
                cpu_seconds=self._cpu_at(name, end) - self._cpu_at(name, start),
                wall_seconds=end - start,
                peak_rss_bytes=self._peak_rss[name],
            )
            for name in self.pids
            if name != _TASKS
        }
