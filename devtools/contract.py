"""`make contract`: buf lints the proto and checks it against the proto this commit started from.

The revision compared against, unless `--against REV` names one:

    on a branch                  git merge-base HEAD main (origin/main when there is no main):
                                 everything the branch changed, uncommitted edits included
    on main itself (CI's clone)  HEAD~1: what the last commit (a merge: the whole branch) changed
    no earlier commit            HEAD (a shallow or one-commit clone): only uncommitted edits
    no commit at all             nothing to compare (not a git checkout): says so; lint still runs

The proto at that revision is taken with `git archive` into a temporary directory,
so worktrees and clones without a remote work alike. Exit status: buf's first
failure, else 0.
"""

from __future__ import annotations

import argparse
import io
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Sequence
from pathlib import Path

PROTO_ROOT = "protos"
# CI clones main itself; a developer's clone may know it only as the remote's.
MAIN_BRANCHES = ("main", "origin/main")


def _git(repo: Path, *args: str) -> str | None:
    """A git command's stdout (stripped), or None when git fails or is not there."""
    git = shutil.which("git")
    if git is None:
        return None
    done = subprocess.run(
        [git, "-C", str(repo), *args], capture_output=True, text=True, check=False
    )
    return done.stdout.strip() if done.returncode == 0 else None


def base_revision(repo: Path) -> str | None:
    """The commit whose proto this checkout must stay compatible with; None when there is none."""
    head = _git(repo, "rev-parse", "--verify", "--quiet", "HEAD^{commit}")
    if head is None:
        return None
    base = None
    for branch in MAIN_BRANCHES:
        base = _git(repo, "merge-base", "HEAD", branch)
        if base is not None:
            break
    if base is None or base == head:
        # On main (or a branch not ahead of it): the previous commit. A one-commit
        # or shallow clone has none: then HEAD, so uncommitted edits still count.
        base = _git(repo, "rev-parse", "--verify", "--quiet", "HEAD~1^{commit}") or head
    return base


def export_protos(repo: Path, revision: str, into: Path) -> bool:
    """Write `protos/` as it was at `revision` under `into`; False when it did not exist then."""
    git = shutil.which("git")
    if git is None:
        return False
    done = subprocess.run(
        [git, "-C", str(repo), "archive", "--format=tar", revision, PROTO_ROOT],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        return False
    with tarfile.open(fileobj=io.BytesIO(done.stdout)) as archive:
        # Our own repository's files; the filter still refuses links out of `into`.
        archive.extractall(into, filter="data")
    return any((into / PROTO_ROOT).rglob("*.proto"))


def _run(argv: Sequence[str], repo: Path) -> int:
    print("+ " + " ".join(argv), flush=True)
    return subprocess.run(list(argv), cwd=repo, check=False).returncode


def check(repo: Path, buf: str, against: str | None = None) -> int:
    """buf lint, then buf breaking against `against` (or `base_revision`); 0 when both pass."""
    status = _run([buf, "lint"], repo)
    revision = against or base_revision(repo)
    if revision is None:
        print("buf breaking: not a git checkout with a commit; nothing to compare with, skipped")
        return status
    with tempfile.TemporaryDirectory(prefix="wxlogin-contract-") as scratch:
        if not export_protos(repo, revision, Path(scratch)):
            if against is not None:
                print(f"buf breaking: no {PROTO_ROOT}/ at {against}", file=sys.stderr)
                return status or 1
            print(f"buf breaking: no {PROTO_ROOT}/ at {revision[:12]} yet; nothing to compare")
            return status
        print(f"buf breaking: against {PROTO_ROOT}/ at {revision[:12]}", flush=True)
        # The module is the working tree's protos/ (uncommitted edits count), under
        # the rules of the working tree's buf.yaml.
        breaking = _run(
            [buf, "breaking", PROTO_ROOT, "--against", str(Path(scratch) / PROTO_ROOT)], repo
        )
    return status or breaking


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: `python -m devtools.contract --buf node_modules/.bin/buf [--against REV]`."""
    parser = argparse.ArgumentParser(prog="python -m devtools.contract", description=__doc__)
    parser.add_argument("--buf", default="node_modules/.bin/buf", help="the buf executable")
    parser.add_argument("--against", help="a git revision to compare with instead")
    parser.add_argument("--repo", type=Path, default=Path.cwd(), help="the checkout (default: .)")
    args = parser.parse_args(argv)
    buf = shutil.which(args.buf) or str(Path(args.buf).resolve())
    if not Path(buf).is_file():
        parser.error(f"no buf at {args.buf}: `make buf` installs it")
    return check(args.repo.resolve(), buf, args.against)


if __name__ == "__main__":
    sys.exit(main())
