"""`wxlogin-service` (python -m service): read the environment, serve until SIGTERM, drain."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys

from runtime import event_loop, logs
from runtime.config import ConfigError, parse_listen, parse_log_format, parse_log_level
from runtime.serve import drain, stop_on_signals
from runtime.workers import Program, become_worker, is_worker, supervise
from service.app import running_service
from service.embedded_mongo import EmbeddedMongoError
from service.settings import Settings

log = logging.getLogger("service")
# After the drain, in-flight RPCs get this long to finish (service/app.py).
SHUTDOWN_GRACE = 10.0
# One parseable stdout line: the dev stack and tests read the bound port from it.
READY_LINE = "wxlogin service listening on port {port}"


async def serve(settings: Settings) -> None:
    """Serve until a termination signal, then drain and shut down gracefully."""
    stop = stop_on_signals()
    async with running_service(settings, shutdown_grace=SHUTDOWN_GRACE) as running:
        # Operators rotate the callers file (and certificates) and send SIGHUP.
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, running.reload)
        # One parseable line: the dev stack and tests read the bound port from it.
        print(READY_LINE.format(port=running.port), flush=True)
        log.info("event loop: %s", event_loop.running_loop_name())
        if running.metrics_port is not None:
            log.info("metrics on port %d (/metrics)", running.metrics_port)
        await stop.wait()
        # NOT_SERVING on every health name first (and no later set(), the MongoDB
        # watcher's, turns one back), then the drain of normal service; running_service's
        # exit then stops the listener and lets in-flight RPCs finish.
        await running.health.enter_graceful_shutdown()
        await drain(settings.drain_seconds, stop)
        log.info("shutting down: draining in-flight RPCs")
    log.info("stopped")


def _program(settings: Settings) -> Program:
    return Program(
        name="service",
        argv=[sys.executable, "-m", "service"],
        ready_line=READY_LINE,
        listen_variable="WXLOGIN_GRPC_LISTEN",
        listen=parse_listen("WXLOGIN_GRPC_LISTEN", settings.grpc_listen, ""),
        metrics_variable="WXLOGIN_METRICS_LISTEN",
        metrics=settings.metrics_listen,
        stop_seconds=settings.drain_seconds + SHUTDOWN_GRACE,
        reloads=True,
    )


def main() -> int:
    """Entry point; returns the exit code (2: bad configuration, 1: cannot start)."""
    try:
        logs.configure(
            parse_log_level("WXLOGIN_LOG_LEVEL", os.environ.get("WXLOGIN_LOG_LEVEL")),
            log_format=parse_log_format("WXLOGIN_LOG_FORMAT", os.environ.get("WXLOGIN_LOG_FORMAT")),
        )
        settings = Settings.from_env(os.environ)
        if settings.workers > 1 and not is_worker(os.environ):
            return supervise(_program(settings), settings.workers, os.environ)
        become_worker(os.environ)
        event_loop.run(serve(settings), settings.event_loop)
    except ConfigError as error:  # also found only when used: an unreachable MongoDB, a taken port
        print(f"wxlogin: bad configuration: {error}", file=sys.stderr)
        return 2
    except (EmbeddedMongoError, OSError) as error:
        print(f"wxlogin: cannot start: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
