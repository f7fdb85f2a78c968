"""Builds the service from Settings in one place, and closes it in reverse order."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry
from pymongo.errors import ConfigurationError

from runtime.metrics_server import serving_metrics
from service.access_tokens import AccessTokens
from service.cache import SessionCache, UnknownTokens
from service.callers import CallerGuard, Callers, load_callers
from service.crypto import SessionKeyCipher
from service.embedded_mongo import EmbeddedMongo
from service.errors import StoreUnavailable
from service.limits import InFlightLimits, LoginRates
from service.metrics import Metrics
from service.phone_numbers import PhoneNumbers
from service.revocations import RevocationWatcher
from service.rpc_handlers import add_auth_service
from service.servicer import AuthServicer, WeChatBound
from service.session_keys import UserSessionKeys
from service.sessions import Sessions
from service.settings import ConfigError, Settings
from service.store import MongoClient, Store, connect
from service.tls import ReloadingServerCredentials, TlsFiles
from service.user_data import UserDataDecryptor
from service.wechat import WeChatClient, new_http_session
from service.wxa_session_keys import WxaSessionKeys
from wxlogin.v1 import auth_pb2

log = logging.getLogger(__name__)

SERVICE_NAME = auth_pb2.DESCRIPTOR.services_by_name["AuthService"].full_name
RPC_NAMES = frozenset(auth_pb2.DESCRIPTOR.services_by_name["AuthService"].methods_by_name)
# grpc.health.v1 names that follow MongoDB: the whole server (""), AuthService, and
# MongoDB itself. WeChat has none on purpose: a WeChat outage fails logins, but
# CheckSession still works, so it must not take us out of a load balancer
# (wxlogin_wechat_requests_total says how WeChat is doing).
MONGODB_HEALTH_NAME = "wxlogin.dependency.mongodb"
STORE_DEPENDENTS = ("", SERVICE_NAME, MONGODB_HEALTH_NAME)
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
    # Re-read what operators rotate (the callers file); what SIGHUP runs.
    reload: Callable[[], None] = field(default=lambda: None)
    # Where /metrics is served (WXLOGIN_METRICS_LISTEN); None: metrics are off.
    metrics_port: int | None = None
    # Drops sessions revoked through other processes from the cache (replica sets).
    revocations: RevocationWatcher | None = None


@asynccontextmanager
async def running_service(
    settings: Settings,
    *,
    shutdown_grace: float = 10.0,
    health_interval: float = 2.0,
    registry: CollectorRegistry | None = None,
) -> AsyncIterator[RunningService]:
    """Start everything the service needs; on exit drain RPCs, then close clients.

    With `settings.metrics_listen`, the series go to `registry` (a new one if None).
    """
    problem = settings.exposure_problem()
    if problem is not None:
        if not settings.allow_insecure:
            raise ConfigError(
                "WXLOGIN_ALLOW_INSECURE",
                f"{problem}; configure them, or set WXLOGIN_ALLOW_INSECURE=true to accept that",
            )
        log.warning("!!! INSECURE: %s (WXLOGIN_ALLOW_INSECURE=true) !!!", problem)
    callers = _load_callers(settings)
    tls = _tls(settings)
    metrics = (
        None
        if settings.metrics_listen is None
        else Metrics(registry or CollectorRegistry(), methods=RPC_NAMES)
    )
    async with AsyncExitStack() as stack:
        uri = settings.mongodb_uri
        if uri is None:
            # First, before any gRPC server or channel exists: libuv (uvloop) may start
            # a child with a plain fork(), and grpcio >= 1.80 crashes a forked child of a
            # process with live channels (runtime/process.py). Keep it before them.
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
        stack.push_async_callback(mongo_client.close)
        store = settings_store(mongo_client, settings, metrics)
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
            metrics=metrics,
        )
        cache = SessionCache(settings.session_cache_seconds)
        unknown = UnknownTokens(settings.unknown_token_cache_seconds)
        session_keys = UserSessionKeys(store)
        access_tokens = AccessTokens(
            store,
            wechat.stable_token,
            settings.apps,
            refresh_before=settings.access_token_refresh_before,
            # Without a callers file nobody is granted GetAccessToken by name: fine on
            # loopback, where only this host can call; refused when exposed beyond it.
            granted_only=callers is None and problem is not None,
            metrics=metrics,
        )
        access_tokens.start()
        stack.push_async_callback(access_tokens.aclose)
        sessions = Sessions(
            store,
            wechat,
            settings.apps,
            session_ttl=settings.session_ttl,
            session_max_ttl=settings.session_max_ttl,
            cache=cache,
            unknown=unknown,
            login_rates=LoginRates(settings.login_rate_per_app),
            session_keys=session_keys,
        )
        # Revocations through other processes reach this cache at once (replica sets).
        revocations = RevocationWatcher(store, cache)
        try:
            await revocations.start()
        except StoreUnavailable:
            log.warning("MongoDB did not say whether it has change streams: not watching")
        stack.push_async_callback(revocations.aclose)
        wxa_session_keys = WxaSessionKeys(sessions, session_keys, access_tokens, wechat)
        user_data = UserDataDecryptor(
            sessions,
            store,
            watermark_max_age=settings.watermark_max_age,
            session_keys=session_keys,
            wechat=wechat,
            key_is_current=wxa_session_keys.is_current,
        )
        token_rpcs = WeChatBound(
            access_tokens, PhoneNumbers(sessions, access_tokens, wechat), wxa_session_keys
        )

        guard = None if callers is None else CallerGuard(callers)
        # Checked before the gRPC server exists: a grpc.aio server that fails to
        # bind and is dropped crashed the test process when it was collected.
        if not _bindable(settings.grpc_listen):
            raise ConfigError("WXLOGIN_GRPC_LISTEN", f"cannot listen on {settings.grpc_listen}")
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
                # Several service processes may share one port (scale-out on one host).
                ("grpc.so_reuseport", 1),
            ],
        )
        limits = InFlightLimits(
            {
                "login": settings.max_in_flight_logins,
                "session": settings.max_in_flight_session_calls,
            }
        )
        # With callers, every AuthService RPC is admitted by the guard; health stays open.
        servicer = AuthServicer(
            sessions,
            user_data,
            limits,
            metrics,
            wechat_bound=token_rpcs,
            guard=guard,
            session_cache_seconds=settings.session_cache_seconds,
        )
        add_auth_service(servicer, server)
        metrics_port = None
        if metrics is not None and settings.metrics_listen is not None:
            metrics.track(
                limits=limits,
                session_cache=cache,
                unknown_tokens=unknown,
                logins_waiting=lambda: store.logins_waiting,
            )
            metrics.mongodb_up.set(1)  # ensure_indexes just succeeded
            metrics_port = stack.enter_context(
                serving_metrics("WXLOGIN_METRICS_LISTEN", settings.metrics_listen, metrics.registry)
            )
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        if settings.reflection:
            reflection.enable_server_reflection(
                [SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME], server
            )
        try:
            if tls is None:
                port = server.add_insecure_port(settings.grpc_listen)
            else:
                port = server.add_secure_port(settings.grpc_listen, tls.credentials())
        except RuntimeError:
            port = 0
        if port == 0:
            # A grpc.aio server dropped without stop() crashes the process when
            # it is garbage-collected (a segfault, on whichever thread collects).
            await server.stop(None)
            raise ConfigError("WXLOGIN_GRPC_LISTEN", f"cannot listen on {settings.grpc_listen}")
        # MongoDB answered ensure_indexes a moment ago: say so before the first
        # call can arrive, or a readiness probe right after start sees NOT_FOUND.
        for name in STORE_DEPENDENTS:
            await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        await server.start()

        watcher = asyncio.create_task(
            _watch_store(store, health_servicer, health_interval, metrics)
        )

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

        def reload() -> None:
            if tls is not None:
                tls.reload()
            if guard is not None:
                try:
                    fresh = _load_callers(settings)
                except ConfigError as error:
                    log.error("callers not reloaded, the previous ones stay: %s", error)
                    return
                if fresh is not None:
                    guard.callers = fresh
                    log.info("callers reloaded: %s", ", ".join(c.name for c in fresh.callers))

        log.info(
            "wxlogin serving on port %d over %s (apps: %s; callers: %s)",
            port,
            "plaintext" if tls is None else "mTLS" if settings.tls_client_ca else "TLS",
            ", ".join(sorted(settings.apps)),
            "anyone" if callers is None else ", ".join(c.name for c in callers.callers),
        )
        yield RunningService(
            server,
            port,
            uri,
            health_servicer,
            sessions,
            reload,
            metrics_port=metrics_port,
            revocations=revocations,
        )


def settings_store(client: MongoClient, settings: Settings, metrics: Metrics | None) -> Store:
    """The store as the settings configure it: the service's, and bench.login_floor's."""
    return Store(
        client[settings.database],
        SessionKeyCipher(settings.secret_key, settings.old_secret_keys),
        batch_interval=settings.login_batch_interval,
        max_waiting_logins=settings.max_waiting_logins,
        max_sessions_per_user=settings.max_sessions_per_user,
        metrics=metrics,
    )


def _tls(settings: Settings) -> ReloadingServerCredentials | None:
    """The TLS certificates to serve with, checked now; None for plaintext."""
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    return ReloadingServerCredentials(
        TlsFiles(settings.tls_cert, settings.tls_key, settings.tls_client_ca)
    )


def _load_callers(settings: Settings) -> Callers | None:
    """The callers file's callers, or None when there is none (everyone may call everything)."""
    if settings.callers_file is None:
        return None
    return load_callers(settings.callers_file, apps=settings.apps, rpcs=RPC_NAMES)


async def _watch_store(
    store: Store,
    health_servicer: health.aio.HealthServicer,
    interval: float,
    metrics: Metrics | None = None,
) -> None:
    """Report SERVING only while MongoDB answers (running_service set SERVING at start)."""
    serving: bool | None = True
    ping: asyncio.Task[None] | None = None
    try:
        while True:
            # A ping that outlives its wait is left to finish on its own (pymongo's
            # timeouts bound it) rather than cancelled, and a new ping is not
            # started while an old one is still out: one ping at a time, however
            # long MongoDB is gone.
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
                for name in STORE_DEPENDENTS:
                    await health_servicer.set(name, status)
                if metrics is not None:
                    metrics.mongodb_up.set(1 if ok else 0)
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


def _bindable(address: str) -> bool:
    """Whether a socket can bind `address` (HOST:PORT, [V6]:PORT) as grpc will, port sharing on."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    try:
        infos = socket.getaddrinfo(
            host, int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except (OSError, ValueError):
        return False
    for family, kind, proto, _, sockaddr in infos:
        try:
            with socket.socket(family, kind, proto) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                # grpc.so_reuseport is on: several service processes share a port.
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                probe.bind(sockaddr)
            return True
        except OSError:
            continue
    return False
