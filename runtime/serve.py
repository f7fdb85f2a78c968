"""Serve until SIGTERM or SIGINT: the one loop every wxlogin process runs."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable


def stop_on_signals() -> asyncio.Event:
    """An Event set by SIGTERM or SIGINT; install it before binding a port.

    Installed early, so a signal that arrives right after the "listening on"
    line still stops the process cleanly instead of killing it mid-start.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    return stop


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
