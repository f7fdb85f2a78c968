"""py-spy attached to the process under test during one extra, unmeasured run."""

from __future__ import annotations

import asyncio
import shutil
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from bench import procstat


def py_spy() -> str | None:
    """py-spy from PATH or next to this interpreter (the venv's bin), if installed."""
    beside = Path(sys.executable).parent / "py-spy"
    return shutil.which("py-spy") or (str(beside) if beside.exists() else None)


def summarize(collapsed: Path, top: int = 12) -> str:
    """The frames holding the GIL most often: by own time and including callees."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        samples = int(count)
        total += samples
        frames = stack.split(";")
        own[frames[-1]] += samples
        for frame in set(frames):
            inclusive[frame] += samples
    if not total:
        return "no samples"
    skip = ("runpy", "asyncio/runners", "run_forever", "run_until_complete", "<module>", "main (")
    lines = [f"{total} samples holding the GIL", "own time:"]
    lines += [f"  {100 * n / total:5.1f}% {frame}" for frame, n in own.most_common(top)]
    lines.append("including callees:")
    shown = [(f, n) for f, n in inclusive.most_common(top * 3) if not any(s in f for s in skip)]
    lines += [f"  {100 * n / total:5.1f}% {frame}" for frame, n in shown[: top * 2]]
    return "\n".join(lines)


async def profile_process(
    pid: int,
    runner: Callable[[], Awaitable[object]],
    out: Path,
    cpus: Sequence[int],
    *,
    delay: float,
    seconds: float,
) -> str:
    """Run `runner` while py-spy samples `pid` for `seconds` after `delay`; the summary."""
    binary = py_spy()
    if binary is None:
        return "py-spy is not installed (pip install -e '.[bench]')"
    collapsed = out.with_suffix(".collapsed.txt")

    async def record() -> None:
        await asyncio.sleep(delay)
        argv = [binary, "record", "--pid", str(pid), "--duration", str(max(1, round(seconds)))]
        # --gil: only the thread holding the GIL, i.e. the Python work we can change.
        argv += ["--rate", "250", "--gil", "--nonblocking", "--format", "raw", "-o", str(collapsed)]
        if cpus:
            argv = ["taskset", "-c", ",".join(map(str, cpus)), *argv]
        process = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
        )
        _, err = await process.communicate()
        if process.returncode != 0:
            raise RuntimeError(f"py-spy failed: {err.decode(errors='replace')[-500:]}")

    threads: dict[str, str] = {}

    async def watch_threads() -> None:
        await asyncio.sleep(delay)
        before, started = procstat.thread_times(pid), time.monotonic()
        await asyncio.sleep(seconds)
        threads["text"] = summarize_threads(
            pid, before, procstat.thread_times(pid), time.monotonic() - started
        )

    await asyncio.gather(runner(), record(), watch_threads())
    return summarize(collapsed) + "\n" + threads.get("text", "")


def summarize_threads(
    pid: int,
    before: dict[int, procstat.ThreadTimes],
    after: dict[int, procstat.ThreadTimes],
    seconds: float,
) -> str:
    """CPU and context switches per second by thread: the work outside the GIL shows here."""
    groups: dict[str, list[float]] = {}
    for tid, now in after.items():
        then = before.get(tid, procstat.ThreadTimes(now.name, 0.0, 0, 0))
        role = "main thread (event loop)" if tid == pid else f"{now.name} threads"
        group = groups.setdefault(role, [0.0, 0.0, 0.0, 0.0])
        group[0] += (now.cpu_seconds - then.cpu_seconds) / seconds
        group[1] += (now.voluntary_switches - then.voluntary_switches) / seconds
        group[2] += (now.involuntary_switches - then.involuntary_switches) / seconds
        group[3] += 1
    lines = ["threads (cores; context switches per second, voluntary/involuntary):"]
    for role, (cores, voluntary, involuntary, count) in sorted(
        groups.items(), key=lambda item: -item[1][0]
    ):
        lines.append(f"  {cores:5.2f}  {voluntary:8.0f} / {involuntary:8.0f}  {role} ({count:.0f})")
    return "\n".join(lines)
