"""One benchmark run, start to finish: stacks and baselines up, every scenario, results out."""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping
from contextlib import AsyncExitStack
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import grpc

from bench import loadgen, procstat, scenarios
from bench.baselines import grpc_path
from bench.check import Expect
from bench.fixtures import AUTH, Emulator, Fixtures, login, login_request, prepare, require_ok
from bench.plan import Cores, Plan
from bench.rig import Rig
from bench.targets import evaluate
from devtools.children import Child
from devtools.devstack import DevStack
from runtime.event_loop import ASYNCIO, UVLOOP
from runtime.event_loop import VARIABLE as EVENT_LOOP
from wxlogin.v1 import auth_pb2


def _stack(
    workdir: Path,
    number: int,
    processes: int,
    *,
    edge: bool,
    callers: bool = False,
    env: Mapping[str, str] | None = None,
) -> DevStack:
    """A dev stack on free ports with its own data and logs (emulator at zero latency)."""
    return DevStack(
        workdir / f"stack-{number}",
        env=env,
        emulator_listen="127.0.0.1:0",
        grpc_listen="127.0.0.1:0",
        http_listen="127.0.0.1:0",
        service_processes=processes,
        with_edge=edge,
        log_dir=workdir / f"logs-{number}",
        callers=callers,
    )


def _adopt(rig: Rig, stack: DevStack, suffix: str = "") -> None:
    """Know the stack's processes by name; mongod is not a Child, so find it as ours."""
    for child in stack.children:
        assert child.process is not None
        rig.processes[child.name + suffix] = child.process.pid
    known = set(rig.processes.values())
    for pid, command in procstat.child_pids(os.getpid()).items():
        if command == "mongod" and pid not in known:
            rig.processes["mongod" + suffix] = pid


async def _bare(
    rig: Rig, exits: AsyncExitStack, kind: str, canned: Path, loop: str = ASYNCIO
) -> str:
    """Start a bare baseline (`python -m bench.baselines`) on `loop`; its host:port."""
    name = f"bare-{kind}" + ("" if loop == ASYNCIO else f"-{loop}")
    child = Child(
        name,
        ["bench.baselines", kind, "--canned", str(canned), "--loop", loop],
        os.environ,
        log_file=rig.workdir / "logs-1" / f"{name}.log",
    )
    exits.push_async_callback(child.stop)
    port = await child.start()
    assert child.process is not None
    rig.processes[child.name] = child.process.pid
    return f"127.0.0.1:{port}"


def _production_env() -> dict[str, str]:
    """The production set-up's settings on top of the dev stack's: metrics on (callers come
    from `_stack(callers=True)`, durability is always on). The edge's session cache is
    off, as issue 18 measures the edge: every GET /v1/session is a CheckSession."""
    return {
        **os.environ,
        "WXLOGIN_METRICS_LISTEN": "127.0.0.1:0",
        "WXLOGIN_EDGE_SESSION_CACHE": "0",
    }


def _caller_key(stack: DevStack) -> tuple[tuple[str, str], ...]:
    """The metadata of a caller that may call every RPC of the stack (its "demo" caller)."""
    return (("x-wxlogin-caller-key", stack.caller_keys["demo"]),)


