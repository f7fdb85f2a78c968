"""The contract check (`make contract`): buf lint, and buf breaking that really catches breaks.

Each test builds a throw-away git repository holding a copy of buf.yaml and
protos/, changes the proto the way a careless commit would, and runs the same
`python -m devtools.contract` that `make check` runs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from devtools.contract import base_revision

ROOT = Path(__file__).resolve().parents[1]
BUF = ROOT / "node_modules" / ".bin" / "buf"
PROTO = Path("protos/wxlogin/v1/auth.proto")
GIT_ENV = {
    "GIT_AUTHOR_NAME": "test",
    "GIT_AUTHOR_EMAIL": "test@example.invalid",
    "GIT_COMMITTER_NAME": "test",
    "GIT_COMMITTER_EMAIL": "test@example.invalid",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_CONFIG_SYSTEM": os.devnull,
}


@pytest.fixture(scope="module")
def buf() -> Path:
    """The buf that `make buf` installs (failing, not skipping, when it is missing)."""
    if not BUF.exists():
        pytest.fail(f"{BUF} is missing: `make buf` installs it (make pytest does)")
    return BUF


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(repo), *args],  # noqa: S607 - git from PATH, as a developer runs it
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **GIT_ENV},
    )
    return done.stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A repository on `main` with one commit: this checkout's buf.yaml and protos/."""
    made = tmp_path / "repo"
    shutil.copytree(ROOT / "protos", made / "protos")
    shutil.copy(ROOT / "buf.yaml", made / "buf.yaml")
    git(made, "init", "--quiet", "--initial-branch=main")
    git(made, "add", ".")
    git(made, "commit", "--quiet", "-m", "the contract")
    return made


def edit(repo: Path, old: str, new: str) -> None:
    path = repo / PROTO
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new, 1))


def commit(repo: Path, message: str) -> None:
    git(repo, "commit", "--quiet", "-am", message)


def contract(repo: Path, buf: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "devtools.contract", "--buf", str(buf), "--repo", str(repo), *args],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
        timeout=120,
    )


def test_the_repository_proto_passes_lint_and_breaking(buf: Path) -> None:
    """This checkout's proto passes buf lint and buf breaking against its merge base."""
    done = contract(ROOT, buf)
    assert done.returncode == 0, done.stdout + done.stderr


BREAKS = {
    "a renamed field": ("string openid = 3;", "string open_id = 3;", "open_id"),
    "a renumbered field": ("string openid = 3;", "string openid = 6;", '"openid"'),
    "a changed type": ("int32 revoked = 1;", "int64 revoked = 1;", "int64"),
    "a deleted field": ("  string unionid = 4;\n", "", '"4"'),
    "a renamed RPC": ("rpc CheckSession(", "rpc ValidateSession(", "CheckSession"),
}


@pytest.mark.parametrize("change", sorted(BREAKS))
def test_a_branch_that_breaks_the_contract_fails(repo: Path, buf: Path, change: str) -> None:
    """On a branch, a break against the merge base with main fails and names what broke."""
    old, new, named = BREAKS[change]
    git(repo, "checkout", "--quiet", "-b", "feature")
    edit(repo, old, new)
    commit(repo, change)
    done = contract(repo, buf)
    assert done.returncode != 0, done.stdout
    assert named in done.stdout + done.stderr


def test_an_uncommitted_break_fails_too(repo: Path, buf: Path) -> None:
    """The working tree is what is checked: an edit not yet committed is caught before review."""
    git(repo, "checkout", "--quiet", "-b", "feature")
    edit(repo, "string token = 1;", "string login_token = 1;")
    done = contract(repo, buf)
    assert done.returncode != 0, done.stdout
    assert "login_token" in done.stdout


def test_adding_a_field_and_an_rpc_passes(repo: Path, buf: Path) -> None:
    """Additions are what the contract allows: a new field and a new RPC pass both checks."""
    git(repo, "checkout", "--quiet", "-b", "feature")
    edit(repo, "  string account_id = 5;\n", "  string account_id = 5;\n  string nickname = 6;\n")
    edit(
        repo,
        "service AuthService {\n",
        "service AuthService {\n  rpc Ping(PingRequest) returns (PingResponse);\n",
    )
    (repo / PROTO).write_text(
        (repo / PROTO).read_text() + "\nmessage PingRequest {}\n\nmessage PingResponse {}\n"
    )
    commit(repo, "additions")
    done = contract(repo, buf)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "against protos/ at" in done.stdout


def test_on_main_the_last_commit_is_checked(repo: Path, buf: Path) -> None:
    """CI's clone of main compares with HEAD~1: a break in main's last commit fails."""
    edit(repo, "string openid = 3;", "string open_id = 3;")
    commit(repo, "a break straight on main")
    assert base_revision(repo) == git(repo, "rev-parse", "HEAD~1")
    done = contract(repo, buf)
    assert done.returncode != 0, done.stdout
    assert "open_id" in done.stdout


def test_a_one_commit_clone_compares_with_head_and_lints(repo: Path, buf: Path) -> None:
    """With no earlier commit (a shallow clone) HEAD is the base; lint failures still fail."""
    assert base_revision(repo) == git(repo, "rev-parse", "HEAD")
    done = contract(repo, buf)
    assert done.returncode == 0, done.stdout + done.stderr
    edit(repo, "  string account_id = 5;\n", "  string account_id = 5;\n  string nickName = 6;\n")
    linted = contract(repo, buf)
    assert linted.returncode != 0
    assert "nickName" in linted.stdout


def test_outside_git_only_lint_runs(tmp_path: Path, buf: Path) -> None:
    """A copy without .git (a tarball) cannot be compared: it says so, and lint still runs."""
    shutil.copytree(ROOT / "protos", tmp_path / "protos")
    shutil.copy(ROOT / "buf.yaml", tmp_path / "buf.yaml")
    assert base_revision(tmp_path) is None
    done = contract(tmp_path, buf)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "not a git checkout" in done.stdout
    assert "buf lint" in done.stdout


def test_a_proto_new_since_the_base_is_not_a_break(repo: Path, buf: Path) -> None:
    """A base commit without protos/ (the contract's first commit) has nothing to break."""
    git(repo, "rm", "--quiet", "-r", "protos")
    commit(repo, "before the contract")
    git(repo, "checkout", "--quiet", "-b", "feature")
    git(repo, "checkout", "--quiet", "HEAD~1", "--", "protos")
    commit(repo, "the contract arrives")
    done = contract(repo, buf)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "nothing to compare" in done.stdout


def test_an_explicit_revision_is_compared_with(repo: Path, buf: Path) -> None:
    """`--against REV` overrides the merge base; an unknown revision fails clearly."""
    edit(repo, "string openid = 3;", "string open_id = 3;")
    commit(repo, "break")
    edit(repo, "string open_id = 3;", "string openid = 3;")
    commit(repo, "and back")
    # Against HEAD~1 (which had open_id) going back is itself a rename...
    assert contract(repo, buf).returncode != 0
    # ...against the first commit nothing changed.
    first = git(repo, "rev-list", "--max-parents=0", "HEAD")
    assert contract(repo, buf, "--against", first).returncode == 0
    unknown = contract(repo, buf, "--against", "no-such-revision")
    assert unknown.returncode != 0
    assert "no protos/ at no-such-revision" in unknown.stderr
