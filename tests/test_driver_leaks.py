"""The suite tolerates PyMongo's leaked connect socket, and only that (tests/driver_leaks.py)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import socket
import sys
import warnings
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from pymongo import AsyncMongoClient
from pymongo.errors import PyMongoError

from tests.driver_leaks import DriverLeakFilter, is_pymongo_socket


@contextlib.contextmanager
def configured_socket(*, keepalive: bool, pymongo_times: bool) -> Iterator[socket.socket]:
    with socket.socket() as sock:
        if keepalive:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, True)
        if pymongo_times:
            from pymongo import pool_shared

            pool_shared._set_keepalive_times(sock)
        yield sock


def test_only_a_socket_pymongo_configured_counts_as_the_drivers() -> None:
    with configured_socket(keepalive=True, pymongo_times=True) as sock:
        assert is_pymongo_socket(sock)
    assert not is_pymongo_socket(sock)  # closed now: nothing to leak
    with configured_socket(keepalive=False, pymongo_times=False) as sock:
        assert not is_pymongo_socket(sock)  # a port probe, the workers' listening socket
    with configured_socket(keepalive=True, pymongo_times=False) as sock:
        assert not is_pymongo_socket(sock)  # keep-alive with the system's times
    assert not is_pymongo_socket(object())


def test_the_filter_passes_every_other_unraisable_on() -> None:
    passed: list[Any] = []
    hook = DriverLeakFilter(passed.append)
    with (
        configured_socket(keepalive=True, pymongo_times=True) as drivers,
        configured_socket(keepalive=False, pymongo_times=False) as ours,
    ):
        leak = SimpleNamespace(exc_type=ResourceWarning, object=drivers)
        hook(leak)
        assert (hook.tolerated, passed) == (1, [])
        others = [
            SimpleNamespace(exc_type=ResourceWarning, object=ours),
            SimpleNamespace(exc_type=RuntimeError, object=drivers),
        ]
        for other in others:
            hook(other)
    assert (hook.tolerated, passed) == (1, others)


async def test_pymongo_still_leaks_its_socket_when_closed_mid_connect(mongod: str) -> None:
    """The leak the filter exists for, reproduced; when this fails, PyMongo fixed it.

    Then delete tests/driver_leaks.py and this file: the suite needs no tolerance.
    """
    leaked: list[bool] = []  # one entry per leaked socket: did the filter recognise it?
    previous_hook = sys.unraisablehook

    def hook(unraisable: Any) -> None:
        if isinstance(unraisable.object, socket.socket):
            leaked.append(is_pymongo_socket(unraisable.object))
        else:  # anything else collected meanwhile is not this test's to judge
            previous_hook(unraisable)

    sys.unraisablehook = hook
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", ResourceWarning)
            for attempt in range(400):
                client: AsyncMongoClient[Any] = AsyncMongoClient(
                    mongod, serverSelectionTimeoutMS=2000
                )
                ping = asyncio.ensure_future(client.admin.command("ping"))
                # 0-8 ms: around the moment the monitors connect (here leaks came
                # at 0-7 ms, most at 1 and 3 ms; a loaded machine connects later).
                await asyncio.sleep((attempt % 80) / 10_000)
                await client.close()
                with contextlib.suppress(PyMongoError):
                    await ping
                gc.collect()
                if len(leaked) >= 2:
                    break
    finally:
        sys.unraisablehook = previous_hook
    if not leaked:
        # Timing-bound: a loaded machine may connect after every close. Not a failure,
        # but the run says so (and if it keeps saying so, PyMongo may have fixed it).
        pytest.skip("no socket leaked in 400 closes 0-8 ms after the first command")
    assert all(leaked), f"a leak the filter did not recognise: {leaked}"
