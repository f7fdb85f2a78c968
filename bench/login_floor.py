"""The floor under issue 18's Login target: how fast a Login with this store can be here.

`python -m bench.login_floor` (~6 min; `make bench` runs it after `bench.drivers`) starts a
dev stack (no callers file, no edge) and puts five gRPC servers in turn on the server core,
in alternating rounds, everything else on the other core:

- `bare`: the bare grpc.aio server of `make bench` (`bench/baselines.py`, asyncio's loop)
  answering a real LoginResponse's bytes, driven by h2load: the issue's yardstick,
  measured in this run. `bare-uvloop`: the same on uvloop, the loop the others run on.
- `wire`: a bare grpc.aio handler (uvloop) that decodes the LoginRequest, makes the one
  jscode2session call over aiohttp and answers a token: any Login before it stores anything.
- `store`: `wire` plus exactly the service's own writes through its own store
  (`service/store`, the service's settings): the code claimed before WeChat, then the
  user upserted, the session inserted, the cap kept and the answer kept, batched and
  durable. None of the service's policy: no servicer, caller check, metrics, request ids,
  load shedding, single-flight task, session cache or log lines.
- `service`: the service's Login.

The Login servers are driven alike by `bench.driver` (16 connections x 4 streams, a fresh
code per call, every status checked). CPU per login is the server's CPU over the measured
window divided by the logins answered in it (`procstat.Sampler`, as `make bench`). A run
during which other processes kept more than 0.3 cores busy is repeated once. It writes
`bench/results/login_floor.json` and the `bench:login-floor` block of bench/README.md.
`serve KIND` is one floor server (the runner starts them).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import signal
import statistics
import sys
import tempfile
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import grpc

from bench import loadgen, procstat
from bench.baselines import CannedGrpc, grpc_path
from bench.driver import write_bodies
from bench.fixtures import AUTH, Emulator, login_request
from bench.grpc_body import frame
from bench.plan import Cores
from bench.readme_block import rewrite_block
from devtools.children import Child
from devtools.devstack import DEV_APPS, DevStack, dev_secret_key
from runtime import event_loop
from runtime.event_loop import ASYNCIO, UVLOOP
from service.app import settings_store
from service.crypto import new_token, token_id
from service.records import LoginReplay, NewLogin
from service.settings import Settings
from service.store import CODE_LIFETIME, Store, code_id_of, connect
from wxlogin.v1 import auth_pb2

RESULTS = Path(__file__).parent / "results"
README = Path(__file__).parent / "README.md"
FLOORS = ("wire", "store")
SERVERS = ("bare", "bare-uvloop", "wire", "store", "service")
_FOREIGN_LIMIT = 0.3  # cores of other people's work that void a run (as make bench)
_LEASE = timedelta(seconds=30)


class _Floor:
    """One Login as bare as it can be: with `store` None it stops after WeChat's answer."""

    def __init__(
        self, settings: Settings, http: aiohttp.ClientSession, store: Store | None
    ) -> None:
        self._http = http
        self._store = store
        self._apps = settings.apps
        self._ttl = timedelta(seconds=settings.session_ttl)
        self._url = f"{settings.wechat_api_base.rstrip('/')}/sns/jscode2session"

    async def login(self, body: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        request = auth_pb2.LoginRequest.FromString(body)
        code_id = code_id_of(request.app_id, request.code)
        owner = secrets.token_hex(8)
        now = datetime.now(UTC)
        # The caller's deadline, as the service passes it down (asyncio's timeouts included).
        left = context.time_remaining()
        deadline = None if left is None else asyncio.get_running_loop().time() + left
        if self._store is not None:
            state = await self._store.claim_login_code(
                code_id,
                owner,
                lease_until=now + _LEASE,
                expires_at=now + CODE_LIFETIME,
                deadline=deadline,
            )
            if state is not None:
                await context.abort(grpc.StatusCode.ABORTED, "code claimed already")
        params = {
            "appid": request.app_id,
            "secret": self._apps[request.app_id],
            "js_code": request.code,
            "grant_type": "authorization_code",
        }
        async with self._http.get(self._url, params=params) as response:
            wx = json.loads(await response.read())
        if wx.get("errcode"):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, f"errcode {wx['errcode']}")
        token = new_token()
        reply = auth_pb2.LoginResponse(token=token)
        if self._store is not None:
            saved = await self._store.save_login(
                NewLogin(
                    app_id=request.app_id,
                    openid=wx["openid"],
                    unionid=wx.get("unionid"),
                    session_id=token_id(token),
                    session_key=wx["session_key"],
                    created_at=now,
                    expires_at=now + self._ttl,
                    deadline=deadline,
                    replay=LoginReplay(code_id, owner, token),
                )
            )
            reply.user.user_id = saved.session.user.user_id
            reply.new_user = saved.new_user
        return reply.SerializeToString()


