"""`python -m bench [--smoke] [--out DIR] [--profile]`: run the benchmarks, write the results."""

from __future__ import annotations

import os

# The bench forks load generators from a process that also runs gRPC clients; grpc's
# fork handlers would only log that they are skipped. Must be set before grpc loads.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import argparse
import asyncio
import sys
from dataclasses import replace
from pathlib import Path

from bench import report
from bench.loadgen import ToolMissing
from bench.plan import FULL, SMOKE, Plan
from bench.run import finish, new_workdir, run, run_workers

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def _log(line: str) -> None:
    print(line, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--smoke", action="store_true", help="seconds per scenario; results go to a temp dir"
    )
    parser.add_argument("--out", type=Path, help="results dir (default: bench/results)")
    parser.add_argument(
        "--profile", action="store_true", help="also run each scenario once under py-spy"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work dir (logs, bodies)")
    parser.add_argument(
        "--only",
        choices=["workers"],
        help="run just this scenario and print its figures (no results written)",
    )
    args = parser.parse_args(argv)
    if args.only == "workers":
        return _workers_only(SMOKE if args.smoke else FULL, keep=args.keep)

    plan = replace(SMOKE if args.smoke else FULL, profile=args.profile)
    out = args.out or (new_workdir() / "results" if args.smoke else RESULTS)
    workdir = new_workdir()
    try:
        results = asyncio.run(run(plan, workdir, _log))
    except ToolMissing as error:
        print(f"bench: {error}", file=sys.stderr)
        return 2
    except BaseException:
        print(f"bench: failed; logs kept in {workdir}", file=sys.stderr)
        raise
    paths = report.write(results, out)
    if out.resolve() == RESULTS and not args.smoke:
        # Both READMEs show the latest tables: bench/'s with the method, the top one
        # in its Performance section.
        for readme in (HERE / "README.md", HERE.parent / "README.md"):
            report.update_readme(readme, results)

    print()
    print(report.markdown(results))
    for target in results["targets"]:
        print(f"{target['result']:<4}  {target['text']}  ({report.target_value(target)})")
    print(f"\nresults: {paths['json']}, {paths['markdown']}, {paths['chart']}")
    return finish(workdir, results["problems"], tool="bench", keep=args.keep)


def _workers_only(plan: Plan, *, keep: bool) -> int:
    """1 process against WXLOGIN_WORKERS=2 on the same load; prints the ratio."""
    workdir = new_workdir()
    try:
        results = asyncio.run(run_workers(plan, workdir, _log))
    except ToolMissing as error:
        print(f"bench: {error}", file=sys.stderr)
        return 2
    print()
    print(report.workers_table(results["workers"]))
    return finish(workdir, results["problems"], tool="bench", keep=keep)


if __name__ == "__main__":
    sys.exit(main())
