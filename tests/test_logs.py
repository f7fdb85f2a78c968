"""The servers' buffered log handler: WARNING+ at once, INFO within the flush interval."""

from __future__ import annotations

import logging
import time

from clients.logs import LOG_FORMAT, BufferedStreamHandler


class RecordingStream:
    """A text stream that tells written-but-buffered text from flushed text."""

    def __init__(self) -> None:
        self.buffered = ""
        self.flushed = ""

    def write(self, text: str) -> int:
        self.buffered += text
        return len(text)

    def flush(self) -> None:
        self.flushed += self.buffered
        self.buffered = ""


def logger_with(handler: logging.Handler, name: str) -> logging.Logger:
    logger = logging.getLogger(name)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    return logger


def wait_for(condition: object, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if callable(condition) and condition():
            return True
        time.sleep(0.01)
    return False


def test_info_lines_are_written_together_and_warnings_at_once() -> None:
    stream = RecordingStream()
    handler = BufferedStreamHandler(stream, flush_interval=60)  # the timer stays out of the way
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    log = logger_with(handler, "test.logs.buffered")
    try:
        log.info("first login")
        log.info("second login")
        assert stream.flushed == ""
        assert stream.buffered == ""  # not even handed to the stream yet
        log.warning("MongoDB does not answer")
        assert "INFO test.logs.buffered: first login" in stream.flushed
        assert stream.flushed.rstrip().endswith(
            "WARNING test.logs.buffered: MongoDB does not answer"
        )
    finally:
        log.removeHandler(handler)
        handler.close()


def test_info_lines_reach_the_stream_within_the_flush_interval() -> None:
    stream = RecordingStream()
    handler = BufferedStreamHandler(stream, flush_interval=0.05)
    log = logger_with(handler, "test.logs.timer")
    try:
        log.info("quiet period")
        assert wait_for(lambda: "quiet period" in stream.flushed)
    finally:
        log.removeHandler(handler)
        handler.close()


def test_close_flushes_what_is_left() -> None:
    stream = RecordingStream()
    handler = BufferedStreamHandler(stream, flush_interval=60)
    log = logger_with(handler, "test.logs.close")
    log.info("last words")
    log.removeHandler(handler)
    handler.close()
    assert "last words" in stream.flushed


def test_lines_go_out_whole_in_chunks_of_about_4_kib() -> None:
    """Many INFO lines: written before the timer, in chunks that end with a whole line."""
    writes: list[str] = []

    class Chunks(RecordingStream):
        def write(self, text: str) -> int:
            writes.append(text)
            return len(text)

    handler = BufferedStreamHandler(Chunks(), flush_interval=60)
    log = logger_with(handler, "test.logs.chunks")
    try:
        for index in range(200):
            log.info("line %03d %s", index, "x" * 60)
        assert writes
        assert all(len(chunk) <= 4096 and chunk.endswith("\n") for chunk in writes)
        assert "".join(writes).count("\n") == sum(chunk.count("\n") for chunk in writes)
    finally:
        log.removeHandler(handler)
        handler.close()
    assert "".join(writes).count("\n") == 200
