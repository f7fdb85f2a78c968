"""Test helpers: scrape a real /metrics endpoint and read samples by name and labels."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import aiohttp
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"


@dataclass(frozen=True)
class Scrape:
    """One scrape: its text, and every sample as prometheus_client's OpenMetrics parser reads it."""

    text: str
    content_type: str
    samples: tuple[Sample, ...]
    families: frozenset[str]  # every metric family, with samples or not

    def matching(self, name: str, **labels: str) -> list[Sample]:
        """Samples called `name` whose labels include all of `labels`."""
        return [
            sample
            for sample in self.samples
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
        ]

    def value(self, name: str, **labels: str) -> float:
        """The sum over `matching(name, **labels)`; AssertionError when nothing matches."""
        found = self.matching(name, **labels)
        assert found, f"no sample {name}{labels} in the scrape"
        return sum(sample.value for sample in found)

    def label_values(self, name: str, label: str) -> set[str]:
        """Every value `label` takes among the samples called `name`."""
        return {s.labels[label] for s in self.samples if s.name == name and label in s.labels}


def parse_openmetrics(text: str) -> tuple[tuple[Sample, ...], frozenset[str]]:
    """Every sample and family name of an OpenMetrics exposition (raises if it does not parse)."""
    families = list(text_string_to_metric_families(text))
    return tuple(_samples(families)), frozenset(family.name for family in families)


def _samples(families: Iterable[Metric]) -> Iterable[Sample]:
    for family in families:
        yield from family.samples


async def scrape(http: aiohttp.ClientSession, port: int) -> Scrape:
    """GET /metrics asking for OpenMetrics, as Prometheus does, and parse the answer."""
    async with http.get(
        f"http://127.0.0.1:{port}/metrics", headers={"Accept": OPENMETRICS}
    ) as response:
        assert response.status == 200
        text = await response.text()
        content_type = response.headers.get("Content-Type", "")
    return Scrape(text, content_type, *parse_openmetrics(text))