async def _serve(kind: str) -> None:
    settings = Settings.from_env(os.environ)
    async with AsyncExitStack() as stack:
        http = await stack.enter_async_context(aiohttp.ClientSession())
        store = None
        if kind == "store":
            mongo = connect(settings.mongodb_uri or "")
            stack.push_async_callback(mongo.close)
            store = settings_store(mongo, settings, metrics=None)
            stack.push_async_callback(store.close)
        floor = _Floor(settings, http, store)
        server = grpc.aio.server()
        handler = grpc.method_handlers_generic_handler(
            "wxlogin.v1.AuthService", {"Login": grpc.unary_unary_rpc_method_handler(floor.login)}
        )
        server.add_generic_rpc_handlers((handler,))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        print(f"login floor ({kind}) listening on port {port}", flush=True)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        await server.stop(1)


@dataclass(frozen=True)
class _Rig:
    cores: Cores
    workdir: Path
    seconds: float
    warmup: float


@dataclass(frozen=True)
class _Server:
    """A server under test: its pid, and how one run of load is sent to it."""

    pid: int
    load: Callable[[float], Awaitable[loadgen.LoadResult]]  # expected logins/s -> result


async def _measured(name: str, server: _Server, rig: _Rig, expected: float) -> dict[str, Any]:
    """One run: answers/s, and the server's CPU per answer over the measured window."""
    for attempt in (1, 2):
        async with procstat.Sampler({name: server.pid}) as sampler:
            result = await server.load(expected)
        if result.failed or result.bad_status or result.exhausted or not result.requests:
            raise SystemExit(
                f"{name}: {result.failed} failed, {result.bad_status} bad status "
                f"{result.detail.get('grpc_errors', '')}, exhausted={result.exhausted}"
            )
        foreign = sampler.foreign_cores(result.seconds, result.window_end)
        if foreign <= _FOREIGN_LIMIT or attempt == 2:
            break
        print(f"{name}: other processes used {foreign:.2f} cores; measuring again", flush=True)
        await asyncio.sleep(5)
    usage = sampler.usage(result.seconds, result.window_end)
    return {
        "rps": result.rps,
        "cpu_ms_per_login": 1000 * usage[name].cpu_seconds / result.requests,
        "cpu_cores": usage[name].cpu_cores,
        "load_core_busy": usage[procstat.MACHINE].cpu_cores - usage[name].cpu_cores,
        "foreign_cores": foreign,
    }


async def _run(rounds: int, seconds: float) -> dict[str, dict[str, Any]]:
    """Each server on the server core in turn, `rounds` times."""
    cores = Cores.detect()
    if cores.pinned:
        os.sched_setaffinity(0, cores.load)  # the runner stays off the server core
    workdir = Path(tempfile.mkdtemp(prefix="wxlogin-floor-"))
    try:
        await procstat.wait_until_quiet(_FOREIGN_LIMIT, 60.0, print)
        return await _alternate(rounds, _Rig(cores, workdir, seconds, min(1.0, seconds)))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


