"""The shape of a scenario's results: figures, and targets each judged PASS or MISS."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from bench.chaos.plan import ChaosPlan

PASS, MISS, NOT_RUN = "PASS", "MISS", "NOT RUN"


@dataclass(frozen=True)
class Context:
    """What every scenario gets: the plan, scratch space, an HTTP client, a log line writer."""

    plan: ChaosPlan
    workdir: Path
    http: aiohttp.ClientSession
    log: Callable[[str], None]


def target(
    key: str,
    text: str,
    value: float | None,
    threshold: float,
    *,
    unit: str = "",
    at_least: bool = False,
) -> dict[str, Any]:
    """One target: `value` must be <= `threshold` (>= with `at_least`); None is a MISS."""
    if value is None:
        result = MISS
    else:
        result = PASS if (value >= threshold if at_least else value <= threshold) else MISS
    return {
        "key": key,
        "text": text,
        "value": value,
        "threshold": threshold,
        "unit": unit,
        "result": result,
    }


def scenario(
    key: str,
    title: str,
    *,
    figures: dict[str, Any],
    targets: Sequence[dict[str, Any]],
    notes: Sequence[str] = (),
) -> dict[str, Any]:
    """A scenario that ran."""
    return {
        "key": key,
        "title": title,
        "status": "ran",
        "figures": figures,
        "targets": list(targets),
        "notes": list(notes),
    }


def not_run(key: str, title: str, why: str, *, status: str = "not_run") -> dict[str, Any]:
    """A scenario that could not run (status "not_run") or broke off ("error"), and why."""
    return {
        "key": key,
        "title": title,
        "status": status,
        "error": why,
        "figures": {},
        "targets": [],
        "notes": [],
    }
