"""A small gRPC load driver for requests that must each carry a different body (Login codes).

h2load sends one `-d` body for every request, and a wx.login() code is single use, so
Login with fresh codes cannot be driven by h2load over kept-alive connections (see
bench/README.md). This driver sends pre-encoded protobuf bytes (no protobuf work on the
client) over `channels` separate connections with `streams` calls in flight on each, and
checks the status of *every* response. It runs as its own process, pinned to the load
generator's core like h2load, and prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

import grpc

from bench.stats import percentiles_ms


async def _worker(
    call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes],
    bodies: Iterator[bytes],
    measure_from: float,
    stop_at: float,
    latencies_us: list[int],
    outcomes: Counter[str],
    metadata: Sequence[tuple[str, str]],
) -> None:
    for body in bodies:
        started = time.monotonic()
        if started >= stop_at:
            return
        try:
            await call(body, timeout=30, metadata=metadata)
            outcome = "OK"
        except grpc.aio.AioRpcError as error:
            outcome = error.code().name
        finished = time.monotonic()
        if started >= measure_from:
            latencies_us.append(int((finished - started) * 1_000_000))
            outcomes[outcome] += 1


async def drive(
    target: str,
    path: str,
    bodies: list[bytes],
    *,
    channels: int,
    streams: int,
    duration: float,
    warmup: float,
    metadata: Sequence[tuple[str, str]] = (),
) -> dict[str, object]:
    """Send each body once, `channels * streams` at a time, until done or out of time."""
    opened = [
        # A local subchannel pool gives each channel its own TCP connection, like h2load -c.
        grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(channels)
    ]
    try:
        for channel in opened:
            await channel.channel_ready()
        shared = iter(bodies)  # one iterator: no body is ever sent twice
        latencies_us: list[int] = []
        outcomes: Counter[str] = Counter()
        start = time.monotonic()
        measure_from = start + warmup
        stop_at = measure_from + duration
        await asyncio.gather(
            *(
                _worker(
                    channel.unary_unary(path),
                    shared,
                    measure_from,
                    stop_at,
                    latencies_us,
                    outcomes,
                    metadata,
                )
                for channel in opened
                for _ in range(streams)
            )
        )
        ended = time.monotonic()
    finally:
        for channel in opened:
            await channel.close()
    measured = max(min(ended, stop_at) - measure_from, 1e-9)
    count = len(latencies_us)
    return {
        "requests": count,
        "seconds": measured,
        "rps": count / measured,
        **percentiles_ms(latencies_us),
        "ok": outcomes.get("OK", 0),
        "errors": {code: n for code, n in outcomes.items() if code != "OK"},
        "exhausted": ended < stop_at,
        "window_end": min(ended, stop_at),  # CLOCK_MONOTONIC: comparable across processes
        "latencies_us": latencies_us,
    }


def read_bodies(path: Path) -> list[bytes]:
    """Bodies stored as <4-byte big-endian length><protobuf bytes>, one after another."""
    data = path.read_bytes()
    bodies: list[bytes] = []
    offset = 0
    while offset < len(data):
        length = int.from_bytes(data[offset : offset + 4], "big")
        bodies.append(data[offset + 4 : offset + 4 + length])
        offset += 4 + length
    return bodies


def write_bodies(path: Path, bodies: list[bytes]) -> Path:
    """The inverse of read_bodies."""
    path.write_bytes(b"".join(len(body).to_bytes(4, "big") + body for body in bodies))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.driver")
    parser.add_argument("--target", required=True, help="HOST:PORT")
    parser.add_argument("--path", required=True, help="/package.Service/Method")
    parser.add_argument("--bodies", type=Path, required=True)
    parser.add_argument("--channels", type=int, default=16)
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--duration", type=float, required=True)
    parser.add_argument("--warmup", type=float, default=0.0)
    parser.add_argument(
        "--header", action="append", default=[], help="NAME: VALUE with every call (a caller key)"
    )
    args = parser.parse_args(argv)
    result = asyncio.run(
        drive(
            args.target,
            args.path,
            read_bodies(args.bodies),
            channels=args.channels,
            streams=args.streams,
            duration=args.duration,
            warmup=args.warmup,
            metadata=[tuple(h.split(": ", 1)) for h in args.header],  # type: ignore[misc]
        )
    )
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
