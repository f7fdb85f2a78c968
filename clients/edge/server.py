"""Serving the edge app: the runner, token-free logs, a graceful stop."""

from __future__ import annotations

import logging
import traceback
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiohttp import web, web_response
from aiohttp.abc import AbstractAccessLogger
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse

from clients.edge.app import SERVER_HEADER
from clients.edge.redact import loggable
from runtime.ratelimited_log import RateLimitedLog

# In-flight requests get this long to finish after SIGTERM before the channel closes.
SHUTDOWN_GRACE = 10.0
# aiohttp's own logger for connections and requests it could not handle.
_AIOHTTP_SERVER_LOG = "aiohttp.server"


class AccessLogger(AbstractAccessLogger):
    """One line per request: method, path without query, status, size, time, request id.

    No headers (Authorization carries the token) and no query string (where a
    careless client might put one) ever reach the log; token-shaped runs in the
    path are redacted. The request id is safe: the app replaces token-like ones.
    """

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        request_id = response.headers.get("X-Request-Id", "-")
        self.logger.info(
            '%s "%s %s" %d %d %.1fms request_id=%s',
            request.remote or "-",
            # Method and path are the caller's text: a token may hide in either,
            # even in the path (`%3F`, a path segment); raw_path keeps a %0A
            # encoded, so it cannot forge a line.
            loggable(request.method, 20),
            loggable(request.rel_url.raw_path),
            response.status,
            response.body_length,
            time * 1000,
            request_id,
            # A field of its own in the JSON form; this line is written after the
            # request's log context has ended.
            extra={"request_id": request_id},
        )


class _QuietServerLog(logging.Filter):
    """aiohttp's server log made safe to leave on: no request text, no traceback per request.

    aiohttp logs every request it cannot parse at ERROR with a traceback whose
    message quotes the raw request line or header, Authorization included. Such
    records become one line per kind of error per interval (`RateLimitedLog`)
    naming only the kind. Any other traceback keeps its frames but loses its
    message, which may quote the request too.
    """

    def __init__(self, quiet: RateLimitedLog) -> None:
        super().__init__()
        self._quiet = quiet

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if error is None:
            return True  # aiohttp's plain lines carry no request text
        kind = _malformed_request_kind(error)
        if kind is None:
            cause = f"{record.msg}: {type(error).__name__}"  # the format: no remote address
            record.exc_text = _traceback_without_messages(error)
        else:
            # Per level too: aiohttp's DEBUG lines must not use up the WARNING's budget.
            cause = f"{kind} at {record.levelno}"
            record.exc_text = None
            # aiohttp logs the first bad request of a connection (a TLS hello,
            # a scanner) at DEBUG on purpose; the others are worth a WARNING.
            record.levelno = min(record.levelno, logging.WARNING)
            record.levelname = logging.getLevelName(record.levelno)
            record.msg = "rejected malformed HTTP requests (%s); their text is not logged"
            record.args = (kind,)
        held_back = self._quiet.admit(cause)
        if held_back is None:
            return False
        record.exc_info = None
        record.msg = str(record.msg) + self._quiet.note(held_back)
        return True


def _malformed_request_kind(error: BaseException) -> str | None:
    """The kind of client error behind `error` (a parse error, a broken body), or None for a bug."""
    seen: BaseException | None = error
    for _ in range(8):  # cause chains are short; a loop in one must not hang the log
        if seen is None:
            break
        if isinstance(seen, HttpProcessingError):
            return type(seen).__name__
        seen = seen.__cause__ or seen.__context__
    if isinstance(error, (web.RequestPayloadError, ConnectionError)):
        return type(error).__name__  # a body that broke off, a client that went away
    return None


def _traceback_without_messages(error: BaseException) -> str:
    """A traceback with every exception's type and frames, but none of their messages."""
    lines = ["Traceback (most recent call last):\n"]
    lines += traceback.format_tb(error.__traceback__)
    lines.append(f"{type(error).__module__}.{type(error).__qualname__} (message not logged)")
    return "".join(lines).rstrip("\n")


@asynccontextmanager
async def serving(
    app: web.Application,
    host: str,
    port: int,
    *,
    shutdown_grace: float = SHUTDOWN_GRACE,
    reuse_port: bool = False,
) -> AsyncIterator[int]:
    """Serve `app` on host:port (0 = a free port) and yield the bound port; stop gracefully.

    `reuse_port`: SO_REUSEPORT, for workers sharing one port (runtime/workers.py).
    """
    # aiohttp answers HTTP that does not parse itself, before any app code or
    # hook, and names Python's and its own version in that answer's Server
    # header; its one setting for that header is this module constant, read at
    # every answer. The edge process serves nothing else, so it is set here.
    web_response.SERVER_SOFTWARE = SERVER_HEADER  # type: ignore[attr-defined]  # imported there
    runner = web.AppRunner(
        app, access_log_class=AccessLogger, shutdown_timeout=shutdown_grace, handle_signals=False
    )
    server_log = logging.getLogger(_AIOHTTP_SERVER_LOG)
    quiet = _QuietServerLog(RateLimitedLog(server_log))
    # For as long as this edge serves; several edges in one process each add their own.
    server_log.addFilter(quiet)
    try:
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port, reuse_port=reuse_port).start()
            # With port 0 and a host with several addresses, each socket gets its
            # own port; the first is the one announced.
            yield runner.addresses[0][1]
        finally:
            # Stops accepting, lets in-flight requests finish, then runs cleanup_ctx
            # (which closes the gRPC channel only after them).
            await runner.cleanup()
    finally:
        server_log.removeFilter(quiet)
