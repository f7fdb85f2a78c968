"""The bare baselines: a grpc.aio server and an aiohttp app that answer canned bytes, no work.

Each runs as its own process (`python -m bench.baselines grpc|http --canned FILE`), like the
service and the edge do, so it gets its own GIL and can be pinned to the same core the
process under test gets. They answer with the exact bytes (and, for errors, the exact status
and trailers) the real process answered for the same request, so only the work differs.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import signal
import sys
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from aiohttp import web

from runtime import event_loop
from runtime.event_loop import ASYNCIO, UVLOOP

BARE_SERVICE = "bench.Bare"


@dataclass(frozen=True)
class CannedGrpc:
    """What the service answered: response bytes, or an error status with its trailers."""

    response: bytes
    code: int = 0
    details: str = ""
    trailers: tuple[tuple[str, str | bytes], ...] = ()

    def as_json(self) -> dict[str, Any]:
        return {
            "response": base64.b64encode(self.response).decode(),
            "code": self.code,
            "details": self.details,
            "trailers": [
                [
                    key,
                    base64.b64encode(
                        value if isinstance(value, bytes) else value.encode()
                    ).decode(),
                ]
                for key, value in self.trailers
            ],
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> CannedGrpc:
        trailers: list[tuple[str, str | bytes]] = []
        for key, value in raw["trailers"]:
            decoded = base64.b64decode(value)
            # gRPC wants bytes for "-bin" keys and str for all others.
            trailers.append((key, decoded if key.endswith("-bin") else decoded.decode()))
        return cls(base64.b64decode(raw["response"]), raw["code"], raw["details"], tuple(trailers))


@dataclass(frozen=True)
class CannedHttp:
    """What the edge answered for one route."""

    method: str
    path: str
    status: int
    content_type: str
    body: bytes

    def as_json(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "path": self.path,
            "status": self.status,
            "content_type": self.content_type,
            "body": base64.b64encode(self.body).decode(),
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> CannedHttp:
        return cls(
            raw["method"],
            raw["path"],
            raw["status"],
            raw["content_type"],
            base64.b64decode(raw["body"]),
        )


def grpc_path(name: str) -> str:
    """The bare server's method path for scenario `name`."""
    return f"/{BARE_SERVICE}/{name}"


GrpcBehaviour = Callable[[bytes, grpc.aio.ServicerContext[bytes, bytes]], Awaitable[bytes]]


def _grpc_behaviour(canned: CannedGrpc) -> GrpcBehaviour:
    if canned.code == 0:

        async def answer(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
            return canned.response

        return answer
    code = next(status for status in grpc.StatusCode if status.value[0] == canned.code)

    async def fail(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        await context.abort(code, canned.details, canned.trailers)
        raise AssertionError("abort returns only by raising")

    return fail


async def serve_grpc(canned: Mapping[str, CannedGrpc], listen: str, stop: asyncio.Event) -> None:
    """A grpc.aio server with one canned method per scenario; no (de)serialisation."""
    handlers: dict[str, grpc.RpcMethodHandler[bytes, bytes]] = {
        name: grpc.unary_unary_rpc_method_handler(_grpc_behaviour(answer))
        for name, answer in canned.items()
    }
    server = grpc.aio.server()
    # Registered exactly as the generated code registers the real servicer.
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(BARE_SERVICE, handlers),))
    server.add_registered_method_handlers(BARE_SERVICE, handlers)
    port = server.add_insecure_port(listen)
    await server.start()
    print(f"bare grpc listening on port {port}", flush=True)
    try:
        await stop.wait()
    finally:
        await server.stop(1.0)  # the bench has stopped sending; nothing worth draining


def _http_handler(canned: CannedHttp) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def answer(request: web.Request) -> web.Response:
        await request.read()  # the least any real handler does with a body
        return web.Response(
            status=canned.status, body=canned.body, content_type=canned.content_type
        )

    return answer


async def serve_http(canned: Mapping[str, CannedHttp], listen: str, stop: asyncio.Event) -> None:
    """An aiohttp app with one canned route per scenario; no access log, no middleware."""
    app = web.Application()
    for answer in canned.values():
        app.router.add_route(answer.method, answer.path, _http_handler(answer))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    host, _, port = listen.rpartition(":")
    await web.TCPSite(runner, host, int(port)).start()
    print(f"bare http listening on port {runner.addresses[0][1]}", flush=True)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


async def _main(kind: str, spec: Mapping[str, Any], listen: str) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    if kind == "grpc":
        await serve_grpc(
            {name: CannedGrpc.from_json(raw) for name, raw in spec["grpc"].items()}, listen, stop
        )
    else:
        await serve_http(
            {name: CannedHttp.from_json(raw) for name, raw in spec["http"].items()}, listen, stop
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.baselines")
    parser.add_argument("kind", choices=["grpc", "http"])
    parser.add_argument("--canned", type=Path, required=True, help="JSON written by the bench")
    parser.add_argument("--listen", default="127.0.0.1:0")
    # asyncio: the yardstick every ratio is taken against; uvloop: what the same bare
    # server does on the loop the service runs on (a reference, README "Performance").
    parser.add_argument("--loop", choices=[ASYNCIO, UVLOOP], default=ASYNCIO)
    args = parser.parse_args(argv)
    event_loop.run(_main(args.kind, json.loads(args.canned.read_text()), args.listen), args.loop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
