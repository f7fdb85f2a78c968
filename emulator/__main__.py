"""Command line: ``python -m emulator [--listen HOST:PORT] [--apps ...] [--code-ttl SECONDS]``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NoReturn

from aiohttp import web
from aiohttp.log import access_logger

from emulator.app import init_app

LISTEN_ENV = "WXLOGIN_EMULATOR_LISTEN"
APPS_ENV = "WXLOGIN_APPS"
DEFAULT_LISTEN = "127.0.0.1:9090"
# The dev stack's apps; their secrets are public on purpose.
DEV_APPS = "wxdev0000000000001:devsecret1,wxdev0000000000002:devsecret2"
# In-flight requests (say, ones held by a latency fault) get this long to finish on shutdown.
SHUTDOWN_GRACE = 5.0

log = logging.getLogger("emulator")


class UsageError(Exception):
    """A command-line or environment value that cannot be used; the message is one line."""


@dataclass(frozen=True)
class Config:
    """Everything the command line decides."""

    host: str
    port: int
    apps: dict[str, str]
    code_ttl: float
    access_log: bool


def parse_apps(value: str, source: str) -> dict[str, str]:
    """Parse ``appid:secret[,appid:secret...]``; errors name ``source`` but never a secret."""
    apps: dict[str, str] = {}
    entries = value.split(",")
    for number, entry in enumerate(entries, start=1):
        appid, sep, secret = entry.strip().partition(":")
        if not sep or not appid or not secret:
            raise UsageError(f"{source}: entry {number} is not appid:secret")
        if appid in apps:
            raise UsageError(f"{source}: appid {appid} is listed twice")
        apps[appid] = secret
    return apps


def parse_listen(value: str, source: str) -> tuple[str, int]:
    """Parse ``HOST:PORT`` (``[v6]:PORT`` for IPv6); port 0 picks a free port."""
    host, sep, port_text = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
        raise UsageError(f"{source}: {value!r} is not HOST:PORT")
    return host, int(port_text)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line, not argparse's usage block: launchers show stderr's last line.
        self.exit(2, f"{self.prog}: error: {message}\n")


def parse_args(argv: Sequence[str], environ: Mapping[str, str]) -> Config:
    """Resolve flags, then environment, then defaults; raises UsageError on a bad value."""
    parser = _Parser(prog="emulator", description=__doc__)
    parser.add_argument("--listen", help=f"HOST:PORT (env {LISTEN_ENV}, default {DEFAULT_LISTEN})")
    parser.add_argument("--apps", help=f"appid:secret[,appid:secret...] (env {APPS_ENV})")
    parser.add_argument(
        "--code-ttl", type=float, default=300.0, help="login code lifetime, seconds (300)"
    )
    parser.add_argument("--access-log", action="store_true", help="log every request to stderr")
    args = parser.parse_args(argv)

    if args.listen is not None:
        host, port = parse_listen(args.listen, "--listen")
    elif environ.get(LISTEN_ENV):
        host, port = parse_listen(environ[LISTEN_ENV], LISTEN_ENV)
    else:
        host, port = parse_listen(DEFAULT_LISTEN, "default")
    if args.apps is not None:
        apps = parse_apps(args.apps, "--apps")
    elif environ.get(APPS_ENV):
        apps = parse_apps(environ[APPS_ENV], APPS_ENV)
    else:
        apps = parse_apps(DEV_APPS, "default")
    code_ttl: float = args.code_ttl
    if not math.isfinite(code_ttl) or code_ttl <= 0:
        raise UsageError("--code-ttl: must be a positive number of seconds")
    return Config(host, port, apps, code_ttl, args.access_log)


async def serve(config: Config) -> int:
    """Serve until SIGINT or SIGTERM; returns the exit code."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # Installed before binding, so a signal right after the listening line still stops cleanly.
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    app = init_app(config.apps, code_ttl=config.code_ttl)
    runner = web.AppRunner(
        app,
        access_log=access_logger if config.access_log else None,
        shutdown_timeout=SHUTDOWN_GRACE,
    )
    await runner.setup()
    try:
        try:
            await web.TCPSite(runner, config.host, config.port).start()
        except OSError as exc:
            # asyncio's message already names the address and the reason.
            print(f"emulator: {exc.strerror or exc}", file=sys.stderr)
            return 1
        # With port 0 and a host that resolves to several addresses each socket gets its own
        # port; the first one is the one we announce.
        port = runner.addresses[0][1]
        url_host = f"[{config.host}]" if ":" in config.host else config.host
        log.info("apps: %s; code ttl %gs", ", ".join(sorted(config.apps)), config.code_ttl)
        # The one line on stdout: the test harness and the dev-stack launcher read the port here.
        print(f"emulator listening on http://{url_host}:{port}", flush=True)
        await stop.wait()
        log.info("stopping")
    finally:
        await runner.cleanup()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        config = parse_args(sys.argv[1:] if argv is None else argv, os.environ)
    except UsageError as exc:
        print(f"emulator: error: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(serve(config))


if __name__ == "__main__":
    sys.exit(main())
