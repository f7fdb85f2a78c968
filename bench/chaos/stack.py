"""One scenario's stack: a mongod the scenario controls, and the dev stack's emulator, service
and edge on free loopback ports, each writing its log to a file.

The mongod (or replica set) is started here and handed to `DevStack` as
WXLOGIN_MONGODB_URI, so a scenario can SIGKILL and restart it without reaching into
the dev stack, which then owns only its Python children.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench.fixtures import Emulator
from devtools.devstack import DevStack
from service.embedded_mongo import EmbeddedMongo


@dataclass
class Running:
    """A started stack: where each part listens, its processes, its logs."""

    dev: DevStack
    emulator: Emulator
    http: aiohttp.ClientSession
    log_dir: Path
    mongo: EmbeddedMongo | None = None  # None when the scenario brought its own database
    pids: dict[str, int] = field(default_factory=dict)  # "service-1", "edge", "emulator"

    @property
    def grpc_target(self) -> str:
        return self.dev.grpc_target

    @property
    def edge_url(self) -> str:
        return self.dev.edge_url

    def logs(self, *names: str) -> dict[str, str]:
        """The named children's log files (read after the stack stopped: they write in blocks)."""
        found = {}
        for name in names:
            path = self.log_dir / f"{name}.log"
            found[name] = path.read_text(errors="replace") if path.exists() else ""
        return found

    async def emulator_json(
        self, method: str, path: str, body: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """Call one of the emulator's /_dev endpoints; its JSON answer."""
        async with self.http.request(method, self.dev.emulator_url + path, json=body) as answer:
            payload: dict[str, Any] = await answer.json()
            if answer.status != 200:
                raise RuntimeError(f"emulator {method} {path} answered {answer.status}: {payload}")
            return payload


def clean_env() -> dict[str, str]:
    """This process's environment without WXLOGIN_*: the stack is configured here alone."""
    return {key: value for key, value in os.environ.items() if not key.startswith("WXLOGIN_")}


# WXLOGIN_MAX_SESSIONS_PER_USER in the chaos stacks (its largest allowed value).
SURVIVAL_CAP = 10_000


@asynccontextmanager
async def running(
    workdir: Path,
    name: str,
    http: aiohttp.ClientSession,
    *,
    mongodb_uri: str | None = None,
) -> AsyncIterator[Running]:
    """Start a stack under workdir/name (embedded mongod unless `mongodb_uri`); stop it all."""
    data = workdir / name
    log_dir = data / "logs"
    async with AsyncExitStack() as exits:
        mongo = None
        if mongodb_uri is None:
            mongo = EmbeddedMongo(data / "mongod")
            # Registered before starting, so a mongod that half-started is stopped too.
            exits.push_async_callback(mongo.stop)
            mongodb_uri = await mongo.start()
        env = {
            **clean_env(),
            "WXLOGIN_MONGODB_URI": mongodb_uri,
            "WXLOGIN_LOG_LEVEL": "INFO",
            # The fault scenarios check that every acknowledged token still works.
            # A session the per-user cap ended (issue 12: the 11th login of a user
            # ends its oldest) would count as lost, and the load logs 20 users per
            # worker in hundreds of times: the cap is set above any user's logins in
            # a run. The cap itself is tested in tests/test_session_caps.py.
            "WXLOGIN_MAX_SESSIONS_PER_USER": str(SURVIVAL_CAP),
        }
        dev = await exits.enter_async_context(
            DevStack(
                data,
                env=env,
                emulator_listen="127.0.0.1:0",
                grpc_listen="127.0.0.1:0",
                http_listen="127.0.0.1:0",
                log_dir=log_dir,
            )
        )
        if not dev.edge_url:
            raise RuntimeError("the edge (clients.edge) did not start")
        pids = {
            child.name: child.process.pid for child in dev.children if child.process is not None
        }
        yield Running(dev, Emulator(dev.emulator_url, http), http, log_dir, mongo, pids)
