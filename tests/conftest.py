"""Real parts for every test: one mongod, one emulator, a grpc.aio server on port 0.

A 3-member replica set is there too, started only when a test asks for it.
"""

from __future__ import annotations

import asyncio
import base64
import faulthandler
import gc
import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
import pytest_asyncio

from devtools.replica_set import ReplicaSet
from runtime import logs
from service.app import RunningService, running_service
from service.embedded_mongo import EmbeddedMongo
from service.settings import Settings
from service.store import connect
from tests.driver_leaks import DriverLeakFilter
from tests.edge_support import FakeUpstream, fake_upstream
from tests.support import APPS, APPS_ENV, Emulator, child
from wxlogin.v1 import auth_pb2_grpc

SECRET_KEY = os.urandom(32)
# No test here needs a minute; one that hangs is dumped and interrupted long
# before CI's limit, instead of silently eating it.
HANG_SECONDS = float(os.environ.get("WXLOGIN_TEST_HANG_SECONDS", "180"))


_driver_leaks: DriverLeakFilter | None = None


@pytest.hookimpl(trylast=True)
def pytest_configure(config: pytest.Config) -> None:
    """Wrap pytest's unraisable hook (installed by now) so PyMongo's known socket leak passes.

    tests/driver_leaks.py says which leak, and why only that one.
    """
    global _driver_leaks
    _driver_leaks = DriverLeakFilter(sys.unraisablehook)
    sys.unraisablehook = _driver_leaks


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _driver_leaks is not None and _driver_leaks.tolerated:
        terminalreporter.write_line(
            f"tolerated {_driver_leaks.tolerated} socket(s) leaked by PyMongo's close mid-connect"
            " (tests/driver_leaks.py)"
        )


@pytest_asyncio.fixture(autouse=True)
async def _hang_guard() -> AsyncIterator[None]:
    """Dump every asyncio task's stack and interrupt the run if a test hangs."""
    loop = asyncio.get_running_loop()

    def dump_and_interrupt() -> None:
        # sys.__stderr__: the real one, not pytest's capture of this test's output.
        out = sys.__stderr__
        print(f"\n=== test still running after {HANG_SECONDS}s; tasks: ===", file=out)
        for task in asyncio.all_tasks(loop):
            task.print_stack(file=out)
        faulthandler.dump_traceback(file=out)
        os.kill(os.getpid(), signal.SIGINT)

    guard = loop.call_later(HANG_SECONDS, dump_and_interrupt)
    yield
    guard.cancel()


@pytest.fixture(autouse=True)
def _collect_on_the_loop_thread() -> Iterator[None]:
    """After each test, collect its garbage here, on the event loop's thread.

    Left to chance, a collection runs on whichever thread allocates next (a
    driver's monitor thread, grpc's), and a gRPC object finalized off its own
    thread there crashed a whole run once (segfault). The driver's DEBUG logs, the biggest
    allocator on those threads, stay off as in production (runtime/logs.py).
    """
    logs.quiet_driver_logs()
    yield
    gc.collect()


