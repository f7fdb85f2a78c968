"""Serving the edge app: the runner, the token-free access log, a graceful stop."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse

# In-flight requests get this long to finish after SIGTERM before the channel closes.
SHUTDOWN_GRACE = 10.0


class AccessLogger(AbstractAccessLogger):
    """One line per request: method, path without query, status, size, time, request id.

    No headers (Authorization carries the token) and no query string (where a
    careless client might put one) ever reach the log.
    """

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        self.logger.info(
            '%s "%s %s" %d %d %.1fms request_id=%s',
            request.remote or "-",
            request.method,
            request.path,
            response.status,
            response.body_length,
            time * 1000,
            response.headers.get("X-Request-Id", "-"),
        )


@asynccontextmanager
async def serving(
    app: web.Application, host: str, port: int, *, shutdown_grace: float = SHUTDOWN_GRACE
) -> AsyncIterator[int]:
    """Serve `app` on host:port (0 = a free port) and yield the bound port; stop gracefully."""
    runner = web.AppRunner(
        app, access_log_class=AccessLogger, shutdown_timeout=shutdown_grace, handle_signals=False
    )
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        # With port 0 and a host with several addresses, each socket gets its
        # own port; the first is the one announced.
        yield runner.addresses[0][1]
    finally:
        # Stops accepting, lets in-flight requests finish, then runs cleanup_ctx
        # (which closes the gRPC channel only after them).
        await runner.cleanup()
