"""Latency percentiles, computed one way for every load generator's samples."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

PERCENTILES = (50, 90, 99)


def percentiles_ms(latencies_us: Sequence[float]) -> dict[str, float]:
    """p50/p90/p99 in milliseconds by the nearest-rank method; 0.0 when there are none."""
    return weighted_percentiles_ms([(latencies_us, 1.0)])


def weighted_percentiles_ms(groups: Iterable[tuple[Sequence[float], float]]) -> dict[str, float]:
    """Percentiles over groups of samples in microseconds, each group with a per-sample weight.

    Raw samples (h2load's log, the driver) weigh 1 each. wrk reports only quantiles, so a
    wrk run is WRK_QUANTILES evenly spaced quantiles each weighing requests/WRK_QUANTILES:
    that is how rounds of the same scenario are merged into one distribution.
    """
    weighted = sorted((value, weight) for samples, weight in groups for value in samples)
    total = sum(weight for _, weight in weighted)
    result = {f"p{pct}_ms": 0.0 for pct in PERCENTILES}
    if total <= 0:
        return result
    for pct in PERCENTILES:
        wanted = total * pct / 100
        running = 0.0
        for value, weight in weighted:
            running += weight
            if running >= wanted - 1e-9:
                result[f"p{pct}_ms"] = round(value / 1000, 3)
                break
    return result
