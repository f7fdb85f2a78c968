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
# Whole lines, written in chunks of about this many characters: a write of up to
# 4096 bytes to a pipe is atomic, so processes sharing one stderr don't cut each
# other's lines (best effort: a line over the size is written alone).
_CHUNK_CHARS = 4096


class BufferedStreamHandler(logging.StreamHandler[TextIO]):
    """A StreamHandler that writes on WARNING+, per ~4 KiB of lines, or every `flush_interval` s."""

    def __init__(self, stream: TextIO, flush_interval: float = 0.2) -> None:
        super().__init__(stream)
        self._pending: list[str] = []
        self._pending_chars = 0
        self._stopped = threading.Event()
        self._flusher = threading.Thread(
            target=self._flush_periodically, args=(flush_interval,), name="log-flush", daemon=True
        )
        self._flusher.start()

    def emit(self, record: logging.LogRecord) -> None:
        # Handler.handle() holds self.lock (an RLock) around this call.
        try:
            line = self.format(record) + self.terminator
            if self._pending_chars + len(line) > _CHUNK_CHARS:
                self.flush()
            self._pending.append(line)
            self._pending_chars += len(line)
            if record.levelno >= logging.WARNING:
                self.flush()
        except Exception:
            self.handleError(record)

    def flush(self) -> None:
        """Write the pending lines in one write, then flush the stream."""
        with self.lock:  # type: ignore[union-attr]  # created in Handler.__init__
            if not self._pending:
                return
            text = "".join(self._pending)
            self._pending.clear()
            self._pending_chars = 0
            self.stream.write(text)
            self.stream.flush()

    def close(self) -> None:
        # No join: logging.shutdown() calls this holding our lock, which the
        # flusher may be waiting for; it is a daemon and ends at the next tick.
        self._stopped.set()
        self.flush()
        super().close()

    def _flush_periodically(self, interval: float) -> None:
        while not self._stopped.wait(interval):
            try:
                self.flush()
            except (BrokenPipeError, ValueError):
                return  # stderr is gone (reader exited, stream closed): nothing left to do
            except OSError:
                continue  # e.g. a full non-blocking pipe: try again at the next tick


def configure(level: str | int, stream: TextIO | None = None) -> BufferedStreamHandler:
    """Send every log record at `level` and above to stderr (or `stream`), buffered."""
    handler = BufferedStreamHandler(sys.stderr if stream is None else stream)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    logging.basicConfig(level=level, handlers=[handler])
    return handler
