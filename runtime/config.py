"""ConfigError and the value parsers shared by every reader of WXLOGIN_* variables.

Each process (service, edge, dev stack, emulator) reads its own variables, but
the rules for a listen address or a log level are the same everywhere, so they
live once, here.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar


class ConfigError(ValueError):
    """A configuration value is missing or malformed; the message names the variable."""

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable}: {problem}")
        self.variable = variable
        self.problem = problem


@dataclass(frozen=True)
class ListenAddress:
    """A validated HOST:PORT to listen on; `host` without IPv6 brackets, port 0 = any free port."""

    host: str
    port: int

    @property
    def url_host(self) -> str:
        """The host as it goes in a URL or a gRPC address (IPv6 in brackets)."""
        return f"[{self.host}]" if ":" in self.host else self.host

    def __str__(self) -> str:
        # The form grpc's add_*_port and humans both read.
        return f"{self.url_host}:{self.port}"

    @property
    def is_loopback(self) -> bool:
        """True for 127.0.0.0/8, ::1 and localhost: reachable from this machine only."""
        return self.host == "localhost" or self.host == "::1" or self.host.startswith("127.")


def parse_listen(variable: str, value: str | None, default: str) -> ListenAddress:
    """HOST:PORT, or [V6]:PORT for IPv6; an empty value means `default`."""
    text = (value or default).strip()
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        # A bare IPv6 address is ambiguous (is the last group the port?): brackets required.
        raise ConfigError(variable, f"write IPv6 addresses as [ADDR]:PORT, got {text!r}")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(variable, f"expected HOST:PORT, got {text!r}")
    return ListenAddress(host, int(port))


def parse_apps(raw: str, variable: str = "WXLOGIN_APPS") -> dict[str, str]:
    """Parse `appid:secret[,appid:secret...]`; appids must be unique."""
    apps: dict[str, str] = {}
    for item in raw.split(","):
        appid, sep, secret = item.strip().partition(":")
        if not sep or not appid.strip() or not secret.strip():
            # Never echo the item: it holds a secret.
            raise ConfigError(variable, f"entry {len(apps) + 1} is not appid:secret")
        appid = appid.strip()
        if appid in apps:
            raise ConfigError(variable, f"appid {appid} appears twice")
        apps[appid] = secret.strip()
    return apps


def parse_log_level(variable: str, value: str | None, default: str = "INFO") -> str:
    """A logging level name such as INFO or DEBUG."""
    level = (value or default).strip().upper()
    if level not in logging.getLevelNamesMapping():
        raise ConfigError(variable, f"expected DEBUG, INFO, WARNING or ERROR, got {value!r}")
    return level


def parse_number(
    variable: str,
    value: str | None,
    default: float,
    *,
    minimum: float,
    maximum: float | None = None,
    unit: str = "a number",
) -> float:
    """A finite number in [minimum, maximum]; unset or empty means `default`."""
    return _parse(float, variable, value, default, minimum, maximum, unit)


def parse_whole(
    variable: str,
    value: str | None,
    default: int,
    *,
    minimum: int,
    maximum: int | None = None,
    unit: str = "a whole number",
) -> int:
    """A whole number in [minimum, maximum]; unset or empty means `default`."""
    return _parse(int, variable, value, default, minimum, maximum, unit)


def parse_seconds(
    variable: str, value: str | None, default: int, *, minimum: int, maximum: int | None = None
) -> int:
    """A whole number of seconds in [minimum, maximum]; unset or empty means `default`."""
    return parse_whole(
        variable, value, default, minimum=minimum, maximum=maximum, unit="whole seconds"
    )


_Number = TypeVar("_Number", int, float)


def _parse(
    convert: Callable[[str], _Number],
    variable: str,
    value: str | None,
    default: _Number,
    minimum: float,
    maximum: float | None,
    unit: str,
) -> _Number:
    if value is None or not value.strip():
        return default
    try:
        number = convert(value)
    except ValueError:
        raise ConfigError(variable, f"expected {unit}, got {value!r}") from None
    # Written so that NaN fails too (every comparison with it is false), and infinity.
    if not minimum <= number < float("inf"):
        raise ConfigError(variable, f"must be >= {minimum:g}, got {number:g}")
    if maximum is not None and not number <= maximum:
        raise ConfigError(variable, f"must be <= {maximum:g}, got {number:g}")
    return number


def _within(variable: str, number: _Number, minimum: float, maximum: float | None) -> _Number:
    # Written so that NaN fails too (every comparison with it is false), and infinity.
    if not minimum <= number < float("inf"):
        raise ConfigError(variable, f"must be >= {minimum:g}, got {number:g}")
    if maximum is not None and not number <= maximum:
        raise ConfigError(variable, f"must be <= {maximum:g}, got {number:g}")
    return number


# More would be a typo: each worker is a whole process with its own MongoDB pool.
MAX_WORKERS = 256


def parse_workers(variable: str, value: str | None) -> int:
    """Worker processes: a whole number >= 1, or `auto` (the CPUs this process may run on)."""
    if value is not None and value.strip().lower() == "auto":
        # The CPUs we may use (a cgroup cpuset or taskset narrows them), not the machine's.
        return (
            len(os.sched_getaffinity(0))
            if hasattr(os, "sched_getaffinity")
            else os.cpu_count() or 1
        )
    return parse_whole(
        variable, value, 1, minimum=1, maximum=MAX_WORKERS, unit="a whole number or auto"
    )


def parse_optional_listen(variable: str, value: str | None) -> ListenAddress | None:
    """HOST:PORT like `parse_listen`, for something that is off unless configured (unset: None)."""
    if value is None or not value.strip():
        return None
    return parse_listen(variable, value, "")


LOG_FORMATS = ("text", "json")


def parse_log_format(variable: str, value: str | None) -> str:
    """`text` (one human line per record, the default) or `json` (one JSON object per line)."""
    text = (value or "text").strip().lower()
    if text not in LOG_FORMATS:
        raise ConfigError(variable, f"expected text or json, got {value!r}")
    return text
