"""WXLOGIN_EVENT_LOOP: the asyncio event loop the service and the edge run on.

`uvloop` (the default) is asyncio's loop reimplemented on libuv: the same API,
with its scheduling, timers and socket transports in C. Every call into
wxlogin is mostly event-loop work (grpc.aio's completion callbacks, PyMongo's
and aiohttp's transports, the tasks and futures of each RPC), so the loop is a
large share of what a call costs: on the bench machine uvloop served ~12 %
more CheckSession per core (side by side, `make bench`'s `loop_gain`) and used
~13 % less CPU per Login (bench/README.md, round 3 stop 5). `asyncio` is the
standard library's loop, one setting away for anyone who would rather run on it.

Nothing in wxlogin depends on which loop runs: the in-process tests run on
asyncio's (pytest-asyncio), the processes they start on uvloop. uvloop 0.23 is
required: it fixed a file descriptor closed twice after a cancelled connect
(uvloop#740), which could close an unrelated connection.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Callable, Coroutine, Mapping
from types import ModuleType
from typing import Any, TypeVar

from runtime.config import ConfigError

VARIABLE = "WXLOGIN_EVENT_LOOP"
UVLOOP = "uvloop"
ASYNCIO = "asyncio"

T = TypeVar("T")


def _uvloop() -> ModuleType | None:
    """The uvloop module, or None where it is not installed (it has no Windows wheels)."""
    try:
        return importlib.import_module("uvloop")
    except ImportError:
        return None


def parse_event_loop(env: Mapping[str, str]) -> str:
    """WXLOGIN_EVENT_LOOP: `uvloop` or `asyncio`.

    Unset: uvloop where it is installed, else asyncio. Set to `uvloop` where it
    is not installed: a ConfigError, since someone asked for it by name.
    """
    raw = env.get(VARIABLE, "").strip()
    choice = raw.lower() or UVLOOP
    if choice not in (UVLOOP, ASYNCIO):
        raise ConfigError(VARIABLE, f"expected {UVLOOP} or {ASYNCIO}, got {raw!r}")
    if choice == UVLOOP and _uvloop() is None:
        if raw:
            raise ConfigError(
                VARIABLE, "uvloop is not installed: pip install 'wxlogin[server]', or set asyncio"
            )
        return ASYNCIO
    return choice


def run(main: Coroutine[Any, Any, T], choice: str) -> T:
    """`asyncio.run(main)` on the chosen loop."""
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if choice == UVLOOP:
        module = _uvloop()
        if module is None:  # parse_event_loop said it was there
            raise ConfigError(VARIABLE, "uvloop is not installed")
        factory = module.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)


def running_loop_name() -> str:
    """The loop this coroutine runs on, as the start-up line names it: `uvloop 0.23.0`, `asyncio`.

    Read from the running loop itself, not from the setting, so that the line
    says what really runs.
    """
    loop = asyncio.get_running_loop()
    if type(loop).__module__.partition(".")[0] == UVLOOP:
        module = _uvloop()
        return f"{UVLOOP} {getattr(module, '__version__', '?')}"
    return ASYNCIO
