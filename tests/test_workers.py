"""WXLOGIN_WORKERS=N: N worker processes on one address, supervised, drained together."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from clients.edge.config import EdgeConfig
from devtools.replica_set import ReplicaSet
from runtime.config import ConfigError, ListenAddress, parse_workers
from runtime.serve import parse_drain_seconds
from runtime.workers import Program, check_workers, is_worker, worker_environment
from service.settings import Settings
from service.store import connect
from tests.conftest import b64_secret_key
from tests.process_support import (
    alive,
    children_of,
    connections_per_pid,
    listening_pids,
    listening_sockets,
    still_listening,
    until,
)
from tests.support import (
    APP_A,
    APPS_ENV,
    Emulator,
    caller_table,
    check_reason,
    child,
    edge_env,
    run_to_exit,
)
from tests.test_access_tokens import get_token, token_emulator
from tests.test_session_caps import live_in_db
from wxlogin.v1 import auth_pb2, auth_pb2_grpc

NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVING = health_pb2.HealthCheckResponse.SERVING
# A drain that outlasts any test; a SIGINT while draining ends it (runtime/serve.drain).
LONG_DRAIN = {"WXLOGIN_DRAIN_SECONDS": "120"}
# Separate TCP connections per channel: grpc shares one between equal channels otherwise.
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]


@dataclass
class Workers:
    """A running worker parent: its process, the shared port, its workers' pids."""

    process: asyncio.subprocess.Process
    port: int
    pids: list[int]


@asynccontextmanager
async def workers(module: str, env: dict[str, str], count: int = 2) -> AsyncIterator[Workers]:
    """`python -m MODULE` with WXLOGIN_WORKERS=count, once every worker listens."""
    async with child(module, env={**env, "WXLOGIN_WORKERS": str(count)}) as (process, port):
        pids = children_of(process.pid)
        assert len(pids) == count, pids
        yield Workers(process, port, pids)


@asynccontextmanager
async def spread(running: Workers) -> AsyncIterator[list[auth_pb2_grpc.AuthServiceStub]]:
    """Stubs over connections that reach every worker (the kernel picks one per connection)."""
    async with spread_channels(running) as channels:
        yield [auth_pb2_grpc.AuthServiceStub(channel) for channel in channels]


@asynccontextmanager
async def spread_channels(running: Workers) -> AsyncIterator[list[grpc.aio.Channel]]:
    """Channels, each its own connection, until every worker holds at least one of them."""
    async with AsyncExitStack() as stack:
        channels = []
        for _ in range(60):
            channel = await stack.enter_async_context(
                grpc.aio.insecure_channel(f"127.0.0.1:{running.port}", options=OWN_CONNECTION)
            )
            await asyncio.wait_for(channel.channel_ready(), 10)
            channels.append(channel)
            if min(connections_per_pid(running.port, running.pids).values()) > 0:
                break
        assert min(connections_per_pid(running.port, running.pids).values()) > 0
        yield channels


async def login(stub: auth_pb2_grpc.AuthServiceStub, code: str) -> auth_pb2.LoginResponse:
    return await stub.Login(auth_pb2.LoginRequest(app_id=APP_A, code=code), timeout=30)


