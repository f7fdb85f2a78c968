"""The emulator's aiohttp application: WeChat's APIs plus the ``/_dev`` control API."""

from __future__ import annotations

import asyncio
import json
import math
import secrets
import time
from collections.abc import Callable, Collection, Mapping
from http import HTTPStatus
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from emulator.state import (
    CHAOS_KINDS,
    ENDPOINTS,
    Chaos,
    EmulatorState,
    Fault,
    NeverLoggedInError,
    NoPhoneError,
    UnknownAppError,
    WeChatError,
)

STATE = web.AppKey("state", EmulatorState)


def init_app(
    apps: Mapping[str, str],
    code_ttl: float = 300.0,
    clock: Callable[[], float] = time.time,
    *,
    access_token_ttl: float = 7200.0,
    access_token_overlap: float = 300.0,
) -> web.Application:
    """Build the emulator for ``apps`` (appid -> secret); ``clock`` is injectable for tests.

    ``access_token_ttl`` and ``access_token_overlap`` are WeChat's 7200 s and 5 minutes;
    tests shrink them to see refreshes happen.
    """
    app = web.Application(middlewares=[_dev_errors])
    app[STATE] = EmulatorState(
        apps,
        code_ttl=code_ttl,
        clock=clock,
        access_token_ttl=access_token_ttl,
        access_token_overlap=access_token_overlap,
    )
    # No HEAD: it would count as a request and could burn a code.
    app.router.add_get("/sns/jscode2session", jscode2session, allow_head=False)
    app.router.add_post("/cgi-bin/stable_token", stable_token)
    app.router.add_post("/wxa/business/getuserphonenumber", getuserphonenumber)
    app.router.add_get("/wxa/checksession", checksession, allow_head=False)
    app.router.add_get("/wxa/resetusersessionkey", resetusersessionkey, allow_head=False)
    app.router.add_get("/healthz", healthz)
    app.router.add_post("/_dev/users", dev_users)
    app.router.add_post("/_dev/login", dev_login)
    app.router.add_post("/_dev/user-data", dev_user_data)
    app.router.add_post("/_dev/phone-code", dev_phone_code)
    app.router.add_get("/_dev/access-tokens", dev_access_tokens)
    app.router.add_post("/_dev/access-tokens/invalidate", dev_invalidate_access_token)
    app.router.add_post("/_dev/clock", dev_clock)
    app.router.add_get("/_dev/faults", dev_list_faults)
    app.router.add_post("/_dev/faults", dev_add_fault)
    app.router.add_delete("/_dev/faults", dev_clear_faults)
    app.router.add_get("/_dev/chaos", dev_chaos)
    app.router.add_post("/_dev/chaos", dev_set_chaos)
    app.router.add_delete("/_dev/chaos", dev_clear_chaos)
    app.router.add_get("/_dev/stats", dev_stats)
    app.router.add_post("/_dev/stats/reset", dev_reset_stats)
    return app


# -- WeChat's API -----------------------------------------------------------------------------


def _wechat_response(body: Mapping[str, Any], status: int = 200) -> web.Response:
    # The real API labels its JSON text/plain; clients must not rely on application/json.
    return web.Response(
        status=status, text=json.dumps(body, ensure_ascii=False), content_type="text/plain"
    )


def _exchange(state: EmulatorState, request: web.Request) -> web.Response:
    query = request.query
    try:
        session = state.exchange(
            appid=query.get("appid", ""),
            secret=query.get("secret", ""),
            js_code=query.get("js_code", ""),
            grant_type=query.get("grant_type", ""),
        )
    except WeChatError as exc:
        return _wechat_response({"errcode": exc.errcode, "errmsg": exc.errmsg})
    body = {"openid": session.openid, "session_key": session.session_key}
    if session.unionid is not None:
        body["unionid"] = session.unionid
    return _wechat_response(body)


