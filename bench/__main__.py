"""`python -m bench [--smoke] [--out DIR] [--profile] [--only KEYS]`: run the benchmarks."""

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
from bench.plan import FULL, SMOKE
from bench.run import KEYS, finish, new_workdir, parse_only, run

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
        type=parse_only,
        default=(),
        metavar="KEY[,KEY]",
        help="just these scenarios (e.g. edge_session); results go to a temp dir. "
        f"Keys: {', '.join(KEYS)}",
    )
    args = parser.parse_args(argv)
    plan = replace(SMOKE if args.smoke else FULL, profile=args.profile, only=args.only)
    # A partial run never replaces the committed results.
    out = args.out or (new_workdir() / "results" if args.smoke or args.only else RESULTS)
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
    if out.resolve() == RESULTS and not args.smoke and not args.only:
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


if __name__ == "__main__":
    sys.exit(main())
