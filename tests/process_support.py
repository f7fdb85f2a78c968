"""What /proc says about a worker parent: its children, their listeners and connections."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

_LISTEN = "0A"
_ESTABLISHED = "01"


def children_of(parent: int) -> list[int]:
    """The pids whose parent is `parent`."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("PPid:") and int(line.split()[1]) == parent:
                pids.append(int(entry.name))
    return sorted(pids)


def alive(pid: int) -> bool:
    """Whether `pid` exists and is not a zombie."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "State:\tZ" not in status


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return set()
    for fd in fds:
        try:
            target = fd.readlink().name
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    return inodes


def _tcp_inodes(port: int, state: str) -> set[str]:
    """Inodes of TCP sockets whose local port is `port`, in `state`."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == state:
                found.add(fields[9])
    return found


def listening_pids(port: int, pids: list[int]) -> set[int]:
    """Those of `pids` with a socket listening on `port`."""
    listening = _tcp_inodes(port, _LISTEN)
    return {pid for pid in pids if _socket_inodes(pid) & listening}


def listening_sockets(port: int, pid: int) -> set[str]:
    """The inodes of `pid`'s sockets listening on `port`."""
    return _socket_inodes(pid) & _tcp_inodes(port, _LISTEN)


def still_listening(port: int, inodes: set[str]) -> bool:
    """Whether any of these sockets still listens on `port`.

    A killed process shows as a zombie as soon as its main thread is gone; its
    files close only when its last thread has exited. Until then its listener
    still takes connections (the kernel spreads them over SO_REUSEPORT
    listeners), and resets them when it closes.
    """
    return bool(inodes & _tcp_inodes(port, _LISTEN))


def connections_per_pid(port: int, pids: list[int]) -> dict[int, int]:
    """How many established connections on local port `port` each of `pids` holds."""
    established = _tcp_inodes(port, _ESTABLISHED)
    return {pid: len(_socket_inodes(pid) & established) for pid in pids}


async def until(condition: Callable[[], bool], *, tries: int = 900, pause: float = 0.1) -> None:
    """Poll `condition()` until true; AssertionError after `tries` (90 s: busy machines)."""
    for _ in range(tries):
        if condition():
            return
        await asyncio.sleep(pause)
    raise AssertionError(f"still false after {tries} tries: {condition}")
