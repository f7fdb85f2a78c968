"""(a) WeChat fails 30% of jscode2session calls at random: do logins still succeed in time?

Two parts, each with the same chaos setting (rate, seed, kinds) switched on afresh:
callers of the client library logging in back to back (what a backend sees: each
Login call), then mini-program users through the edge running the sample's own
code under Node, which gets a fresh wx.login() code after WECHAT_UNAVAILABLE
(what a person sees: logged in or not, within the deadline).
"""

from __future__ import annotations

import asyncio
from typing import Any

from bench.chaos.load import LoginLoad, client_for
from bench.chaos.miniprogram import NodeMissing, run_users
from bench.chaos.results import Context, scenario, target
from bench.chaos.stack import running

KEY = "wechat_chaos"
TITLE = "WeChat fails 30% of calls at random"
KINDS = ["busy", "http5xx", "drop", "stall"]


async def run(ctx: Context) -> dict[str, Any]:
    """`wechat_clients` callers log in for `wechat_seconds` while the emulator's chaos is on;
    then `users_lanes` mini-program users at a time for `users_seconds`."""
    plan = ctx.plan
    chaos = {
        "rate": plan.wechat_rate,
        "seed": plan.wechat_seed,
        "kinds": KINDS,
        "stall_ms": plan.stall_ms,
    }
    notes = []
    async with running(ctx.workdir, KEY, ctx.http) as stack:
        await stack.emulator_json("POST", "/_dev/stats/reset")
        setting = await stack.emulator_json("POST", "/_dev/chaos", chaos)
        async with (
            client_for(stack.grpc_target, plan.login_deadline) as client,
            LoginLoad(client, stack.emulator, plan.wechat_clients, "chaos-a") as load,
        ):
            await asyncio.sleep(plan.wechat_seconds)
            await load.stop()
        injected = await stack.emulator_json("DELETE", "/_dev/chaos")
        requests = (await stack.emulator_json("GET", "/_dev/stats"))["jscode2session_requests"]
        users: dict[str, Any] | None = None
        try:
            await stack.emulator_json("POST", "/_dev/stats/reset")
            await stack.emulator_json("POST", "/_dev/chaos", chaos)
            try:
                users = await run_users(
                    edge=stack.edge_url,
                    emulator=stack.dev.emulator_url,
                    lanes=plan.users_lanes,
                    seconds=plan.users_seconds,
                    deadline=plan.login_deadline,
                    prefix="chaos-a-user",
                )
            finally:
                users_injected = await stack.emulator_json("DELETE", "/_dev/chaos")
            users["wechat_faults"] = users_injected["injected"]
            users["wechat_requests"] = (await stack.emulator_json("GET", "/_dev/stats"))[
                "jscode2session_requests"
            ]
        except NodeMissing as error:
            notes.append(f"mini-program users not run: {error}")
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
        "users": users,
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
            ),
            target(
                "wechat_chaos_users",
                f"users logged in within {plan.login_deadline:g} s, the mini-program sample's "
                "recovery on (a fresh wx.login() after WECHAT_UNAVAILABLE) >= 99.5%",
                None if users is None else users["logged_in_share"] * 100,
                99.5,
                unit="%",
                at_least=True,
            ),
        ],
        notes=notes,
    )
