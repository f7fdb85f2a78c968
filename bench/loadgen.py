"""Runs the load generators (h2load, wrk, bench.driver) and turns their output into LoadResult.

Every run is a child process, pinned with `taskset` to the cores it is given (the load
generator's), so the client never competes with the process under test for its core.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.grpc_body import GRPC_HEADERS

# Debian packages that provide the C load generators.
TOOLS = {"h2load": "nghttp2-client", "wrk": "wrk"}

# wrk cannot merge rounds itself; its done() hook reports this many evenly spaced
# quantiles so rounds can be merged (see stats.weighted_percentiles_ms).
WRK_QUANTILES = 1000


class LoadError(RuntimeError):
    """A load generator failed or reported something we cannot trust."""


class ToolMissing(LoadError):
    """h2load or wrk is not installed; the message says how to get it."""


def require_tools() -> dict[str, str]:
    """Paths of h2load and wrk, or ToolMissing naming the apt packages to install."""
    found = {tool: shutil.which(tool) for tool in TOOLS}
    missing = sorted(tool for tool, path in found.items() if path is None)
    if missing:
        packages = " ".join(TOOLS[tool] for tool in missing)
        raise ToolMissing(
            f"{', '.join(missing)} not found on PATH: install with "
            f"`apt-get update && apt-get install -y {packages}` (make bench does this)"
        )
    return {tool: path for tool, path in found.items() if path is not None}


@dataclass
class LoadResult:
    """One load generator run, reduced to what every report needs."""

    tool: str
    requests: int  # answered with success (HTTP 2xx; for the driver, gRPC OK)
    seconds: float  # the measured window
    failed: int = 0  # transport failures: reset, refused, timed out
    bad_status: int = 0  # HTTP status outside 2xx, or gRPC status not OK (driver only)
    exhausted: bool = False  # ran out of single-use request bodies before the time was up
    # When the measured window closed (time.monotonic(), the same clock in every process).
    window_end: float = field(default_factory=time.monotonic)
    detail: dict[str, object] = field(default_factory=dict)
    latencies_us: list[int] = field(default_factory=list, repr=False)  # every request
    quantiles_us: list[float] = field(default_factory=list, repr=False)  # wrk: quantiles only

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0

    def latency_groups(self) -> list[tuple[Sequence[float], float]]:
        """Samples and the weight of each, for stats.weighted_percentiles_ms."""
        if self.latencies_us:
            return [(self.latencies_us, 1.0)]
        if self.quantiles_us:
            return [(self.quantiles_us, self.requests / len(self.quantiles_us))]
        return []


def _pinned(argv: Sequence[str], cpus: Sequence[int] | None) -> list[str]:
    if not cpus:
        return list(argv)
    return ["taskset", "-c", ",".join(map(str, cpus)), *argv]


_BEARER = re.compile(r"Bearer \S+")


def _shown(argv: Sequence[str]) -> str:
    # Even a dev stack's token stays out of error messages and logs.
    return _BEARER.sub("Bearer ***", " ".join(argv))


async def _run(argv: Sequence[str], limit: float) -> str:
    """Run a load generator to completion (killed after `limit` seconds); its stdout."""
    process = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        async with asyncio.timeout(limit):
            out, err = await process.communicate()
    except TimeoutError:
        process.kill()
        await process.wait()
        raise LoadError(f"ran over {limit:.0f}s: {_shown(argv)}") from None
    if process.returncode != 0:
        tail = err.decode(errors="replace").strip().splitlines()[-5:]
        raise LoadError(f"{_shown(argv)} exited {process.returncode}: {' | '.join(tail)}")
    return out.decode(errors="replace")


_H2_FINISHED = re.compile(r"finished in ([\d.]+)(m?s), ([\d.]+) req/s")
_H2_REQUESTS = re.compile(
    r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
    r"(\d+) failed, (\d+) errored, (\d+) timeout"
)
_H2_STATUS = re.compile(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx")


def parse_h2load(output: str, log_file: Path, measured_seconds: float | None) -> LoadResult:
    """h2load's summary for counts, its per-request log for exact latency percentiles."""
    requests = _H2_REQUESTS.search(output)
    statuses = _H2_STATUS.search(output)
    finished = _H2_FINISHED.search(output)
    if requests is None or statuses is None or finished is None:
        raise LoadError(f"cannot read h2load's summary:\n{output[-2000:]}")
    succeeded = int(requests.group(4))
    failed = sum(int(requests.group(n)) for n in (5, 6, 7))
    bad = sum(int(statuses.group(n)) for n in (2, 3, 4))
    latencies: list[int] = []
    for line in log_file.read_text().splitlines():
        _, status, micros = line.split("\t")[:3]
        if status == "200":
            latencies.append(int(micros))
    if measured_seconds is None:  # a fixed request count: h2load's own clock
        value, unit = float(finished.group(1)), finished.group(2)
        measured_seconds = value / 1000 if unit == "ms" else value
    return LoadResult(
        "h2load",
        succeeded,
        measured_seconds,
        failed=failed,
        bad_status=bad,
        latencies_us=latencies,
    )


