"""Builds the service from Settings in one place, and closes it in reverse order."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from pymongo.errors import ConfigurationError

from service.cache import SessionCache
from service.crypto import SessionKeyCipher
from service.embedded_mongo import EmbeddedMongo
from service.errors import StoreUnavailable
from service.limits import InFlightLimits
from service.rpc_handlers import add_auth_service
from service.servicer import AuthServicer
from service.sessions import Sessions
from service.settings import ConfigError, Settings
from service.store import Store, connect
from service.user_data import UserDataDecryptor
from service.wechat import WeChatClient, new_http_session
from wxlogin.v1 import auth_pb2

log = logging.getLogger(__name__)

SERVICE_NAME = auth_pb2.DESCRIPTOR.services_by_name["AuthService"].full_name
# Requests are small (encryptedData of a phone number is a few hundred bytes).
_MAX_MESSAGE_BYTES = 2 * 1024 * 1024


@dataclass(frozen=True)
class RunningService:
    """A started service: where it listens and what it talks to."""

    server: grpc.aio.Server
    port: int
    mongodb_uri: str
    health: health.aio.HealthServicer
    sessions: Sessions


@asynccontextmanager
async def running_service(
    settings: Settings,
    *,
    shutdown_grace: float = 10.0,
    health_interval: float = 2.0,
) -> AsyncIterator[RunningService]:
    """Start everything the service needs; on exit drain RPCs, then close clients."""
    async with AsyncExitStack() as stack:
        uri = settings.mongodb_uri
        if uri is None:
            mongo = EmbeddedMongo(settings.data_dir)
            log.warning(
                "WXLOGIN_MONGODB_URI is unset: starting the embedded mongod (data in %s)",
                settings.data_dir,
            )
            uri = await mongo.start()
            stack.push_async_callback(mongo.stop)

        try:
            mongo_client = connect(uri)
        except ConfigurationError:
            # pymongo's text may quote the URI, password included.
            raise ConfigError("WXLOGIN_MONGODB_URI", "not a valid MongoDB URI") from None
        stack.callback(mongo_client.close)
        store = Store(
            mongo_client[settings.database],
            SessionKeyCipher(settings.secret_key),
            batch_interval=settings.login_batch_interval,
            max_waiting_logins=settings.max_waiting_logins,
        )
        stack.push_async_callback(store.close)
        try:
            await store.ensure_indexes(settings.expired_session_retention)
        except StoreUnavailable:
            raise ConfigError("WXLOGIN_MONGODB_URI", "MongoDB does not answer") from None

        http = new_http_session()
        stack.push_async_callback(http.close)
        wechat = WeChatClient(
            http,
            settings.wechat_api_base,
            settings.apps,
            attempts=settings.wechat_attempts,
            connect_timeout=settings.wechat_connect_timeout,
            total_timeout=settings.wechat_total_timeout,
        )
        sessions = Sessions(
            store,
            wechat,
            settings.apps,
            session_ttl=settings.session_ttl,
            cache=SessionCache(settings.session_cache_seconds),
        )
        user_data = UserDataDecryptor(sessions, store, watermark_max_age=settings.watermark_max_age)

        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
                # Several service processes may share one port (scale-out on one host).
                ("grpc.so_reuseport", 1),
            ]
        )
        limits = InFlightLimits(
            {
                "login": settings.max_in_flight_logins,
                "session": settings.max_in_flight_session_calls,
            }
        )
        add_auth_service(AuthServicer(sessions, user_data, limits), server)
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        reflection.enable_server_reflection(
            [SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME], server
        )
        try:
            port = server.add_insecure_port(settings.grpc_listen)
        except RuntimeError:
            port = 0
        if port == 0:
            raise ConfigError("WXLOGIN_GRPC_LISTEN", f"cannot listen on {settings.grpc_listen}")
        await server.start()

        watcher = asyncio.create_task(_watch_store(store, health_servicer, health_interval))

        async def drain() -> None:
            # Tell load balancers first, then let in-flight RPCs finish within
            # the grace period; only then may the clients below be closed.
            await health_servicer.enter_graceful_shutdown()
            watcher.cancel()
            # wait(), not `await watcher`: that would raise the watcher's
            # CancelledError, and suppressing it could swallow our own
            # cancellation. Bounded, like every step of a shutdown.
            await asyncio.wait([watcher], timeout=2)
            try:
                # Bounded: a shutdown must never hang, whatever grpc core does.
                await asyncio.wait_for(server.stop(shutdown_grace), shutdown_grace + 5)
            except TimeoutError:
                log.error("gRPC server did not stop within %.0fs", shutdown_grace + 5)

        stack.push_async_callback(drain)
        log.info("wxlogin serving on port %d (apps: %s)", port, ", ".join(sorted(settings.apps)))
        yield RunningService(server, port, uri, health_servicer, sessions)


async def _watch_store(
    store: Store, health_servicer: health.aio.HealthServicer, interval: float
) -> None:
    """Report SERVING only while MongoDB answers."""
    serving: bool | None = None
    ping: asyncio.Task[None] | None = None
    try:
        while True:
            # A ping that outlives its wait is left to finish on its own (pymongo's
            # timeouts bound it) rather than cancelled: a cancelled motor call
            # can leave its executor future behind, and a new ping is not
            # started while an old one is still out.
            if ping is None or ping.done():
                ping = asyncio.ensure_future(store.ping())
                ping.add_done_callback(_consume)
            done, _ = await asyncio.wait([ping], timeout=max(interval, 1.0))
            ok = ping in done and not ping.cancelled() and ping.exception() is None
            if ok != serving:
                status = (
                    health_pb2.HealthCheckResponse.SERVING
                    if ok
                    else health_pb2.HealthCheckResponse.NOT_SERVING
                )
                for name in ("", SERVICE_NAME):
                    await health_servicer.set(name, status)
                if serving is not None:
                    log.warning("MongoDB %s", "answers again" if ok else "does not answer")
                serving = ok
            await asyncio.sleep(interval)
    finally:
        if ping is not None and not ping.done():
            ping.cancel()


def _consume(task: asyncio.Task[None]) -> None:
    """Read a finished ping's outcome so asyncio never logs it as unretrieved."""
    if not task.cancelled():
        task.exception()