def _faulted(fault: Fault, real: Callable[[], web.Response]) -> web.Response | None:
    """The answer ``fault`` calls for instead of ``real()``; None means drop the connection."""
    if not fault.spoils_answer:
        return real()
    if fault.use_code:
        # WeChat did the work (a code is spent), and then the answer went wrong.
        real()
    if fault.drop:
        return None
    if fault.http_status is not None:
        if fault.errcode is not None:
            return _wechat_response(
                {"errcode": fault.errcode, "errmsg": "forced"}, status=fault.http_status
            )
        # What a gateway in front of WeChat would say; clients must not parse it.
        try:
            phrase = HTTPStatus(fault.http_status).phrase
        except ValueError:  # a status with no registered name, e.g. 599
            phrase = "Error"
        title = f"{fault.http_status} {phrase}"
        return web.Response(
            status=fault.http_status,
            text=f"<html><head><title>{title}</title></head><body><h1>{title}</h1></body></html>",
            content_type="text/html",
        )
    # Without use_code, answered without looking at the code, so the code stays usable.
    return _wechat_response({"errcode": fault.errcode, "errmsg": "forced"})


async def _answer(
    request: web.Request, endpoint: str, real: Callable[[], web.Response]
) -> web.StreamResponse:
    """Count a request to ``endpoint`` and answer it with ``real()``, or as a queued fault says."""
    fault = request.app[STATE].begin(endpoint)
    if fault is None:
        return real()
    # Decide first, then wait: like WeChat, a slow answer may already have burnt the code, which
    # is exactly what a client that timed out and retries runs into.
    response = _faulted(fault, real)
    if fault.latency_ms:
        await asyncio.sleep(fault.latency_ms / 1000)
    if response is None:
        transport = request.transport
        if transport is not None:
            transport.close()
        # aiohttp then fails to write this to the closed transport and treats that as a client
        # that went away: no traceback, nothing sent, the connection is simply gone.
        return web.Response(status=HTTPStatus.NO_CONTENT)
    return response


async def jscode2session(request: web.Request) -> web.StreamResponse:
    """``GET /sns/jscode2session``: exchange a login code, subject to queued faults and chaos."""
    state = request.app[STATE]
    return await _answer(request, "jscode2session", lambda: _exchange(state, request))


def _errcode(error: WeChatError) -> web.Response:
    return _wechat_response({"errcode": error.errcode, "errmsg": error.errmsg})


def _ok(**fields: Any) -> web.Response:
    return _wechat_response({"errcode": 0, "errmsg": "ok", **fields})


async def _json_object(request: web.Request) -> dict[str, Any] | None:
    """The body as a JSON object, or None when it is not one (WeChat's 47001)."""
    try:
        body = json.loads(await request.read())
    except (ValueError, UnicodeDecodeError):
        return None
    return body if isinstance(body, dict) else None


async def stable_token(request: web.Request) -> web.StreamResponse:
    """``POST /cgi-bin/stable_token``: the app's access_token, normal or forced (module docs)."""
    state = request.app[STATE]
    body = await _json_object(request)

    def real() -> web.Response:
        if body is None:
            return _errcode(WeChatError(47001))
        force = body.get("force_refresh", False)
        try:
            token, expires_in = state.stable_token(
                appid=str(body.get("appid") or ""),
                secret=str(body.get("secret") or ""),
                grant_type=str(body.get("grant_type") or ""),
                force_refresh=force is True,
            )
        except WeChatError as error:
            return _errcode(error)
        # No errcode on success, as WeChat answers this one.
        return _wechat_response({"access_token": token, "expires_in": expires_in})

    return await _answer(request, "stable_token", real)


async def getuserphonenumber(request: web.Request) -> web.StreamResponse:
    """``POST /wxa/business/getuserphonenumber?access_token=``: a phone code for the number."""
    state = request.app[STATE]
    body = await _json_object(request)

    def real() -> web.Response:
        if body is None:
            return _errcode(WeChatError(47001))
        code = body.get("code")
        try:
            info = state.phone_number(
                request.query.get("access_token", ""), code if isinstance(code, str) else ""
            )
        except WeChatError as error:
            return _errcode(error)
        return _ok(
            phone_info={
                "phoneNumber": info.phone_number,
                "purePhoneNumber": info.pure_phone_number,
                # A string, though WeChat's documentation calls it a number.
                "countryCode": info.country_code,
                "watermark": {"timestamp": info.timestamp, "appid": info.appid},
            }
        )

    return await _answer(request, "getuserphonenumber", real)


