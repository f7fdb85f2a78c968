"""Serve until SIGTERM or SIGINT, then drain: the one loop every wxlogin process runs."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Mapping

from runtime.config import parse_number

DRAIN_VARIABLE = "WXLOGIN_DRAIN_SECONDS"
# How long a process that got SIGTERM goes on serving while it reports NOT_SERVING
# (gRPC health) or 503 (/readyz): long enough for a load balancer that checks
# every 1-2 s to see it twice and stop sending new calls, short enough that a
# rolling restart of many processes stays quick. Tune to the balancer's check
# interval times its fall count.
DEFAULT_DRAIN_SECONDS = 5.0
# A drain longer than this is a mistake (systemd's default stop timeout is 90 s).
MAX_DRAIN_SECONDS = 300.0

log = logging.getLogger(__name__)


def parse_drain_seconds(env: Mapping[str, str]) -> float:
    """WXLOGIN_DRAIN_SECONDS: seconds of NOT_SERVING before the listener closes; 0 = none."""
    return parse_number(
        DRAIN_VARIABLE,
        env.get(DRAIN_VARIABLE),
        DEFAULT_DRAIN_SECONDS,
        minimum=0,
        maximum=MAX_DRAIN_SECONDS,
        unit="seconds",
    )


class StopSignal(asyncio.Event):
    """Set by SIGTERM or SIGINT; `again` by a SIGINT once stopping (cut the drain short).

    A repeated SIGTERM changes nothing: systemd's default stop signals every process
    of the unit, and a worker parent forwards its own SIGTERM too, so a worker may
    get two; neither may shorten the drain a load balancer relies on. Ctrl-C twice
    (SIGINT) is a person who wants it to stop now.
    """

    def __init__(self) -> None:
        super().__init__()
        self.again = asyncio.Event()

    def signalled(self, signum: int = signal.SIGTERM) -> None:
        """What a signal does: stop, or for a SIGINT while already stopping, hurry."""
        if self.is_set() and signum == signal.SIGINT:
            self.again.set()
        self.set()


def stop_on_signals() -> StopSignal:
    """An Event set by SIGTERM or SIGINT; install it before binding a port.

    Installed early, so a signal that arrives right after the "listening on"
    line still stops the process cleanly instead of killing it mid-start.
    """
    stop = StopSignal()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.signalled, signum)
    return stop


async def drain(seconds: float, stop: StopSignal) -> None:
    """Go on serving for `seconds` (already reported as not ready); a SIGINT then ends it.

    Load balancers take a health check or two to notice a process going away;
    calls they send meanwhile are answered normally instead of refused.
    """
    if seconds <= 0:
        return
    log.info("draining: not ready, still serving for %gs", seconds)
    try:
        await asyncio.wait_for(stop.again.wait(), seconds)
        log.info("SIGINT while draining: drain cut short")
    except TimeoutError:
        pass


async def until_stopped(stop: asyncio.Event, *others: Awaitable[object]) -> bool:
    """Wait for `stop` or for the first of `others`; True when `stop` was the reason."""
    stopped = asyncio.ensure_future(stop.wait())
    waits = [stopped, *(asyncio.ensure_future(other) for other in others)]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for future in waits:
            if not future.done():
                future.cancel()
    return stop.is_set()