@pytest_asyncio.fixture(scope="session")
async def mongod(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    """A real mongod from the wheel; the TTL monitor runs every second."""
    mongo = EmbeddedMongo(tmp_path_factory.mktemp("mongo"), ttl_monitor_seconds=1)
    uri = await mongo.start()
    yield uri
    await mongo.stop()


@pytest_asyncio.fixture(scope="session")
async def replica_set(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ReplicaSet]:
    """A real 3-member replica set (uri, kill, restart, primary_index, ...); TTL monitor 1 s.

    Session-scoped fixtures start on first use, so a run without replica-set
    tests never pays for three more mongods. Tests that kill a member leave
    the set healthy again.
    """
    replicas = ReplicaSet(tmp_path_factory.mktemp("replica-set"), ttl_monitor_seconds=1)
    await replicas.start()
    yield replicas
    await replicas.stop()


@pytest_asyncio.fixture(scope="session")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """One HTTP client for the tests' own calls (dev endpoints, the edge)."""
    async with aiohttp.ClientSession() as session:
        yield session


@pytest_asyncio.fixture(scope="session")
async def emulator_url() -> AsyncIterator[str]:
    """The WeChat emulator, as its own process on a free local port."""
    async with child("emulator", "--listen", "127.0.0.1:0", "--apps", APPS_ENV) as (_, port):
        yield f"http://127.0.0.1:{port}"


@pytest_asyncio.fixture
async def emu(emulator_url: str, http: aiohttp.ClientSession) -> AsyncIterator[Emulator]:
    """The emulator's dev endpoints; faults are cleared after each test."""
    emulator = Emulator(emulator_url, http)
    await emulator.clear_faults()
    yield emulator
    await emulator.clear_faults()


def settings_on(mongodb_uri: str, emulator_url: str) -> Settings:
    """Settings for one test on this MongoDB: its own database, quick WeChat timeouts."""
    return Settings(
        apps=dict(APPS),
        secret_key=SECRET_KEY,
        grpc_listen="127.0.0.1:0",
        mongodb_uri=mongodb_uri,
        wechat_api_base=emulator_url,
        database=f"t_{uuid.uuid4().hex[:12]}",
        wechat_connect_timeout=1.0,
        wechat_total_timeout=2.0,
    )


@pytest.fixture
def settings(mongod: str, emulator_url: str) -> Settings:
    """Settings for one test: its own database, quick WeChat timeouts."""
    return settings_on(mongod, emulator_url)


@pytest.fixture
def replica_settings(replica_set: ReplicaSet, emulator_url: str) -> Settings:
    """Settings for one test on the replica set.

    A test module runs every service fixture (`start_service`, `start_stub`,
    `stub`, `db`) on the set by overriding `settings` with this one.
    """
    return settings_on(replica_set.uri, emulator_url)


ServiceFactory = Callable[..., AbstractAsyncContextManager[RunningService]]


@pytest.fixture
def start_service(settings: Settings) -> ServiceFactory:
    """Start a service with the test's settings, some of them overridden."""

    @asynccontextmanager
    async def start(**overrides: Any) -> AsyncIterator[RunningService]:
        async with running_service(
            replace(settings, **overrides), shutdown_grace=1.0, health_interval=0.2
        ) as running:
            yield running

    return start


StubFactory = Callable[..., AbstractAsyncContextManager[auth_pb2_grpc.AuthServiceStub]]


@pytest.fixture
def start_stub(start_service: ServiceFactory) -> StubFactory:
    """A gRPC stub of a service started with some of the test's settings overridden."""

    @asynccontextmanager
    async def start(**overrides: Any) -> AsyncIterator[auth_pb2_grpc.AuthServiceStub]:
        async with (
            start_service(**overrides) as running,
            grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel,
        ):
            yield auth_pb2_grpc.AuthServiceStub(channel)

    return start


@pytest_asyncio.fixture
async def service(start_service: ServiceFactory) -> AsyncIterator[RunningService]:
    """A running service on port 0 with the test's settings."""
    async with start_service() as running:
        yield running


@pytest_asyncio.fixture
async def stub(service: RunningService) -> AsyncIterator[auth_pb2_grpc.AuthServiceStub]:
    """A real gRPC client for the running service."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{service.port}") as channel:
        yield auth_pb2_grpc.AuthServiceStub(channel)


@pytest_asyncio.fixture
async def db(settings: Settings) -> AsyncIterator[Any]:
    """The test's database, read directly to check what is stored."""
    client = connect(settings.mongodb_uri or "")
    yield client[settings.database]
    await client.close()


def b64_secret_key() -> str:
    """The tests' WXLOGIN_SECRET_KEY as the environment carries it."""
    return base64.b64encode(SECRET_KEY).decode()


@pytest.fixture
def service_env(mongod: str, emulator_url: str, tmp_path: Path) -> dict[str, str]:
    """Environment for `python -m service` as a child process."""
    return {
        "WXLOGIN_APPS": APPS_ENV,
        "WXLOGIN_SECRET_KEY": b64_secret_key(),
        "WXLOGIN_GRPC_LISTEN": "127.0.0.1:0",
        "WXLOGIN_MONGODB_URI": mongod,
        "WXLOGIN_WECHAT_API_BASE": emulator_url,
        "WXLOGIN_DATA_DIR": str(tmp_path / "data"),
    }


@pytest_asyncio.fixture
async def fake() -> AsyncIterator[FakeUpstream]:
    """A scriptable fake AuthService on a real grpc.aio server (edge and client tests)."""
    async with fake_upstream() as upstream:
        yield upstream