async def _alternate(rounds: int, rig: _Rig) -> dict[str, dict[str, Any]]:
    os.environ[event_loop.VARIABLE] = UVLOOP
    async with AsyncExitStack() as exits:
        stack = await exits.enter_async_context(
            DevStack(
                rig.workdir / "stack",
                emulator_listen="127.0.0.1:0",
                grpc_listen="127.0.0.1:0",
                http_listen="127.0.0.1:0",
                with_edge=False,
                log_dir=rig.workdir / "logs",
            )
        )
        http = await exits.enter_async_context(aiohttp.ClientSession())
        emulator = Emulator(stack.emulator_url, http)
        service = next(child for child in stack.children if child.name == "service-1")
        assert service.process is not None
        servers = {
            **await _bares(rig, exits, stack.grpc_target, emulator),
            **await _floors(rig, exits, stack, emulator),
            "service": _Server(service.process.pid, _driven(rig, stack.grpc_target, emulator)),
        }
        if rig.cores.pinned:
            for pid in procstat.child_pids(os.getpid()):  # mongod, the emulator, ours
                procstat.pin(pid, rig.cores.load)
        kept = _KeptAnswers(stack.mongodb_uri)
        exits.push_async_callback(kept.close)
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in servers}
        for number in range(rounds):
            order = list(servers) if number % 2 == 0 else list(reversed(servers))
            for name in order:
                server = servers[name]
                expected = runs[name][-1]["rps"] if runs[name] else 2500.0
                before = await kept.count()
                if rig.cores.pinned:
                    procstat.pin(server.pid, rig.cores.server)
                try:
                    run = await _measured(name, server, rig, expected)
                finally:
                    if rig.cores.pinned:
                        procstat.pin(server.pid, rig.cores.load)
                run["answers_kept"] = await kept.count() - before
                runs[name].append(run)
                print(f"round {number + 1} {name:11} {run}", flush=True)
    return {name: _merged(each) for name, each in runs.items()}


def _driven(rig: _Rig, target: str, emulator: Emulator) -> Callable[[float], Awaitable[Any]]:
    """bench.driver against a Login server, with codes minted before the run."""

    async def load(expected: float) -> loadgen.LoadResult:
        # Single-use codes: twice the rate seen last, as make bench mints them.
        count = max(200, int(2 * expected * (rig.warmup + rig.seconds)))
        codes = await emulator.codes(count)
        bodies = write_bodies(rig.workdir / "login.bodies", [login_request(c) for c in codes])
        return await loadgen.driver(
            target,
            AUTH + "Login",
            bodies,
            channels=16,
            streams=4,
            duration=rig.seconds,
            warmup=rig.warmup,
            cpus=rig.cores.load,
        )

    return load


async def _bares(
    rig: _Rig, exits: AsyncExitStack, service: str, emulator: Emulator
) -> dict[str, _Server]:
    """The bare grpc.aio server on each loop, answering a real LoginResponse, via h2load."""
    request = login_request((await emulator.codes(1))[0])
    async with grpc.aio.insecure_channel(service) as channel:
        call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(AUTH + "Login")
        answer = await call(request, timeout=10)
    canned = rig.workdir / "canned.json"
    canned.write_text(json.dumps({"grpc": {"login": CannedGrpc(answer).as_json()}}))
    body = rig.workdir / "bare.grpc"
    body.write_bytes(frame(login_request("the-bare-server-never-reads-it")))
    servers = {}
    for name, loop in (("bare", ASYNCIO), ("bare-uvloop", UVLOOP)):
        child = Child(
            name,
            ["bench.baselines", "grpc", "--canned", str(canned), "--loop", loop],
            {**os.environ},
        )
        exits.push_async_callback(child.stop)
        port = await child.start()
        assert child.process is not None
        url = f"http://127.0.0.1:{port}{grpc_path('login')}"

        async def load(expected: float, url: str = url) -> loadgen.LoadResult:
            return await loadgen.h2load(
                url,
                body,
                clients=16,
                streams=4,
                workdir=rig.workdir,
                duration=rig.seconds,
                warmup=rig.warmup,
                cpus=rig.cores.load,
            )

        servers[name] = _Server(child.process.pid, load)
    return servers


