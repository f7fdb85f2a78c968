"""`python -m bench.chaos --smoke` runs every fault scenario end to end with sane figures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

SCENARIOS = {"wechat_chaos", "mongod_kill", "primary_kill", "malformed", "soak"}
FIGURES = {
    "wechat_chaos": {
        "calls",
        "succeeded_share",
        "p50_ms",
        "p99_ms",
        "failures",
        "wechat_faults",
        "users",
    },
    "mongod_kill": {"tokens_issued", "tokens_lost", "recovery_s", "outage_failures"},
    "primary_kill": {"tokens_issued", "tokens_lost", "election_s", "longest_gap_s"},
    "malformed": {"http", "grpc", "logs", "healthy_after"},
    "soak": {"calls", "failed", "start", "end"},
}


def _check_ran(entry: dict[str, Any]) -> None:
    key = entry["key"]
    assert FIGURES[key] <= set(entry["figures"]), key
    assert entry["targets"], key
    for checked in entry["targets"]:
        assert checked["result"] in {"PASS", "MISS"}, (key, checked)
        assert isinstance(checked["value"], int | float), (key, checked)


def test_smoke_run_reports_every_scenario(tmp_path: Path) -> None:
    """Every scenario runs, each target is judged, and the figures are plausible."""
    root = Path(__file__).resolve().parents[1]
    run = subprocess.run(
        [sys.executable, "-m", "bench.chaos", "--smoke", "--out", str(tmp_path)],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert run.returncode == 0, f"chaos --smoke failed:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"

    results = json.loads((tmp_path / "reliability.json").read_text())
    by_key = {entry["key"]: entry for entry in results["scenarios"]}
    assert set(by_key) == SCENARIOS
    assert results["meta"]["leftover_processes"] == 0
    for entry in by_key.values():
        assert entry["status"] == "ran", (entry["key"], entry.get("error"))
        _check_ran(entry)

    wechat = by_key["wechat_chaos"]["figures"]
    assert wechat["calls"] > 0
    assert 0 < wechat["succeeded_share"] <= 1
    assert 0 < wechat["p50_ms"] <= wechat["p99_ms"]
    assert sum(wechat["wechat_faults"].values()) > 0  # the emulator did inject faults
    users = wechat["users"]  # the mini-program sample under Node, through the edge
    assert users["users"] > 0
    assert 0 <= users["logged_in_in_time"] <= users["logged_in_at_all"] <= users["users"]
    assert sum(users["wx_login_per_user"].values()) == users["users"] - users["failures"].get(
        "UNFINISHED", 0
    )

    for key in ("mongod_kill", "primary_kill"):
        outage = by_key[key]["figures"]
        assert outage["tokens_issued"] > 0, key
        assert 0 <= outage["tokens_lost"] <= outage["tokens_issued"], key
    assert by_key["primary_kill"]["figures"]["election_s"] > 0

    malformed = by_key["malformed"]["figures"]
    assert malformed["http"]["sent"] == sum(malformed["http"]["by_status"].values()) > 0
    assert malformed["grpc"]["sent"] == sum(malformed["grpc"]["by_code"].values()) > 0
    assert all(size > 0 for size in malformed["logs"]["log_bytes"].values())

    soak = by_key["soak"]["figures"]
    assert soak["calls"] > 0
    for name in ("service-1", "edge"):
        assert soak["start"][name]["rss_mib"] > 0
        assert soak["end"][name]["fds"] > 0
    assert "| Scenario | Target | Measured | Result |" in run.stdout