async def _scenarios(
    rig: Rig,
    stack: DevStack,
    fixtures: Fixtures,
    bare_grpc: str,
    bare_http: str,
    bare_grpc_uvloop: str,
) -> list[dict[str, Any]]:
    emulator = Emulator(stack.emulator_url, rig.http)
    budget = scenarios.CodeBudget()
    target, requests = stack.grpc_target, fixtures.grpc_requests
    plan = rig.plan
    caller = _caller_key(stack)
    done = []
    for key, title, method, expect in (
        ("check_valid", "CheckSession, valid token", "CheckSession", Expect()),
        ("check_unknown", "CheckSession, unknown token", "CheckSession", scenarios.UNKNOWN),
        ("decrypt", "DecryptUserData", "DecryptUserData", Expect()),
        ("access_token", "GetAccessToken, from memory", "GetAccessToken", Expect()),
    ):
        if not plan.runs(key):
            continue
        done.append(
            await scenarios.grpc_fixed(
                rig,
                key=key,
                title=title,
                method=method,
                request=requests[key],
                expect=expect,
                target=target,
                bare=bare_grpc,
                metadata=caller,
            )
        )
    if plan.runs("check_uvloop_bare"):
        done.append(
            await scenarios.grpc_fixed(
                rig,
                key="check_uvloop_bare",
                title="CheckSession, valid token (reference: bare server on uvloop)",
                method="CheckSession",
                request=requests["check_valid"],
                expect=Expect(),
                target=target,
                bare=bare_grpc_uvloop,
                metadata=caller,
                baseline_process="bare-grpc-uvloop",
            )
        )
    if plan.runs("login"):
        done.append(
            await scenarios.grpc_login(
                rig, emulator, budget, target=target, bare=bare_grpc, metadata=caller
            )
        )
    if plan.runs("phone_number"):
        done.append(
            await scenarios.grpc_phone_number(
                rig,
                emulator,
                scenarios.CodeBudget(),
                token=fixtures.token,
                target=target,
                bare=bare_grpc,
                metadata=caller,
            )
        )
    if stack.edge_url:
        bare = f"http://{bare_http}"
        if plan.runs("edge_session"):
            done.append(
                await scenarios.edge_session(
                    rig, token=fixtures.token, edge=stack.edge_url, bare=bare
                )
            )
        if plan.runs("edge_login"):
            done.append(
                await scenarios.edge_login(rig, emulator, budget, edge=stack.edge_url, bare=bare)
            )
    return done


