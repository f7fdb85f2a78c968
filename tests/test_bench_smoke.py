"""`python -m bench --smoke` still runs end to end, so the benchmarks cannot silently rot."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from bench.plan import SMOKE
from bench.run import parse_only
from bench.targets import TARGETS, evaluate

SCENARIOS = {
    "check_valid",
    "check_unknown",
    "check_uvloop_bare",
    "check_caller",
    "check_metrics",
    "check_fixed_expiry",
    "check_asyncio_loop",
    "decrypt",
    "login",
    "edge_session",
    "edge_login",
    "access_token",
    "phone_number",
}


def test_smoke_run_produces_sane_numbers(tmp_path: Path) -> None:
    """Every scenario and baseline answers, sampled real-client checks see no error."""
    missing = [tool for tool in ("h2load", "wrk") if shutil.which(tool) is None]
    if missing:
        pytest.fail(
            f"{' and '.join(missing)} not installed: the bench needs them "
            "(apt-get update && apt-get install -y nghttp2-client wrk, or `make bench` once)"
        )
    root = Path(__file__).resolve().parents[1]
    run = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--out", str(tmp_path)],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        # ~60 s alone; a busy shared 2-core machine under coverage can triple that.
        timeout=360,
        check=False,
    )
    assert run.returncode == 0, f"bench --smoke failed:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"

    results = json.loads((tmp_path / "latest.json").read_text())
    assert not results["problems"]
    by_key = {scenario["key"]: scenario for scenario in results["scenarios"]}
    assert set(by_key) == SCENARIOS
    for key, scenario in by_key.items():
        assert scenario["subject"]["rps"] > 0, key
        assert scenario["baseline"]["rps"] > 0, key
        assert scenario["ratio"] > 0, key
        assert scenario["check"]["sampled"] > 0, key
        assert scenario["check"]["errors"] == 0, (key, scenario["check"]["first_error"])
        assert scenario["baseline_check"]["errors"] == 0, key
        assert 0 < scenario["subject"]["p50_ms"] <= scenario["subject"]["p99_ms"], key
    costs = {cost["key"]: cost for cost in results["side_by_side"]}
    assert set(costs) == {
        "control",
        "edge_vs_bare",
        "caller_cost",
        "caller_vs_bare",
        "metrics_cost",
        "renewal_cost",
        "loop_gain",
    }
    for key, cost in costs.items():
        assert cost["ratio"] > 0, key
        assert all(rate > 0 for rate in cost["requests_per_cpu_second"].values()), key
    assert results["rss"]["rss_after_first_mib"] > 0
    assert results["scaling"]["processes_1"]["rps"] > 0
    assert results["scaling"]["processes_2"]["rps"] > 0
    assert results["workers"]["processes_1"]["rps"] > 0
    assert len(results["workers"]["processes_2"]["processes"]) == 2  # both workers measured
    assert results["workers"]["ratio"] > 0
    assert {target["result"] for target in results["targets"]} <= {"PASS", "MISS"}
    assert len(results["targets"]) == len(TARGETS)
    assert (tmp_path / "latest.md").read_text().count("|") > 50
    assert (tmp_path / "latest.png").read_bytes().startswith(b"\x89PNG")


def test_only_runs_and_judges_just_the_named_scenarios() -> None:
    """`--only` accepts known keys, refuses others, and judges only the targets that ran."""
    assert parse_only("edge_session, edge_vs_bare") == ("edge_session", "edge_vs_bare")
    with pytest.raises(argparse.ArgumentTypeError, match="edge_sesion"):
        parse_only("edge_session,edge_sesion")
    plan = replace(SMOKE, only=("edge_session",))
    assert plan.runs("edge_session")
    assert not plan.runs("login")
    assert replace(SMOKE).runs("login")  # no --only: everything
    results = {"scenarios": [{"key": "edge_session", "ratio": 0.5}]}
    judged = evaluate(results, plan)
    assert [target["key"] for target in judged] == ["edge_session_ratio"]
    assert len(evaluate(results, SMOKE)) == len(TARGETS)  # a full run: missing ones MISS


def test_login_floor_measures_the_service_and_both_floors(tmp_path: Path) -> None:
    """bench.login_floor measures the bare servers, both floors and the service, each for real."""
    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "floor.json"
    command = ["bench.login_floor", "--rounds", "1", "--seconds", "1", "--out", str(out)]
    run = subprocess.run(
        [sys.executable, "-m", *command],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        timeout=300,  # ~30 s alone
        check=False,
    )
    # Non-zero when a measured call failed (bench.driver checks every status).
    assert run.returncode == 0, f"login_floor failed:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    results = json.loads(out.read_text())["results"]
    assert set(results) == {"bare", "bare-uvloop", "wire", "store", "service"}
    for name, entry in results.items():
        assert entry["rps"] > 0, name
        # A CPU reading of the right process: a fraction of a millisecond to a few per call.
        assert 0.05 < entry["cpu_ms_per_login"] < 50, name
    # The store floor and the service really stored their logins (each kept its answer
    # durably before answering); the others stored nothing.
    assert results["store"]["answers_kept"] >= results["store"]["rps"]
    assert results["service"]["answers_kept"] >= results["service"]["rps"]
    assert results["wire"]["answers_kept"] == results["bare"]["answers_kept"] == 0
