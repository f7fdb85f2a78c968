"""The edge's aiohttp app: JSON routes onto wxlogin's RPCs, with no business logic of its own."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import math
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from importlib import resources
from typing import Any, TypeVar

import grpc
from aiohttp import web
from aiohttp.typedefs import Handler

from clients._bearer import bearer_token
from clients._errors import (
    BadRequest,
    InternalError,
    RateLimited,
    ServiceUnavailable,
    SessionInvalid,
    WxLoginError,
)
from clients._models import Session, User
from clients._upstream import UpstreamConfig
from clients.client import Deadlines, RetryPolicy, WxLoginClient, is_request_id, open_channel
from clients.edge.http_errors import MethodNotAllowed, NotFound, PayloadTooLarge
from clients.edge.login_limit import LoginLimit
from clients.edge.metrics import UNMATCHED, EdgeMetrics
from clients.edge.redact import has_token
from clients.http_errors import error_response
from clients.session_cache import SessionCache
from runtime import log_context

log = logging.getLogger(__name__)

UPSTREAM = web.AppKey("upstream", WxLoginClient)
OPENAPI = web.AppKey("openapi", bytes)
LOGIN_LIMIT = web.AppKey("login_limit", LoginLimit)
METRICS = web.AppKey("metrics", EdgeMetrics)
# Set once SIGTERM arrived: /readyz answers 503 while every other route still serves.
DRAINING = web.AppKey("draining", asyncio.Event)
REQUEST_ID = web.RequestKey("request_id", str)

REQUEST_ID_HEADER = "X-Request-Id"
# aiohttp's default Server header names Python's and aiohttp's versions: a gift to scanners.
SERVER_HEADER = "wxlogin-edge"
# A mini-program's largest body is encryptedData of a user profile: a few KB.
MAX_BODY_BYTES = 64 * 1024
# Every RPC the routes below call: the edge's entry in wxlogin's callers file needs all of
# them (a missing one answers its route 500 CALLER_FORBIDDEN). The dev stack and the
# rehearsal grant exactly these; tests/test_edge_rpcs.py holds the README's example to them.
RPCS = (
    "Login",
    "CheckSession",
    "DecryptUserData",
    "GetPhoneNumber",
    "RevokeSession",
    "RevokeAllSessions",
)


def init_app(
    upstream: grpc.aio.Channel | str,
    *,
    deadlines: Deadlines | None = None,
    retry: RetryPolicy | None = None,
    max_body_bytes: int = MAX_BODY_BYTES,
    session_cache_seconds: float = 0.0,
    security: UpstreamConfig | None = None,
    login_limit: LoginLimit | None = None,
    metrics: EdgeMetrics | None = None,
) -> web.Application:
    """The edge for a gRPC target (channel opened and closed with the app) or a shared channel.

    `security`: TLS for a channel the app opens, and the caller key sent on every call.
    `login_limit`: POST /v1/login per client address (None: no bound).
    `metrics`: where requests and upstream calls are counted (None: not measured).
    """
    app = web.Application(middlewares=[_envelope], client_max_size=max_body_bytes)
    app[OPENAPI] = resources.files(__package__).joinpath("openapi.json").read_bytes()
    app[REQUEST_IDS] = _RequestIds()
    app[CACHED_BODIES] = _CachedBodies()
    app[DRAINING] = asyncio.Event()
    if login_limit is not None:
        app[LOGIN_LIMIT] = login_limit
    if metrics is not None:
        app[METRICS] = metrics
    cache = SessionCache(session_cache_seconds) if session_cache_seconds > 0 else None
    app.cleanup_ctx.append(
        _upstream_client(upstream, deadlines, retry, cache, security or UpstreamConfig())
    )
    app.router.add_post("/v1/login", login)
    app.router.add_get("/v1/session", session, allow_head=False)
    app.router.add_post("/v1/user-data/decrypt", decrypt_user_data)
    app.router.add_post("/v1/phone-number", phone_number)
    app.router.add_post("/v1/logout", logout)
    app.router.add_get("/healthz", healthz, allow_head=False)
    app.router.add_get("/readyz", readyz, allow_head=False)
    app.router.add_get("/openapi.json", openapi, allow_head=False)
    return app


def _upstream_client(
    upstream: grpc.aio.Channel | str,
    deadlines: Deadlines | None,
    retry: RetryPolicy | None,
    cache: SessionCache | None,
    security: UpstreamConfig,
) -> Callable[[web.Application], AsyncIterator[None]]:
    async def context(app: web.Application) -> AsyncIterator[None]:
        # One channel for every request: it multiplexes them over one HTTP/2 connection.
        channel = (
            open_channel(upstream, tls=security.tls) if isinstance(upstream, str) else upstream
        )
        app[UPSTREAM] = WxLoginClient(
            channel,
            deadlines=deadlines,
            retry=retry,
            session_cache=cache,
            caller_key=security.caller_key,
        )
        try:
            yield
        finally:
            if isinstance(upstream, str):  # a channel passed in belongs to the caller
                await channel.close()

    return context


# -- middlewares ---------------------------------------------------------------------------


class _RequestIds:
    """Request ids unique per process without a syscall each: a random prefix, a counter."""

    def __init__(self) -> None:
        self._prefix = os.urandom(8).hex()
        self._counter = itertools.count(1)

    def __call__(self) -> str:
        return f"{self._prefix}{next(self._counter):016x}"  # 32 hex digits, like a uuid


REQUEST_IDS = web.AppKey("request_ids", _RequestIds)


@web.middleware
async def _envelope(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Request id in and out, every failure as the JSON error body, a neutral Server header.

    One middleware, not two, and the error mapping inline rather than a coroutine
    of its own: each layer costs a coroutine per request on the edge's hottest
    route (bench/README.md).
    """
    request_id = request.headers.get(REQUEST_ID_HEADER)
    # One of another shape (spaces, non-ASCII, too long) is replaced, not refused:
    # a request id is for finding log lines, never a reason to fail a request.
    # So is a token sent as one: it would be logged with every line of the request.
    if request_id is None or not is_request_id(request_id) or has_token(request_id):
        request_id = request.app[REQUEST_IDS]()
    request[REQUEST_ID] = request_id
    started = time.perf_counter()
    # Every line logged while this request is handled names it (runtime/log_context.py).
    call = log_context.begin(request_id)
    try:
        response = await handler(request)
    except Exception as error:  # nothing internal reaches the caller
        response = _error_answer(request, error)
    finally:
        log_context.end(call)
    headers = response.headers
    headers[REQUEST_ID_HEADER] = request_id
    headers[_SERVER] = SERVER_HEADER
    metrics = request.app.get(METRICS)
    if metrics is not None:
        # The route's pattern, never the path sent: label values stay bounded.
        resource = request.match_info.route.resource
        route = UNMATCHED if resource is None else resource.canonical
        metrics.request(route, response.status, time.perf_counter() - started)
    return response