async def _floors(
    rig: _Rig, exits: AsyncExitStack, stack: DevStack, emulator: Emulator
) -> dict[str, _Server]:
    """The two floor servers (`serve KIND`), on the stack's mongod and emulator."""
    env = {
        **os.environ,
        "WXLOGIN_APPS": DEV_APPS,
        "WXLOGIN_WECHAT_API_BASE": stack.emulator_url,
        "WXLOGIN_MONGODB_URI": stack.mongodb_uri,
        "WXLOGIN_SECRET_KEY": dev_secret_key(stack.data_dir),
    }
    servers = {}
    for kind in FLOORS:
        child = Child(kind, ["bench.login_floor", "serve", kind], env)
        exits.push_async_callback(child.stop)
        port = await child.start()
        assert child.process is not None
        servers[kind] = _Server(child.process.pid, _driven(rig, f"127.0.0.1:{port}", emulator))
    return servers


class _KeptAnswers:
    """How many logins have their answer kept in login_codes: the proof a server stored them."""

    def __init__(self, uri: str) -> None:
        self._client = connect(uri)
        self._codes = self._client[Settings.database].login_codes

    async def count(self) -> int:
        return int(await self._codes.count_documents({"state": "done"}))

    async def close(self) -> None:
        await self._client.close()


def _merged(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Rounds merged by their median (one disturbed round moves it least); each round kept."""
    return {
        "rps": round(statistics.median(run["rps"] for run in runs), 1),
        "cpu_ms_per_login": round(statistics.median(run["cpu_ms_per_login"] for run in runs), 3),
        "cpu_cores": round(statistics.median(run["cpu_cores"] for run in runs), 3),
        "load_core_busy": round(statistics.median(run["load_core_busy"] for run in runs), 3),
        "foreign_cores": round(max(run["foreign_cores"] for run in runs), 3),
        "answers_kept": sum(run["answers_kept"] for run in runs),
        "rounds_rps": [round(run["rps"], 1) for run in runs],
    }


_TITLES = {
    "bare": "bare grpc.aio, asyncio's loop (the yardstick), h2load",
    "bare-uvloop": "bare grpc.aio on uvloop, h2load",
    "wire": "floor `wire`: bare handler + jscode2session over aiohttp, nothing stored",
    "store": "floor `store`: `wire` + the service's store (claim, save, cap, kept answer)",
    "service": "the service's `Login` (no callers file)",
}


def table(result: Mapping[str, Any]) -> str:
    """The result as the Markdown block of bench/README.md."""
    figures = result["results"]
    rows = [
        f"Run of {result['measured_at']}: {result['rounds']} alternating rounds of "
        f"{result['seconds']:.0f} s per server, the server alone on the server core; Login "
        "servers on uvloop, driven by bench.driver 16 conn x 4 streams with fresh codes; "
        "medians over the rounds.",
        "",
        "| Server | answers/s | rounds | server CPU (cores) | CPU ms per answer "
        "| x bare (asyncio) | x bare (uvloop) |",
        "|---|--:|---|--:|--:|--:|--:|",
    ]
    for name in SERVERS:
        entry = figures[name]
        rounds = ", ".join(f"{rps:,.0f}" for rps in entry["rounds_rps"])
        rows.append(
            f"| {_TITLES[name]} | {entry['rps']:,.0f} | {rounds} | {entry['cpu_cores']:.2f} "
            f"| {entry['cpu_ms_per_login']:.2f} | **{entry['ratio']:.2f}** "
            f"| {entry['ratio_uvloop']:.2f} |"
        )
    return "\n".join([*rows, ""])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.login_floor", description=__doc__)
    parser.add_argument("mode", nargs="?", choices=("run", "serve"), default="run")
    parser.add_argument("kind", nargs="?", choices=FLOORS, default="store")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--out", type=Path, default=RESULTS / "login_floor.json")
    args = parser.parse_args(argv)
    if args.mode == "serve":
        event_loop.run(_serve(args.kind), UVLOOP)
        return 0
    figures = asyncio.run(_run(args.rounds, args.seconds))
    for entry in figures.values():
        entry["ratio"] = round(entry["rps"] / figures["bare"]["rps"], 3)
        entry["ratio_uvloop"] = round(entry["rps"] / figures["bare-uvloop"]["rps"], 3)
    result: dict[str, Any] = {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "rounds": args.rounds,
        "seconds": args.seconds,
        "results": figures,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(table(result))
    if args.out == RESULTS / "login_floor.json":
        rewrite_block(README, "bench:login-floor", table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
