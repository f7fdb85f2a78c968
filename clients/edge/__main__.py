"""`python -m clients.edge`: read the environment, serve until SIGTERM/SIGINT, drain, exit."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys

from clients import logs
from clients.edge.app import init_app
from clients.edge.config import ConfigError, EdgeConfig
from clients.edge.server import serving


async def serve(config: EdgeConfig) -> None:
    """Serve until a termination signal, then stop gracefully."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # Installed before binding: a signal right after the listening line still stops cleanly.
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    app = init_app(config.upstream, session_cache_seconds=config.session_cache_seconds)
    async with serving(app, config.host, config.port) as port:
        # The one stdout line: the dev stack and the tests read the port from it.
        print(f"edge listening on http://{config.url_host}:{port}", flush=True)
        logging.getLogger("edge").info("calling wxlogin at %s", config.upstream)
        await stop.wait()
        logging.getLogger("edge").info("stopping: letting in-flight requests finish")


def main() -> int:
    """Entry point; returns the exit code (2: bad configuration, 1: cannot start)."""
    try:
        config = EdgeConfig.from_env(os.environ)
    except ConfigError as error:
        print(f"edge: bad configuration: {error}", file=sys.stderr)
        return 2
    logs.configure(config.log_level)
    try:
        asyncio.run(serve(config))
    except OSError as error:
        # asyncio's message names the address and the reason.
        print(f"edge: cannot start: {error.strerror or error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
