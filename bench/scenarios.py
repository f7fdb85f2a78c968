"""The scenarios, each against its baseline: how it is driven, what is checked, what is kept.

| key           | load                                    | under test | baseline      |
|---------------|-----------------------------------------|------------|---------------|
| check_valid   | h2load, one CheckSession body           | service    | bare grpc.aio |
| check_unknown | h2load, one CheckSession body           | service    | bare grpc.aio |
| check_uvloop_bare | h2load, one CheckSession body       | service    | bare on uvloop (#) |
| check_caller  | h2load, CheckSession + caller key       | service(*) | bare grpc.aio |
| check_metrics | h2load, one CheckSession body           | service(+) | bare grpc.aio |
| check_fixed_expiry | h2load, one CheckSession body      | service(-) | bare grpc.aio |
| check_asyncio_loop | h2load, one CheckSession body      | service(~) | bare grpc.aio |
| decrypt       | h2load, one DecryptUserData body        | service    | bare grpc.aio |
| login         | bench.driver, one fresh code per call   | service    | bare grpc.aio |
| access_token  | h2load, one GetAccessToken body         | service    | bare grpc.aio |
| phone_number  | bench.driver, one fresh phone code/call | service    | bare grpc.aio |
| edge_session  | wrk, GET /v1/session with a bearer      | edge       | bare aiohttp  |
| edge_login    | wrk + Lua, one fresh code per request   | edge       | bare aiohttp  |

(*) a stack of its own with a callers file, as in production: every call's key is checked.
(~) a stack of its own on asyncio's loop (WXLOGIN_EVENT_LOOP=asyncio), the yardstick's
    loop: side by side with a plain stack (on uvloop) it says what uvloop is worth.
(#) a reference, not a target: the service runs on uvloop (runtime/event_loop.py) while
    every target's yardstick is bare grpc.aio on asyncio's loop; this says how much of the
    ratio the loop alone is worth.
(+) a stack of its own with WXLOGIN_METRICS_LISTEN.
(-) a stack of its own whose sessions are never renewed (WXLOGIN_SESSION_MAX_TTL equal to
    WXLOGIN_SESSION_TTL).
Each of (*), (+), (-) and (~) then runs side by side with a fresh plain stack's CheckSession
(`grpc_side_by_side`): what the callers file, the metrics and sliding expiry cost; (*)
also side by side with the bare server, and a control pairs two fresh plain stacks.

Plus three measurements without a baseline: service RSS over 200k CheckSession calls,
CheckSession throughput with one and with two service processes sharing the port, and the
same load on one process and on WXLOGIN_WORKERS=2 (one supervising parent, two workers).
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from bench import loadgen, procstat
from bench.baselines import grpc_path
from bench.check import CheckResult, Expect, grpc_sample, http_sample
from bench.driver import write_bodies
from bench.fixtures import AUTH, Emulator, login_json, login_request, phone_request
from bench.grpc_body import frame
from bench.loadgen import LoadResult
from bench.profile import profile_process
from bench.rig import Rig, Runner, Side

UNKNOWN = Expect(grpc.StatusCode.UNAUTHENTICATED, "SESSION_INVALID")
# Codes are minted for this many times the expected number of logins, so a run never
# runs dry; the expected rate starts high and is updated from each Login run.
CODE_MARGIN = 1.3


def body_file(rig: Rig, name: str, request: bytes) -> Path:
    """`request` framed for `h2load -d`."""
    path = rig.workdir / f"{name}.grpc"
    path.write_bytes(frame(request))
    return path


def h2load(
    rig: Rig,
    url: str,
    body: Path,
    *,
    pinned: bool = True,
    headers: Sequence[str] = (),
    log_dir: Path | None = None,
) -> Runner:
    """The plan's h2load run: warm-up, then measured seconds, on the load cores if `pinned`.

    `log_dir` (default: the work dir) holds its per-request log: two runs at once need two.
    """
    plan = rig.plan
    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)

    async def run() -> LoadResult:
        return await loadgen.h2load(
            url,
            body,
            clients=plan.clients,
            streams=plan.streams,
            workdir=log_dir or rig.workdir,
            duration=plan.duration,
            warmup=plan.warmup,
            cpus=rig.cores.load if pinned else None,
            headers=headers,
        )

    return run


async def profile(rig: Rig, key: str, runner: Runner, process: str = "service-1") -> None:
    """One extra, unmeasured run with py-spy on the process under test (with --profile)."""
    if not rig.plan.profile:
        return
    rig.arrange([process])
    rig.profiles[key] = await profile_process(
        rig.processes[process],
        runner,
        rig.workdir / f"profile-{key}",
        rig.cores.load,
        delay=rig.plan.warmup,
        seconds=rig.plan.duration,
    )
    rig.log(f"  {key:<14} profiled")


async def grpc_fixed(
    rig: Rig,
    *,
    key: str,
    title: str,
    method: str,
    request: bytes,
    expect: Expect,
    target: str,
    bare: str,
    metadata: Sequence[tuple[str, str]] = (),
    service: str = "service-1",
    fine: bool = False,
    baseline_process: str = "bare-grpc",
) -> dict[str, Any]:
    """A gRPC scenario whose every request may be the same bytes: h2load on both sides.

    `fine`: a target only a few percent wide hangs on it, so plan.fine_rounds rounds.

    `metadata` goes with every call to the subject (a caller key); the bare baseline
    gets the same headers and ignores them, as a server without auth would.
    """
    plan = rig.plan
    body = body_file(rig, key, request)
    headers = [f"{name}: {value}" for name, value in metadata]
    subject = h2load(rig, f"http://{target}{AUTH}{method}", body, headers=headers)
    await profile(rig, key, subject, service)

    async def check() -> CheckResult:
        return await grpc_sample(
            target, AUTH + method, [request], expect, samples=plan.samples, metadata=metadata
        )

    async def baseline_check() -> CheckResult:
        return await grpc_sample(bare, grpc_path(key), [request], expect, samples=plan.samples // 4)

    return await rig.compare(
        key=key,
        title=title,
        driven_by=f"h2load -c{plan.clients} -m{plan.streams}, one pre-encoded body"
        + (", caller key" if metadata else ""),
        subject=subject,
        subject_processes=[service],
        baseline=h2load(rig, f"http://{bare}{grpc_path(key)}", body, headers=headers),
        baseline_process=baseline_process,
        check=check,
        baseline_check=baseline_check,
        rounds=plan.fine_rounds if fine else plan.rounds,
    )


@dataclass(frozen=True)
class GrpcSide:
    """One side of a side-by-side run: who answers (host:port, method path), what, which process."""

    target: str
    path: str
    request: bytes
    process: str  # its name in rig.processes
    metadata: Sequence[tuple[str, str]] = ()

    @property
    def url(self) -> str:
        return f"http://{self.target}{self.path}"


async def grpc_side_by_side(
    rig: Rig, *, key: str, title: str, subject: GrpcSide, reference: GrpcSide
) -> dict[str, Any]:
    """`subject` and `reference` under h2load at once, on the server core (Rig.side_by_side).

    Afterwards each side's answer is checked with a real client, as after every
    scenario: h2load counts a gRPC error as a success, and cheap errors would skew
    the ratio.
    """
    runners = []
    for side, which in ((subject, "subject"), (reference, "reference")):
        runners.append(
            h2load(
                rig,
                side.url,
                body_file(rig, f"{key}-{which}", side.request),
                headers=[f"{name}: {value}" for name, value in side.metadata],
                log_dir=rig.workdir / f"{key}-{which}",
            )
        )
    result = await rig.side_by_side(
        key=key,
        title=title,
        subject=runners[0],
        subject_process=subject.process,
        reference=runners[1],
        reference_process=reference.process,
    )
    for side in (subject, reference):
        checked = await grpc_sample(
            side.target,
            side.path,
            [side.request],
            Expect(),
            samples=rig.plan.samples // 4,
            metadata=side.metadata,
        )
        if checked.errors or not checked.sampled:
            rig.problems.append(f"{key} {side.process}: {checked.first_error or 'no samples'}")
    return result


class CodeBudget:
    """How many single-use codes a run needs: expected logins/s, learnt from the last run."""

    def __init__(self, expected_rate: float = 3000.0) -> None:
        self.rate = expected_rate

    def codes(self, seconds: float) -> int:
        return max(200, math.ceil(self.rate * seconds * CODE_MARGIN))

    def learn(self, result: LoadResult) -> None:
        # Generous on purpose: a busy moment in one run must not starve the next, and
        # running out is an error, while a spare code costs a fraction of a millisecond.
        self.rate = max(result.rps * 2, 1000.0)


async def grpc_single_use(
    rig: Rig,
    budget: CodeBudget,
    *,
    key: str,
    title: str,
    method: str,
    requests: Callable[[int], Awaitable[list[bytes]]],
    placeholder: bytes,
    target: str,
    bare: str,
    subject_processes: list[str],
    metadata: Sequence[tuple[str, str]] = (),
) -> dict[str, Any]:
    """A scenario whose every call spends a single-use code: bench.driver, not h2load.

    h2load sends one body for every call. `requests(n)` mints n codes and makes a request
    of each; they are minted before each run, outside its measured window. The baseline
    is still h2load against the bare server with `placeholder` (the bare server never
    reads it): the same yardstick every gRPC scenario uses.
    """
    plan = rig.plan
    bodies = rig.workdir / f"{key}.bodies"

    async def mint() -> None:
        write_bodies(bodies, await requests(budget.codes(plan.warmup + plan.duration)))

    async def drive() -> LoadResult:
        result = await loadgen.driver(
            target,
            AUTH + method,
            bodies,
            channels=plan.clients,
            streams=plan.streams,
            duration=plan.duration,
            warmup=plan.warmup,
            cpus=rig.cores.load,
            headers=[f"{name}: {value}" for name, value in metadata],
        )
        budget.learn(result)
        return result

    async def subject() -> LoadResult:
        # Minting is outside the measured window: the driver reports its own window.
        await mint()
        return await drive()

    async def check() -> CheckResult:
        sampled = await requests(plan.samples)
        return await grpc_sample(
            target, AUTH + method, sampled, Expect(), samples=plan.samples, metadata=metadata
        )

    async def baseline_check() -> CheckResult:
        return await grpc_sample(
            bare, grpc_path(key), [placeholder], Expect(), samples=plan.samples // 4
        )

    if plan.profile:
        await mint()  # before py-spy starts, so that it samples these calls only
        await profile(rig, key, drive)
    return await rig.compare(
        key=key,
        title=title,
        driven_by=(
            f"bench.driver {plan.clients} conn x {plan.streams} streams, a fresh "
            f"{'phone code' if key == 'phone_number' else 'code'} per call"
            + (", caller key" if metadata else "")
            + "; baseline: h2load"
        ),
        subject=subject,
        subject_processes=subject_processes,
        baseline=h2load(rig, f"http://{bare}{grpc_path(key)}", body_file(rig, key, placeholder)),
        baseline_process="bare-grpc",
        check=check,
        baseline_check=baseline_check,
    )


async def grpc_login(
    rig: Rig,
    emulator: Emulator,
    budget: CodeBudget,
    *,
    target: str,
    bare: str,
    metadata: Sequence[tuple[str, str]] = (),
) -> dict[str, Any]:
    """Login with fresh codes (`grpc_single_use`).

    The driver's own ceiling, measured against the same bare server, is recorded to
    show it is not what limits Login.
    """
    plan = rig.plan

    async def requests(count: int) -> list[bytes]:
        return [login_request(code) for code in await emulator.codes(count)]

    entry = await grpc_single_use(
        rig,
        budget,
        key="login",
        title="Login, fresh codes",
        method="Login",
        requests=requests,
        placeholder=login_request("placeholder-the-bare-server-never-reads"),
        target=target,
        bare=bare,
        subject_processes=["service-1", "emulator", "mongod"],
        metadata=metadata,
    )
    stand_ins = CodeBudget(20_000).codes(plan.warmup + plan.duration)
    ceiling = await loadgen.driver(
        bare,
        grpc_path("login"),
        write_bodies(
            rig.workdir / "ceiling.bodies", [login_request(f"c{i}") for i in range(stand_ins)]
        ),
        channels=plan.clients,
        streams=plan.streams,
        duration=plan.duration,
        warmup=plan.warmup,
        cpus=rig.cores.load,
    )
    entry["driver_ceiling_rps"] = round(ceiling.rps, 1)
    rig.log(f"  login          bench.driver against the bare server: {ceiling.rps:9.1f} req/s")
    return entry


async def grpc_phone_number(
    rig: Rig,
    emulator: Emulator,
    budget: CodeBudget,
    *,
    token: str,
    target: str,
    bare: str,
    metadata: Sequence[tuple[str, str]] = (),
) -> dict[str, Any]:
    """GetPhoneNumber with a fresh phone code per call (`grpc_single_use`), WeChat-bound
    like Login: each call checks the session (from memory), takes the app's access_token
    (from memory) and exchanges the code at the emulator; nothing is written to MongoDB.
    """

    async def requests(count: int) -> list[bytes]:
        return [phone_request(token, code) for code in await emulator.phone_codes(count)]

    return await grpc_single_use(
        rig,
        budget,
        key="phone_number",
        title="GetPhoneNumber, fresh phone codes",
        method="GetPhoneNumber",
        requests=requests,
        placeholder=phone_request(token, "placeholder-the-bare-server-never-reads"),
        target=target,
        bare=bare,
        subject_processes=["service-1", "emulator"],
        metadata=metadata,
    )


def wrk_warm_then_measure(rig: Rig, url: str, **options: Any) -> Runner:
    """wrk has no warm-up option: a short unmeasured run first, then the measured one."""
    plan = rig.plan

    async def run() -> LoadResult:
        for seconds in (plan.warmup, plan.duration):
            result = await loadgen.wrk(
                url,
                rig.workdir / "bench.lua",
                connections=plan.connections,
                duration=seconds,
                cpus=rig.cores.load,
                **options,
            )
        return result

    return run


async def edge_session(rig: Rig, *, token: str, edge: str, bare: str) -> dict[str, Any]:
    """edge GET /v1/session with a valid bearer token: wrk repeating one request."""
    plan = rig.plan
    bearer = f"Authorization: Bearer {token}"
    subject = wrk_warm_then_measure(rig, edge + "/v1/session", headers=[bearer])
    await profile(rig, "edge_session", subject, "edge")

    async def check() -> CheckResult:
        headers = {"Authorization": f"Bearer {token}"}
        return await http_sample(
            rig.http, "GET", edge + "/v1/session", headers=headers, samples=plan.samples
        )

    async def baseline_check() -> CheckResult:
        return await http_sample(rig.http, "GET", bare + "/v1/session", samples=plan.samples // 4)

    return await rig.compare(
        key="edge_session",
        title="edge GET /v1/session, edge cache off",
        driven_by=f"wrk -c{plan.connections}, HTTP/1.1 keep-alive",
        subject=subject,
        subject_processes=["edge", "service-1"],
        baseline=wrk_warm_then_measure(rig, bare + "/v1/session", headers=[bearer]),
        baseline_process="bare-http",
        check=check,
        baseline_check=baseline_check,
    )


async def edge_side_by_side(rig: Rig, *, token: str, edge: str, bare: str) -> dict[str, Any]:
    """The edge and the bare aiohttp app under wrk at once, on the server core (Rig.side_by_side).

    Requests per CPU-second of each: what one edge request costs against a bare
    one, with the machine's speed changes hitting both alike (a cross-check of
    edge_session's alternating ratio on a shared machine). The service answers
    on the other core, as in edge_session.
    """
    bearer = f"Authorization: Bearer {token}"
    result = await rig.side_by_side(
        key="edge_vs_bare",
        title="edge GET /v1/session / bare aiohttp",
        subject=wrk_warm_then_measure(rig, edge + "/v1/session", headers=[bearer]),
        subject_process="edge",
        reference=wrk_warm_then_measure(rig, bare + "/v1/session", headers=[bearer]),
        reference_process="bare-http",
    )
    checked = await http_sample(
        rig.http,
        "GET",
        edge + "/v1/session",
        headers={"Authorization": f"Bearer {token}"},
        samples=rig.plan.samples // 4,
    )
    if checked.errors or not checked.sampled:
        rig.problems.append(f"edge_vs_bare edge: {checked.first_error or 'no samples'}")
    return result


async def edge_login(
    rig: Rig, emulator: Emulator, budget: CodeBudget, *, edge: str, bare: str
) -> dict[str, Any]:
    """edge POST /v1/login with fresh codes: wrk + Lua sending each pre-minted code once."""
    plan = rig.plan

    async def codes_file(name: str, seconds: float) -> Path:
        codes = await emulator.codes(budget.codes(seconds))
        path = rig.workdir / name
        path.write_bytes(b"\n".join(login_json(code) for code in codes) + b"\n")
        return path

    async def subject() -> LoadResult:
        # Minted before either wrk run starts: minting loads the emulator and mongod's core.
        files = [
            await codes_file("edge-warm.json", max(1.0, plan.warmup)),
            await codes_file("edge-login.json", plan.duration),
        ]
        for path, seconds in zip(files, (plan.warmup, plan.duration), strict=True):
            result = await loadgen.wrk(
                edge + "/v1/login",
                rig.workdir / "bench.lua",
                connections=plan.connections,
                duration=seconds,
                bodies=path,
                path="/v1/login",
                cpus=rig.cores.load,
            )
        return result

    # The bare handler ignores the body: the same script cycles through stand-in codes.
    stand_ins = rig.workdir / "bare-login.json"
    stand_ins.write_bytes(b"\n".join(login_json(f"code-{i:06d}") for i in range(1000)) + b"\n")

    async def check() -> CheckResult:
        bodies = [login_json(code) for code in await emulator.codes(plan.samples)]
        return await http_sample(
            rig.http,
            "POST",
            edge + "/v1/login",
            headers={"Content-Type": "application/json"},
            bodies=bodies,
            samples=plan.samples,
        )

    async def baseline_check() -> CheckResult:
        return await http_sample(
            rig.http,
            "POST",
            bare + "/v1/login",
            bodies=[login_json("x")],
            samples=plan.samples // 4,
        )

    return await rig.compare(
        key="edge_login",
        title="edge POST /v1/login, fresh codes",
        driven_by=f"wrk -c{plan.connections} + Lua, a pre-minted code per request",
        subject=subject,
        subject_processes=["edge", "service-1", "emulator", "mongod"],
        baseline=wrk_warm_then_measure(
            rig, bare + "/v1/login", bodies=stand_ins, path="/v1/login", cycle=True
        ),
        baseline_process="bare-http",
        check=check,
        baseline_check=baseline_check,
    )


async def rss_growth(
    rig: Rig, *, target: str, request: bytes, metadata: Sequence[tuple[str, str]] = ()
) -> dict[str, Any]:
    """Service RSS after its first rss_first CheckSession calls, and after rss_total."""
    plan = rig.plan
    rig.arrange(["service-1"])
    body = body_file(rig, "rss", request)
    pid = rig.processes["service-1"]
    readings = []
    for count in (plan.rss_first, plan.rss_total - plan.rss_first):
        result = await loadgen.h2load(
            f"http://{target}{AUTH}CheckSession",
            body,
            clients=plan.clients,
            streams=plan.streams,
            workdir=rig.workdir,
            requests=count,
            cpus=rig.cores.load,
            headers=[f"{name}: {value}" for name, value in metadata],
        )
        if result.failed or result.bad_status or result.requests != count:
            rig.problems.append(f"rss: {result.requests} of {count} calls succeeded")
        readings.append(procstat.rss_bytes(pid))
    first, last = readings
    growth = last / first - 1
    rig.log(
        f"  rss            {first / procstat.MIB:.1f} MiB after {plan.rss_first:,} calls, "
        f"{last / procstat.MIB:.1f} MiB after {plan.rss_total:,} ({growth:+.1%})"
    )
    return {
        "calls_first": plan.rss_first,
        "calls_total": plan.rss_total,
        "rss_after_first_mib": round(first / procstat.MIB, 1),
        "rss_after_total_mib": round(last / procstat.MIB, 1),
        "growth": round(growth, 4),
    }


async def scaling(
    rig: Rig,
    one: tuple[str, bytes, list[str], Sequence[tuple[str, str]]],
    two: tuple[str, bytes, list[str], Sequence[tuple[str, str]]],
    *,
    name: str = "scaling",
) -> dict[str, Any]:
    """CheckSession (valid token) on 1 and on 2 service processes, alternating rounds.

    Each setup is (gRPC target, CheckSession request, its service processes' names, the
    metadata of every call).
    Nothing is pinned: the service processes and h2load share the whole machine. (Pinning
    one process per core cannot be done fairly on two cores: h2load needs one too.)
    """
    plan = rig.plan
    setups = {"1": one, "2": two}
    sides = {"1": Side(), "2": Side()}
    for _, _, names, _ in setups.values():
        rig.unpin(names)
    bodies = {side: body_file(rig, f"{name}-{side}", setup[1]) for side, setup in setups.items()}
    for number in range(plan.rounds):
        for side in ("1", "2") if number % 2 == 0 else ("2", "1"):
            target, _, names, metadata = setups[side]
            url = f"http://{target}{AUTH}CheckSession"
            label = f"{name} {side} round {number + 1}"
            headers = [f"{header}: {value}" for header, value in metadata]
            runner = h2load(rig, url, bodies[side], pinned=False, headers=headers)
            measured = await rig.measure(runner, names, label)
            sides[side].add(measured)
            rig.log(
                f"  {name:<14} {side} process(es), round {number + 1}: "
                f"{measured.result.rps:9.1f} req/s"
            )
    summaries = {side: sides[side].summary() for side in setups}
    checks = {}
    for side, (target, request, _, metadata) in setups.items():
        checked = await grpc_sample(
            target,
            AUTH + "CheckSession",
            [request],
            Expect(),
            samples=plan.samples,
            metadata=metadata,
        )
        checks[side] = checked.as_json()
        summary = summaries[side]
        if summary["failed"] or summary["bad_status"] or not summary["requests"]:
            rig.problems.append(f"{name} {side}: {summary['failed']} failed")
        if checked.errors or not checked.sampled:
            rig.problems.append(f"{name} {side} check: {checked.first_error}")
    one_rps = summaries["1"]["rps"]
    return {
        "scenario": "check_valid",
        "pinning": "none: the service processes and h2load share every core",
        "processes_1": summaries["1"],
        "processes_2": summaries["2"],
        "speedup": round(summaries["2"]["rps"] / one_rps, 3) if one_rps else 0.0,
        "checks": checks,
    }
