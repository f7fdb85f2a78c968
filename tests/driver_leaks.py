"""PyMongo's async driver leaks the socket it is connecting with; tolerate exactly that socket.

pymongo.pool_shared._async_create_connection closes its socket on TimeoutError and
OSError but not on cancellation, and AsyncMongoClient.close() cancels its monitors
wherever they are. A client closed within milliseconds of its first command leaks
one socket about one close in three (PyMongo 4.20.1, the latest release);
test_driver_leaks.py shows it. In the suite it happens rarely, after a mongod
SIGKILL or with a short-lived service, and `filterwarnings = error` makes it a
failed run. In production the same leak follows a deadline (the store's
asyncio.timeout) that cancels a pool connection mid-connect while MongoDB is slow:
the socket is closed when it is collected, so it costs a file descriptor for a
moment, not a connection for good.

The leaked socket is told apart by how PyMongo configures every socket before it
connects: keep-alive on, with its own idle and interval times
(pool_shared._set_keepalive_times). Nothing else in the test process makes such a
socket: aiohttp and asyncio streams keep theirs inside transports, which warn as
"unclosed transport", and our own raw sockets (port probes, the workers' listening
socket) never turn keep-alive on. Every other leak still fails the run.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from functools import cache
from typing import Any

from pymongo import pool_shared

Hook = Callable[[Any], object]


def _keepalive(sock: socket.socket) -> tuple[int, int, int]:
    return (
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
        sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
        sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
    )


@cache
def _pymongo_keepalive() -> tuple[int, int, int]:
    """What PyMongo's set-up leaves on a socket on this machine (it caps the system's defaults)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, True)
        pool_shared._set_keepalive_times(probe)
        return _keepalive(probe)


def is_pymongo_socket(obj: object) -> bool:
    """True for an open socket that PyMongo configured (see the module's docstring)."""
    if not isinstance(obj, socket.socket) or obj.fileno() == -1:
        return False
    if obj.family not in (socket.AF_INET, socket.AF_INET6) or obj.type != socket.SOCK_STREAM:
        return False
    try:
        return _keepalive(obj) == _pymongo_keepalive()
    except OSError:
        return False


class DriverLeakFilter:
    """A sys.unraisablehook that drops PyMongo's leaked sockets and passes on the rest."""

    def __init__(self, next_hook: Hook) -> None:
        self._next_hook = next_hook
        self.tolerated = 0

    def __call__(self, unraisable: Any) -> None:
        if issubclass(unraisable.exc_type, ResourceWarning) and is_pymongo_socket(
            unraisable.object
        ):
            self.tolerated += 1
            return
        self._next_hook(unraisable)