async def fresh_login(port: int, emu: Emulator, user: str) -> auth_pb2.LoginResponse:
    """A login over a connection of its own (a new accept on the shared port)."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=OWN_CONNECTION) as channel:
        return await login(auth_pb2_grpc.AuthServiceStub(channel), await emu.code(APP_A, user))


async def health(stub_channel: grpc.aio.Channel) -> int:
    reply = await health_pb2_grpc.HealthStub(stub_channel).Check(
        health_pb2.HealthCheckRequest(), timeout=5
    )
    return int(reply.status)


async def fresh_health(port: int) -> int:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=OWN_CONNECTION) as channel:
        return await health(channel)


# -- configuration --------------------------------------------------------------------------


def test_workers_and_drain_are_read_and_checked() -> None:
    """WXLOGIN_WORKERS: 1 by default, auto = usable CPUs; WXLOGIN_DRAIN_SECONDS: 5, 0 allowed."""
    assert parse_workers("WXLOGIN_WORKERS", None) == 1
    assert parse_workers("WXLOGIN_WORKERS", "3") == 3
    assert parse_workers("WXLOGIN_WORKERS", " AUTO ") == len(os.sched_getaffinity(0))
    for bad in ("0", "-1", "two", "1.5", "nan"):
        with pytest.raises(ConfigError) as caught:
            parse_workers("WXLOGIN_WORKERS", bad)
        assert caught.value.variable == "WXLOGIN_WORKERS"
    assert parse_drain_seconds({}) == 5
    assert parse_drain_seconds({"WXLOGIN_DRAIN_SECONDS": "0"}) == 0
    assert parse_drain_seconds({"WXLOGIN_DRAIN_SECONDS": "2.5"}) == 2.5
    for bad in ("-1", "soon", "inf", "301"):
        with pytest.raises(ConfigError) as caught:
            parse_drain_seconds({"WXLOGIN_DRAIN_SECONDS": bad})
        assert caught.value.variable == "WXLOGIN_DRAIN_SECONDS"
    edge = EdgeConfig.from_env({"WXLOGIN_WORKERS": "2", "WXLOGIN_DRAIN_SECONDS": "1"})
    assert (edge.workers, edge.drain_seconds) == (2, 1)


def test_several_workers_need_an_external_mongodb() -> None:
    """N > 1 workers with the embedded mongod would share one data dir: refused, naming WORKERS."""
    env = {"WXLOGIN_APPS": APPS_ENV, "WXLOGIN_SECRET_KEY": b64_secret_key()}
    assert Settings.from_env({**env, "WXLOGIN_WORKERS": "1"}).workers == 1
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({**env, "WXLOGIN_WORKERS": "2"})
    assert caught.value.variable == "WXLOGIN_WORKERS"
    uri = {**env, "WXLOGIN_MONGODB_URI": "mongodb://127.0.0.1:1", "WXLOGIN_WORKERS": "2"}
    assert Settings.from_env(uri).workers == 2


@pytest.mark.parametrize("module", ["service", "clients.edge"])
async def test_a_bad_value_stops_the_start_naming_the_variable(
    module: str, service_env: dict[str, str]
) -> None:
    """A bad WXLOGIN_WORKERS or WXLOGIN_DRAIN_SECONDS: exit 2 with one line naming it."""
    for variable, value in (("WXLOGIN_WORKERS", "lots"), ("WXLOGIN_DRAIN_SECONDS", "-3")):
        exited = await run_to_exit(module, env={**service_env, variable: value})
        assert exited.returncode == 2
        assert variable in exited.stderr


# -- one address, several processes ------------------------------------------------------------


async def test_two_workers_serve_on_one_address(service_env: dict[str, str], emu: Emulator) -> None:
    """Both workers listen on the announced port; connections reach both and logins work."""
    async with workers("service", service_env) as running:
        assert listening_pids(running.port, running.pids) == set(running.pids)
        assert running.process.pid not in listening_pids(running.port, [running.process.pid])
        async with spread(running) as stubs:
            user = f"two-{uuid.uuid4().hex[:8]}"
            replies = [await login(stub, await emu.code(APP_A, user)) for stub in stubs]
        assert len({reply.user.user_id for reply in replies}) == 1


async def test_a_killed_worker_is_replaced_and_logins_go_on(
    service_env: dict[str, str], emu: Emulator
) -> None:
    """kill -9 of a worker: the other serves meanwhile, a new one takes its place, it is logged."""
    async with workers("service", service_env) as running:
        victim, survivor = running.pids
        victim_listeners = listening_sockets(running.port, victim)
        assert victim_listeners
        os.kill(victim, signal.SIGKILL)
        await until(lambda: not alive(victim))
        # Its listener outlives the zombie by a moment (see still_listening): a
        # connection the kernel hands it then is reset (CI caught that once).
        await until(lambda: not still_listening(running.port, victim_listeners))
        user = f"kill-{uuid.uuid4().hex[:8]}"
        for _ in range(5):  # only the survivor (or the replacement) is listening now
            assert (await fresh_login(running.port, emu, user)).token
        await until(
            lambda: len(listening_pids(running.port, children_of(running.process.pid))) == 2
        )
        replaced = children_of(running.process.pid)
        assert survivor in replaced
        assert victim not in replaced
        running.pids = replaced
        async with spread(running) as stubs:
            for stub in stubs:
                assert (await login(stub, await emu.code(APP_A, user))).token
        running.process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(running.process.wait(), 60) == 0
        assert running.process.stderr is not None
        log = (await running.process.stderr.read()).decode()
    assert f"(pid {victim}) was killed by SIGKILL" in log
    assert "replacing it" in log


async def test_sigterm_drains_every_worker_together(
    service_env: dict[str, str], emu: Emulator
) -> None:
    """SIGTERM to parent and workers: all NOT_SERVING yet answering; SIGINT: all exit, parent 0."""
    async with workers("service", {**service_env, **LONG_DRAIN}) as running:
        async with spread_channels(running) as channels:
            running.process.send_signal(signal.SIGTERM)
            for pid in running.pids:  # as systemd's default stop does: every process of the unit
                os.kill(pid, signal.SIGTERM)
            # The connections reach every worker: all of them must say NOT_SERVING.
            for _ in range(300):
                statuses = {await health(channel) for channel in channels}
                if statuses == {NOT_SERVING}:
                    break
                await asyncio.sleep(0.1)
            assert statuses == {NOT_SERVING}
            user = f"drain-{uuid.uuid4().hex[:8]}"
            for channel in channels:  # the old connections, to both workers, still answer
                stub = auth_pb2_grpc.AuthServiceStub(channel)
                assert (await login(stub, await emu.code(APP_A, user))).token
            assert (await fresh_login(running.port, emu, user)).token  # and new ones are accepted
            assert await fresh_health(running.port) == NOT_SERVING
        assert running.process.returncode is None
        running.process.send_signal(signal.SIGINT)  # forwarded: the drain ends
        assert await asyncio.wait_for(running.process.wait(), 60) == 0
        assert not any(alive(pid) for pid in running.pids)


async def test_no_worker_outlives_a_killed_parent(service_env: dict[str, str]) -> None:
    """SIGKILL of the parent: the kernel tells every worker (PR_SET_PDEATHSIG); they exit."""
    async with workers("service", service_env) as running:
        running.process.kill()
        await running.process.wait()
        await until(lambda: not any(alive(pid) for pid in running.pids))


async def test_two_edge_workers_on_one_address(service_env: dict[str, str], emu: Emulator) -> None:
    """The edge with WXLOGIN_WORKERS=2: both listen on the port, /v1/login answers, drains."""
    async with child("service", env=service_env) as (_, grpc_port):
        env = edge_env(grpc_port, {"WXLOGIN_EDGE_LOGIN_RATE": "0", **LONG_DRAIN})
        async with workers("clients.edge", env) as running:
            assert listening_pids(running.port, running.pids) == set(running.pids)
            base = f"http://127.0.0.1:{running.port}"
            user = f"edge-{uuid.uuid4().hex[:8]}"
            connector = aiohttp.TCPConnector(force_close=True)  # a new connection per request
            async with aiohttp.ClientSession(connector=connector) as http:
                for _ in range(4):
                    body = {"app_id": APP_A, "code": await emu.code(APP_A, user)}
                    async with http.post(base + "/v1/login", json=body) as response:
                        assert response.status == 200
                running.process.send_signal(signal.SIGTERM)
                for _ in range(300):  # until no worker is ready (each request: a new connection)
                    statuses = []
                    for _ in range(6):
                        async with http.get(base + "/readyz") as response:
                            statuses.append(response.status)
                    if set(statuses) == {503}:
                        break
                    await asyncio.sleep(0.1)
                assert set(statuses) == {503}
                body = {"app_id": APP_A, "code": await emu.code(APP_A, user)}
                async with http.post(base + "/v1/login", json=body) as response:
                    assert response.status == 200  # still serving while draining
            running.process.send_signal(signal.SIGINT)  # forwarded: the drain ends
            code = await asyncio.wait_for(running.process.wait(), 60)
            assert running.process.stderr is not None
            assert code == 0, (await running.process.stderr.read()).decode()[-3000:]
            assert not any(alive(pid) for pid in running.pids)


# -- what works across processes works across workers -------------------------------------------


async def test_one_code_twenty_requests_across_workers(
    service_env: dict[str, str], mongod: str, emu: Emulator
) -> None:
    """Idempotent login: 20 concurrent requests over both workers, 1 jscode2session, 1 answer."""
    async with workers("service", service_env) as running, spread(running) as stubs:
        user = f"twenty-workers-{datetime.now(UTC).timestamp()}"
        code = await emu.code(APP_A, user)
        await emu.fault(latency_ms=300, times=1)
        before = await emu.requests_seen()
        replies = await asyncio.gather(*(login(stubs[i % len(stubs)], code) for i in range(20)))
        assert await emu.requests_seen() == before + 1
        assert len({reply.SerializeToString() for reply in replies}) == 1


async def test_the_cap_holds_across_workers(
    service_env: dict[str, str], mongod: str, emu: Emulator
) -> None:
    """30 concurrent logins of one user over both workers, cap 5: exactly 5 live sessions."""
    env = {**service_env, "WXLOGIN_MAX_SESSIONS_PER_USER": "5"}
    async with workers("service", env) as running, spread(running) as stubs:
        user = f"cap-workers-{datetime.now(UTC).timestamp()}"
        codes = [await emu.code(APP_A, user) for _ in range(30)]
        replies = await asyncio.gather(
            *(login(stubs[i % len(stubs)], code) for i, code in enumerate(codes))
        )
        client = connect(mongod)
        try:  # the workers use the default database name
            assert await live_in_db(client["wxlogin"], replies[0].user.user_id) == 5
        finally:
            await client.close()


async def test_one_access_token_fetcher_across_workers(service_env: dict[str, str]) -> None:
    """The access-token broker: 20 GetAccessToken over both workers, one stable_token, one token."""
    app = "wxtok" + uuid.uuid4().hex[:12]
    apps = {app: "secret-" + uuid.uuid4().hex[:8]}
    async with token_emulator(apps) as wechat:
        env = {
            **service_env,
            "WXLOGIN_APPS": f"{app}:{apps[app]}",
            "WXLOGIN_WECHAT_API_BASE": wechat.base,
        }
        async with workers("service", env) as running, spread(running) as stubs:
            replies = await asyncio.gather(
                *(get_token(stubs[i % len(stubs)], app) for i in range(20))
            )
            assert len({reply.access_token for reply in replies}) == 1
            assert await wechat.stable_token_requests() == 1


async def test_a_revocation_reaches_every_worker(
    replica_set: ReplicaSet, service_env: dict[str, str], emu: Emulator
) -> None:
    """On a replica set every worker watches revocations; revoked via one, refused by all.

    The workers' session cache keeps its 5 s bound, so the poll below would pass
    without the stream too; that each worker opened its stream is what the log
    says (tests/test_revocation_stream.py proves the stream beats the bound).
    """
    env = {**service_env, "WXLOGIN_MONGODB_URI": replica_set.uri}
    async with workers("service", env) as running:
        async with spread(running) as stubs:
            user = f"revoke-workers-{uuid.uuid4().hex[:8]}"
            token = (await login(stubs[0], await emu.code(APP_A, user))).token
            for stub in stubs:  # cached by every worker now
                assert await check_reason(stub, token) == "OK"
            await stubs[0].RevokeSession(auth_pb2.RevokeSessionRequest(token=token))
            for stub in stubs:
                for _ in range(200):
                    if await check_reason(stub, token) != "OK":
                        break
                    await asyncio.sleep(0.05)
                assert await check_reason(stub, token) == "SESSION_INVALID"
        running.process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(running.process.wait(), 60) == 0
        assert running.process.stderr is not None
        log = (await running.process.stderr.read()).decode()
    assert "no change streams" not in log


async def test_a_worker_that_keeps_failing_is_restarted_with_growing_delays(
    service_env: dict[str, str], tmp_path: Path
) -> None:
    """A replacement that cannot start (callers file broken): 0.5 s, 1 s, ... then it is back."""
    callers = tmp_path / "callers.toml"
    good = caller_table("ops", "ops-caller-key-0123456789")
    callers.write_text(good)
    env = {**service_env, "WXLOGIN_CALLERS_FILE": str(callers)}
    async with workers("service", env) as running:
        assert running.process.stderr is not None
        callers.write_text("[callers.ops\nbroken")  # what the next worker start reads
        os.kill(running.pids[0], signal.SIGKILL)
        delays: list[float] = []
        for _ in range(2000):  # bounded: the parent's log lines until three restarts
            line = await asyncio.wait_for(running.process.stderr.readline(), 60)
            found = re.search(rb"replacing it(?: in ([\d.]+)s)?", line)
            if found:
                delays.append(float(found.group(1) or 0))
                if len(delays) == 3:
                    break
        assert len(delays) == 3, delays
        # The killed worker may have lived long enough to be replaced at once (0);
        # its failing replacements wait longer each time.
        assert delays == sorted(delays), delays
        assert delays[-1] > delays[1] > 0, delays
        callers.write_text(good)
        for _ in range(2000):
            line = await asyncio.wait_for(running.process.stderr.readline(), 60)
            if b"is back" in line:
                break
        assert b"is back" in line
        await until(
            lambda: len(listening_pids(running.port, children_of(running.process.pid))) == 2
        )


def test_each_worker_gets_the_shared_address_and_its_own_metrics_port() -> None:
    """Worker i: the parent's address, metrics on port + i (0 stays 0); past 65535 it fails."""
    program = Program(
        name="service",
        argv=["x"],
        ready_line="listening on port {port}",
        listen_variable="WXLOGIN_GRPC_LISTEN",
        listen=ListenAddress("127.0.0.1", 0),
        metrics_variable="WXLOGIN_METRICS_LISTEN",
        metrics=ListenAddress("0.0.0.0", 9100),
    )
    shared = ListenAddress("127.0.0.1", 50123)
    envs = [worker_environment(program, index, shared, {"KEEP": "1"}) for index in range(3)]
    assert [env["WXLOGIN_GRPC_LISTEN"] for env in envs] == ["127.0.0.1:50123"] * 3
    assert [env["WXLOGIN_METRICS_LISTEN"] for env in envs] == [
        "0.0.0.0:9100",
        "0.0.0.0:9101",
        "0.0.0.0:9102",
    ]
    assert all(env["KEEP"] == "1" and is_worker(env) for env in envs)
    assert not is_worker({"KEEP": "1"})
    any_port = replace(program, metrics=ListenAddress("127.0.0.1", 0))
    assert worker_environment(any_port, 2, shared, {})["WXLOGIN_METRICS_LISTEN"] == "127.0.0.1:0"
    check_workers(replace(program, metrics=ListenAddress("::1", 65535)), 1)
    with pytest.raises(ConfigError) as caught:
        check_workers(replace(program, metrics=ListenAddress("::1", 65535)), 2)
    assert caught.value.variable == "WXLOGIN_WORKERS"


async def test_every_worker_serves_its_own_metrics(service_env: dict[str, str]) -> None:
    """WXLOGIN_METRICS_LISTEN with 2 workers: each logs its /metrics port and answers there."""
    env = {**service_env, "WXLOGIN_METRICS_LISTEN": "127.0.0.1:0"}
    async with workers("service", env) as running:
        assert running.process.stderr is not None
        ports: set[int] = set()
        for _ in range(2000):
            line = await asyncio.wait_for(running.process.stderr.readline(), 60)
            found = re.search(rb"metrics on port (\d+)", line)
            if found:
                ports.add(int(found.group(1)))
                if len(ports) == 2:
                    break
        assert len(ports) == 2
        async with aiohttp.ClientSession() as http:
            for port in ports:
                async with http.get(f"http://127.0.0.1:{port}/metrics") as response:
                    assert response.status == 200
                    assert "wxlogin_rpcs_total" in await response.text()
