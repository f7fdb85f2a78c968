"""The Reliability tables: every target with PASS/MISS, then each scenario's other figures."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from bench.readme_block import rewrite_block

README_BLOCK = "chaos:results"


def _value(checked: Mapping[str, Any]) -> str:
    value = checked["value"]
    if value is None:
        return "not measured"
    if isinstance(value, float) and not value.is_integer():
        return f"{value:,.2f}{checked['unit']}"
    return f"{value:,.0f}{checked['unit']}"


def _counts(counted: Mapping[str, int], most: int = 4) -> str:
    if not counted:
        return "none"
    shown = [f"{name} {count:,}" for name, count in list(counted.items())[:most]]
    if len(counted) > most:
        shown.append(f"{len(counted) - most} more")
    return ", ".join(shown)


def _wechat(f: Mapping[str, Any]) -> str:
    faults = f["wechat_faults"]
    return (
        f"{f['calls']:,} logins by {f['clients']} clients in {f['seconds']:g} s, "
        f"{f['wechat_requests_per_login']:.2f} WeChat requests per login; faults injected "
        f"{_counts(faults)}; latency p50 {f['p50_ms']:,.0f} ms, p99 {f['p99_ms']:,.0f} ms; "
        f"failures: {_counts(f['failures'])}" + _users(f.get("users"))
    )


def _users(u: Mapping[str, Any] | None) -> str:
    if not u:
        return ""
    return (
        f". Then {u['users']:,} mini-program users ({u['lanes']} at a time, {u['seconds']:g} s, "
        f"wxlogin.js under Node through the edge): {u['logged_in_in_time']:,} logged in within "
        f"{u['deadline_ms'] / 1000:g} s, {u['logged_in_at_all']:,} at all; wx.login() codes "
        f"per user {_counts(u['wx_login_per_user'])}; faults injected "
        f"{_counts(u['wechat_faults'])}; time to logged in p50 {u['p50_ms']:,.0f} ms, "
        f"p99 {u['p99_ms']:,.0f} ms, max {u['max_ms']:,.0f} ms; not in time: "
        f"{_counts(u['failures'])}"
    )


def _outage(f: Mapping[str, Any]) -> str:
    recovery = f.get("recovery_s")
    parts = []
    if "election_s" in f:
        parts.append(f"election {f['election_s']:.1f} s")
    else:
        parts.append(f"mongod down {f['mongod_down_s']:.1f} s")
        parts.append(
            "first login after it came back: "
            + ("never" if recovery is None else f"{recovery:.2f} s")
        )
    parts += [
        f"longest time without a successful login {f['longest_gap_s']:.1f} s",
        f"{f['tokens_issued']:,} tokens issued, {f['tokens_lost']:,} lost, "
        f"{f['tokens_unverified']:,} unverifiable",
    ]
    ends = [end for _, end in f.get("lost_logins_s", [])]
    if ends:
        parts.append(
            f"the lost tokens' logins ended {min(ends):+.2f} s to {max(ends):+.2f} s from the kill"
        )
    parts += [
        f"failures during the outage: {_counts(f['outage_failures'])}",
        f"INTERNAL answers {f['internal_answers']:,}",
    ]
    return "; ".join(parts)


def _malformed(f: Mapping[str, Any]) -> str:
    http, grpc, logs = f["http"], f["grpc"], f["logs"]
    leaking = sorted({kind for hits in logs["by_log"].values() for kind in hits})
    return (
        f"HTTP: {http['sent']:,} sent, answers {_counts(http['by_status'], 5)}; "
        f"gRPC: {grpc['sent']:,} sent, answers {_counts(grpc['by_code'], 5)}; "
        f"tokens in logs carried by: {', '.join(leaking) or 'none'}"
    )


def _soak(f: Mapping[str, Any]) -> str:
    start, end = f["start"], f["end"]
    shown = "; ".join(
        f"{name} RSS {start[name]['rss_mib']:.0f} -> {end[name]['rss_mib']:.0f} MiB, "
        f"fds {start[name]['fds']} -> {end[name]['fds']}"
        for name in start
    )
    return (
        f"{f['calls']:,} calls in {f['seconds']:.0f} s ({f['calls_per_s']:.0f}/s, "
        f"{f['clients']} callers, half gRPC, half edge), {f['failed']:,} failed; {shown} "
        f"(start = after {f['warmup_s']:g} s of load)"
    )


DETAILS: Mapping[str, Callable[[Mapping[str, Any]], str]] = {
    "wechat_chaos": _wechat,
    "mongod_kill": _outage,
    "primary_kill": _outage,
    "malformed": _malformed,
    "soak": _soak,
}


def markdown(results: Mapping[str, Any]) -> str:
    """The targets table and the figures table, with a line saying what run they are from."""
    meta = results["meta"]
    machine = meta["machine"]
    lines = [
        f"Run `{meta['plan']['name']}` of {meta['started']} ({meta['wall_seconds']:.0f} s in "
        f"all) on {machine['cpu']}, {machine['cores']} cores, Python {machine['python']}.",
        "",
        "| Scenario | Target | Measured | Result |",
        "|---|---|--:|---|",
    ]
    for entry in results["scenarios"]:
        if entry["status"] != "ran":
            lines.append(f"| {entry['title']} | {entry['error']} | | **NOT RUN** |")
            continue
        for checked in entry["targets"]:
            lines.append(
                f"| {entry['title']} | {checked['text']} | {_value(checked)} "
                f"| **{checked['result']}** |"
            )
    lines += ["", "| Scenario | Figures |", "|---|---|"]
    for entry in results["scenarios"]:
        if entry["status"] == "ran":
            lines.append(f"| {entry['title']} | {DETAILS[entry['key']](entry['figures'])} |")
    if meta.get("leftover_processes"):
        lines += ["", f"{meta['leftover_processes']} process(es) outlived the run and were killed."]
    return "\n".join(lines) + "\n"


def update_readme(readme: Path, results: Mapping[str, Any]) -> bool:
    """Put the tables between the chaos markers of README.md; False if it has none."""
    return rewrite_block(readme, README_BLOCK, markdown(results))
