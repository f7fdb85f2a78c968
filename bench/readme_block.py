"""Rewrites a generated block of a Markdown file: the text between `<!-- NAME:start -->` and
`<!-- NAME:end -->` (the bench's `bench:results`, the chaos run's `chaos:results`)."""

from __future__ import annotations

from pathlib import Path


def markers(name: str) -> tuple[str, str]:
    """The start and end markers of block `name`."""
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


def rewrite_block(path: Path, name: str, body: str) -> bool:
    """Put `body` between the markers of block `name` in `path`; False if it has none.

    Everything outside the markers is kept byte for byte, so hand-written text around
    a generated table survives every run.
    """
    start_marker, end_marker = markers(name)
    text = path.read_text()
    head, start, rest = text.partition(start_marker)
    _, end, tail = rest.partition(end_marker)
    if not start or not end:
        return False
    path.write_text(f"{head}{start_marker}\n{body}{end_marker}{tail}")
    return True
