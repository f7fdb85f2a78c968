"""`python -m service`: read the environment, run until SIGTERM/SIGINT, drain, exit."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys

from clients import logs
from service.app import running_service
from service.embedded_mongo import EmbeddedMongoError
from service.settings import ConfigError, Settings

log = logging.getLogger("service")


async def serve(settings: Settings) -> None:
    """Serve until a termination signal, then shut down gracefully."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with running_service(settings) as running:
        # One parseable line: the dev stack and tests read the bound port from it.
        print(f"wxlogin service listening on port {running.port}", flush=True)
        await stop.wait()
        log.info("shutting down: draining in-flight RPCs")
    log.info("stopped")


def main() -> int:
    level = os.environ.get("WXLOGIN_LOG_LEVEL", "INFO").upper()
    if level not in logging.getLevelNamesMapping():
        print(
            f"wxlogin: bad configuration: WXLOGIN_LOG_LEVEL: unknown level {level!r}",
            file=sys.stderr,
        )
        return 2
    logs.configure(level)
    try:
        settings = Settings.from_env(os.environ)
    except ConfigError as error:
        print(f"wxlogin: bad configuration: {error}", file=sys.stderr)
        return 2
    try:
        asyncio.run(serve(settings))
    except ConfigError as error:  # found only when used: an unreachable MongoDB, a taken port
        print(f"wxlogin: bad configuration: {error}", file=sys.stderr)
        return 2
    except (EmbeddedMongoError, OSError) as error:
        print(f"wxlogin: cannot start: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
