"""Log set-up for wxlogin's servers: one line per record on stderr, written in blocks.

Both servers log per request: the service an audit line per Login, the edge an
access line per request. Under load, one write(2) per line cost ~8% of Login's
CPU and ~5% of the edge's throughput (bench/README.md), so lines are buffered and
written together:
WARNING and above at once, everything else within `flush_interval` (a small
daemon thread flushes), and all of it when logging shuts down at exit. A process
killed with SIGKILL loses at most the last fraction of a second of INFO lines.
"""

from __future__ import annotations

import logging
import sys
import threading
from typing import TextIO

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_BUFFER_BYTES = 64 * 1024


class BufferedStreamHandler(logging.StreamHandler[TextIO]):
    """A StreamHandler that flushes on WARNING+ or every `flush_interval` seconds."""

    def __init__(self, stream: TextIO, flush_interval: float = 0.2) -> None:
        super().__init__(stream)
        self._stopped = threading.Event()
        self._flusher = threading.Thread(
            target=self._flush_periodically, args=(flush_interval,), name="log-flush", daemon=True
        )
        self._flusher.start()

    def emit(self, record: logging.LogRecord) -> None:
        # Handler.handle() holds self.lock around this call.
        try:
            self.stream.write(self.format(record) + self.terminator)
            if record.levelno >= logging.WARNING:
                self.flush()
        except Exception:
            self.handleError(record)

    def close(self) -> None:
        self._stopped.set()
        if self._flusher is not threading.current_thread():
            self._flusher.join(timeout=1)
        self.flush()
        super().close()

    def _flush_periodically(self, interval: float) -> None:
        while not self._stopped.wait(interval):
            try:
                self.flush()
            except (OSError, ValueError):
                return  # stderr is gone (closed pipe, closed file): nothing left to do


def configure(level: str | int, stream: TextIO | None = None) -> BufferedStreamHandler:
    """Send every log record at `level` and above to stderr (or `stream`), buffered."""
    if stream is None:
        # A block-buffered text stream of its own over fd 2: sys.stderr is
        # line-buffered, which would write(2) every line anyway.
        stream = open(  # noqa: SIM115 - lives as long as the process; closed at exit
            sys.stderr.fileno(),
            "w",
            buffering=_BUFFER_BYTES,
            encoding="utf-8",
            errors="backslashreplace",
            closefd=False,
        )
    handler = BufferedStreamHandler(stream)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    logging.basicConfig(level=level, handlers=[handler])
    return handler
