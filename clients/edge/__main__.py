"""`wxlogin-edge` (python -m clients.edge): read the environment, serve until SIGTERM, drain."""

from __future__ import annotations

import logging
import os
import sys
from contextlib import ExitStack

from aiohttp import web
from prometheus_client import CollectorRegistry

from clients.edge.app import DRAINING, init_app
from clients.edge.config import EdgeConfig
from clients.edge.login_limit import LoginLimit
from clients.edge.metrics import EdgeMetrics
from clients.edge.server import SHUTDOWN_GRACE, serving
from runtime import event_loop, logs
from runtime.config import ConfigError
from runtime.metrics_server import serving_metrics
from runtime.serve import StopSignal, drain, stop_on_signals
from runtime.workers import Program, become_worker, is_worker, supervise

log = logging.getLogger("edge")
# The one stdout line: the dev stack and the tests read the port from it.
READY_LINE = "edge listening on http://{host}:{port}"


async def serve(config: EdgeConfig) -> None:
    """Serve until a termination signal, then stop gracefully."""
    stop = stop_on_signals()
    metrics = None if config.metrics_listen is None else EdgeMetrics(CollectorRegistry())
    app = init_app(
        config.upstream,
        session_cache_seconds=config.session_cache_seconds,
        security=config.security,
        login_limit=(
            LoginLimit(config.login_rate, config.login_burst, config.trusted_proxies)
            if config.login_rate > 0
            else None
        ),
        metrics=metrics,
    )
    with ExitStack() as exits:
        if metrics is not None and config.metrics_listen is not None:
            metrics_port = exits.enter_context(
                serving_metrics(
                    "WXLOGIN_EDGE_METRICS_LISTEN", config.metrics_listen, metrics.registry
                )
            )
            log.info(
                "metrics on http://%s:%d/metrics", config.metrics_listen.url_host, metrics_port
            )
        await _serve(app, config, stop)


async def _serve(app: web.Application, config: EdgeConfig, stop: StopSignal) -> None:
    """Serve the app until `stop`, then drain; the "listening on" line once the port is bound."""
    async with serving(
        app, config.listen.host, config.listen.port, reuse_port=is_worker(os.environ)
    ) as port:
        # The one stdout line: the dev stack and the tests read the port from it.
        print(READY_LINE.format(host=config.listen.url_host, port=port), flush=True)
        log.info(
            "calling wxlogin at %s (%s, %s)",
            config.upstream,
            "TLS" if config.security.tls is not None else "plaintext",
            "with a caller key" if config.security.caller_key else "no caller key",
        )
        log.info("event loop: %s", event_loop.running_loop_name())
        await stop.wait()
        # /readyz answers 503 from now on; everything else is served for the drain.
        app[DRAINING].set()
        await drain(config.drain_seconds, stop)
        log.info("stopping: letting in-flight requests finish")


def _program(config: EdgeConfig) -> Program:
    return Program(
        name="edge",
        argv=[sys.executable, "-m", "clients.edge"],
        ready_line=READY_LINE,
        listen_variable="WXLOGIN_HTTP_LISTEN",
        listen=config.listen,
        metrics_variable="WXLOGIN_EDGE_METRICS_LISTEN",
        metrics=config.metrics_listen,
        stop_seconds=config.drain_seconds + SHUTDOWN_GRACE,
    )


def main() -> int:
    """Entry point; returns the exit code (2: bad configuration, 1: cannot start)."""
    try:
        config = EdgeConfig.from_env(os.environ)
    except ConfigError as error:
        print(f"edge: bad configuration: {error}", file=sys.stderr)
        return 2
    logs.configure(config.log_level, log_format=config.log_format)
    try:
        if config.workers > 1 and not is_worker(os.environ):
            return supervise(_program(config), config.workers, os.environ)
        become_worker(os.environ)
        event_loop.run(serve(config), config.event_loop)
    except ConfigError as error:  # found only when used: a metrics port already taken
        print(f"edge: bad configuration: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        # asyncio's message names the address and the reason.
        print(f"edge: cannot start: {error.strerror or error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