_SERVER = "Server"
T = TypeVar("T")


def _timed(request: web.Request, rpc: str, call: Awaitable[T]) -> Awaitable[T]:
    """A call to wxlogin, timed for the metrics when they are on (else the call itself)."""
    metrics = request.app.get(METRICS)
    return call if metrics is None else _timing(metrics, rpc, call)


async def _timing(metrics: EdgeMetrics, rpc: str, call: Awaitable[T]) -> T:
    started = time.perf_counter()
    try:
        return await call
    finally:
        metrics.upstream(rpc, time.perf_counter() - started)


def _error_answer(request: web.Request, error: Exception) -> web.StreamResponse:
    """The JSON error body for whatever a handler raised; nothing internal reaches the caller."""
    if isinstance(error, WxLoginError):
        return error_response(error)
    if isinstance(error, web.HTTPRequestEntityTooLarge):
        limit = request.client_max_size
        return error_response(PayloadTooLarge(f"body is larger than {limit} bytes"))
    if isinstance(error, web.HTTPNotFound):
        return error_response(NotFound("no such route"))
    if isinstance(error, web.HTTPMethodNotAllowed):
        allow = ", ".join(sorted(error.allowed_methods))
        return error_response(
            MethodNotAllowed(f"{request.method} is not allowed here"), headers={"Allow": allow}
        )
    if isinstance(error, web.HTTPException):
        if error.status < 400:
            raise error  # a redirect is an answer, not a failure
        return error_response(BadRequest(error.reason))
    # The traceback stays in our log, with the request id to find it by.
    log.error("unhandled error request_id=%s", request.get(REQUEST_ID, "-"), exc_info=error)
    return error_response(InternalError("internal error"))


# -- routes ----------------------------------------------------------------------------------


