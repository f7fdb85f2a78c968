"""The performance targets (issues 4, 10-13 and 18), checked against one run's results.

Issue 18 raised the main ones and measures them on the production set-up: the main stack
checks a caller key on every call, has metrics on and writes durably (bench/run.py).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from bench.plan import Plan


@dataclass(frozen=True)
class Target:
    """One target: a measured value, how it compares, and the threshold."""

    key: str
    text: str
    measure: Callable[[Mapping[str, Any]], float | None]
    threshold: float
    at_most: bool = False  # True: the value must not exceed the threshold
    unit: str = "x"
    digits: int = 2  # shown; 3 where the threshold is that fine
    # A ratio to bare grpc.aio, which runs on asyncio's loop while the service runs on
    # uvloop: also shown against the same bare server on uvloop (`loop_factor`).
    grpc_ratio: bool = False


def _scenario(results: Mapping[str, Any], key: str) -> Mapping[str, Any] | None:
    return next((s for s in results.get("scenarios", ()) if s["key"] == key), None)


def _ratio(key: str) -> Callable[[Mapping[str, Any]], float | None]:
    def measure(results: Mapping[str, Any]) -> float | None:
        scenario = _scenario(results, key)
        return None if scenario is None else float(scenario["ratio"])

    return measure


def _p99(key: str) -> Callable[[Mapping[str, Any]], float | None]:
    def measure(results: Mapping[str, Any]) -> float | None:
        scenario = _scenario(results, key)
        return None if scenario is None else float(scenario["subject"]["p99_ms"])

    return measure


def _side_by_side(key: str) -> Callable[[Mapping[str, Any]], float | None]:
    """The cost ratio `key` measured side by side (Rig.side_by_side)."""

    def measure(results: Mapping[str, Any]) -> float | None:
        found = next((c for c in results.get("side_by_side", ()) if c["key"] == key), None)
        return None if found is None else float(found["ratio"])

    return measure


def loop_factor(results: Mapping[str, Any]) -> float | None:
    """Bare grpc.aio on uvloop over bare grpc.aio on asyncio's loop, both answering the same
    CheckSession bytes under the same load in this run; None if either did not run."""
    on_uvloop, on_asyncio = (
        _scenario(results, "check_uvloop_bare"),
        _scenario(results, "check_valid"),
    )
    if on_uvloop is None or on_asyncio is None:
        return None
    return float(on_uvloop["baseline"]["rps"]) / float(on_asyncio["baseline"]["rps"])


def _rss_growth(results: Mapping[str, Any]) -> float | None:
    rss = results.get("rss")
    return None if rss is None else float(rss["growth"])


TARGETS = (
    Target(
        "check_valid_ratio",
        "CheckSession >= 0.90 x bare grpc.aio",
        _ratio("check_valid"),
        0.90,
        grpc_ratio=True,
    ),
    Target("check_valid_p99", "CheckSession p99 <= 20 ms", _p99("check_valid"), 20.0, True, " ms"),
    Target(
        "check_caller_ratio",
        "CheckSession, caller key checked >= 0.80 x bare grpc.aio",
        _ratio("check_caller"),
        0.80,
        grpc_ratio=True,
    ),
    Target(
        "check_unknown_ratio",
        "CheckSession, unknown token >= 0.85 x bare grpc.aio",
        _ratio("check_unknown"),
        0.85,
        grpc_ratio=True,
    ),
    # Costs of a setting: two of our own stacks side by side, requests per CPU-second.
    Target(
        "check_metrics_cost",
        "CheckSession with metrics on >= 0.85 x with them off (side by side)",
        _side_by_side("metrics_cost"),
        0.85,
    ),
    Target(
        "renewal_cost",
        "CheckSession with sliding expiry >= 0.98 x with fixed expiry (side by side)",
        _side_by_side("renewal_cost"),
        0.98,
        digits=3,
    ),
    Target(
        "decrypt_ratio",
        "DecryptUserData >= 0.70 x bare grpc.aio",
        _ratio("decrypt"),
        0.70,
        grpc_ratio=True,
    ),
    Target("login_ratio", "Login >= 0.40 x bare grpc.aio", _ratio("login"), 0.40, grpc_ratio=True),
    Target(
        "access_token_ratio",
        "GetAccessToken (from memory) >= 0.80 x bare grpc.aio",
        _ratio("access_token"),
        0.80,
        grpc_ratio=True,
    ),
    # WeChat-bound like Login, so Login's yardstick (issue 11 names no number).
    Target(
        "phone_number_ratio",
        "GetPhoneNumber >= 0.30 x bare grpc.aio",
        _ratio("phone_number"),
        0.30,
        grpc_ratio=True,
    ),
    Target(
        "edge_session_ratio",
        "edge GET /v1/session, edge cache off >= 0.45 x bare aiohttp",
        _ratio("edge_session"),
        0.45,
    ),
    Target(
        "rss_growth",
        "RSS after 200k CheckSession <= 1.10 x RSS after 10k",
        _rss_growth,
        0.10,
        True,
        "",
    ),
)


def evaluate(results: Mapping[str, Any], plan: Plan) -> list[dict[str, Any]]:
    """PASS/MISS per target; a target whose scenario did not run is a MISS.

    Except in a run of some scenarios (`--only`): there, only what ran is judged.
    """
    verdicts = []
    factor = loop_factor(results)
    for target in TARGETS:
        value = target.measure(results)
        if value is None and plan.only:
            continue
        if value is None:
            passed = False
        elif target.at_most:
            passed = value <= target.threshold
        else:
            passed = value >= target.threshold
        verdicts.append(
            {
                "key": target.key,
                "text": target.text,
                "value": value,
                "threshold": target.threshold,
                "at_most": target.at_most,
                "unit": target.unit,
                "digits": target.digits,
                "concurrency": plan.concurrency,
                "result": "PASS" if passed else "MISS",
                # The same ratio against bare grpc.aio on uvloop, the service's loop.
                "loop_matched": (
                    value / factor if target.grpc_ratio and value is not None and factor else None
                ),
            }
        )
    return verdicts
