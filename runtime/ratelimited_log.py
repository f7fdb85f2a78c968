"""One log line per distinct cause per interval; the rest are counted and the count is logged later.

Whatever a stranger can trigger at will (bytes that are no request, HTTP that
does not parse) must not cost a log line, let alone a traceback, each time: a
probe of a few thousand requests would bury everything else in the log. So such
lines go through a `RateLimitedLog`: the first line of a cause goes out, the
ones after it within `interval` seconds are only counted, and the next line of
that cause that goes out says how many were held back.

A cause is a short string the code chooses ("Login: undecodable request"),
never request data: it is the key, and it may be logged.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType

# What logging's exc_info= accepts.
ExcInfo = (
    bool
    | BaseException
    | tuple[type[BaseException], BaseException, TracebackType | None]
    | tuple[None, None, None]
    | None
)

DEFAULT_INTERVAL = 60.0
# Causes are chosen by code, so there are few; the bound only guards against a
# caller that builds them from input by mistake.
DEFAULT_MAX_CAUSES = 256


@dataclass
class _Cause:
    last_logged: float
    held_back: int = 0


class RateLimitedLog:
    """Lets one line per cause through every `interval` seconds; counts the ones it holds back."""

    def __init__(
        self,
        logger: logging.Logger,
        interval: float = DEFAULT_INTERVAL,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_causes: int = DEFAULT_MAX_CAUSES,
    ) -> None:
        self._logger = logger
        self._interval = interval
        self._clock = clock
        self._max_causes = max_causes
        self._causes: dict[str, _Cause] = {}
        # grpc and logging may call from other threads than the event loop's.
        self._lock = threading.Lock()

    def admit(self, cause: str) -> int | None:
        """None: hold this line back (counted). Else: log it; this many were held back before it."""
        now = self._clock()
        with self._lock:
            seen = self._causes.get(cause)
            if seen is not None and now - seen.last_logged < self._interval:
                seen.held_back += 1
                return None
            held_back = 0 if seen is None else seen.held_back
            # Re-inserted at the end: the dict stays ordered oldest-logged first.
            self._causes.pop(cause, None)
            self._causes[cause] = _Cause(now)
            while len(self._causes) > self._max_causes:
                del self._causes[next(iter(self._causes))]
            return held_back

    def note(self, held_back: int) -> str:
        """What a line that goes out appends to say how many of its kind were held back."""
        if not held_back:
            return ""
        return f" ({held_back} more like this not logged in the last {self._interval:.0f}s)"

    def log(
        self, level: int, cause: str, msg: str, *args: object, exc_info: ExcInfo = None
    ) -> bool:
        """Log `msg % args` unless `cause` was logged less than `interval` ago; True if logged."""
        # A level that is off costs no lock and uses up no budget.
        if not self._logger.isEnabledFor(level):
            return False
        held_back = self.admit(cause)
        if held_back is None:
            return False
        # The note holds no "%", so it is safe in the format with or without args.
        self._logger.log(level, msg + self.note(held_back), *args, exc_info=exc_info)
        return True

    def remembered(self) -> int:
        """How many causes it currently keeps a count for (bounded by `max_causes`)."""
        with self._lock:
            return len(self._causes)