def _signed(request: web.Request) -> tuple[str, str, str, str]:
    query = request.query
    return (
        query.get("access_token", ""),
        query.get("openid", ""),
        query.get("signature", ""),
        query.get("sig_method", ""),
    )


async def checksession(request: web.Request) -> web.StreamResponse:
    """``GET /wxa/checksession``: ok if the signing session_key is the current one, else 87009."""
    state = request.app[STATE]

    def real() -> web.Response:
        try:
            state.check_session(*_signed(request))
        except WeChatError as error:
            return _errcode(error)
        return _ok()

    return await _answer(request, "checksession", real)


async def resetusersessionkey(request: web.Request) -> web.StreamResponse:
    """``GET /wxa/resetusersessionkey``: a new session_key, signed for with the current one."""
    state = request.app[STATE]

    def real() -> web.Response:
        access_token, openid, signature, sig_method = _signed(request)
        try:
            session_key = state.reset_session_key(access_token, openid, signature, sig_method)
        except WeChatError as error:
            return _errcode(error)
        return _ok(openid=openid, session_key=session_key)

    return await _answer(request, "resetusersessionkey", real)


async def healthz(request: web.Request) -> web.Response:
    """``GET /healthz``: liveness."""
    return web.json_response({"status": "ok"})


# -- the /_dev control API --------------------------------------------------------------------


class _BadInput(Exception):
    """A /_dev request body that does not say what it should."""


@web.middleware
async def _dev_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn the dev API's domain errors into JSON error answers, in one place."""
    try:
        return await handler(request)
    except _BadInput as exc:
        return web.json_response({"error": str(exc)}, status=400)
    except UnknownAppError as exc:
        return web.json_response({"error": f"unknown appid {exc}"}, status=404)
    except NeverLoggedInError:
        return web.json_response({"error": "user has never logged in"}, status=409)
    except NoPhoneError:
        return web.json_response({"error": "user has no phone number set up"}, status=409)


async def _body(request: web.Request, allowed: Collection[str]) -> dict[str, Any]:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise _BadInput("body is not JSON") from None
    if not isinstance(body, dict):
        raise _BadInput("body must be a JSON object")
    # A typo such as "latency" would otherwise silently do nothing.
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        raise _BadInput(f"unknown field(s): {', '.join(unknown)}")
    return body


