"""How fast can a durable, idempotent Login be here at all? The floor under issue 18's target.

`python -m bench.login_floor` (~4 min; `make bench` runs it last) starts a dev stack (no
callers file, no edge) and, beside its service, two floor servers, each a bare `grpc.aio`
generic handler with none of the service's policy (no servicer, caller check, metrics,
request ids, load shedding, single flight, session cache, deadlines or log lines):

- `wire`: decode the LoginRequest, one jscode2session over aiohttp, answer a token. What
  any Login costs before it stores anything.
- `store`: the same, plus exactly the service's own writes through its own store
  (`service/store`): the code claimed, then the user upserted, the session inserted, the
  cap kept and the answer kept, batched and durable as in production. What a Login that
  keeps every durability property costs with nothing else around it.

The service and the floors take the server core in turn (everything else gets the other),
driven alike by `bench.driver` with fresh codes (16 connections x 4 streams), in
alternating rounds. It reports logins/s and the server process's CPU per login for each,
and their ratio to the bare grpc.aio server's answers/s in the last `make bench` run
(`bench/results/latest.json`); it writes `bench/results/login_floor.json` and the
`bench:login-floor` block of bench/README.md. `serve KIND` is one floor server.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import secrets
import shutil
import signal
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import grpc

from bench import loadgen, procstat
from bench.driver import write_bodies
from bench.fixtures import AUTH, Emulator, login_request
from bench.plan import Cores
from bench.readme_block import rewrite_block
from devtools.children import Child
from devtools.devstack import DEV_APPS, DevStack, dev_secret_key
from runtime import event_loop
from runtime.event_loop import UVLOOP
from service.crypto import SessionKeyCipher, new_token, token_id
from service.records import LoginReplay, NewLogin
from service.settings import Settings
from service.store import Store, connect
from wxlogin.v1 import auth_pb2

RESULTS = Path(__file__).parent / "results"
README = Path(__file__).parent / "README.md"
FLOORS = ("wire", "store")


class _Floor:
    """One Login as bare as it can be: `store` False stops after WeChat's answer."""

    def __init__(
        self, settings: Settings, http: aiohttp.ClientSession, store: Store | None
    ) -> None:
        self._http = http
        self._store = store
        self._ttl = timedelta(seconds=settings.session_ttl)
        app_id, secret = next(iter(settings.apps.items()))
        self._url = f"{settings.wechat_api_base.rstrip('/')}/sns/jscode2session"
        self._params = {"appid": app_id, "secret": secret, "grant_type": "authorization_code"}

    async def login(self, body: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        request = auth_pb2.LoginRequest.FromString(body)
        code_id = hashlib.sha256(f"{request.app_id}\n{request.code}".encode()).hexdigest()
        owner = secrets.token_hex(8)
        now = datetime.now(UTC)
        if self._store is not None:
            state = await self._store.claim_login_code(
                code_id, owner, lease_until=now + timedelta(seconds=30), expires_at=now + self._ttl
            )
            if state is not None:
                await context.abort(grpc.StatusCode.ABORTED, "code claimed already")
        async with self._http.get(self._url, params={**self._params, "js_code": request.code}) as r:
            wx = json.loads(await r.read())
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
                    deadline=None,
                    replay=LoginReplay(code_id, owner, token),
                )
            )
            reply.user.user_id = saved.session.user.user_id
            reply.new_user = saved.new_user
        return reply.SerializeToString()


async def _serve(kind: str) -> None:
    settings = Settings.from_env(os.environ)
    async with aiohttp.ClientSession() as http:
        store = None
        if kind == "store":
            mongo = connect(settings.mongodb_uri or "")
            store = Store(
                mongo[settings.database],
                SessionKeyCipher(settings.secret_key, settings.old_secret_keys),
                batch_interval=settings.login_batch_interval,
                max_waiting_logins=settings.max_waiting_logins,
                max_sessions_per_user=settings.max_sessions_per_user,
            )
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
        if store is not None:
            await store.close()


async def _measure(
    name: str, pid: int, target: str, emulator: Emulator, rig: _Rig, expected_rps: float
) -> dict[str, Any]:
    """One run of `bench.driver` against `target`: logins/s and `pid`'s CPU per login."""
    warmup, seconds = rig.warmup, rig.seconds
    # Single-use codes, minted before the run: twice the rate seen last, as bench does.
    count = max(200, int(2 * expected_rps * (warmup + seconds)))
    codes = [login_request(code) for code in await emulator.codes(count)]
    bodies = write_bodies(rig.workdir / f"{name}.bodies", codes)
    cpu_before = procstat.cpu_seconds(pid)
    result = await loadgen.driver(
        target,
        AUTH + "Login",
        bodies,
        channels=16,
        streams=4,
        duration=seconds,
        warmup=warmup,
        cpus=rig.cores.load,
    )
    cpu = procstat.cpu_seconds(pid) - cpu_before
    if result.bad_status or result.exhausted or not result.rps:
        raise SystemExit(f"{name}: {result.bad_status} failed calls, exhausted={result.exhausted}")
    # The CPU spans the warm-up too: per login over every login of the run, at the
    # measured rate (the driver keeps the same load through both).
    return {"rps": result.rps, "cpu_ms_per_login": 1000 * cpu / (result.rps * (warmup + seconds))}


@dataclass(frozen=True)
class _Rig:
    cores: Cores
    workdir: Path
    seconds: float
    warmup: float


