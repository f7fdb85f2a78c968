"""The servers' buffered log handler: WARNING+ at once, INFO within the flush interval."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from runtime.logs import LOG_FORMAT, BufferedStreamHandler


class RecordingStream:
    """A text stream that records each write and tells written text from flushed text."""

    def __init__(self) -> None:
        self.writes: list[str] = []
        self.buffered = ""
        self.flushed = ""

    def write(self, text: str) -> int:
        self.writes.append(text)
        self.buffered += text
        return len(text)

    def flush(self) -> None:
        self.flushed += self.buffered
        self.buffered = ""


@contextmanager
def buffered_logger(
    name: str, flush_interval: float
) -> Iterator[tuple[logging.Logger, RecordingStream]]:
    """A logger of its own writing through a BufferedStreamHandler; closed on exit."""
    stream = RecordingStream()
    handler = BufferedStreamHandler(stream, flush_interval=flush_interval)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    logger = logging.getLogger(name)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield logger, stream
    finally:
        logger.removeHandler(handler)
        handler.close()


def wait_for(condition: Callable[[], bool], seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return False


def test_info_lines_are_written_together_and_warnings_at_once() -> None:
    """INFO lines wait in the buffer; a WARNING writes them and itself out at once, in one write."""
    # A 60 s timer stays out of the way.
    with buffered_logger("test.logs.buffered", flush_interval=60) as (log, stream):
        log.info("first login")
        log.info("second login")
        assert stream.writes == []  # not even handed to the stream yet
        log.warning("MongoDB does not answer")
        assert len(stream.writes) == 1
        assert "INFO test.logs.buffered: first login" in stream.flushed
        assert stream.flushed.rstrip().endswith(
            "WARNING test.logs.buffered: MongoDB does not answer"
        )


def test_info_lines_reach_the_stream_within_the_flush_interval() -> None:
    """Buffered INFO lines reach the stream when the flush timer fires, without a WARNING."""
    with buffered_logger("test.logs.timer", flush_interval=0.05) as (log, stream):
        log.info("quiet period")
        assert wait_for(lambda: "quiet period" in stream.flushed)


def test_close_flushes_what_is_left() -> None:
    """Closing the handler writes out INFO lines still in the buffer."""
    with buffered_logger("test.logs.close", flush_interval=60) as (log, stream):
        log.info("last words")
        assert stream.flushed == ""
    assert "last words" in stream.flushed


def test_lines_go_out_whole_in_chunks_of_about_4_kib() -> None:
    """Many INFO lines: written before the timer, in chunks that end with a whole line."""
    with buffered_logger("test.logs.chunks", flush_interval=60) as (log, stream):
        for index in range(200):
            log.info("line %03d %s", index, "x" * 60)
        assert len(stream.writes) > 1
        assert all(len(chunk) <= 4096 for chunk in stream.writes)
        assert all(chunk.endswith("\n") for chunk in stream.writes)
    assert stream.flushed.count("\n") == 200
