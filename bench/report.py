"""Writes a run's results: JSON (latest and timestamped), a Markdown table and a PNG chart."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and in CI

import matplotlib.pyplot as plt

from bench.readme_block import rewrite_block

BASELINE_NAMES = {
    "bare-grpc": "bare grpc.aio",
    "bare-http": "bare aiohttp",
    "bare-grpc-uvloop": "bare grpc.aio on uvloop",
}


def _cpu_rss(processes: Mapping[str, Mapping[str, float]]) -> tuple[str, str]:
    """CPU (cores) and peak RSS of the process under test, then its helpers, e.g. 'edge 0.98'."""
    shown = [name for name in processes if not name.startswith(("emulator", "mongod"))]
    if len(shown) == 1:
        only = processes[shown[0]]
        return f"{only['cpu_cores']:.2f}", f"{only['peak_rss_mib']:.0f}"
    cpu = " + ".join(f"{name} {processes[name]['cpu_cores']:.2f}" for name in shown)
    rss = " / ".join(f"{processes[name]['peak_rss_mib']:.0f}" for name in shown)
    return cpu, rss


def _verdict(target: Mapping[str, Any], value: float) -> str:
    """PASS or MISS for `value` against the target's threshold."""
    passed = value <= target["threshold"] if target["at_most"] else value >= target["threshold"]
    return "PASS" if passed else "MISS"


def target_value(target: Mapping[str, Any]) -> str:
    value = target["value"]
    if value is None:
        return "not measured"
    if target["key"] == "rss_growth":
        return f"{value:+.1%}"
    if target["unit"] == "x":
        return f"{value:.{target.get('digits', 2)}f} x"
    return f"{value:.1f}{target['unit']}"


def markdown(results: Mapping[str, Any]) -> str:
    """The tables bench/README.md shows: scenarios, targets, memory, scaling, machine."""
    meta = results["meta"]
    plan = meta["plan"]
    machine = meta["machine"]
    concurrency = plan["clients"] * plan["streams"]
    lines = [
        f"Run `{plan['name']}` of {meta['started']} ({meta['wall_seconds']:.0f} s in all): "
        f"{plan['rounds']} round(s) per side ({plan.get('fine_rounds', plan['rounds'])} for "
        "the caller-key scenario and each side-by-side run) "
        f"of {plan['duration']:g} s measured after "
        f"{plan['warmup']:g} s warm-up, {concurrency} concurrent streams for gRPC "
        f"(h2load -c{plan['clients']} -m{plan['streams']}), {plan['connections']} "
        "connections for HTTP (wrk).",
        "",
        "| Scenario | Load | req/s | p50 ms | p90 ms | p99 ms | CPU (cores) | peak RSS MiB "
        "| Baseline | baseline req/s | Ratio |",
        "|---|---|--:|--:|--:|--:|--:|--:|---|--:|--:|",
    ]
    for scenario in results["scenarios"]:
        subject, baseline = scenario["subject"], scenario["baseline"]
        cpu, rss = _cpu_rss(subject["processes"])
        lines.append(
            f"| {scenario['title']} | {scenario['driven_by']} | {subject['rps']:,.0f} "
            f"| {subject['p50_ms']:.2f} | {subject['p90_ms']:.2f} | {subject['p99_ms']:.2f} "
            f"| {cpu} | {rss} | {BASELINE_NAMES.get(baseline['name'], baseline['name'])} "
            f"| {baseline['rps']:,.0f} | **{scenario['ratio']:.2f}** |"
        )
    costs = results.get("side_by_side")
    if costs:
        lines += [
            "",
            "| Side by side: both on the server core at once | requests per CPU-second "
            "| rounds | Ratio |",
            "|---|--:|---|--:|",
        ]
        for cost in costs:
            rates = cost["requests_per_cpu_second"]
            shown = " / ".join(f"{rates[cost[side]]:,.0f}" for side in ("subject", "reference"))
            each = ", ".join(f"{ratio:.3f}" for ratio in cost["rounds"])
            lines.append(f"| {cost['title']} | {shown} | {each} | **{cost['ratio']:.3f}** |")
    lines += [
        "",
        "| Target | Measured | Result | Against bare grpc.aio on uvloop (the service's loop) |",
        "|---|--:|---|--:|",
    ]
    for target in results["targets"]:
        matched = target.get("loop_matched")
        same_loop = "" if matched is None else f"{matched:.2f} x ({_verdict(target, matched)})"
        lines.append(
            f"| {target['text']} | {target_value(target)} | **{target['result']}** | {same_loop} |"
        )
    memory = results.get("rss")
    if memory:
        lines += [
            "",
            f"Memory: service RSS {memory['rss_after_first_mib']:.1f} MiB after the first "
            f"{memory['calls_first']:,} CheckSession calls, "
            f"{memory['rss_after_total_mib']:.1f} MiB after {memory['calls_total']:,} "
            f"({memory['growth']:+.1%}).",
        ]
    scaling = results.get("scaling")
    if scaling:
        lines += [
            "",
            "| Scaling: CheckSession, valid token, nothing pinned | req/s | p99 ms "
            "| service CPU (cores) | machine busy (cores) |",
            "|---|--:|--:|--:|--:|",
        ]
        for count, label in (("1", "1 service process"), ("2", "2 processes sharing the port")):
            side = scaling[f"processes_{count}"]
            cpu = " + ".join(f"{p['cpu_cores']:.2f}" for p in side["processes"].values())
            lines.append(
                f"| {label} | {side['rps']:,.0f} | {side['p99_ms']:.2f} | {cpu} "
                f"| {side['machine_busy_cores']:.2f} |"
            )
        lines.append(f"| speed-up | **{scaling['speedup']:.2f} x** | | | |")
    workers = results.get("workers")
    if workers:
        lines += ["", workers_table(workers)]
    cores = meta["cores"]
    lines += [
        "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores, Linux {machine['kernel']}, "
        f"Python {machine['python']}, grpcio {machine['grpcio']}, aiohttp {machine['aiohttp']}, "
        f"{machine.get('h2load', 'h2load ?')}, {machine.get('wrk', 'wrk ?')}. Process under "
        f"test and its baseline pinned to core(s) {cores['server'] or 'none'}; load "
        f"generators and dependencies on {cores['load'] or 'any'}.",
    ]
    if results.get("warnings"):
        lines += ["", "Runs kept although other processes were busy (numbers less reliable):"]
        lines += [f"- {warning}" for warning in results["warnings"]]
    if results.get("problems"):
        lines += ["", "Problems:"] + [f"- {problem}" for problem in results["problems"]]
    return "\n".join(lines) + "\n"


