"""Test helpers: capture the process's log records in the JSON form, as WXLOGIN_LOG_FORMAT=json."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from runtime import logs
from runtime.log_context import ContextFilter


class JsonLines:
    """What a JSON handler wrote: the raw text and each line parsed."""

    def __init__(self, stream: io.StringIO) -> None:
        self._stream = stream

    @property
    def text(self) -> str:
        return self._stream.getvalue()

    def entries(self) -> list[dict[str, Any]]:
        """Each line as its JSON object (fails if a line is not exactly one object)."""
        parsed = [json.loads(line) for line in self.text.splitlines()]
        assert all(isinstance(entry, dict) for entry in parsed)
        return parsed

    def of(self, logger_prefix: str) -> list[dict[str, Any]]:
        """Entries whose logger name starts with `logger_prefix`."""
        return [e for e in self.entries() if e["logger"].startswith(logger_prefix)]


@contextmanager
def json_logs(level: int = logging.DEBUG) -> Iterator[JsonLines]:
    """Every record of the process at `level`+ in the JSON form (WXLOGIN_LOG_FORMAT=json)."""
    with captured_logs("json", level) as stream:
        yield JsonLines(stream)


@contextmanager
def captured_logs(log_format: str, level: int = logging.DEBUG) -> Iterator[io.StringIO]:
    """Every record of the process at `level`+, formatted the way `logs.configure` sets it up.

    A plain StreamHandler rather than the buffered one: lines are there at once.
    """
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.formatter(log_format))
    handler.addFilter(ContextFilter())
    handler.setLevel(level)
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(min(old_level or level, level))
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
