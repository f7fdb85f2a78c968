"""Prometheus `/metrics` for a process: prometheus_client's own HTTP server on its own thread.

Shared by the service (WXLOGIN_METRICS_LISTEN) and the edge
(WXLOGIN_EDGE_METRICS_LISTEN). A thread of its own rather than a route on the
event loop: rendering a scrape takes a few milliseconds that the loop's calls
should not wait behind. prometheus_client answers in the text format, or in
OpenMetrics when the scraper asks for it (Prometheus does).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import CollectorRegistry, start_http_server

from runtime.config import ConfigError, ListenAddress

# A scrape thread that does not stop within this long is left behind (it is a daemon).
_STOP_SECONDS = 5.0


@contextmanager
def serving_metrics(
    variable: str, listen: ListenAddress, registry: CollectorRegistry
) -> Iterator[int]:
    """Serve `registry` on `listen` (port 0: a free one) and yield the bound port; stop on exit.

    A port that cannot be bound is a ConfigError naming `variable`.
    """
    try:
        server, thread = start_http_server(listen.port, listen.host, registry)
    except OSError as error:
        raise ConfigError(
            variable, f"cannot listen on {listen}: {error.strerror or type(error).__name__}"
        ) from None
    try:
        yield int(server.server_port)
    finally:
        server.shutdown()  # returns once serve_forever has left its loop
        server.server_close()
        thread.join(_STOP_SECONDS)
