"""deploy/: the HAProxy config passes `haproxy -c`, its gRPC health check reads a real service,
the systemd units pass `systemd-analyze verify`, the example env files name every variable."""

from __future__ import annotations

import asyncio
import inspect
import os
import pwd
import re
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from bench.rehearsal.stack import balancer_identity
from clients.edge.server import SHUTDOWN_GRACE
from devtools.pki import CertificateAuthority
from service.app import running_service
from service.embedded_mongo import free_port
from tests.conftest import ServiceFactory

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
HAPROXY_CONFIG = DEPLOY / "haproxy" / "haproxy.cfg"
GRPC_CHECK = DEPLOY / "haproxy" / "grpc-health-check"
ENV = DEPLOY / "env"
UNITS = sorted((DEPLOY / "systemd").glob("*.service"))
# Where the units expect the installed virtualenv (README "Production, rehearsed").
INSTALLED = "/opt/wxlogin/venv/bin/"
VARIABLE = re.compile(r"\bWXLOGIN_[A-Z0-9_]+")
BACKENDS = ("SERVICE_1", "SERVICE_2", "EDGE_1", "EDGE_2")
# Variables only the dev stack's embedded mongod reads.
EMBEDDED_ONLY = {"WXLOGIN_DATA_DIR"}


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: `make tools` installs it with apt")
    return path


def haproxy_env(tmp_path: Path, **overrides: str) -> dict[str, str]:
    """Every variable the config reads, set as the rehearsal sets them (real PEM files)."""
    ca = CertificateAuthority(tmp_path / "pki")
    issued = ca.server("balancer")
    bundle = tmp_path / "pki" / "bundle.pem"
    bundle.write_bytes(issued.cert_pem + issued.key_pem)
    env = {
        "PATH": "/usr/sbin:/usr/bin:/bin",
        "WXLOGIN_LB_GRPC_BIND": f"127.0.0.1:{free_port()}",
        "WXLOGIN_LB_HTTP_BIND": f"127.0.0.1:{free_port()}",
        "WXLOGIN_LB_STATS_BIND": f"127.0.0.1:{free_port()}",
        "WXLOGIN_LB_CERT": str(bundle),
        "WXLOGIN_LB_BACKEND_CA": str(ca.cert_file),
        "WXLOGIN_LB_BACKEND_NAME": "wxlogin-service.internal",
        "WXLOGIN_LB_GRPC_CHECK": str(GRPC_CHECK),
        **balancer_identity(),
        **{f"WXLOGIN_LB_{name}": f"127.0.0.1:{free_port()}" for name in BACKENDS},
    }
    env.update(overrides)
    return env


