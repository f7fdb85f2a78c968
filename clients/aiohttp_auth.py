"""aiohttp middleware for backends: authenticate `Authorization: Bearer` through CheckSession.

app = web.Application(middlewares=[bearer_auth(client)])

async def handler(request: web.Request) -> web.Response:
    user = request[USER]  # a clients.User; typed through web.RequestKey
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from clients._bearer import bearer_token
from clients._errors import SessionInvalid, WxLoginError
from clients._models import User
from clients.client import WxLoginClient
from clients.http_errors import error_response

USER = web.RequestKey("wxlogin_user", User)


def _nothing_is_public(request: web.Request) -> bool:
    return False


def bearer_auth(
    client: WxLoginClient, *, public: Callable[[web.Request], bool] = _nothing_is_public
) -> Middleware:
    """A middleware that puts the caller's User at request[USER], or answers the JSON error.

    Session failures answer 401 (reason SESSION_INVALID or SESSION_EXPIRED), so
    a mini-program logs in again; wxlogin being unreachable answers 503, not
    401, so nobody is sent to log in again for our outage. Requests for which
    `public(request)` is true pass through unauthenticated.
    """

    @web.middleware
    async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
        if public(request):
            return await handler(request)
        token = bearer_token(request.headers.get("Authorization"))
        if token is None:
            return error_response(
                SessionInvalid("send the login token as Authorization: Bearer <token>")
            )
        try:
            session = await client.check_session(
                token, request_id=request.headers.get("X-Request-Id")
            )
        except WxLoginError as error:
            return error_response(error)
        request[USER] = session.user
        return await handler(request)

    return authenticate
