"""`python -m service`: read the environment, run until SIGTERM/SIGINT, drain, exit."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys

from runtime import logs
from runtime.config import ConfigError, parse_log_format, parse_log_level
from runtime.serve import stop_on_signals
from service.app import running_service
from service.embedded_mongo import EmbeddedMongoError
from service.settings import Settings

log = logging.getLogger("service")


async def serve(settings: Settings) -> None:
    """Serve until a termination signal, then shut down gracefully."""
    stop = stop_on_signals()
    async with running_service(settings) as running:
        # Operators rotate the callers file (and certificates) and send SIGHUP.
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, running.reload)
        # One parseable line: the dev stack and tests read the bound port from it.
        print(f"wxlogin service listening on port {running.port}", flush=True)
        if running.metrics_port is not None:
            log.info("metrics on port %d (/metrics)", running.metrics_port)
        await stop.wait()
        log.info("shutting down: draining in-flight RPCs")
    log.info("stopped")


def main() -> int:
    """Entry point; returns the exit code (2: bad configuration, 1: cannot start)."""
    try:
        logs.configure(
            parse_log_level("WXLOGIN_LOG_LEVEL", os.environ.get("WXLOGIN_LOG_LEVEL")),
            log_format=parse_log_format("WXLOGIN_LOG_FORMAT", os.environ.get("WXLOGIN_LOG_FORMAT")),
        )
        settings = Settings.from_env(os.environ)
        asyncio.run(serve(settings))
    except ConfigError as error:  # also found only when used: an unreachable MongoDB, a taken port
        print(f"wxlogin: bad configuration: {error}", file=sys.stderr)
        return 2
    except (EmbeddedMongoError, OSError) as error:
        print(f"wxlogin: cannot start: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