def chart(results: Mapping[str, Any], path: Path) -> None:
    """Throughput beside its baseline (log scale), and the ratio against each target."""
    scenarios = results["scenarios"]
    titles = [s["title"] for s in scenarios]
    thresholds = {
        t["key"].removesuffix("_ratio"): t["threshold"]
        for t in results["targets"]
        if t["key"].endswith("_ratio")
    }
    figure, (top, bottom, scale) = plt.subplots(
        3, 1, figsize=(10, 11), height_ratios=[3, 3, 1.2], constrained_layout=True
    )
    positions = range(len(scenarios))
    width = 0.4
    top.barh(
        [p + width / 2 for p in positions],
        [s["baseline"]["rps"] for s in scenarios],
        width,
        label="bare baseline",
        color="#bbbbbb",
    )
    top.barh(
        [p - width / 2 for p in positions],
        [s["subject"]["rps"] for s in scenarios],
        width,
        label="wxlogin",
        color="#1f77b4",
    )
    top.set_xscale("log")
    # Room on the right for the labels and the legend.
    top.set_xlim(right=max(s["baseline"]["rps"] for s in scenarios) * 6)
    top.set_yticks(list(positions), titles)
    top.invert_yaxis()
    top.set_xlabel("requests per second (log scale)")
    top.legend(loc="upper right")
    top.set_title("Throughput beside the bare baseline, same run, same core")
    for position, scenario in zip(positions, scenarios, strict=True):
        top.text(
            scenario["subject"]["rps"],
            position - width / 2,
            f" {scenario['subject']['rps']:,.0f}  p99 {scenario['subject']['p99_ms']:.1f} ms",
            va="center",
            fontsize=8,
        )

    ratios = [s["ratio"] for s in scenarios]
    colors = []
    for scenario in scenarios:
        threshold = thresholds.get(scenario["key"])
        if threshold is None:
            colors.append("#1f77b4")
        else:
            colors.append("#2ca02c" if scenario["ratio"] >= threshold else "#d62728")
    bottom.barh(list(positions), ratios, color=colors)
    for position, scenario in zip(positions, scenarios, strict=True):
        threshold = thresholds.get(scenario["key"])
        if threshold is not None:
            bottom.plot([threshold, threshold], [position - 0.4, position + 0.4], "k--")
        bottom.text(scenario["ratio"], position, f" {scenario['ratio']:.2f}", va="center")
    bottom.set_yticks(list(positions), titles)
    bottom.invert_yaxis()
    bottom.set_xlim(0, max([1.0, *ratios]) * 1.15)
    bottom.set_xlabel("ratio to the bare baseline (dashed: target; green PASS, red MISS)")
    meta = results["meta"]
    bottom.set_title(
        f"{meta['machine']['cpu']}, {meta['machine']['cores']} cores, {meta['started']}",
        fontsize=9,
    )
    _scaling_panel(scale, results.get("scaling"))
    figure.savefig(path, dpi=110)
    plt.close(figure)