async def login(request: web.Request) -> web.Response:
    """POST /v1/login {code, app_id?} -> {token, expires_at, user, new_user}."""
    limit = request.app.get(LOGIN_LIMIT)
    # Before the body is read: a flood is turned away as cheaply as can be.
    wait = 0.0 if limit is None else limit.wait(request)
    if wait > 0:
        return error_response(
            RateLimited("too many logins from this address; retry later"),
            headers={"Retry-After": str(max(1, math.ceil(wait)))},
        )
    body = await _json_object(request)
    try:
        result = await _timed(
            request,
            "Login",
            request.app[UPSTREAM].login(
                _text(body, "code", required=True),
                app_id=_text(body, "app_id", required=False),
                request_id=request[REQUEST_ID],
            ),
        )
    except RateLimited as error:
        # The service's own login bounds say when to come back; pass it on.
        retry_after = error.metadata.get("retry_after_seconds")
        if retry_after is None or not retry_after.isdigit():
            raise
        return error_response(error, headers={"Retry-After": retry_after})
    return web.json_response(
        {
            "token": result.token,
            "expires_at": _timestamp(result.expires_at),
            "user": _user(result.user),
            "new_user": result.new_user,
        }
    )


async def session(request: web.Request) -> web.Response:
    """GET /v1/session (bearer) -> {user, expires_at}."""
    token = _bearer(request)
    client = request.app[UPSTREAM]
    # The edge's own cache first, here rather than only inside check_session, so
    # that the upstream timing counts calls to wxlogin and not answers from memory.
    cached = None if client.session_cache is None else client.session_cache.get(token)
    if cached is not None:
        # The same Session object while it is cached, so its body is encoded once.
        return _json_body(request.app[CACHED_BODIES](cached))
    checked = await _timed(
        request,
        "CheckSession",
        client.check_session(token, request_id=request[REQUEST_ID]),
    )
    return _json_body(_session_body(checked))


def _session_body(checked: Session) -> bytes:
    return _dumps(
        {"user": _user(checked.user), "expires_at": _timestamp(checked.expires_at)}
    ).encode()


class _CachedBodies:
    """Encoded bodies of Sessions the edge's cache hands out: the same object while cached.

    Keyed by identity (hashing a Session costs more than the dict lookup), the
    object itself kept beside its body so that its id cannot be reused while it is
    here. A small bound, oldest out first: each entry keeps its Session alive after
    the session cache has let it go.
    """

    def __init__(self, max_entries: int = 1024) -> None:
        self._max_entries = max_entries
        self._bodies: dict[int, tuple[Session, bytes]] = {}

    def __call__(self, session: Session) -> bytes:
        entry = self._bodies.get(id(session))
        if entry is not None and entry[0] is session:
            return entry[1]
        body = _session_body(session)
        if len(self._bodies) >= self._max_entries:
            del self._bodies[next(iter(self._bodies))]
        self._bodies[id(session)] = (session, body)
        return body


CACHED_BODIES = web.AppKey("cached_bodies", _CachedBodies)


def _json_body(body: bytes) -> web.Response:
    """What web.json_response answers (same Content-Type), for a body already encoded."""
    return web.Response(body=body, content_type=_JSON, charset=_UTF8)


_JSON = "application/json"
_UTF8 = "utf-8"
_dumps = json.JSONEncoder().encode  # json.dumps's own default encoder, without the call


async def decrypt_user_data(request: web.Request) -> web.Response:
    """POST /v1/user-data/decrypt (bearer) {encryptedData, iv, rawData?, signature?, code?}.

    -> {data}. `code`: a wx.login() code fetched just before the data, so the key
    is WeChat's current one (see the mini-program sample).
    """
    token = _bearer(request)
    body = await _json_object(request)
    # WeChat's own field names, so a mini-program can forward wx.getUserProfile's result as is.
    decrypted = await _timed(
        request,
        "DecryptUserData",
        request.app[UPSTREAM].decrypt_user_data(
            token,
            _text(body, "encryptedData", required=True),
            _text(body, "iv", required=True),
            raw_data=_text(body, "rawData", required=False),
            signature=_text(body, "signature", required=False),
            code=_text(body, "code", required=False),
            request_id=request[REQUEST_ID],
        ),
    )
    return web.json_response({"data": decrypted.data})


async def phone_number(request: web.Request) -> web.Response:
    """POST /v1/phone-number (bearer) {code} -> the user's number, from a getPhoneNumber code."""
    token = _bearer(request)
    body = await _json_object(request)
    number = await _timed(
        request,
        "GetPhoneNumber",
        request.app[UPSTREAM].get_phone_number(
            token, _text(body, "code", required=True), request_id=request[REQUEST_ID]
        ),
    )
    answer: dict[str, str] = {
        "phone_number": number.phone_number,
        "pure_phone_number": number.pure_phone_number,
        "country_code": number.country_code,
    }
    if number.watermark_time is not None:
        answer["watermark_time"] = _timestamp(number.watermark_time)
    return web.json_response(answer)