async def _with_callers(
    rig: Rig, bare_grpc: str, main: scenarios.GrpcSide
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """CheckSession as production runs it: a stack with a callers file, a key on every call.

    The comparison with the bare server, then side by side (`main`: a plain stack's
    CheckSession, no callers file) what the check costs.
    """
    try:
        async with _stack(rig.workdir, 3, 1, edge=False, callers=True) as third:
            return await _check_with_key(rig, third, bare_grpc, main)
    finally:
        # Gone with the stack: nothing may try to pin them any more.
        for name in [name for name in rig.processes if name.endswith("@3")]:
            del rig.processes[name]


async def _check_with_key(
    rig: Rig, third: DevStack, bare_grpc: str, main: scenarios.GrpcSide
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The check_caller scenario on a running stack with callers, and its costs side by side."""
    _adopt(rig, third, "@3")
    rig.arrange([])
    key = (("x-wxlogin-caller-key", third.caller_keys["backend"]),)
    login_key = (("x-wxlogin-caller-key", third.caller_keys["demo"]),)
    code = await Emulator(third.emulator_url, rig.http).code("bench-caller")
    async with grpc.aio.insecure_channel(third.grpc_target) as channel:
        call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(AUTH + "Login")
        reply = await call(login_request(code), timeout=10, metadata=login_key)
    token = auth_pb2.LoginResponse.FromString(reply).token
    request = auth_pb2.CheckSessionRequest(token=token).SerializeToString()
    compared = await scenarios.grpc_fixed(
        rig,
        key="check_caller",
        title="CheckSession, valid token, caller key checked",
        method="CheckSession",
        request=request,
        expect=Expect(),
        target=third.grpc_target,
        bare=bare_grpc,
        metadata=key,
        service="service-1@3",
        fine=True,
    )
    own = scenarios.GrpcSide(third.grpc_target, AUTH + "CheckSession", request, "service-1@3", key)
    bare = scenarios.GrpcSide(bare_grpc, grpc_path("check_caller"), request, "bare-grpc", key)
    costs = [
        await scenarios.grpc_side_by_side(
            rig,
            key="caller_cost",
            title="CheckSession, caller key checked / no callers file",
            subject=own,
            reference=main,
        ),
        await scenarios.grpc_side_by_side(
            rig,
            key="caller_vs_bare",
            title="CheckSession, caller key checked / bare grpc.aio",
            subject=own,
            reference=bare,
        ),
    ]
    return compared, costs


async def _check_on_own_stack(
    rig: Rig,
    bare_grpc: str,
    main: scenarios.GrpcSide,
    *,
    number: int,
    key: str,
    title: str,
    env: Mapping[str, str],
    cost: tuple[str, str],
    own_is_subject: bool,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """CheckSession (valid token) on a stack of its own, started with `env` on top.

    Against the bare server, like every scenario; then `cost` (key, title): side by
    side with `main` (a plain stack's CheckSession, `_reference`), own stack over main if
    `own_is_subject`, else main over own. That ratio is what the setting costs
    (bench/targets.py).
    """
    suffix = f"@{number}"
    try:
        async with _stack(rig.workdir, number, 1, edge=False, env={**os.environ, **env}) as own:
            _adopt(rig, own, suffix)
            rig.arrange([])
            emulator = Emulator(own.emulator_url, rig.http)
            async with grpc.aio.insecure_channel(own.grpc_target) as channel:
                token, _ = await login(channel, await emulator.code(f"bench-{key}"))
            request = auth_pb2.CheckSessionRequest(token=token).SerializeToString()
            compared = await scenarios.grpc_fixed(
                rig,
                key=key,
                title=title,
                method="CheckSession",
                request=request,
                expect=Expect(),
                target=own.grpc_target,
                bare=bare_grpc,
                service=f"service-1{suffix}",
            )
            mine = scenarios.GrpcSide(
                own.grpc_target, AUTH + "CheckSession", request, f"service-1{suffix}"
            )
            subject, reference = (mine, main) if own_is_subject else (main, mine)
            side_by_side = await scenarios.grpc_side_by_side(
                rig, key=cost[0], title=cost[1], subject=subject, reference=reference
            )
            return compared, side_by_side
    finally:
        # Gone with the stack: nothing may try to pin them any more.
        for name in [name for name in rig.processes if name.endswith(suffix)]:
            del rig.processes[name]


async def _reference(rig: Rig, exits: AsyncExitStack) -> tuple[scenarios.GrpcSide, dict[str, Any]]:
    """CheckSession on a fresh plain stack (`@6`), alive until the run ends; and a control.

    Not the main stack: by then it holds thousands of sessions and a bigger heap from
    the Login scenarios, worth ~2 % per CheckSession (sliding expiry measured 0.982 x
    of fixed against it, 1.007 x against a fresh stack). The stacks with a setting are
    fresh too, so only the setting differs. The control: a second fresh plain stack
    (`@7`) side by side with it, i.e. how far two identical stacks differ.
    """
    sides = []
    for number in (6, 7):
        plain = await exits.enter_async_context(_stack(rig.workdir, number, 1, edge=False))
        _adopt(rig, plain, f"@{number}")
        rig.arrange([])
        emulator = Emulator(plain.emulator_url, rig.http)
        async with grpc.aio.insecure_channel(plain.grpc_target) as channel:
            token, _ = await login(channel, await emulator.code(f"bench-reference-{number}"))
        request = auth_pb2.CheckSessionRequest(token=token).SerializeToString()
        sides.append(
            scenarios.GrpcSide(
                plain.grpc_target, AUTH + "CheckSession", request, f"service-1@{number}"
            )
        )
    control = await scenarios.grpc_side_by_side(
        rig,
        key="control",
        title="control: CheckSession, plain stack / another plain stack",
        subject=sides[1],
        reference=sides[0],
    )
    return sides[0], control


async def _scaling(rig: Rig, first: DevStack) -> dict[str, Any]:
    """A second stack with two service processes on one port, compared with the first."""
    try:
        async with _stack(
            rig.workdir, 2, 2, edge=False, callers=True, env=_production_env()
        ) as second:
            _adopt(rig, second, "@2")
            rig.arrange([])  # off the server core until measured
            one = await _check_setup(rig, first, "bench-scaling", ["service-1"])
            two = await _check_setup(rig, second, "bench-scaling", ["service-1@2", "service-2@2"])
            return await scenarios.scaling(rig, one, two)
    finally:
        _forget(rig, "@2")


async def _check_setup(
    rig: Rig, stack: DevStack, user: str, names: list[str]
) -> tuple[str, bytes, list[str], tuple[tuple[str, str], ...]]:
    """A CheckSession load on `stack` (a stack with callers): its target, a real session's
    request, the processes measured and the caller key every call carries."""
    emulator = Emulator(stack.emulator_url, rig.http)
    async with grpc.aio.insecure_channel(stack.grpc_target) as channel:
        token, _ = await login(channel, await emulator.code(user), _caller_key(stack))
    request = auth_pb2.CheckSessionRequest(token=token).SerializeToString()
    return stack.grpc_target, request, names, _caller_key(stack)


def _forget(rig: Rig, suffix: str) -> None:
    """Gone with their stack: nothing may try to pin them any more."""
    for name in [name for name in rig.processes if name.endswith(suffix)]:
        del rig.processes[name]


# What the workers figure can show here, printed and kept with it.
WORKERS_CAVEAT = (
    "2 cores shared by h2load, mongod, the emulator and both workers: the ratio shows that "
    "WXLOGIN_WORKERS=2 spreads one port's load over two processes and what the supervisor "
    "costs (nothing on the request path); it cannot show the ~2x a machine with a core per "
    "worker and the load generator elsewhere would, and under other engineers' load it is "
    "noisy"
)


async def _workers(rig: Rig, first: DevStack) -> dict[str, Any]:
    """A stack with WXLOGIN_WORKERS=2 (one parent, two workers) against `first` (one process)."""
    try:
        async with _stack(
            rig.workdir,
            8,
            1,
            edge=False,
            callers=True,
            env={**_production_env(), "WXLOGIN_WORKERS": "2"},
        ) as second:
            _adopt(rig, second, "@8")
            workers = sorted(procstat.child_pids(rig.processes["service-1@8"]))
            names = [f"worker-{index}@8" for index in range(len(workers))]
            rig.processes.update(zip(names, workers, strict=True))
            if len(workers) != 2:
                rig.problems.append(f"workers: {len(workers)} worker processes, expected 2")
            rig.arrange([])  # off the server core until measured
            one = await _check_setup(rig, first, "bench-workers", ["service-1"])
            two = await _check_setup(rig, second, "bench-workers", names)
            result = await scenarios.scaling(rig, one, two, name="workers")
    finally:
        _forget(rig, "@8")
    result["setup"] = "WXLOGIN_WORKERS=2 (one supervising parent) vs one process"
    result["ratio"] = result.pop("speedup")
    result["caveat"] = WORKERS_CAVEAT
    rig.log(f"  workers: 2 workers / 1 process = {result['ratio']:.2f} x ({WORKERS_CAVEAT})")
    return result


# The scenarios on stacks of their own, each with its cost side by side against `_reference`.
OWN_STACKS = ("check_caller", "check_metrics", "check_fixed_expiry", "check_asyncio_loop")
# What --only accepts: every scenario, the edge side by side with bare aiohttp, the
# memory check ("rss") and the scaling runs.
KEYS = (
    "check_valid",
    "check_unknown",
    "check_uvloop_bare",
    "decrypt",
    "access_token",
    "login",
    "phone_number",
    "edge_session",
    "edge_vs_bare",
    "edge_login",
    *OWN_STACKS,
    "rss",
    "scaling",
    "workers",
)


def parse_only(text: str) -> tuple[str, ...]:
    """`--only`'s value: comma-separated KEYS."""
    keys = tuple(key.strip() for key in text.split(",") if key.strip())
    unknown = [key for key in keys if key not in KEYS]
    if unknown or not keys:
        raise argparse.ArgumentTypeError(f"unknown scenario {', '.join(unknown) or text!r}")
    return keys


async def _own_stacks(
    rig: Rig, exits: AsyncExitStack, results: dict[str, Any], bare_grpc: str
) -> None:
    """The scenarios of OWN_STACKS that this run includes, and the control."""
    log, plan = rig.log, rig.plan
    log("a plain stack of its own, the reference each setting's cost is measured against")
    main, control = await _reference(rig, exits)
    results["side_by_side"].append(control)
    if plan.runs("check_caller"):
        log("CheckSession with a caller key checked (a stack with callers)")
        compared, costs = await _with_callers(rig, bare_grpc, main)
        results["scenarios"].append(compared)
        results["side_by_side"] += costs
    for own in _SETTINGS_ON_OWN_STACKS:
        if not plan.runs(own.key):
            continue
        log(own.announce)
        compared, cost = await _check_on_own_stack(
            rig,
            bare_grpc,
            main,
            number=own.number,
            key=own.key,
            title=own.title,
            env=own.env,
            cost=own.cost,
            own_is_subject=own.own_is_subject,
        )
        results["scenarios"].append(compared)
        results["side_by_side"].append(cost)


@dataclass(frozen=True)
class _OwnStack:
    """A setting measured on a stack of its own (`_check_on_own_stack`)."""

    key: str
    announce: str  # the run's log line
    number: int  # the stack's number: its directory and process-name suffix
    title: str
    env: Mapping[str, str]
    cost: tuple[str, str]  # the side-by-side key and title
    own_is_subject: bool


_SETTINGS_ON_OWN_STACKS = (
    _OwnStack(
        "check_metrics",
        "CheckSession with metrics on (a stack with WXLOGIN_METRICS_LISTEN)",
        4,
        "CheckSession, valid token, metrics on",
        {"WXLOGIN_METRICS_LISTEN": "127.0.0.1:0"},
        ("metrics_cost", "CheckSession, metrics on / metrics off"),
        own_is_subject=True,
    ),
    _OwnStack(
        "check_fixed_expiry",
        "CheckSession with fixed expiry (a stack whose sessions are never renewed)",
        5,
        "CheckSession, valid token, no sliding expiry",
        # The absolute lifetime equal to the idle one: nothing is ever renewed.
        {"WXLOGIN_SESSION_TTL": "604800", "WXLOGIN_SESSION_MAX_TTL": "604800"},
        ("renewal_cost", "CheckSession, sliding expiry / fixed expiry"),
        own_is_subject=False,
    ),
    _OwnStack(
        "check_asyncio_loop",
        "CheckSession on asyncio's loop (a stack with WXLOGIN_EVENT_LOOP=asyncio)",
        8,
        "CheckSession, valid token, on asyncio's loop",
        # Against bare grpc.aio on the same loop: the ratio without uvloop's gain.
        {"WXLOGIN_EVENT_LOOP": "asyncio"},
        ("loop_gain", "CheckSession, uvloop / asyncio's loop"),
        own_is_subject=False,
    ),
)


async def run(plan: Plan, workdir: Path, log: Callable[[str], None]) -> dict[str, Any]:
    """Run every scenario of `plan`; the results, with targets and problems, for the report."""
    started = datetime.now(UTC)
    tools = loadgen.require_tools()
    cores = Cores.detect()
    loadgen.write_wrk_script(workdir)
    log(f"wxlogin bench ({plan.name}); work dir {workdir}")
    if plan.only:
        log(f"only: {', '.join(plan.only)}")
    # Every stack on the production default, whatever this shell sets; the one stack
    # on asyncio's loop (check_asyncio_loop) sets its own.
    if os.environ.get(EVENT_LOOP, UVLOOP).strip().lower() != UVLOOP:
        log(f"{EVENT_LOOP}={os.environ[EVENT_LOOP]!r} ignored: the stacks run on uvloop")
    os.environ[EVENT_LOOP] = UVLOOP
    if cores.pinned:
        os.sched_setaffinity(0, cores.load)  # the bench itself stays off the server core
    results: dict[str, Any] = {}
    idle = await procstat.wait_until_quiet(plan.foreign_limit, plan.quiet_wait, log)
    async with AsyncExitStack() as exits:
        http = await exits.enter_async_context(aiohttp.ClientSession())
        rig = Rig(plan, cores, workdir, http, log)
        # The production set-up: callers checked (a key on every call), metrics on,
        # durable writes (always): what issue 18's targets are measured on.
        stack = await exits.enter_async_context(
            _stack(workdir, 1, 1, edge=True, callers=True, env=_production_env())
        )
        _adopt(rig, stack)
        if not stack.edge_url:
            rig.problems.append("the edge (clients.edge) is not importable: no edge scenarios")
        rig.arrange(["service-1"])
        fixtures = await prepare(
            stack.grpc_target,
            stack.edge_url,
            Emulator(stack.emulator_url, http),
            http,
            _caller_key(stack),
        )
        require_ok(fixtures)
        # The caller scenario's baseline answers what a valid CheckSession does.
        fixtures.canned_grpc["check_caller"] = fixtures.canned_grpc["check_valid"]
        fixtures.canned_grpc["check_metrics"] = fixtures.canned_grpc["check_valid"]
        fixtures.canned_grpc["check_fixed_expiry"] = fixtures.canned_grpc["check_valid"]
        fixtures.canned_grpc["check_uvloop_bare"] = fixtures.canned_grpc["check_valid"]
        fixtures.canned_grpc["check_asyncio_loop"] = fixtures.canned_grpc["check_valid"]
        canned = workdir / "canned.json"
        canned.write_text(fixtures.canned_json())
        bare_grpc = await _bare(rig, exits, "grpc", canned)
        bare_http = await _bare(rig, exits, "http", canned)
        bare_grpc_uvloop = await _bare(rig, exits, "grpc", canned, UVLOOP)
        rig.arrange(["service-1"])

        if plan.runs("rss"):
            log("memory: CheckSession with a valid token")
            results["rss"] = await scenarios.rss_growth(
                rig,
                target=stack.grpc_target,
                request=fixtures.grpc_requests["check_valid"],
                metadata=_caller_key(stack),
            )
        log("scenarios, each beside its baseline")
        results["scenarios"] = await _scenarios(
            rig, stack, fixtures, bare_grpc, bare_http, bare_grpc_uvloop
        )
        results["side_by_side"] = []
        if stack.edge_url and plan.runs("edge_vs_bare"):
            log("the edge and bare aiohttp side by side")
            results["side_by_side"].append(
                await scenarios.edge_side_by_side(
                    rig, token=fixtures.token, edge=stack.edge_url, bare=f"http://{bare_http}"
                )
            )
        if any(plan.runs(key) for key in OWN_STACKS):
            await _own_stacks(rig, exits, results, bare_grpc)
        if plan.runs("scaling"):
            rig.arrange(["service-1"])
            log("scaling: 1 and 2 service processes")
            results["scaling"] = await _scaling(rig, stack)
        if plan.runs("workers"):
            rig.arrange(["service-1"])
            log("workers: 1 process and WXLOGIN_WORKERS=2")
            results["workers"] = await _workers(rig, stack)
    finished = datetime.now(UTC)
    results["meta"] = {
        "plan": asdict(plan),
        "started": started.isoformat(timespec="seconds"),
        "finished": finished.isoformat(timespec="seconds"),
        "wall_seconds": round((finished - started).total_seconds(), 1),
        "machine": machine(tools),
        "cores": {"server": list(cores.server), "load": list(cores.load)},
        "busy_cores_before_start": round(idle, 3),
    }
    results["targets"] = evaluate(results, plan)
    results["problems"] = rig.problems
    results["warnings"] = rig.warnings
    log(f"done in {results['meta']['wall_seconds']:.0f} s")
    return results


def machine(tools: Mapping[str, str]) -> dict[str, Any]:
    """What the numbers were measured on."""
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions: dict[str, str] = {}
    for tool in tools:
        try:
            out = subprocess.run(
                [tool, "--version" if tool == "h2load" else "-v"],
                capture_output=True,
                text=True,
                timeout=10,
                check=False,
            )
            versions[tool] = (out.stdout or out.stderr).strip().splitlines()[0].split(" [")[0]
        except (OSError, IndexError, subprocess.SubprocessError):
            versions[tool] = f"{tool} (version unknown)"
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "aiohttp": aiohttp.__version__,
        **versions,
    }


def finish(workdir: Path, failures: list[str], *, tool: str, keep: bool) -> int:
    """The exit code of a run: 1 with its failures listed and the work dir kept for its
    logs; else 0, the work dir removed unless `keep`."""
    if failures:
        print(f"{tool}: FAILED, logs kept in {workdir}:", file=sys.stderr)
        for failure in failures:
            print(f"  {failure}", file=sys.stderr)
        return 1
    if keep:
        print(f"work dir kept: {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def new_workdir() -> Path:
    """Scratch space for one run: bodies, logs, the stacks' data."""
    return Path(tempfile.mkdtemp(prefix="wxlogin-bench-"))