async def _run(rounds: int, seconds: float) -> dict[str, dict[str, Any]]:
    """Each of service, wire and store on the server core in turn, `rounds` times."""
    cores = Cores.detect()
    if cores.pinned:
        os.sched_setaffinity(0, cores.load)  # the runner stays off the server core
    rig = _Rig(cores, Path(tempfile.mkdtemp(prefix="wxlogin-floor-")), seconds, min(1.0, seconds))
    os.environ[event_loop.VARIABLE] = UVLOOP
    stack = DevStack(
        rig.workdir / "stack",
        emulator_listen="127.0.0.1:0",
        grpc_listen="127.0.0.1:0",
        http_listen="127.0.0.1:0",
        with_edge=False,
        log_dir=rig.workdir / "logs",
    )
    try:
        return await _alternate(rounds, rig, stack)
    finally:
        shutil.rmtree(rig.workdir, ignore_errors=True)


async def _alternate(rounds: int, rig: _Rig, stack: DevStack) -> dict[str, dict[str, Any]]:
    cores = rig.cores
    env = {**os.environ, "WXLOGIN_APPS": DEV_APPS}
    async with stack, aiohttp.ClientSession() as http:
        env.update(
            WXLOGIN_WECHAT_API_BASE=stack.emulator_url,
            WXLOGIN_MONGODB_URI=stack.mongodb_uri,
            WXLOGIN_SECRET_KEY=dev_secret_key(stack.data_dir),
        )
        floors = [
            Child(f"floor-{kind}", ["bench.login_floor", "serve", kind], env, log_file=None)
            for kind in FLOORS
        ]
        try:
            targets: dict[str, tuple[int, str]] = {}
            service = next(child for child in stack.children if child.name == "service-1")
            assert service.process is not None
            targets["service"] = (service.process.pid, stack.grpc_target)
            for kind, floor in zip(FLOORS, floors, strict=True):
                port = await floor.start()
                assert floor.process is not None
                targets[kind] = (floor.process.pid, f"127.0.0.1:{port}")
            if cores.pinned:
                for pid in procstat.child_pids(os.getpid()):  # mongod, emulator, ours
                    procstat.pin(pid, cores.load)
            emulator = Emulator(stack.emulator_url, http)
            runs: dict[str, list[dict[str, Any]]] = {name: [] for name in targets}
            for number in range(rounds):
                order = list(targets) if number % 2 == 0 else list(reversed(targets))
                for name in order:
                    pid, target = targets[name]
                    expected = runs[name][-1]["rps"] if runs[name] else 2500.0
                    if cores.pinned:
                        procstat.pin(pid, cores.server)
                    try:
                        runs[name].append(
                            await _measure(name, pid, target, emulator, rig, expected)
                        )
                    finally:
                        if cores.pinned:
                            procstat.pin(pid, cores.load)
                    print(f"round {number + 1} {name:8} {runs[name][-1]}", flush=True)
        finally:
            for floor in floors:
                await floor.stop()
    return {name: _merged(each) for name, each in runs.items()}


def _merged(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Rounds merged: mean logins/s and CPU per login, and each round's rate."""
    return {
        "rps": round(sum(run["rps"] for run in runs) / len(runs), 1),
        "cpu_ms_per_login": round(sum(run["cpu_ms_per_login"] for run in runs) / len(runs), 3),
        "rounds_rps": [round(run["rps"], 1) for run in runs],
    }


def _bare_rps() -> float | None:
    """The bare grpc.aio server's Login answers/s in the last full `make bench` run."""
    try:
        latest = json.loads((RESULTS / "latest.json").read_text())
    except (OSError, ValueError):
        return None
    for scenario in latest.get("scenarios", []):
        if scenario.get("key") == "login":
            return float(scenario["baseline"]["rps"])
    return None


_TITLES = {
    "wire": "floor `wire`: bare grpc.aio + jscode2session over aiohttp, nothing stored",
    "store": "floor `store`: `wire` + the service's store (claim, save, cap, kept answer)",
    "service": "the service (`Login`, as `make bench` runs it but without a callers file)",
}


def table(result: Mapping[str, Any]) -> str:
    """The result as the Markdown block of bench/README.md."""
    bare = result["bare_rps"]
    rows = [
        f"Run of {result['measured_at']}: {result['rounds']} alternating rounds of "
        f"{result['seconds']:.0f} s each, bench.driver 16 conn x 4 streams with fresh codes, "
        "the process under test alone on the server core; ratios against the bare grpc.aio "
        f"server's {bare:,.0f} answers/s in the last `make bench` run."
        if bare
        else f"Run of {result['measured_at']} (no `make bench` result to compare with).",
        "",
        "| Login server | logins/s | CPU ms per login | x bare grpc.aio |",
        "|---|--:|--:|--:|",
    ]
    for name in ("wire", "store", "service"):
        entry = result["results"][name]
        ratio = entry["ratio_to_bare"]
        rows.append(
            f"| {_TITLES[name]} | {entry['rps']:,.0f} | {entry['cpu_ms_per_login']:.2f} "
            f"| **{'-' if ratio is None else f'{ratio:.2f}'}** |"
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
    bare = _bare_rps()
    for entry in figures.values():
        entry["ratio_to_bare"] = None if bare is None else round(entry["rps"] / bare, 3)
    result: dict[str, Any] = {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "rounds": args.rounds,
        "seconds": args.seconds,
        "bare_rps": bare,
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
