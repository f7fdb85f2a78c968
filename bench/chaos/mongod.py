"""(b) The standalone mongod is SIGKILLed under login load and restarted on its data and port."""

from __future__ import annotations

import asyncio
from typing import Any

from bench.chaos.load import LoginLoad, client_for, survival_figures, verify_tokens
from bench.chaos.results import Context, scenario, target
from bench.chaos.stack import running

KEY = "mongod_kill"
TITLE = "Standalone mongod SIGKILL + restart under load"
# Logins must succeed again within this long of mongod coming back, or the run goes on.
RECOVERY_LIMIT = 30.0


async def run(ctx: Context) -> dict[str, Any]:
    """Logins run; mongod is killed, stays down a moment, comes back; no token may be lost."""
    plan = ctx.plan
    loop = asyncio.get_running_loop()
    async with (
        running(ctx.workdir, KEY, ctx.http) as stack,
        client_for(stack.grpc_target, plan.login_deadline) as client,
        LoginLoad(client, stack.emulator, plan.outage_clients, "chaos-b") as load,
    ):
        mongo = stack.mongo
        assert mongo is not None  # this scenario's stack always has its own mongod
        await asyncio.sleep(plan.warmup_seconds)
        killed = loop.time()
        await mongo.kill()
        ctx.log(f"  mongod SIGKILLed; down for {plan.mongod_down_seconds:g} s")
        await asyncio.sleep(plan.mongod_down_seconds)
        await mongo.start()  # same data dir and port
        back = loop.time()
        first_ok = await load.wait_for_ok_after(back, RECOVERY_LIMIT)
        await asyncio.sleep(plan.after_seconds)
        stopped = await load.stop()
        recorder = load.recorder
        tokens = recorder.tokens()
        ctx.log(f"  checking {len(tokens)} tokens")
        verdict = await verify_tokens(client, recorder, stopped, since=killed)
        service_alive = not any(child.exited for child in stack.dev.children)
    recovery = None if first_ok is None else round(first_ok - back, 3)
    outage_end = first_ok if first_ok is not None else stopped
    during = [o for o in recorder.outcomes if killed <= o.ended <= outage_end]
    figures = {
        "clients": plan.outage_clients,
        "mongod_down_s": round(back - killed, 3),
        "recovery_s": recovery,
        "longest_gap_s": round(recorder.longest_gap(killed, stopped), 3),
        **survival_figures(recorder, verdict, during),
        "stack_survived": service_alive,
    }
    return scenario(
        KEY,
        TITLE,
        figures=figures,
        targets=[
            target("mongod_kill_lost", "tokens lost = 0", verdict["lost"], 0),
            target(
                "mongod_kill_recovery",
                "mongod back -> first successful login < 2 s",
                recovery,
                2.0,
                unit=" s",
            ),
        ],
    )