def workers_table(workers: Mapping[str, Any]) -> str:
    """The WXLOGIN_WORKERS=2 against one process table, with what it can and cannot show."""
    lines = [
        "| Workers: CheckSession, valid token, nothing pinned | req/s | p99 ms "
        "| service CPU (cores) | machine busy (cores) |",
        "|---|--:|--:|--:|--:|",
    ]
    for count, label in (("1", "1 process"), ("2", "WXLOGIN_WORKERS=2")):
        side = workers[f"processes_{count}"]
        cpu = " + ".join(f"{p['cpu_cores']:.2f}" for p in side["processes"].values())
        lines.append(
            f"| {label} | {side['rps']:,.0f} | {side['p99_ms']:.2f} | {cpu} "
            f"| {side['machine_busy_cores']:.2f} |"
        )
    lines.append(f"| 2 workers / 1 process | **{workers['ratio']:.2f} x** | | | |")
    lines += ["", f"What this can show: {workers['caveat']}."]
    return "\n".join(lines)


def _scaling_panel(axes: Any, scaling: Mapping[str, Any] | None) -> None:
    """CheckSession req/s with 1 and 2 service processes sharing the port."""
    if not scaling:
        axes.set_axis_off()
        return
    labels = ["1 service process", "2 service processes"]
    values = [scaling["processes_1"]["rps"], scaling["processes_2"]["rps"]]
    axes.barh([0, 1], values, 0.6, color=["#9ecae1", "#3182bd"])
    for position, value in enumerate(values):
        axes.text(value, position, f" {value:,.0f}", va="center", fontsize=8)
    axes.set_yticks([0, 1], labels)
    axes.invert_yaxis()
    axes.set_xlim(0, max(values) * 1.2)
    axes.set_xlabel(
        f"CheckSession req/s, nothing pinned: {scaling['speedup']:.2f} x with a second process"
    )


README_BLOCK = "bench:results"


def update_readme(readme: Path, results: Mapping[str, Any]) -> bool:
    """Put the latest tables between the markers of bench/README.md; False if it has none."""
    return rewrite_block(readme, README_BLOCK, markdown(results))


def write(results: Mapping[str, Any], out_dir: Path) -> dict[str, Path]:
    """latest.json, <timestamp>.json, latest.md, latest.png and profiles/ under out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = results["meta"]["started"].replace(":", "").replace("-", "").replace("+0000", "Z")
    text = json.dumps(results, indent=2) + "\n"
    paths = {
        "json": out_dir / "latest.json",
        "timestamped": out_dir / f"{stamp}.json",
        "markdown": out_dir / "latest.md",
        "chart": out_dir / "latest.png",
    }
    paths["json"].write_text(text)
    paths["timestamped"].write_text(text)
    paths["markdown"].write_text(markdown(results))
    chart(results, paths["chart"])
    profiles = {s["key"]: s["profile"] for s in results["scenarios"] if "profile" in s}
    if profiles:
        (out_dir / "profiles").mkdir(exist_ok=True)
        for key, summary in profiles.items():
            (out_dir / "profiles" / f"{key}.txt").write_text(summary + "\n")
    return paths
