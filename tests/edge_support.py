"""Helpers for the edge and client tests: an in-process edge, and a scriptable fake upstream."""

from __future__ import annotations

import asyncio
import socket
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import message
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from clients.client import SERVICE_NAME
from clients.edge.app import init_app
from clients.edge.server import serving
from service.errors import WxLoginError, to_grpc_status
from wxlogin.v1 import auth_pb2, auth_pb2_grpc


@asynccontextmanager
async def ttl_monitor_paused(db: Any) -> AsyncIterator[None]:
    """Keep the test mongod (TTL sweep every second) from deleting an expired session.

    Once swept, an expired token is merely unknown (SESSION_INVALID); a test of
    SESSION_EXPIRED must not race the sweep.
    """
    admin = db.client.admin
    await admin.command({"setParameter": 1, "ttlMonitorEnabled": False})
    try:
        yield
    finally:
        await admin.command({"setParameter": 1, "ttlMonitorEnabled": True})


@asynccontextmanager
async def running_edge(upstream: grpc.aio.Channel | str, **options: Any) -> AsyncIterator[str]:
    """The edge app served in-process on a free port; yields its base URL."""
    async with serving(init_app(upstream, **options), "127.0.0.1", 0, shutdown_grace=1.0) as port:
        yield f"http://127.0.0.1:{port}"


@dataclass(frozen=True)
class Delay:
    """A scripted step: answer only after this many seconds."""

    seconds: float


@dataclass(frozen=True)
class Call:
    """One RPC the fake upstream received."""

    method: str
    request: Any
    metadata: dict[str, str | bytes]


# What a step may be: a reply, a service error (sent with its ErrorInfo), a bare
# status code (sent without ErrorInfo, like a connection-level failure), or a delay.
Step = message.Message | WxLoginError | grpc.StatusCode | Delay

USER = auth_pb2.User(user_id="u-1", app_id="wxfake", openid="o-1", unionid="")
_DEFAULTS: dict[str, message.Message] = {
    "Login": auth_pb2.LoginResponse(token="wxl1_" + "t" * 43, user=USER, new_user=True),
    "CheckSession": auth_pb2.CheckSessionResponse(user=USER),
    "DecryptUserData": auth_pb2.DecryptUserDataResponse(),
    "RevokeSession": auth_pb2.RevokeSessionResponse(),
}


class FakeAuth(auth_pb2_grpc.AuthServiceServicer):
    """AuthService that answers from a script per method and records every call."""

    def __init__(self) -> None:
        self.script: dict[str, list[Step]] = defaultdict(list)
        self.calls: list[Call] = []
        self.called = asyncio.Event()

    def will(self, method: str, *steps: Step) -> None:
        """Queue answers for the next calls of `method`; afterwards it answers a default."""
        self.script[method].extend(steps)

    def calls_to(self, method: str) -> list[Call]:
        return [call for call in self.calls if call.method == method]

    async def _answer(self, method: str, request: Any, context: Any) -> Any:
        self.calls.append(Call(method, request, dict(context.invocation_metadata() or ())))
        self.called.set()
        while self.script[method]:
            step = self.script[method].pop(0)
            if isinstance(step, Delay):
                await asyncio.sleep(step.seconds)
                continue
            if isinstance(step, WxLoginError):
                status = to_grpc_status(step)
                await context.abort(status.code, status.details, status.trailing_metadata)
            if isinstance(step, grpc.StatusCode):
                await context.abort(step, "scripted failure at 10.1.2.3:50051")
            return step
        return _DEFAULTS[method]

    async def Login(self, request: Any, context: Any) -> Any:
        return await self._answer("Login", request, context)

    async def CheckSession(self, request: Any, context: Any) -> Any:
        return await self._answer("CheckSession", request, context)

    async def DecryptUserData(self, request: Any, context: Any) -> Any:
        return await self._answer("DecryptUserData", request, context)

    async def RevokeSession(self, request: Any, context: Any) -> Any:
        return await self._answer("RevokeSession", request, context)


@dataclass(frozen=True)
class FakeUpstream:
    """A running fake: its servicer (script and calls), health and gRPC target."""

    auth: FakeAuth
    health: health.aio.HealthServicer
    target: str

    async def set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        await self.health.set(SERVICE_NAME, status)


@asynccontextmanager
async def fake_upstream() -> AsyncIterator[FakeUpstream]:
    """A real grpc.aio server on port 0 with FakeAuth and a health service."""
    server = grpc.aio.server()
    auth = FakeAuth()
    auth_pb2_grpc.add_AuthServiceServicer_to_server(auth, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    fake = FakeUpstream(auth, health_servicer, f"127.0.0.1:{port}")
    await fake.set_serving(True)
    try:
        yield fake
    finally:
        # No grace: scripted delays would otherwise hold every test's teardown.
        await server.stop(None)


def free_port_target() -> str:
    """A loopback target where nothing listens (the port is bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"
