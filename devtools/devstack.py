"""The dev stack behind `make run`: embedded mongod, WeChat emulator, service and edge.

With nothing configured it runs everything locally against the emulator and
says so loudly. With WXLOGIN_APPS set it runs just the service and the edge
against the configured WeChat (and MongoDB, or the embedded one). The embedded
MongoDB is one mongod, or with WXLOGIN_DEV_MONGO_REPLICAS=3 a 3-member replica
set (to try failover at a desk). If a child or a mongod dies, the stack stops.
Demo and benchmarks reuse `DevStack` with free ports and their own data dirs.

`make run` also sets up callers (service/callers.py), as production should: the
edge, a "backend" and the demo each get a caller key, kept in the data dir, and
the banner shows how to call with one.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import secrets
import signal
import sys
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from clients import TlsConfig, UpstreamConfig, open_channel
from clients.edge.app import RPCS as EDGE_RPCS
from devtools.children import Child, ChildError
from devtools.replica_set import ReplicaSet
from runtime.config import ConfigError
from runtime.serve import stop_on_signals, until_stopped
from service.embedded_mongo import EmbeddedMongo, EmbeddedMongoError

log = logging.getLogger("devstack")

# The emulator's apps; their secrets are public on purpose (see emulator/__main__.py).
DEV_APPS = "wxdev0000000000001:devsecret1,wxdev0000000000002:devsecret2"
DEV_APP = DEV_APPS.split(":", 1)[0]

REPLICAS_VARIABLE = "WXLOGIN_DEV_MONGO_REPLICAS"

# The dev stack's callers and what each may call (every app). The edge gets just
# the RPCs it forwards; a backend checks sessions and decrypts; the demo shows all,
# the app's access_token included (granted only by name, see service/callers.py).
DEV_CALLERS: Mapping[str, tuple[str, ...]] = {
    "edge": EDGE_RPCS,
    "backend": ("CheckSession", "DecryptUserData", "RevokeSession"),
    "demo": ("*", "GetAccessToken"),
}
CALLER_KEYS_FILE = "dev-caller-keys.json"
# What only the service needs, and the edge is not handed: the apps' secrets, the keys
# that seal session_keys, the database (whose URI may carry its password), the service's
# TLS key and the data dir (the dev secret key, every caller's key). Hygiene, as in
# production's separate env files, not isolation: here both run as the same user.
SERVICE_SECRETS = frozenset(
    {
        "WXLOGIN_APPS",
        "WXLOGIN_SECRET_KEY",
        "WXLOGIN_SECRET_KEYS_OLD",
        "WXLOGIN_MONGODB_URI",
        "WXLOGIN_TLS_KEY",
        "WXLOGIN_DATA_DIR",
    }
)
CALLERS_FILE = "dev-callers.toml"


def parse_replicas(env: Mapping[str, str]) -> int:
    """WXLOGIN_DEV_MONGO_REPLICAS: 1 (unset) for one mongod, 3 for a replica set."""
    text = (env.get(REPLICAS_VARIABLE) or "1").strip()
    if text not in ("1", "3"):
        raise ConfigError(
            REPLICAS_VARIABLE, f"expected 1 (one mongod) or 3 (a replica set), got {text!r}"
        )
    if text == "3" and env.get("WXLOGIN_MONGODB_URI"):
        # Silently running on the external MongoDB would leave someone trying
        # failover on a database that has none.
        raise ConfigError(
            REPLICAS_VARIABLE, "3 starts an embedded replica set, but WXLOGIN_MONGODB_URI is set"
        )
    return int(text)


def dev_secret_key(data_dir: Path) -> str:
    """The dev stack's WXLOGIN_SECRET_KEY, made once and kept in the data dir."""
    path = data_dir / "dev-secret-key"
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(base64.b64encode(os.urandom(32)).decode())
    return path.read_text().strip()


