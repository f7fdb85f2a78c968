"""(c) A replica set's primary is SIGKILLed under login load: election, gap, lost tokens.

Uses `devtools.replica_set.ReplicaSet` (start() -> uri, kill(i), restart(i),
primary_index(), wait_for_primary(timeout), wait_healthy(timeout), stop()).
"""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from typing import Any

from bench.chaos.load import LoginLoad, client_for, survival_figures, verify_tokens
from bench.chaos.results import Context, not_run, scenario, target
from bench.chaos.stack import running

KEY = "primary_kill"
TITLE = "Replica-set primary SIGKILL under load"
MEMBERS = 3
ELECTION_LIMIT = 60.0  # seconds to wait for a new primary before giving up
RECOVERY_LIMIT = 60.0  # ... and for the first successful login after the kill


async def run(ctx: Context) -> dict[str, Any]:
    """Logins run against a 3-member set; the primary dies; the killed member rejoins later."""
    try:
        from devtools.replica_set import ReplicaSet
    except ImportError as error:
        return not_run(KEY, TITLE, f"devtools.replica_set is not available ({error})")
    plan = ctx.plan
    loop = asyncio.get_running_loop()
    async with AsyncExitStack() as exits:
        replica_set = ReplicaSet(ctx.workdir / KEY / "replica-set", members=MEMBERS)
        exits.push_async_callback(replica_set.stop)
        uri = await replica_set.start()
        stack = await exits.enter_async_context(
            running(ctx.workdir, KEY, ctx.http, mongodb_uri=uri)
        )
        client = await exits.enter_async_context(client_for(stack.grpc_target, plan.login_deadline))
        load = await exits.enter_async_context(
            LoginLoad(client, stack.emulator, plan.outage_clients, "chaos-c")
        )
        await asyncio.sleep(plan.warmup_seconds)
        primary = await replica_set.primary_index()
        if primary is None:
            raise RuntimeError("the replica set had no primary before the kill")
        killed = loop.time()
        await replica_set.kill(primary)
        ctx.log(f"  primary (member {primary}) SIGKILLed")
        new_primary = await replica_set.wait_for_primary(ELECTION_LIMIT)
        elected = loop.time()
        first_ok = await load.wait_for_ok_after(killed, RECOVERY_LIMIT)
        await asyncio.sleep(plan.after_seconds)
        stopped = await load.stop()
        # The old primary rejoins: a write it acknowledged alone is rolled back now, so
        # only after this does CheckSession show whether a token was lost.
        await replica_set.restart(primary)
        await replica_set.wait_healthy(RECOVERY_LIMIT)
        recorder = load.recorder
        tokens = recorder.tokens()
        ctx.log(f"  member {primary} rejoined; checking {len(tokens)} tokens")
        verdict = await verify_tokens(client, recorder, stopped, since=killed)
    outage_end = first_ok if first_ok is not None else stopped
    gap = recorder.longest_gap(killed, stopped)
    internal = sum(o.code == "INTERNAL" for o in recorder.outcomes)
    figures = {
        "clients": plan.outage_clients,
        "members": MEMBERS,
        "killed_member": primary,
        "new_primary": new_primary,
        "election_s": round(elected - killed, 3),
        "first_login_after_kill_s": None if first_ok is None else round(first_ok - killed, 3),
        "longest_gap_s": round(gap, 3),
        **survival_figures(
            recorder, verdict, (o for o in recorder.outcomes if killed <= o.ended <= outage_end)
        ),
    }
    return scenario(
        KEY,
        TITLE,
        figures=figures,
        targets=[
            target("primary_kill_lost", "tokens lost = 0", verdict["lost"], 0),
            target(
                "primary_kill_gap",
                "longest time without a successful login < 12 s",
                round(gap, 3),
                12.0,
                unit=" s",
            ),
            target("primary_kill_internal", "INTERNAL answers = 0", internal, 0),
        ],
    )