async def h2load(
    url: str,
    body: Path,
    *,
    clients: int,
    streams: int,
    workdir: Path,
    duration: float | None = None,
    warmup: float = 0.0,
    requests: int | None = None,
    cpus: Sequence[int] | None = None,
    headers: Sequence[str] = (),
) -> LoadResult:
    """gRPC unary calls with one pre-framed body: `clients` connections x `streams` each.

    `headers` ("name: value") go with every call besides gRPC's own, e.g. a caller key.
    """
    log_file = workdir / "h2load.log"
    log_file.unlink(missing_ok=True)
    argv = ["h2load", "-t", "1", "-c", str(clients), "-m", str(streams), "-d", str(body)]
    for header in (*GRPC_HEADERS, *headers):
        argv += ["-H", header]
    if duration is not None:
        argv += ["-D", f"{int(duration * 1000)}ms"]
        if warmup > 0:
            argv += ["--warm-up-time", f"{int(warmup * 1000)}ms"]
    else:
        argv += ["-n", str(requests)]
    argv += ["--log-file", str(log_file), url]
    timeout = (duration or 0) + warmup + (requests or 0) / 500 + 60
    output = await _run(_pinned(argv, cpus), timeout)
    return parse_h2load(output, log_file, duration)


_WRK_SCRIPT = r"""-- Written by bench/loadgen.py: optional single-use bodies, a JSON summary.
local bodies = nil
local next_body = 1
local path, content_type, cycle = nil, nil, false
exhausted = false

init = function(args)
  if args[1] ~= nil then
    path, content_type, cycle = args[2], args[3], args[4] == "cycle"
    bodies = {}
    for line in io.lines(args[1]) do bodies[#bodies + 1] = line end
  end
end

request = function()
  if bodies == nil then return wrk.format() end
  if cycle and next_body > #bodies then next_body = 1 end
  local body = bodies[next_body]
  if body == nil then
    -- Out of single-use bodies: stop rather than send a used one and count errors.
    exhausted = true
    wrk.thread:stop()
    body = bodies[#bodies]
  end
  next_body = next_body + 1
  return wrk.format("POST", path, {["Content-Type"] = content_type}, body)
end

local threads = {}
setup = function(thread) table.insert(threads, thread) end

done = function(summary, latency, requests)
  local any_exhausted = false
  for _, thread in ipairs(threads) do
    if thread:get("exhausted") then any_exhausted = true end
  end
  local e = summary.errors
  local q = {}
  for i = 1, QUANTILES do
    q[#q + 1] = string.format("%.0f", latency:percentile((i - 0.5) * 100 / QUANTILES))
  end
  io.write(string.format(
    'WRK_JSON {"requests":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,' ..
    '"status":%d,"timeout":%d,"exhausted":%s,"quantiles_us":[%s]}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    tostring(any_exhausted), table.concat(q, ",")))
end
""".replace("QUANTILES", str(WRK_QUANTILES))


def write_wrk_script(workdir: Path) -> Path:
    """The one wrk script every HTTP run uses, baselines included."""
    path = workdir / "bench.lua"
    path.write_text(_WRK_SCRIPT)
    return path


def parse_wrk(output: str) -> LoadResult:
    """The JSON line our done() hook prints."""
    for line in output.splitlines():
        if line.startswith("WRK_JSON "):
            raw = json.loads(line.removeprefix("WRK_JSON "))
            break
    else:
        raise LoadError(f"wrk printed no summary:\n{output[-2000:]}")
    quantiles = [float(value) for value in raw["quantiles_us"]]
    failed = raw["connect"] + raw["read"] + raw["write"] + raw["timeout"]
    bad = raw["status"]
    return LoadResult(
        "wrk",
        raw["requests"] - bad,
        raw["duration_us"] / 1_000_000,
        failed=failed,
        bad_status=bad,
        exhausted=raw["exhausted"],
        quantiles_us=quantiles,
    )


async def wrk(
    url: str,
    script: Path,
    *,
    connections: int,
    duration: float,
    headers: Sequence[str] = (),
    bodies: Path | None = None,
    path: str = "",
    content_type: str = "application/json",
    cycle: bool = False,
    cpus: Sequence[int] | None = None,
) -> LoadResult:
    """HTTP/1.1 keep-alive load: `connections` requests in flight, one wrk thread.

    With `bodies` (one request body per line) each request POSTs the next line, each line
    once (single-use codes) or, with `cycle`, round and round (a baseline that ignores them).
    """
    seconds = max(1, math.ceil(duration))  # wrk takes whole seconds only
    argv = ["wrk", "-t", "1", "-c", str(connections), "-d", f"{seconds}s", "--timeout", "10s"]
    argv += ["-s", str(script)]
    for header in headers:
        argv += ["-H", header]
    argv.append(url)
    if bodies is not None:
        argv += ["--", str(bodies), path, content_type, "cycle" if cycle else "once"]
    output = await _run(_pinned(argv, cpus), seconds + 60)
    return parse_wrk(output)


async def driver(
    target: str,
    path: str,
    bodies: Path,
    *,
    channels: int,
    streams: int,
    duration: float,
    warmup: float,
    cpus: Sequence[int] | None = None,
    headers: Sequence[str] = (),
) -> LoadResult:
    """bench.driver: one distinct body per call, every response's status checked."""
    argv = [sys.executable, "-m", "bench.driver", "--target", target, "--path", path]
    for header in headers:
        argv += ["--header", header]
    argv += ["--bodies", str(bodies), "--channels", str(channels), "--streams", str(streams)]
    argv += ["--duration", str(duration), "--warmup", str(warmup)]
    output = await _run(_pinned(argv, cpus), duration + warmup + 60)
    raw = json.loads(output.strip().splitlines()[-1])
    errors: dict[str, int] = raw["errors"]
    return LoadResult(
        "bench.driver",
        raw["ok"],
        raw["seconds"],
        bad_status=sum(errors.values()),
        exhausted=raw["exhausted"],
        window_end=raw["window_end"],
        detail={"grpc_errors": errors} if errors else {},
        latencies_us=raw["latencies_us"],
    )
