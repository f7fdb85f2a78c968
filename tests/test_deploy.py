"""deploy/: rules and scrape config pass promtool, the dashboard loads, Prometheus reads us."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
import yaml
from prometheus_client import CollectorRegistry

from clients.edge.metrics import EdgeMetrics
from runtime.config import ListenAddress
from runtime.metrics_server import serving_metrics
from runtime.process import dies_with_parent
from tests.conftest import ServiceFactory
from tests.edge_support import free_port_target
from tests.metrics_support import scrape
from tests.support import APP_A, Emulator, stop_process
from wxlogin.v1 import auth_pb2, auth_pb2_grpc

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
PROMETHEUS_DIR = DEPLOY / "prometheus"
DASHBOARD = DEPLOY / "grafana" / "wxlogin.json"
# A series name in PromQL: ours, or the process collector's.
SERIES = re.compile(r"\b((?:wxlogin|process)_[a-z_]+)\b")
SUFFIXES = ("_total", "_bucket", "_count", "_sum", "_created")
# What Prometheus itself adds to every target.
PROMETHEUS_OWN = {"up"}


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"{name} is not installed: it comes with Debian's prometheus package "
            "(apt-get update && apt-get install -y prometheus, or `make test` once)"
        )
    return path


def promtool(*args: str, cwd: Path = PROMETHEUS_DIR) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("promtool"), *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


def test_alert_rules_pass_promtool_check() -> None:
    """`promtool check rules` accepts deploy/prometheus/alerts.yml."""
    run = promtool("check", "rules", "alerts.yml")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "SUCCESS" in run.stdout


def test_each_alert_fires_on_its_series() -> None:
    """`promtool test rules`: the alerts fire (and stay quiet) on made-up series as written."""
    run = promtool("test", "rules", "alerts_test.yml")
    assert run.returncode == 0, run.stdout + run.stderr
    alerts = {rule["alert"] for group in _rules()["groups"] for rule in group["rules"]}
    tested = PROMETHEUS_DIR.joinpath("alerts_test.yml").read_text()
    for required in (
        "WxLoginLoginFailures",
        "WxLoginWeChatUnavailable",
        "WxLoginAccessTokenExpiring",
        "WxLoginStoreUnavailable",
        "WxLoginShedding",
    ):
        assert required in alerts
        assert f"alertname: {required}" in tested


def test_scrape_config_passes_promtool_check() -> None:
    """`promtool check config` accepts deploy/prometheus/prometheus.yml (and its rule file)."""
    run = promtool("check", "config", "prometheus.yml")
    assert run.returncode == 0, run.stdout + run.stderr


def test_dashboard_json_loads_with_a_query_per_panel() -> None:
    """The Grafana dashboard is JSON with unique panel ids, each with at least one query."""
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "wxlogin"
    panels = dashboard["panels"]
    assert len({panel["id"] for panel in panels}) == len(panels) >= 10
    for panel in panels:
        assert panel["targets"], panel["title"]
        assert all(target["expr"].strip() for target in panel["targets"])
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"])


def _rules() -> dict[str, Any]:
    rules: dict[str, Any] = yaml.safe_load(PROMETHEUS_DIR.joinpath("alerts.yml").read_text())
    return rules


def _families_named(text: str) -> set[str]:
    names = set()
    for name in SERIES.findall(text):
        for suffix in SUFFIXES:
            if name.endswith(suffix):
                name = name.removesuffix(suffix)
                break
        names.add(name)
    return names


async def test_dashboard_and_alerts_query_only_series_we_export(
    start_service: ServiceFactory, http: aiohttp.ClientSession
) -> None:
    """Every series the dashboard and the alerts name is exported by the service or the edge."""
    edge = EdgeMetrics(CollectorRegistry())
    async with start_service(metrics_listen=ListenAddress("127.0.0.1", 0)) as running:
        exported = set((await scrape(http, running.metrics_port or 0)).families)
    with serving_metrics("TEST", ListenAddress("127.0.0.1", 0), edge.registry) as edge_port:
        exported |= (await scrape(http, edge_port)).families
    queried = _families_named(DASHBOARD.read_text())
    queried |= _families_named(PROMETHEUS_DIR.joinpath("alerts.yml").read_text())
    assert queried - exported == set()
    assert len(queried) >= 15


async def _query(http: aiohttp.ClientSession, base: str, promql: str) -> list[dict[str, Any]]:
    async with http.get(f"{base}/api/v1/query", params={"query": promql}) as response:
        body = await response.json()
    assert body["status"] == "success", body
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


async def test_a_real_prometheus_reads_the_login_counter(
    start_service: ServiceFactory, emu: Emulator, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """Prometheus, run with deploy/'s config, scrapes a service and answers a query for a Login."""
    prometheus = tool("prometheus")
    config = tmp_path / "config"
    shutil.copytree(PROMETHEUS_DIR, config)
    # Only the interval changes (seconds, not 15 s) and the targets: the live service.
    text = config.joinpath("prometheus.yml").read_text()
    config.joinpath("prometheus.yml").write_text(text.replace("15s", "1s"))
    web = free_port_target()  # Prometheus cannot listen on port 0 and say which it got
    base = f"http://{web}"
    async with (
        start_service(metrics_listen=ListenAddress("127.0.0.1", 0)) as running,
        grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel,
    ):
        targets = [{"targets": [f"127.0.0.1:{running.metrics_port}"], "labels": {"env": "test"}}]
        config.joinpath("targets", "wxlogin.json").write_text(json.dumps(targets))
        config.joinpath("targets", "wxlogin-edge.json").write_text("[]")
        stub = auth_pb2_grpc.AuthServiceStub(channel)
        await stub.Login(auth_pb2.LoginRequest(app_id=APP_A, code=await emu.code(APP_A, "prom")))

        with (tmp_path / "prometheus.log").open("wb") as log:
            process = await asyncio.create_subprocess_exec(
                *dies_with_parent(
                    [
                        prometheus,
                        f"--config.file={config / 'prometheus.yml'}",
                        f"--storage.tsdb.path={tmp_path / 'data'}",
                        f"--web.listen-address={web}",
                    ]
                ),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            logins: list[dict[str, Any]] = []
            for _ in range(600):  # a minute at most; usually a couple of seconds
                if process.returncode is not None:
                    break
                try:
                    logins = await _query(
                        http, base, 'wxlogin_rpcs_total{job="wxlogin",method="Login",code="OK"}'
                    )
                except aiohttp.ClientError:
                    logins = []  # not listening yet
                if logins:
                    break
                await asyncio.sleep(0.1)
            output = (tmp_path / "prometheus.log").read_text(errors="replace")[-3000:]
            assert logins, f"Prometheus never had the login counter; its log:\n{output}"
            assert float(logins[0]["value"][1]) == 1
            assert logins[0]["metric"]["env"] == "test"  # the labels of the targets file
            async with http.get(f"{base}/api/v1/rules") as response:
                groups = (await response.json())["data"]["groups"]
            loaded = {rule["name"] for group in groups for rule in group["rules"]}
            assert "WxLoginStoreUnavailable" in loaded
        finally:
            await stop_process(process)
