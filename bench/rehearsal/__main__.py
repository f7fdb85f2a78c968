"""`python -m bench.rehearsal [--smoke] [--out DIR] [--keep]`: the production rehearsal."""

from __future__ import annotations

import os

# The stack's children are spawned from a process that also runs gRPC clients; grpc's fork
# handlers would only log that they are skipped. Must be set before grpc loads.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

from bench.rehearsal import report
from bench.rehearsal.plan import FULL, SMOKE
from bench.rehearsal.run import rehearse
from bench.run import finish

BENCH = Path(__file__).resolve().parent.parent
RESULTS = BENCH / "results"
README = BENCH.parent / "README.md"
RESULTS_FILE = "rehearsal.json"

_STARTED = time.monotonic()


def _log(line: str) -> None:
    print(f"[{time.monotonic() - _STARTED:5.0f} s] {line}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.rehearsal", description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="a short run; results to a temp dir")
    parser.add_argument("--out", type=Path, help=f"results dir (default: {RESULTS})")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs, data)")
    parser.add_argument("--workdir", type=Path, help="work dir (default: a new temp dir)")
    parser.add_argument("--note", default="", help="how it was measured, for the README table")
    args = parser.parse_args(argv)
    plan = SMOKE if args.smoke else FULL
    workdir: Path = args.workdir or Path(tempfile.mkdtemp(prefix="wxlogin-rehearsal-"))
    workdir.mkdir(parents=True, exist_ok=True)
    if args.out is not None:
        out: Path = args.out
    else:
        out = Path(tempfile.mkdtemp(prefix="wxlogin-rehearsal-results-")) if args.smoke else RESULTS
    try:
        results = asyncio.run(asyncio.wait_for(rehearse(plan, workdir, _log), plan.timeout))
    except BaseException:
        print(f"rehearsal: could not run; logs kept in {workdir}/logs", file=sys.stderr)
        raise
    out.mkdir(parents=True, exist_ok=True)
    path = out / RESULTS_FILE
    path.write_text(json.dumps(results, indent=2) + "\n")
    # Only a full run into bench/results speaks for the README.
    if out.resolve() == RESULTS and not args.smoke:
        meta = results["meta"]
        cpus = meta["machine"].get("cores", os.cpu_count())
        note = args.note or (
            f"Last full run: {meta['started']}, {meta['wall_seconds']} s, on {cpus} CPUs "
            f"shared with other work (1-minute load {meta['load_average'][0]} before, "
            f"{meta['load_average'][1]} after): figures taken under CPU contention."
        )
        report.update_readme(README, results, note)
    print()
    print(report.markdown(results))
    print(f"results: {path}")
    return finish(workdir, [], tool="rehearsal", keep=args.keep)


if __name__ == "__main__":
    sys.exit(main())