async def logout(request: web.Request) -> web.Response:
    """POST /v1/logout (bearer) -> 204: ends the session now; {"all": true} -> {revoked}.

    With `{"all": true}` every session of the token's user ends (log out
    everywhere), and the answer says how many; no body (or `"all": false`) ends
    this one session.
    """
    token = _bearer(request)
    everywhere = False
    if request.body_exists:
        everywhere = _flag(await _json_object(request), "all")
    if everywhere:
        revoked = await _timed(
            request,
            "RevokeAllSessions",
            request.app[UPSTREAM].revoke_all_sessions(token, request_id=request[REQUEST_ID]),
        )
        return web.json_response({"revoked": revoked})
    await _timed(
        request,
        "RevokeSession",
        request.app[UPSTREAM].revoke_session(token, request_id=request[REQUEST_ID]),
    )
    return web.Response(status=204)


async def healthz(request: web.Request) -> web.Response:
    """GET /healthz: the process answers (liveness)."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """GET /readyz: not draining, and wxlogin's health service says SERVING (readiness).

    `?scope=edge` asks about this edge alone (not draining): what a load balancer in front
    of several edges checks. The service tier behind them is the balancer's gRPC side's
    concern; were every edge to follow it, one draining service answering a check (or a
    MongoDB election) would take all edges out of rotation at once, and mini-programs would
    get the balancer's own error page instead of our JSON 503.
    """
    scope = request.query.get("scope")
    if scope not in (None, "edge"):
        raise BadRequest("scope, when given, is edge")
    if request.app[DRAINING].is_set():
        # A load balancer stops sending new requests here; those it still sends are served.
        raise ServiceUnavailable("this edge is shutting down")
    if scope == "edge":
        return web.json_response({"status": "ready"})
    if not await request.app[UPSTREAM].serving():
        raise ServiceUnavailable("wxlogin is not serving")
    return web.json_response({"status": "ready"})


async def openapi(request: web.Request) -> web.Response:
    """GET /openapi.json: this API, as the committed OpenAPI 3 document."""
    return web.Response(body=request.app[OPENAPI], content_type="application/json")


# -- request parsing and response shapes -------------------------------------------------------


def _bearer(request: web.Request) -> str:
    token = bearer_token(request.headers.get("Authorization"))
    if token is None or not _is_unicode(token):
        raise SessionInvalid("send the login token as Authorization: Bearer <token>")
    return token


async def _json_object(request: web.Request) -> dict[str, Any]:
    try:
        raw = await request.read()  # raises HTTPRequestEntityTooLarge past client_max_size
    except (web.RequestPayloadError, ConnectionResetError):
        # Bad chunking or compression, or a body cut short: the caller's fault,
        # not a crash (aiohttp logs the cause once, without the body's text).
        raise BadRequest("the request body could not be read") from None
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise BadRequest("body is not valid JSON") from None
    if not isinstance(body, dict):
        raise BadRequest("body must be a JSON object")
    return body


def _text(body: dict[str, Any], field: str, *, required: bool) -> str:
    value = body.get(field)
    if value is None:
        if required:
            raise BadRequest(f"{field} is required")
        return ""
    if not isinstance(value, str) or not _is_unicode(value):
        raise BadRequest(f"{field} must be a string")
    if required and not value:
        raise BadRequest(f"{field} must not be empty")
    return value


def _flag(body: dict[str, Any], field: str) -> bool:
    value = body.get(field, False)
    if not isinstance(value, bool):
        raise BadRequest(f"{field} must be true or false")
    return value


def _is_unicode(text: str) -> bool:
    # JSON's "\ud800" escapes decode to lone surrogates, which protobuf cannot carry.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _user(user: User) -> dict[str, str]:
    # The contract's shape: unionid is empty, not absent, when WeChat gave none.
    return {
        "user_id": user.user_id,
        "app_id": user.app_id,
        "openid": user.openid,
        "unionid": user.unionid or "",
        "account_id": user.account_id or user.user_id,
    }


def _timestamp(moment: datetime) -> str:
    """RFC 3339 in UTC with milliseconds, e.g. 2025-01-31T08:00:00.000Z."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