def haproxy_check(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("haproxy"), "-c", "-f", str(HAPROXY_CONFIG)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_haproxy_accepts_the_deploy_config(tmp_path: Path) -> None:
    """`haproxy -c` finds deploy/haproxy/haproxy.cfg valid with its variables set."""
    run = haproxy_check(haproxy_env(tmp_path))
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Configuration file is valid" in run.stdout


def test_an_env_file_from_before_the_user_variables_still_starts(tmp_path: Path) -> None:
    """Without WXLOGIN_LB_USER/GROUP (an upgrade's old env file) the config says haproxy."""
    env = haproxy_env(tmp_path)
    del env["WXLOGIN_LB_USER"], env["WXLOGIN_LB_GROUP"]
    run = haproxy_check(env)
    assert run.returncode == 0, run.stdout + run.stderr


def test_haproxy_refuses_the_config_without_its_certificate(tmp_path: Path) -> None:
    """A variable left unset (the balancer's certificate) fails the check, not the first call."""
    run = haproxy_check(haproxy_env(tmp_path, WXLOGIN_LB_CERT=str(tmp_path / "missing.pem")))
    assert run.returncode != 0
    assert "missing.pem" in run.stdout + run.stderr


def _ids(pid: int) -> tuple[list[int], list[int], list[int]]:
    """A process's uids and gids (real, effective, saved, filesystem) and supplementary groups."""
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    uid, gid, groups = (
        [int(n) for n in line.split()[1:]]
        for key in ("Uid:", "Gid:", "Groups:")
        for line in status
        if line.startswith(key)
    )
    return uid, gid, groups


@pytest.mark.skipif(os.getuid() != 0, reason="only root can become another user")
def test_the_balancer_drops_root_once_its_ports_are_bound(tmp_path: Path) -> None:
    """Started by root as in production, HAProxy answers as the env file's user, never as root."""
    user = pwd.getpwnam("haproxy")  # created by Debian's haproxy package (`make tools`)
    env = haproxy_env(tmp_path, WXLOGIN_LB_USER="haproxy", WXLOGIN_LB_GROUP="haproxy")
    stats = f"http://{env['WXLOGIN_LB_STATS_BIND']}/stats;csv"
    balancer = subprocess.Popen(
        [tool("haproxy"), "-db", "-f", str(HAPROXY_CONFIG)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(stats, timeout=2) as answer:
                    assert answer.status == 200
                    break
            except OSError:
                assert balancer.poll() is None, "haproxy exited"
                assert time.monotonic() < deadline, "haproxy's stats never answered"
                time.sleep(0.1)
        uids, gids, groups = _ids(balancer.pid)
        assert set(uids) == {user.pw_uid}, uids
        assert set(gids) == {user.pw_gid}, gids
        assert set(groups) <= {user.pw_gid}, groups  # root's own groups are gone too
    finally:
        balancer.terminate()
        balancer.wait(timeout=10)


def test_the_env_example_sets_every_variable_the_config_reads() -> None:
    """deploy/env/haproxy.env.example names exactly the variables haproxy.cfg expands."""
    # ${NAME} or ${NAME-default}
    expanded = r"\$\{(WXLOGIN_[A-Z0-9_]+)(?:-[^}]*)?\}"
    wanted = set(re.findall(expanded, HAPROXY_CONFIG.read_text()))
    assert len(wanted) == 13
    assert _assigned(ENV / "haproxy.env.example") == wanted


def _assigned(path: Path, *, commented: bool = False) -> set[str]:
    """Variables an env file sets (`commented`: also those shown commented out)."""
    pattern = r"^\s*#?\s*(WXLOGIN_[A-Z0-9_]+)=" if commented else r"^(WXLOGIN_[A-Z0-9_]+)="
    return set(re.findall(pattern, path.read_text(), flags=re.MULTILINE))


def _read(*paths: str) -> set[str]:
    return {name for path in paths for name in VARIABLE.findall((ROOT / path).read_text())}


def test_the_env_examples_name_every_variable_each_program_reads() -> None:
    """Every WXLOGIN_* the service and the edge read is in its example env file (set or shown)."""
    shared = ("runtime/logs.py", "runtime/event_loop.py")
    service = _read("service/settings.py", *shared) - {"WXLOGIN_"} - EMBEDDED_ONLY
    edge = _read("clients/edge/config.py", "clients/_upstream.py", *shared) - {"WXLOGIN_"}
    service_env = _assigned(ENV / "service.env.example", commented=True)
    service_env |= _assigned(ENV / "service-1.env.example")
    edge_env = _assigned(ENV / "edge.env.example", commented=True)
    edge_env |= _assigned(ENV / "edge-1.env.example")
    assert service - service_env == set()
    assert edge - edge_env == set()
    for required in ("WXLOGIN_APPS", "WXLOGIN_SECRET_KEY", "WXLOGIN_MONGODB_URI"):
        assert required in _assigned(ENV / "service.env.example")
    assert "WXLOGIN_DRAIN_SECONDS" in _assigned(ENV / "edge.env.example")


async def _check_script(port: int) -> int:
    """grpc-health-check as HAProxy runs it (proxy address and port, server address and port)."""
    process = await asyncio.create_subprocess_exec(
        str(GRPC_CHECK), "127.0.0.1", "8443", "127.0.0.1", str(port),
        env={"PATH": "/usr/bin:/bin"},
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    return await asyncio.wait_for(process.wait(), 30)


async def test_the_grpc_health_check_passes_a_serving_tls_service(
    start_service: ServiceFactory, tmp_path: Path
) -> None:
    """The external check exits 0 on a SERVING TLS service, 1 once it drains, 1 once it is gone."""
    tool("nghttp")
    ca = CertificateAuthority(tmp_path / "pki")
    server = ca.server()
    async with start_service(tls_cert=server.cert_file, tls_key=server.key_file) as running:
        assert await _check_script(running.port) == 0
        # What SIGTERM does first: NOT_SERVING while the listener still accepts.
        await running.health.enter_graceful_shutdown()
        assert await _check_script(running.port) == 1
        port = running.port
    assert await _check_script(port) == 1


def _unit(path: Path) -> dict[str, list[str]]:
    """Each `Key` of a unit file with every value it is given (systemd keys may repeat)."""
    found: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith(("#", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def test_systemd_analyze_verifies_every_unit() -> None:
    """`systemd-analyze verify` finds nothing wrong in any unit but the not-installed program."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("no systemd-analyze here; the structural test below still runs")
    assert {unit.name for unit in UNITS} == {
        "wxlogin-service@.service",
        "wxlogin-edge@.service",
        "wxlogin-emulator@.service",
    }
    for unit in UNITS:
        run = subprocess.run(
            [analyze, "verify", "--man=no", str(unit)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        complaints = [
            line
            for line in (run.stdout + run.stderr).splitlines()
            if line.strip() and f"Command {INSTALLED}" not in line
        ]
        assert complaints == [], unit.name


def test_units_stop_by_draining_and_restart_on_failure() -> None:
    """Each unit: SIGTERM, a stop timeout above drain + grace, restart on failure, hardened."""
    drain = max(
        float(value)
        for name in ("service", "edge")
        for value in re.findall(
            r"^WXLOGIN_DRAIN_SECONDS=(\S+)", (ENV / f"{name}.env.example").read_text(), re.M
        )
    )
    grace = max(
        inspect.signature(running_service).parameters["shutdown_grace"].default, SHUTDOWN_GRACE
    )
    for unit in UNITS:
        keys = _unit(unit)
        program = unit.name.split("@")[0]
        assert keys["ExecStart"] == [INSTALLED + program], unit.name
        assert keys["KillSignal"] == ["SIGTERM"]
        assert keys["Restart"] == ["on-failure"]
        assert float(keys["TimeoutStopSec"][0]) > drain + grace
        env_name = program.removeprefix("wxlogin-")
        assert keys["EnvironmentFile"] == [
            f"/etc/wxlogin/{env_name}.env",
            f"-/etc/wxlogin/{env_name}-%i.env",
        ]
        assert (ENV / f"{env_name}.env.example").exists()
        for hardening in (
            "NoNewPrivileges",
            "ProtectSystem",
            "PrivateTmp",
            "CapabilityBoundingSet",
        ):
            assert hardening in keys, (unit.name, hardening)
        assert keys["User"] == ["wxlogin"]
