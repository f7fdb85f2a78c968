"""(a) WeChat fails 30% of jscode2session calls at random: do logins still succeed in time?"""

from __future__ import annotations

import asyncio
from typing import Any

from bench.chaos.load import LoginLoad, client_for
from bench.chaos.results import Context, scenario, target
from bench.chaos.stack import running

KEY = "wechat_chaos"
TITLE = "WeChat fails 30% of calls at random"
KINDS = ["busy", "http5xx", "drop", "stall"]


async def run(ctx: Context) -> dict[str, Any]:
    """`wechat_clients` callers log in for `wechat_seconds` while the emulator's chaos is on."""
    plan = ctx.plan
    async with running(ctx.workdir, KEY, ctx.http) as stack:
        await stack.emulator_json("POST", "/_dev/stats/reset")
        setting = await stack.emulator_json(
            "POST",
            "/_dev/chaos",
            {
                "rate": plan.wechat_rate,
                "seed": plan.wechat_seed,
                "kinds": KINDS,
                "stall_ms": plan.stall_ms,
            },
        )
        async with (
            client_for(stack.grpc_target, plan.login_deadline) as client,
            LoginLoad(client, stack.emulator, plan.wechat_clients, "chaos-a") as load,
        ):
            await asyncio.sleep(plan.wechat_seconds)
            await load.stop()
        injected = await stack.emulator_json("DELETE", "/_dev/chaos")
        requests = (await stack.emulator_json("GET", "/_dev/stats"))["jscode2session_requests"]
    summary = load.recorder.summary()
    figures = {
        **summary,
        "clients": plan.wechat_clients,
        "seconds": plan.wechat_seconds,
        "deadline_s": plan.login_deadline,
        "chaos": setting["chaos"],
        "wechat_requests": requests,
        "wechat_faults": injected["injected"],
        "wechat_requests_per_login": round(requests / summary["calls"], 2)
        if summary["calls"]
        else 0.0,
    }
    return scenario(
        KEY,
        TITLE,
        figures=figures,
        targets=[
            target(
                "wechat_chaos_success",
                f"logins that succeed within {plan.login_deadline:g} s >= 99%",
                summary["succeeded_share"] * 100,
                99.0,
                unit="%",
                at_least=True,
            )
        ],
    )
