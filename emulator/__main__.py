"""Command line: ``python -m emulator [--listen HOST:PORT] [--apps ...] [--code-ttl SECONDS]
[--access-token-ttl SECONDS] [--access-token-overlap SECONDS]``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NoReturn

from aiohttp import web
from aiohttp.log import access_logger

from emulator.app import init_app
from runtime.config import ConfigError, ListenAddress, parse_apps, parse_listen
from runtime.serve import stop_on_signals

LISTEN_ENV = "WXLOGIN_EMULATOR_LISTEN"
APPS_ENV = "WXLOGIN_APPS"
DEFAULT_LISTEN = "127.0.0.1:9090"
# The dev stack's apps; their secrets are public on purpose.
DEV_APPS = "wxdev0000000000001:devsecret1,wxdev0000000000002:devsecret2"
# In-flight requests (say, ones held by a latency fault) get this long to finish on shutdown.
SHUTDOWN_GRACE = 5.0

log = logging.getLogger("emulator")


@dataclass(frozen=True)
class Config:
    """Everything the command line decides."""

    listen: ListenAddress
    apps: dict[str, str]
    code_ttl: float
    access_log: bool
    access_token_ttl: float = 7200.0
    access_token_overlap: float = 300.0


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line, not argparse's usage block: launchers show stderr's last line.
        self.exit(2, f"{self.prog}: error: {message}\n")


def parse_args(argv: Sequence[str], environ: Mapping[str, str]) -> Config:
    """Resolve flags, then environment, then defaults; raises ConfigError on a bad value."""
    parser = _Parser(prog="emulator", description=__doc__)
    parser.add_argument("--listen", help=f"HOST:PORT (env {LISTEN_ENV}, default {DEFAULT_LISTEN})")
    parser.add_argument("--apps", help=f"appid:secret[,appid:secret...] (env {APPS_ENV})")
    parser.add_argument(
        "--code-ttl", type=float, default=300.0, help="login code lifetime, seconds (300)"
    )
    parser.add_argument("--access-log", action="store_true", help="log every request to stderr")
    parser.add_argument(
        "--access-token-ttl",
        type=float,
        default=7200.0,
        help="access_token lifetime, seconds (WeChat: 7200)",
    )
    parser.add_argument(
        "--access-token-overlap",
        type=float,
        default=300.0,
        help="the last seconds of a token in which stable_token mints the next one (WeChat: 300)",
    )
    args = parser.parse_args(argv)

    if args.listen is not None:
        listen = parse_listen("--listen", args.listen, DEFAULT_LISTEN)
    else:
        listen = parse_listen(LISTEN_ENV, environ.get(LISTEN_ENV), DEFAULT_LISTEN)
    if args.apps is not None:
        apps = parse_apps(args.apps, "--apps")
    else:
        apps = parse_apps(environ.get(APPS_ENV) or DEV_APPS, APPS_ENV)
    code_ttl: float = args.code_ttl
    if not math.isfinite(code_ttl) or code_ttl <= 0:
        raise ConfigError("--code-ttl", "must be a positive number of seconds")
    token_ttl: float = args.access_token_ttl
    if not math.isfinite(token_ttl) or token_ttl <= 0:
        raise ConfigError("--access-token-ttl", "must be a positive number of seconds")
    overlap: float = args.access_token_overlap
    if not math.isfinite(overlap) or not 0 <= overlap < token_ttl:
        raise ConfigError(
            "--access-token-overlap", "must be >= 0 and shorter than --access-token-ttl"
        )
    return Config(listen, apps, code_ttl, args.access_log, token_ttl, overlap)


async def serve(config: Config) -> int:
    """Serve until SIGINT or SIGTERM; returns the exit code."""
    stop = stop_on_signals()
    app = init_app(
        config.apps,
        code_ttl=config.code_ttl,
        access_token_ttl=config.access_token_ttl,
        access_token_overlap=config.access_token_overlap,
    )
    runner = web.AppRunner(
        app,
        access_log=access_logger if config.access_log else None,
        shutdown_timeout=SHUTDOWN_GRACE,
    )
    await runner.setup()
    try:
        try:
            await web.TCPSite(runner, config.listen.host, config.listen.port).start()
        except OSError as exc:
            # asyncio's message already names the address and the reason.
            print(f"emulator: {exc.strerror or exc}", file=sys.stderr)
            return 1
        # With port 0 and a host that resolves to several addresses each socket gets its own
        # port; the first one is the one we announce.
        port = runner.addresses[0][1]
        log.info("apps: %s; code ttl %gs", ", ".join(sorted(config.apps)), config.code_ttl)
        # The one line on stdout: the test harness and the dev-stack launcher read the port here.
        print(f"emulator listening on http://{config.listen.url_host}:{port}", flush=True)
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
    except ConfigError as exc:
        print(f"emulator: error: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(serve(config))


if __name__ == "__main__":
    sys.exit(main())
