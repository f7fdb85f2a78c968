"""`python -m bench.chaos [--smoke] [--out DIR] [--only KEY,...]`: reliability under faults."""

from __future__ import annotations

import os

# The stacks' children are spawned from a process that also runs gRPC clients; grpc's
# fork handlers would only log that they are skipped. Must be set before grpc loads.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

from bench.chaos import report
from bench.chaos.plan import FULL, SMOKE
from bench.chaos.run import KEYS, run
from bench.run import finish

BENCH = Path(__file__).resolve().parent.parent
RESULTS = BENCH / "results"
README = BENCH.parent / "README.md"
RESULTS_FILE = "reliability.json"


_STARTED = time.monotonic()


def _log(line: str) -> None:
    print(f"[{time.monotonic() - _STARTED:5.0f} s] {line}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.chaos", description=__doc__)
    parser.add_argument(
        "--smoke", action="store_true", help="seconds per scenario; results go to a temp dir"
    )
    parser.add_argument("--out", type=Path, help=f"results dir (default: {RESULTS})")
    parser.add_argument("--only", help=f"comma-separated scenarios of: {', '.join(KEYS)}")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs, data)")
    args = parser.parse_args(argv)
    only = [key for key in (args.only or "").split(",") if key]
    unknown = sorted(set(only) - set(KEYS))
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(unknown)}")

    plan = SMOKE if args.smoke else FULL
    workdir = Path(tempfile.mkdtemp(prefix="wxlogin-chaos-"))
    if args.out is not None:
        out: Path = args.out
    else:
        out = Path(tempfile.mkdtemp(prefix="wxlogin-chaos-results-")) if args.smoke else RESULTS
    try:
        results = asyncio.run(run(plan, workdir, _log, only))
    except BaseException:
        print(f"chaos: could not run; logs kept in {workdir}", file=sys.stderr)
        raise
    out.mkdir(parents=True, exist_ok=True)
    path = out / RESULTS_FILE
    path.write_text(json.dumps(results, indent=2) + "\n")
    table = report.markdown(results)
    # Only a full run of every scenario into bench/results speaks for the README.
    if out.resolve() == RESULTS and not args.smoke and not only:
        report.update_readme(README, results)

    print()
    print(table)
    print(f"results: {path}")
    # A scenario that could not run at all fails the run; a missed target does not.
    errors = [f"{s['key']}: {s['error']}" for s in results["scenarios"] if s["status"] == "error"]
    return finish(workdir, errors, tool="chaos", keep=args.keep)


if __name__ == "__main__":
    sys.exit(main())