def dev_caller_keys(
    data_dir: Path, callers: Mapping[str, tuple[str, ...]] = DEV_CALLERS
) -> dict[str, str]:
    """The callers' keys (the dev callers unless told), made once and kept (mode 0600) in
    the data dir."""
    path = data_dir / CALLER_KEYS_FILE
    keys: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
    missing = [name for name in callers if name not in keys]
    if missing:
        keys.update({name: secrets.token_urlsafe(24) for name in missing})
        data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path.with_suffix(".tmp"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(keys, out, indent=2)
        path.with_suffix(".tmp").replace(path)
    return keys


def write_dev_callers(
    data_dir: Path, keys: Mapping[str, str], callers: Mapping[str, tuple[str, ...]] = DEV_CALLERS
) -> Path:
    """The callers file for `keys` (each may call its `callers` RPCs): only their SHA-256
    goes in it, as in production."""
    lines = ["# Written by the dev stack at each start; keys are in " + CALLER_KEYS_FILE]
    for name, rpcs in callers.items():
        digest = hashlib.sha256(keys[name].encode()).hexdigest()
        lines += [
            "",
            f"[callers.{name}]",
            f'key_sha256 = "{digest}"',
            "rpcs = [" + ", ".join(f'"{rpc}"' for rpc in rpcs) + "]",
            'apps = ["*"]',
        ]
    path = data_dir / CALLERS_FILE
    path.write_text("\n".join(lines) + "\n")
    return path


class DevStack:
    """Starts the parts in order and stops them in reverse; usable as `async with`."""

    def __init__(
        self,
        data_dir: Path,
        *,
        env: Mapping[str, str] | None = None,
        emulator_listen: str = "127.0.0.1:9090",
        grpc_listen: str = "127.0.0.1:50051",
        http_listen: str = "127.0.0.1:8080",
        service_processes: int = 1,
        with_edge: bool = True,
        log_dir: Path | None = None,
        callers: bool = False,
    ) -> None:
        self.data_dir = data_dir
        self._env = dict(os.environ if env is None else env)
        self.uses_emulator = not self._env.get("WXLOGIN_APPS")
        self.mongo_replicas = parse_replicas(self._env)
        self._emulator_listen = emulator_listen
        self._grpc_listen = grpc_listen
        self._http_listen = http_listen
        self._service_processes = service_processes
        self._with_edge = with_edge and _edge_installed()
        self._log_dir = log_dir
        # Set up callers (unless WXLOGIN_CALLERS_FILE names the caller's own).
        self._callers = callers and not self._env.get("WXLOGIN_CALLERS_FILE")
        self.caller_keys: dict[str, str] = {}
        self._mongo: EmbeddedMongo | ReplicaSet | None = None
        self.children: list[Child] = []
        self.emulator_url = ""
        self.grpc_target = ""
        self.edge_url = ""
        self.mongodb_uri = ""

    def _log(self, name: str) -> Path | None:
        return None if self._log_dir is None else self._log_dir / f"{name}.log"

    async def _spawn(self, name: str, module_args: list[str], env: Mapping[str, str]) -> int:
        child = Child(name, module_args, env, log_file=self._log(name))
        self.children.append(child)
        return await child.start()

    async def __aenter__(self) -> DevStack:
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def _start(self) -> None:
        env = dict(self._env)
        env.setdefault("WXLOGIN_DATA_DIR", str(self.data_dir))
        # grpcurl without the proto files: a dev convenience, off in production.
        env.setdefault("WXLOGIN_REFLECTION", "true")
        # Login bounds off unless asked for: the bench and chaos runs drive thousands
        # of logins a second from one address against one app.
        env.setdefault("WXLOGIN_LOGIN_RATE", "0")
        env.setdefault("WXLOGIN_EDGE_LOGIN_RATE", "0")
        # No load balancer in front: Ctrl-C stops at once instead of draining for one.
        env.setdefault("WXLOGIN_DRAIN_SECONDS", "0")
        if self._callers:
            self.caller_keys = dev_caller_keys(self.data_dir)
            env["WXLOGIN_CALLERS_FILE"] = str(write_dev_callers(self.data_dir, self.caller_keys))
        if self.uses_emulator:
            port = await self._spawn(
                "emulator", ["emulator", "--listen", self._emulator_listen, "--apps", DEV_APPS], env
            )
            self.emulator_url = f"http://127.0.0.1:{port}"
            env.update(
                WXLOGIN_APPS=DEV_APPS,
                WXLOGIN_WECHAT_API_BASE=self.emulator_url,
                WXLOGIN_SECRET_KEY=env.get("WXLOGIN_SECRET_KEY") or dev_secret_key(self.data_dir),
            )
        if not env.get("WXLOGIN_MONGODB_URI"):
            # Started here rather than by the service, so several service
            # processes can share one database.
            if self.mongo_replicas == 1:
                self._mongo = EmbeddedMongo(self.data_dir)
            else:
                # Its own directory: a standalone's data cannot join a set.
                self._mongo = ReplicaSet(self.data_dir / "replica-set", members=self.mongo_replicas)
            env["WXLOGIN_MONGODB_URI"] = await self._mongo.start()
        self.mongodb_uri = env["WXLOGIN_MONGODB_URI"]

        listen = self._grpc_listen
        for number in range(self._service_processes):
            env["WXLOGIN_GRPC_LISTEN"] = listen
            port = await self._spawn(f"service-{number + 1}", ["service"], env)
            listen = f"{listen.rpartition(':')[0]}:{port}"  # the others share the port
        self.grpc_target = listen
        # The same TLS trust the edge gets (WXLOGIN_UPSTREAM_CA/_CERT/_KEY): a
        # service started with WXLOGIN_TLS_* answers no plaintext health check.
        await _wait_serving(self.grpc_target, UpstreamConfig.from_env(env).tls)

        if self._with_edge:
            edge_env = {name: value for name, value in env.items() if name not in SERVICE_SECRETS}
            edge_env.update(
                WXLOGIN_HTTP_LISTEN=self._http_listen, WXLOGIN_UPSTREAM=self.grpc_target
            )
            if self.caller_keys:
                edge_env["WXLOGIN_CALLER_KEY"] = self.caller_keys["edge"]
            port = await self._spawn("edge", ["clients.edge"], edge_env)
            self.edge_url = f"http://127.0.0.1:{port}"

    @property
    def embedded_mongo(self) -> bool:
        return self._mongo is not None

    def mongo_description(self) -> str:
        """Which MongoDB the stack runs on, for the banner."""
        if isinstance(self._mongo, ReplicaSet):
            return (
                f"embedded {len(self._mongo.members)}-member replica set {self._mongo.name}, "
                f"data in {self._mongo.data_dir}"
            )
        if self._mongo is not None:
            return f"embedded mongod (standalone), data in {self.data_dir}"
        return "external (WXLOGIN_MONGODB_URI)"

    def _mongods(self) -> dict[str, EmbeddedMongo]:
        """Each embedded mongod by the name a person reads in "... exited"."""
        if isinstance(self._mongo, ReplicaSet):
            return {
                f"mongod (replica-set member {index}, port {member.port})": member
                for index, member in enumerate(self._mongo.members)
            }
        return {} if self._mongo is None else {"mongod": self._mongo}

    async def stop(self) -> None:
        """Stop children newest first (edge, services, emulator), then mongod."""
        while self.children:
            await self.children.pop().stop()
        if self._mongo is not None:
            await self._mongo.stop()
            self._mongo = None

    async def wait_for_exit(self) -> str:
        """Until a child or an embedded mongod exits by itself; one line saying which and how.

        A mongod counts as much as a child: a service whose database died only
        answers STORE_UNAVAILABLE, which is easy to miss in a terminal, and a
        mongod restarted by hand would be no child of ours and outlive the stack.
        """
        waits: dict[asyncio.Future[int], str] = {
            asyncio.ensure_future(child.wait()): child.name for child in self.children
        }
        logs: dict[str, Path] = {}
        for name, mongod in self._mongods().items():
            waits[asyncio.ensure_future(mongod.wait())] = name
            logs[name] = mongod.log_path
        try:
            done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for future in waits:
                future.cancel()
        finished = done.pop()
        name = waits[finished]
        where = f" (log: {logs[name]})" if name in logs else ""
        return f"{name} {_how_it_ended(finished.result())}{where}"


def _how_it_ended(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name}"
    return f"exited with code {code}"


def _edge_installed() -> bool:
    try:
        return importlib.util.find_spec("clients.edge") is not None
    except ModuleNotFoundError:  # no `clients` package at all
        return False


async def _wait_serving(
    target: str, tls: TlsConfig | None = None, wait_seconds: float = 30.0
) -> None:
    """Until the gRPC health service says SERVING (MongoDB answers)."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + wait_seconds
    async with open_channel(target, tls=tls) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            with contextlib.suppress(grpc.aio.AioRpcError):
                reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=2)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            if loop.time() > give_up:
                raise ChildError(
                    f"service at {target} did not become SERVING in {wait_seconds:.0f}s"
                )
            await asyncio.sleep(0.2)


def _demo_command(stack: DevStack) -> str:
    # `make demo` finds a stack only on the default ports; elsewhere, say where.
    if stack.edge_url == "http://127.0.0.1:8080" and stack.emulator_url == "http://127.0.0.1:9090":
        return "make demo"
    return (
        f".venv/bin/python -m devtools.demo --edge {stack.edge_url} "
        f"--emulator {stack.emulator_url} --app-id {DEV_APP}"
    )


def banner(stack: DevStack) -> str:
    """What `make run` prints once everything answers."""
    bar = "=" * 72
    lines = [bar]
    if stack.uses_emulator:
        lines += [
            "  wxlogin DEV STACK: using the WeChat EMULATOR, not the real WeChat API.",
            f"  Apps: {DEV_APPS}   (dev secrets, public on purpose)",
        ]
    else:
        lines.append("  wxlogin: service and edge, configured from WXLOGIN_* variables.")
    lines.append(f"  gRPC      {stack.grpc_target}   (wxlogin.v1.AuthService, health, reflection)")
    if stack.caller_keys:
        lines.append(
            f"  Callers   {', '.join(stack.caller_keys)}   "
            f"(keys: {stack.data_dir / CALLER_KEYS_FILE})"
        )
    if stack.edge_url:
        lines.append(f"  HTTP edge {stack.edge_url}")
    if stack.emulator_url:
        lines.append(f"  emulator  {stack.emulator_url}")
    lines.append(f"  MongoDB   {stack.mongo_description()}")
    if stack.embedded_mongo:
        lines.append(f"            {stack.mongodb_uri}")  # for mongosh, or to kill a member
    if stack.uses_emulator:
        lines += [
            "",
            "  Try it (another terminal):",
            f"    {_demo_command(stack)}",
            f"    curl -s -XPOST {stack.emulator_url}/_dev/login "
            f'-d \'{{"appid":"{DEV_APP}","user":"alice"}}\'      # play wx.login()',
        ]
        if stack.edge_url:
            lines.append(
                f'    curl -s -XPOST {stack.edge_url}/v1/login -d \'{{"code":"<code>",'
                f'"app_id":"{DEV_APP}"}}\''
            )
    if stack.caller_keys:
        lines += [
            "",
            "  Call it as the backend (every gRPC call needs a caller key here):",
            f"    grpcurl -plaintext -H 'x-wxlogin-caller-key: {stack.caller_keys['backend']}' "
            f'-d \'{{"token":"<token>"}}\' {stack.grpc_target} '
            "wxlogin.v1.AuthService/CheckSession",
        ]
    lines += ["", "  Ctrl-C stops everything.", bar]
    return "\n".join(lines)


async def run() -> int:
    """Run until Ctrl-C/SIGTERM or until a part dies; stop everything either way."""
    stop = stop_on_signals()
    data_dir = Path(os.environ.get("WXLOGIN_DATA_DIR") or ".data")
    try:
        stack = DevStack(
            data_dir,
            emulator_listen=os.environ.get("WXLOGIN_EMULATOR_LISTEN") or "127.0.0.1:9090",
            grpc_listen=os.environ.get("WXLOGIN_GRPC_LISTEN") or "127.0.0.1:50051",
            http_listen=os.environ.get("WXLOGIN_HTTP_LISTEN") or "127.0.0.1:8080",
            callers=True,
        )
        async with stack:
            print(banner(stack), flush=True)
            died = asyncio.ensure_future(stack.wait_for_exit())
            if not await until_stopped(stop, died):
                print(f"devstack: {died.result()}; stopping everything", file=sys.stderr)
                return 1
            print("devstack: stopping (edge, service, emulator, mongod)...", file=sys.stderr)
    except (ChildError, ConfigError, EmbeddedMongoError, OSError) as error:
        print(f"devstack: {error}", file=sys.stderr)
        return 1
    print("devstack: stopped", file=sys.stderr)
    return 0


def main() -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return asyncio.run(run())


if __name__ == "__main__":
    sys.exit(main())
