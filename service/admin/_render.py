"""How wxlogin-admin prints: aligned tables and key/value blocks for people, JSON for scripts."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime


def when(value: datetime | None) -> str:
    """A stored time for a table: UTC to the second, "-" for none."""
    if value is None:
        return "-"
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def iso(value: datetime | None) -> str | None:
    """A stored time for JSON: ISO 8601 in UTC, to the millisecond MongoDB keeps; null for none."""
    if value is None:
        return None
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns padded to their widest cell, two spaces apart; the last one unpadded."""
    widths = [max(len(row[i]) for row in [headers, *rows]) for i in range(len(headers))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [headers, *rows]
    ]
    return "\n".join(lines)


def block(pairs: Sequence[tuple[str, str]]) -> str:
    """One thing's fields, one per line, the values aligned."""
    width = max(len(name) for name, _ in pairs)
    return "\n".join(f"{name.ljust(width)}  {value}".rstrip() for name, value in pairs)
