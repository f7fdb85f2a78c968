"""Log set-up for wxlogin's servers: one line per record on stderr, written in blocks.

Both servers log per request: the service an audit line per Login, the edge an
access line per request. Under load, one write(2) per line cost ~8% of Login's
CPU and ~5% of the edge's throughput (bench/README.md), so lines are buffered and
written together:
WARNING and above at once, everything else within `flush_interval` (a small
daemon thread flushes), and all of it when logging shuts down at exit. A process
killed with SIGKILL loses at most the last fraction of a second of INFO lines.

Two formats (WXLOGIN_LOG_FORMAT): `text`, a line a person reads, ending with
the call's `caller=` and `request_id=` when known; `json`, one object per line with
time, level, logger, message and, where known, request_id, caller and user_id
(runtime/log_context.py), for log pipelines. Both say exactly what the same
message says: nothing more can leak through one than through the other.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from datetime import UTC, datetime
from typing import Any, TextIO

from runtime.log_context import ContextFilter

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Record attributes the JSON form carries when a record has them (from the call's context).
CONTEXT_FIELDS = ("request_id", "caller", "user_id")
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


class TextFormatter(logging.Formatter):
    """LOG_FORMAT, then the call's caller and request id at the end of the line when known."""

    def __init__(self) -> None:
        super().__init__(LOG_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        caller = getattr(record, "caller", None)
        if caller is not None:
            line += f" caller={caller}"
        request_id = getattr(record, "request_id", None)
        # Lines that already name it (the edge's access line) don't say it twice.
        if request_id is not None and "request_id=" not in record.message:
            line += f" request_id={request_id}"
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (newlines inside are escaped by JSON)."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": message,
        }
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str)


def formatter(log_format: str = "text") -> logging.Formatter:
    """The formatter for WXLOGIN_LOG_FORMAT's value (`text` or `json`)."""
    return JsonFormatter() if log_format == "json" else TextFormatter()


def configure(
    level: str | int, stream: TextIO | None = None, *, log_format: str = "text"
) -> BufferedStreamHandler:
    """Send every log record at `level` and above to stderr (or `stream`), buffered."""
    handler = BufferedStreamHandler(sys.stderr if stream is None else stream)
    handler.setFormatter(formatter(log_format))
    # On the handler: it runs in the task that logs, so it sees that call's context.
    handler.addFilter(ContextFilter())
    logging.basicConfig(level=level, handlers=[handler])
    quiet_driver_logs()
    return handler


# pymongo logs every command at DEBUG, JSON-dumping its documents (sealed keys
# among them): far more than anyone reads. Under motor that ran on its worker
# threads, where a garbage collection once finalized a gRPC object off its own
# thread and crashed the process (a test run's segfault).
DRIVER_LOGGERS = ("pymongo",)


def quiet_driver_logs() -> None:
    """Keep the MongoDB driver's logs at INFO and above, whatever WXLOGIN_LOG_LEVEL says."""
    for name in DRIVER_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO)
