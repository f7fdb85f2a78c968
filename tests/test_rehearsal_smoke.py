"""`python -m bench.rehearsal --smoke`: the production rehearsal end to end, short, on loopback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

PHASES = ["warmup", "service_sigkill", "rolling_restart", "primary_sigkill"]
TARGETS = {"tokens_lost", "rolling_idempotent", "rolling_logins", "healthy"}


def _processes_under(path: Path) -> list[str]:
    """Command lines of live processes that name `path` (mongod's --dbpath, logs, ...)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # gone meanwhile
        if str(path) in cmdline:
            found.append(cmdline)
    return found


def test_smoke_rehearsal_loses_no_token_and_leaves_nothing_running(tmp_path: Path) -> None:
    """Every phase runs under load through HAProxy; no acknowledged token is lost; all stop."""
    root = Path(__file__).resolve().parents[1]
    workdir = tmp_path / "work"
    command = [
        "-m",
        "bench.rehearsal",
        "--smoke",
        "--out",
        str(tmp_path),
        "--workdir",
        str(workdir),
    ]
    run = subprocess.run(
        [sys.executable, *command],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        timeout=420,
        check=False,
    )
    assert run.returncode == 0, f"rehearsal failed:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    assert _processes_under(workdir) == []

    results = json.loads((tmp_path / "rehearsal.json").read_text())
    phases = results["phases"]
    assert [phase["phase"] for phase in phases] == PHASES
    for phase in phases:
        assert phase["requests"]["login"] > 0, phase["phase"]
        assert phase["requests"]["http_session"] > 0, phase["phase"]
        assert phase["tokens_lost"] == 0, phase["phase"]
    rolling = phases[2]
    assert len([event for event in rolling["events"] if "SIGTERMed" in event]) == 4
    assert results["verification"]["checked"] == sum(p["tokens_issued"] for p in phases) > 0
    targets = {checked["key"]: checked for checked in results["targets"]}
    assert set(targets) == TARGETS
    assert targets["tokens_lost"]["result"] == "PASS"
    assert targets["healthy"]["result"] == "PASS", rolling["events"]
    assert all(checked["result"] in {"PASS", "MISS"} for checked in targets.values())
