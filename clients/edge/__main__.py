"""`python -m clients.edge`: read the environment, serve until SIGTERM/SIGINT, drain, exit."""

from __future__ import annotations

import asyncio
import logging
import os
import sys

from clients.edge.app import init_app
from clients.edge.config import EdgeConfig
from clients.edge.server import serving
from runtime import logs
from runtime.config import ConfigError
from runtime.serve import stop_on_signals

log = logging.getLogger("edge")


async def serve(config: EdgeConfig) -> None:
    """Serve until a termination signal, then stop gracefully."""
    stop = stop_on_signals()
    app = init_app(
        config.upstream,
        session_cache_seconds=config.session_cache_seconds,
        security=config.security,
    )
    async with serving(app, config.listen.host, config.listen.port) as port:
        # The one stdout line: the dev stack and the tests read the port from it.
        print(f"edge listening on http://{config.listen.url_host}:{port}", flush=True)
        log.info(
            "calling wxlogin at %s (%s, %s)",
            config.upstream,
            "TLS" if config.security.tls is not None else "plaintext",
            "with a caller key" if config.security.caller_key else "no caller key",
        )
        await stop.wait()
        log.info("stopping: letting in-flight requests finish")


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
