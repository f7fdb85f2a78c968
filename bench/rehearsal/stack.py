"""The rehearsal's production-shaped stack on loopback: a 3-member replica set, the emulator,
2 services over TLS with callers and metrics, HAProxy from deploy/haproxy, 2 edges behind it.

Every process listens on a port fixed at the start, so a process restarted (as systemd
would) comes back where the balancer expects it. Certificates are made here, at run time.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import grp
import io
import os
import pwd
import signal
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import aiohttp

from bench.chaos.stack import clean_env
from bench.fixtures import Emulator
from bench.rehearsal.plan import RehearsalPlan
from clients import TlsConfig
from clients.edge.app import RPCS as EDGE_RPCS
from devtools.children import Child
from devtools.devstack import DEV_APPS, dev_caller_keys, dev_secret_key, write_dev_callers
from devtools.pki import CertificateAuthority
from devtools.replica_set import ReplicaSet
from runtime.process import dies_with_parent
from service.embedded_mongo import free_port

DEPLOY = Path(__file__).resolve().parent.parent.parent / "deploy"
HAPROXY_CONFIG = DEPLOY / "haproxy" / "haproxy.cfg"
GRPC_CHECK = DEPLOY / "haproxy" / "grpc-health-check"
# The name on the services' certificates, which the balancer verifies (verifyhost).
BACKEND_NAME = "wxlogin-service.internal"
# The rehearsal's callers: the edges, and a backend that logs users in (a mini-program's own
# server) and checks sessions, as one caller.
CALLERS: dict[str, tuple[str, ...]] = {
    "edge": EDGE_RPCS,
    "backend": ("Login", "CheckSession", "DecryptUserData"),
}
SERVICES = ("service-1", "service-2")
EDGES = ("edge-1", "edge-2")


class StackError(RuntimeError):
    """A part of the stack did not start or come back; says which in one line."""


@dataclass
class Process:
    """One supervised program (a service or an edge): its child, started again on demand."""

    name: str
    child: Child
    restarts: int = 0

    @property
    def pid(self) -> int | None:
        process = self.child.process
        return None if process is None or process.returncode is not None else process.pid

    async def start(self) -> None:
        await self.child.start()

    async def kill(self) -> None:
        """SIGKILL, as a crash or the OOM killer would."""
        process = self.child.process
        if process is not None and process.returncode is None:
            process.kill()
            await process.wait()
        await self.child.stop()  # closes its log file

    async def terminate(self, limit: float) -> int:
        """SIGTERM and wait for the exit (SIGKILL after `limit` s, as TimeoutStopSec); the code."""
        process = self.child.process
        assert process is not None
        process.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.wait_for(process.wait(), limit)
        except TimeoutError:
            process.kill()
            code = await process.wait()
        await self.child.stop()
        return code


class HaProxy:
    """haproxy in the foreground on deploy/haproxy/haproxy.cfg, with its variables set."""

    def __init__(self, env: dict[str, str], log_file: Path, stats_url: str) -> None:
        self._env = env
        self._log_file = log_file
        self.stats_url = stats_url
        self._process: asyncio.subprocess.Process | None = None
        self._log: IO[bytes] | None = None

    async def check_config(self) -> None:
        """`haproxy -c`: the configuration with these variables is valid."""
        checked = await asyncio.create_subprocess_exec(
            "haproxy", "-c", "-q", "-f", str(HAPROXY_CONFIG), env=self._env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        out, _ = await checked.communicate()
        if checked.returncode != 0:
            raise StackError(f"haproxy -c refused {HAPROXY_CONFIG}: {out.decode().strip()}")

    async def start(self) -> None:
        await self.check_config()
        self._log = self._log_file.open("ab")
        self._process = await asyncio.create_subprocess_exec(
            *dies_with_parent(["haproxy", "-db", "-f", str(HAPROXY_CONFIG)]),
            env=self._env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
            start_new_session=True,
        )

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.returncode is None

    async def stop(self) -> None:
        process = self._process
        if process is not None and process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), 10)
            except TimeoutError:
                process.kill()
                await process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None


@dataclass
class Stack:
    """A started rehearsal stack: where each part listens, its processes, the CA to trust."""

    workdir: Path
    replica_set: ReplicaSet
    emulator: Emulator
    balancer: HaProxy
    processes: dict[str, Process]
    grpc_target: str  # the balancer's gRPC front
    http_url: str  # the balancer's HTTP front (to the edges)
    ca_pem: bytes
    caller_key: str  # the backend's
    http: aiohttp.ClientSession
    ssl_context: ssl.SSLContext = field(repr=False)

    @property
    def tls(self) -> TlsConfig:
        return TlsConfig(root_certificates=self.ca_pem)

    async def states(self) -> dict[str, str]:
        """The balancer's view of each backend: "service-1" -> "UP", "DOWN", "UP 1/2", ..."""
        async with self.http.get(self.balancer.stats_url + ";csv") as answer:
            text = await answer.text()
        rows = csv.DictReader(io.StringIO(text.lstrip("# ")))
        return {
            row["svname"]: row["status"]
            for row in rows
            if row["svname"] in self.processes and row["pxname"] in ("services", "edges")
        }

    async def wait_state(self, name: str, wanted: Callable[[str], bool], most: float) -> bool:
        """Until the balancer's state of `name` satisfies `wanted` (at most `most` s)."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + most
        while loop.time() < give_up:
            if not self.balancer.running:
                raise StackError(f"haproxy exited (see {self.workdir / 'logs' / 'haproxy.log'})")
            with contextlib.suppress(aiohttp.ClientError, KeyError):
                if wanted((await self.states())[name]):
                    return True
            await asyncio.sleep(0.1)
        return False

    async def wait_up(self, name: str, most: float) -> bool:
        """Until the balancer has `name` in rotation again (its checks passed `rise` times)."""
        return await self.wait_state(name, lambda state: state == "UP", most)

    async def all_up(self, most: float = 10.0) -> bool:
        """Every process running and in rotation, the replica set whole, the balancer running.

        A check that just timed out under load shows as "UP 1/2" for a moment: each process
        gets up to `most` s to be plainly UP.
        """
        if not self.balancer.running or any(p.pid is None for p in self.processes.values()):
            return False
        for name in self.processes:
            if not await self.wait_up(name, most):
                return False
        try:
            await self.replica_set.wait_healthy(5.0)
        except Exception:  # any failure to answer is "not healthy"
            return False
        return True


def balancer_identity() -> dict[str, str]:
    """HAProxy's user and group for the rehearsal: whoever runs it.

    Not `haproxy` as in production: the check it forks lives in this checkout, which
    that user may not be able to reach (a home directory). tests/test_deploy_lb.py
    runs the production identity.
    """
    return {
        "WXLOGIN_LB_USER": pwd.getpwuid(os.getuid()).pw_name,
        "WXLOGIN_LB_GROUP": grp.getgrgid(os.getgid()).gr_name,
    }


def _lb_variable(name: str) -> str:
    """The balancer's variable for a backend's address: "edge-1" -> WXLOGIN_LB_EDGE_1."""
    return "WXLOGIN_LB_" + name.upper().replace("-", "_")


def _child(name: str, module_args: list[str], env: dict[str, str], logs: Path) -> Child:
    return Child(name, module_args, env, log_file=logs / f"{name}.log")


@asynccontextmanager
async def running(workdir: Path, plan: RehearsalPlan) -> AsyncIterator[Stack]:
    """Start every part in order (database, emulator, services, balancer, edges); stop all."""
    logs = workdir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    pki = CertificateAuthority(workdir / "pki", "wxlogin rehearsal CA")
    service_cert = pki.issue("service", dns=(BACKEND_NAME,), ips=("127.0.0.1",))
    lb_cert = pki.server("balancer")
    lb_pem = workdir / "pki" / "balancer-bundle.pem"
    lb_pem.write_bytes(lb_cert.cert_pem + lb_cert.key_pem)
    lb_pem.chmod(0o600)
    keys = dev_caller_keys(workdir, CALLERS)
    callers_file = write_dev_callers(workdir, keys, CALLERS)

    async with AsyncExitStack() as exits:
        http = await exits.enter_async_context(aiohttp.ClientSession())
        replica_set = ReplicaSet(workdir / "replica-set", members=3)
        exits.push_async_callback(replica_set.stop)
        uri = await replica_set.start()

        processes: dict[str, Process] = {}

        async def stop_all() -> None:
            for process in reversed(list(processes.values())):
                await process.child.stop()

        exits.push_async_callback(stop_all)
        base = {**clean_env(), "WXLOGIN_LOG_LEVEL": "INFO"}
        emulator_port = free_port()
        emulator = _child(
            "emulator",
            ["emulator", "--listen", f"127.0.0.1:{emulator_port}", "--apps", DEV_APPS],
            base,
            logs,
        )
        exits.push_async_callback(emulator.stop)
        await emulator.start()
        emulator_url = f"http://127.0.0.1:{emulator_port}"

        ports = {name: free_port() for name in (*SERVICES, *EDGES)}
        drain = str(plan.drain_seconds)
        for name in SERVICES:
            env = {
                **base,
                "WXLOGIN_GRPC_LISTEN": f"127.0.0.1:{ports[name]}",
                "WXLOGIN_METRICS_LISTEN": f"127.0.0.1:{free_port()}",
                "WXLOGIN_MONGODB_URI": uri,
                "WXLOGIN_APPS": DEV_APPS,
                "WXLOGIN_WECHAT_API_BASE": emulator_url,
                "WXLOGIN_SECRET_KEY": dev_secret_key(workdir),
                "WXLOGIN_TLS_CERT": str(service_cert.cert_file),
                "WXLOGIN_TLS_KEY": str(service_cert.key_file),
                "WXLOGIN_CALLERS_FILE": str(callers_file),
                "WXLOGIN_DRAIN_SECONDS": drain,
            }
            processes[name] = Process(name, _child(name, ["service"], env, logs))
            await processes[name].start()

        grpc_port, http_port, stats_port = free_port(), free_port(), free_port()
        lb_env = {
            **base,
            "WXLOGIN_LB_GRPC_BIND": f"127.0.0.1:{grpc_port}",
            "WXLOGIN_LB_HTTP_BIND": f"127.0.0.1:{http_port}",
            "WXLOGIN_LB_STATS_BIND": f"127.0.0.1:{stats_port}",
            "WXLOGIN_LB_CERT": str(lb_pem),
            "WXLOGIN_LB_BACKEND_CA": str(pki.cert_file),
            "WXLOGIN_LB_BACKEND_NAME": BACKEND_NAME,
            "WXLOGIN_LB_GRPC_CHECK": str(GRPC_CHECK),
            **balancer_identity(),
            **{_lb_variable(name): f"127.0.0.1:{port}" for name, port in ports.items()},
        }
        balancer = HaProxy(lb_env, logs / "haproxy.log", f"http://127.0.0.1:{stats_port}/stats")
        exits.push_async_callback(balancer.stop)
        await balancer.start()

        for name in EDGES:
            env = {
                **base,
                "WXLOGIN_HTTP_LISTEN": f"127.0.0.1:{ports[name]}",
                "WXLOGIN_EDGE_METRICS_LISTEN": f"127.0.0.1:{free_port()}",
                "WXLOGIN_UPSTREAM": f"127.0.0.1:{grpc_port}",
                "WXLOGIN_UPSTREAM_CA": str(pki.cert_file),
                "WXLOGIN_CALLER_KEY": keys["edge"],
                "WXLOGIN_EDGE_TRUSTED_PROXIES": "127.0.0.1/32",
                # All the rehearsal's mini-programs share one address: no per-address limit.
                "WXLOGIN_EDGE_LOGIN_RATE": "0",
                "WXLOGIN_DRAIN_SECONDS": drain,
            }
            processes[name] = Process(name, _child(name, ["clients.edge"], env, logs))
            await processes[name].start()

        context = ssl.create_default_context(cadata=pki.cert_pem.decode())
        stack = Stack(
            workdir=workdir,
            replica_set=replica_set,
            emulator=Emulator(emulator_url, http),
            balancer=balancer,
            processes=processes,
            grpc_target=f"127.0.0.1:{grpc_port}",
            http_url=f"https://127.0.0.1:{http_port}",
            ca_pem=pki.cert_pem,
            caller_key=keys["backend"],
            http=http,
            ssl_context=context,
        )
        for name in processes:
            if not await stack.wait_up(name, plan.up_limit):
                raise StackError(f"{name} never came into the balancer's rotation (see {logs})")
        yield stack