def _str(body: Mapping[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise _BadInput(f"{key} must be a non-empty string")
    return value


def _required_str(body: Mapping[str, Any], key: str) -> str:
    value = _str(body, key)
    if value is None:
        raise _BadInput(f"{key} is required")
    return value


def _int(
    body: Mapping[str, Any], key: str, low: int | None = None, high: int | None = None
) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    # bool is an int in Python but never a meaningful number here.
    if isinstance(value, bool) or not isinstance(value, int):
        raise _BadInput(f"{key} must be an integer")
    if low is not None and value < low:
        raise _BadInput(f"{key} must be >= {low}")
    if high is not None and value > high:
        raise _BadInput(f"{key} must be <= {high}")
    return value


def _bool(body: Mapping[str, Any], key: str) -> bool:
    value = body.get(key, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise _BadInput(f"{key} must be a boolean")
    return value


def _digits(body: Mapping[str, Any], key: str) -> str | None:
    value = _str(body, key)
    if value is not None and not (value.isascii() and value.isdigit() and len(value) <= 20):
        raise _BadInput(f"{key} must be a string of at most 20 digits")
    return value


async def dev_users(request: web.Request) -> web.Response:
    """``POST /_dev/users``: set up or overwrite a test user (``phone``: for phone codes)."""
    body = await _body(request, {"appid", "user", "unionid", "blocked", "phone", "country_code"})
    unionid = body.get("unionid")
    if not (unionid is None or isinstance(unionid, bool) or (isinstance(unionid, str) and unionid)):
        raise _BadInput("unionid must be a non-empty string, true or false")
    user = request.app[STATE].set_user(
        _required_str(body, "appid"),
        _required_str(body, "user"),
        unionid=unionid,
        blocked=_bool(body, "blocked"),
        phone=_digits(body, "phone"),
        country_code=_digits(body, "country_code") or "86",
    )
    answer = {"openid": user.openid}
    if user.unionid is not None:
        answer["unionid"] = user.unionid
    return web.json_response(answer)


def _ttl(body: Mapping[str, Any]) -> float | None:
    ttl = body.get("ttl")
    # json.loads accepts NaN and Infinity, which would make a code that never expires.
    valid = isinstance(ttl, int | float) and not isinstance(ttl, bool) and math.isfinite(ttl)
    if ttl is not None and not (valid and ttl >= 0):
        raise _BadInput("ttl must be a number of seconds >= 0")
    return None if ttl is None else float(ttl)


async def dev_phone_code(request: web.Request) -> web.Response:
    """``POST /_dev/phone-code``: play the getPhoneNumber button; a single-use phone code."""
    body = await _body(request, {"appid", "user", "ttl"})
    code = request.app[STATE].mint_phone_code(
        _required_str(body, "appid"), _required_str(body, "user"), ttl=_ttl(body)
    )
    return web.json_response({"code": code})


async def dev_access_tokens(request: web.Request) -> web.Response:
    """``GET /_dev/access-tokens``: lifetimes, and per app forced refreshes today."""
    state = request.app[STATE]
    return web.json_response(state.access_tokens.report(state.apps))


async def dev_invalidate_access_token(request: web.Request) -> web.Response:
    """``POST /_dev/access-tokens/invalidate {"appid"}``: the current token fails with 40001.

    Normal-mode stable_token keeps answering it, so only a forced refresh helps.
    """
    body = await _body(request, {"appid"})
    state = request.app[STATE]
    appid = _required_str(body, "appid")
    if appid not in state.apps:
        raise UnknownAppError(appid)
    token = state.access_tokens.invalidate(appid)
    return web.json_response({"invalidated": token is not None})


async def dev_clock(request: web.Request) -> web.Response:
    """``POST /_dev/clock {"advance": seconds}``: move the emulator's time forward."""
    body = await _body(request, {"advance"})
    advance = body.get("advance")
    if (
        not isinstance(advance, int | float)
        or isinstance(advance, bool)
        or not math.isfinite(advance)
        or advance < 0
    ):
        raise _BadInput("advance must be a number of seconds >= 0")
    state = request.app[STATE]
    state.clock_offset += float(advance)
    return web.json_response({"offset": state.clock_offset})


async def dev_login(request: web.Request) -> web.Response:
    """``POST /_dev/login``: play ``wx.login()`` for a user and return the fresh code."""
    body = await _body(request, {"appid", "user", "ttl"})
    code, user = request.app[STATE].login(
        _required_str(body, "appid"), _required_str(body, "user"), ttl=_ttl(body)
    )
    # session_key is dev-only knowledge: tests use it to prove the service never
    # stores or logs it in plaintext. Real WeChat never hands it to the client.
    return web.json_response({"code": code, "openid": user.openid, "session_key": user.session_key})


async def dev_user_data(request: web.Request) -> web.Response:
    """``POST /_dev/user-data``: encrypted user data under the user's current session_key."""
    body = await _body(request, {"appid", "user", "data", "watermark_appid", "watermark_timestamp"})
    data = body.get("data")
    if data is not None and not isinstance(data, dict):
        raise _BadInput("data must be a JSON object")
    bundle = request.app[STATE].user_data(
        _required_str(body, "appid"),
        _required_str(body, "user"),
        data=data,
        watermark_appid=_str(body, "watermark_appid"),
        watermark_timestamp=_int(body, "watermark_timestamp", low=0),
    )
    return web.json_response(
        {
            "encryptedData": bundle.encrypted_data,
            "iv": bundle.iv,
            "rawData": bundle.raw_data,
            "signature": bundle.signature,
        }
    )


def _faults_answer(state: EmulatorState) -> web.Response:
    return web.json_response({"faults": [fault.as_json() for fault in state.faults()]})


async def dev_list_faults(request: web.Request) -> web.Response:
    """``GET /_dev/faults``: the queued faults, head first."""
    return _faults_answer(request.app[STATE])


async def dev_add_fault(request: web.Request) -> web.Response:
    """``POST /_dev/faults``: queue a fault for the next requests to one endpoint."""
    body = await _body(
        request, {"latency_ms", "errcode", "http_status", "drop", "times", "use_code", "endpoint"}
    )
    endpoint = _str(body, "endpoint") or "jscode2session"
    if endpoint not in ENDPOINTS:
        raise _BadInput(f"endpoint must be one of: {', '.join(ENDPOINTS)}")
    fault = Fault(
        latency_ms=_int(body, "latency_ms", low=0) or 0,
        errcode=_int(body, "errcode"),
        # 1xx is not a final answer and aiohttp cannot send it as one.
        http_status=_int(body, "http_status", low=200, high=599),
        drop=_bool(body, "drop"),
        times=_int(body, "times", low=1),
        use_code=_bool(body, "use_code"),
        endpoint=endpoint,
    )
    state = request.app[STATE]
    state.add_fault(fault)
    return _faults_answer(state)


async def dev_clear_faults(request: web.Request) -> web.Response:
    """``DELETE /_dev/faults``: forget every queued fault."""
    state = request.app[STATE]
    state.clear_faults()
    return _faults_answer(state)


def _kinds(body: Mapping[str, Any]) -> tuple[str, ...]:
    kinds = body.get("kinds")
    if kinds is None:
        return CHAOS_KINDS
    known = ", ".join(CHAOS_KINDS)
    if not isinstance(kinds, list) or not kinds:
        raise _BadInput(f"kinds must be a non-empty list of: {known}")
    if any(kind not in CHAOS_KINDS for kind in kinds):
        raise _BadInput(f"kinds may only name: {known}")
    if len(set(kinds)) != len(kinds):
        raise _BadInput("kinds must not repeat")
    return tuple(kinds)


async def dev_chaos(request: web.Request) -> web.Response:
    """``GET /_dev/chaos``: the random-fault setting and what it has injected so far."""
    return web.json_response(request.app[STATE].chaos_report())


async def dev_set_chaos(request: web.Request) -> web.Response:
    """``POST /_dev/chaos``: fail each jscode2session request with probability ``rate``."""
    body = await _body(request, {"rate", "seed", "kinds", "stall_ms"})
    rate = body.get("rate")
    # json.loads accepts NaN, which compares false with everything and would pass a range check.
    if (
        not isinstance(rate, int | float)
        or isinstance(rate, bool)
        or not math.isfinite(rate)
        or not 0 <= rate <= 1
    ):
        raise _BadInput("rate must be a number from 0 to 1")
    seed = _int(body, "seed")
    stall_ms = _int(body, "stall_ms", low=0, high=60_000)
    chaos = Chaos(
        rate=float(rate),
        # Without a seed, one is chosen and answered, so a run can still be repeated.
        seed=secrets.randbelow(2**32) if seed is None else seed,
        kinds=_kinds(body),
        stall_ms=Chaos.stall_ms if stall_ms is None else stall_ms,
    )
    state = request.app[STATE]
    state.set_chaos(chaos)
    return web.json_response(state.chaos_report())


async def dev_clear_chaos(request: web.Request) -> web.Response:
    """``DELETE /_dev/chaos``: stop random faults; answers the final counts."""
    state = request.app[STATE]
    state.clear_chaos()
    return web.json_response(state.chaos_report())


async def dev_stats(request: web.Request) -> web.Response:
    """``GET /_dev/stats``: requests per WeChat endpoint, faulted ones included."""
    return web.json_response(request.app[STATE].stats())


async def dev_reset_stats(request: web.Request) -> web.Response:
    """``POST /_dev/stats/reset``: zero the counters."""
    state = request.app[STATE]
    state.reset_stats()
    return web.json_response(state.stats())
