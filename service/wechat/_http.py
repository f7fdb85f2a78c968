"""The one HTTP layer under every WeChat API: timeouts, deadline-bounded retries, errcodes.

Each WeChat endpoint is a module of its own (code2session.py, ...) that says
what its errcodes mean (`Endpoint`); this module decides how a call is made:

- Retried: errcode -1 ("system busy"), HTTP 5xx, network errors, a body that
  is not JSON. Never any other errcode. At most `attempts` attempts, full-jitter
  backoff, and never past the caller's deadline (each attempt's timeout is the
  smaller of the per-call timeout and the time left less a margin, so the
  caller hears WECHAT_UNAVAILABLE, never a bare DEADLINE_EXCEEDED).
- One attempt is one HTTP request. aiohttp silently re-sends an idempotent
  request once when a pooled keep-alive connection turns out closed (RFC 9112
  9.3.1); for a single-use WeChat code that hidden resend spends the code a
  second time and turns "WeChat dropped the reply" into "code already used".
  `one_request_per_attempt`, a client middleware on the shared ClientSession,
  refuses that second send, so the retry policy above is the only one.
- An endpoint's `spent_errcode` (40163 "code used") after an attempt that may
  already have spent the code at WeChat becomes WECHAT_UNAVAILABLE: the user did
  nothing wrong.
- Exception texts can carry the request URL, whose query may hold the app
  secret or an access_token: only exception *types* reach logs and messages.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiohttp
from yarl import URL

from runtime.ratelimited_log import RateLimitedLog
from service.deadlines import budget
from service.errors import CodeInvalid, WeChatError, WeChatUnavailable, WxLoginError

if TYPE_CHECKING:
    from service.metrics import Metrics

log = logging.getLogger("service.wechat")

SYSTEM_BUSY = -1
# "This access_token is no longer good": meaningful only for APIs that send one.
ACCESS_TOKEN_REJECTED = frozenset({40001, 40014, 42001})
# Never start an attempt with less time than this left: it could only time out.
_MIN_ATTEMPT_SECONDS = 0.05


# Errcodes only an operator can fix, whichever API answers them, and what to do: logged
# (once a minute per API, app and errcode) with the error every caller gets.
OPERATOR_HINTS: Mapping[int, str] = {
    40164: (
        "this server's IP address is not in the app's API IP whitelist: add it in the "
        "mini-program's admin console (Development > Development settings > IP whitelist)"
    ),
    40013: "WeChat does not know this appid: check WXLOGIN_APPS",
    40125: "the app secret in WXLOGIN_APPS is wrong (or was reset in the admin console): update it",
}


@dataclass(frozen=True)
class Endpoint:
    """One WeChat API and what its errcodes mean; any errcode not listed is WECHAT_ERROR."""

    name: str  # for logs, e.g. "jscode2session"
    errcodes: Mapping[int, type[WxLoginError]] = field(default_factory=dict)
    # The errcode that says the single-use credential sent (a code) is spent.
    spent_errcode: int | None = None
    uses_access_token: bool = False
    # What the code sent is called, and how the caller gets a fresh one (after "used").
    code_name: str = "login code"
    fresh_code: str = "call wx.login() again"
    # Operator hints of this API's own, over OPERATOR_HINTS.
    hints: Mapping[int, str] = field(default_factory=dict)

    def hint(self, errcode: int) -> str | None:
        return self.hints.get(errcode) or OPERATOR_HINTS.get(errcode)


class AccessTokenRejected(WeChatError):
    """WeChat refused the access_token sent (40001/40014/42001): refresh it and retry once."""

    default_message = "WeChat refused the access_token"


class HiddenResendRefused(aiohttp.ClientError):
    """aiohttp tried to send an attempt's request a second time; see `one_request_per_attempt`."""


class _Retryable(Exception):
    """An attempt failed in a way worth retrying; `ambiguous` if WeChat may have acted on it.

    `kind` is what the metrics call it (their `errcode` label), one of a few fixed words.
    """

    def __init__(self, what: str, *, ambiguous: bool, kind: str) -> None:
        super().__init__(what)
        self.ambiguous = ambiguous
        self.kind = kind


# Set around each attempt: whether its one request has gone out. A ContextVar,
# because the middleware runs inside aiohttp in the attempt's own task.
_REQUEST_SENT: ContextVar[list[bool] | None] = ContextVar("wechat_request_sent", default=None)


async def one_request_per_attempt(
    request: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType
) -> aiohttp.ClientResponse:
    """aiohttp client middleware: at most one send per WeChat attempt (see module docstring)."""
    sent = _REQUEST_SENT.get()
    if sent is not None:
        if sent[0]:
            raise HiddenResendRefused("connection dropped; not re-sent")
        sent[0] = True
    return await handler(request)


def new_http_session(*, user_agent: str = "wxlogin/0.1") -> aiohttp.ClientSession:
    """The service's one ClientSession for WeChat: pooled keep-alive, no hidden resends."""
    return aiohttp.ClientSession(
        # A pooled, keep-alive connection per host; WeChat is one host.
        connector=aiohttp.TCPConnector(limit=100, ttl_dns_cache=300),
        headers={"User-Agent": user_agent},
        middlewares=(one_request_per_attempt,),
    )


class WeChatHttp:
    """Makes WeChat calls through one shared ClientSession with the policy above."""

    def __init__(
        self,
        http: aiohttp.ClientSession,
        base_url: str,
        *,
        attempts: int = 3,
        connect_timeout: float = 2.0,
        total_timeout: float = 5.0,
        backoff: float = 0.1,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        metrics: Metrics | None = None,
    ) -> None:
        self._http = http
        self._metrics = metrics
        self.base_url = base_url.rstrip("/")
        self._attempts = max(1, attempts)
        self._connect_timeout = connect_timeout
        self._total_timeout = total_timeout
        self._backoff = backoff
        self._sleep = sleep
        # A misconfigured app fails every call: one line per API, app and errcode a minute.
        self._quiet = RateLimitedLog(log)

    def _checked(
        self, endpoint: Endpoint, app_id: str, payload: dict[str, Any], *, ambiguous: bool
    ) -> dict[str, Any]:
        """The payload when its errcode is 0 (or absent); the endpoint's error otherwise."""
        errcode = payload.get("errcode", 0)
        if isinstance(errcode, bool) or not isinstance(errcode, int):
            raise WeChatError("WeChat answered a malformed errcode")
        if errcode == 0:
            return payload
        if errcode == SYSTEM_BUSY:
            raise _Retryable("errcode -1 (system busy)", ambiguous=True, kind="-1")
        if errcode == endpoint.spent_errcode and ambiguous:
            # An earlier attempt may have spent the code at WeChat before failing;
            # "code used" would blame the user for our retry.
            raise WeChatUnavailable(
                f"WeChat failed mid-exchange and the {endpoint.code_name} is spent; "
                f"{endpoint.fresh_code}",
                errcode=str(errcode),
            )
        if endpoint.uses_access_token and errcode in ACCESS_TOKEN_REJECTED:
            raise AccessTokenRejected(errcode=str(errcode))
        error_type = endpoint.errcodes.get(errcode, WeChatError)
        if error_type is WeChatError:
            message: str | None = f"WeChat returned errcode {errcode}"
        elif errcode == endpoint.spent_errcode:
            message = f"the {endpoint.code_name} was already used; {endpoint.fresh_code}"
        elif error_type is CodeInvalid:
            message = f"the {endpoint.code_name} is invalid or expired; {endpoint.fresh_code}"
        else:
            message = None
        hint = endpoint.hint(errcode)
        if hint is not None or error_type is WeChatError:
            # e.g. 40013 invalid appid, 40125 invalid secret: an operator problem.
            self._quiet.log(
                logging.ERROR,
                f"{endpoint.name} {app_id} {errcode}",
                "%s refused app_id=%s (WeChat errcode %d)%s",
                endpoint.name,
                app_id,
                errcode,
                f": {hint}" if hint else "",
            )
        raise error_type(message, errcode=str(errcode))

    async def call(
        self,
        endpoint: Endpoint,
        url: URL,
        *,
        app_id: str,
        json_body: Mapping[str, Any] | None = None,
        deadline: float | None = None,
    ) -> dict[str, Any]:
        """GET `url` (POST when `json_body` is given); the answer's JSON object when errcode is 0.

        `deadline` is an absolute loop.time(), or None for the per-call timeout alone.
        """
        ambiguous = False
        last = "no attempt"
        for attempt in range(1, self._attempts + 1):
            # The time left minus a margin for the answer's way back
            # (service/deadlines.py): we say WECHAT_UNAVAILABLE while the caller
            # still listens, instead of letting it see DEADLINE_EXCEEDED.
            remaining = budget(deadline, default=self._total_timeout)
            if remaining < _MIN_ATTEMPT_SECONDS:
                break
            started = time.perf_counter()
            outcome: str | None = None  # the metrics' errcode label for this attempt
            try:
                payload = await self._attempt(url, json_body, min(remaining, self._total_timeout))
                outcome = _errcode_label(payload)
                return self._checked(endpoint, app_id, payload, ambiguous=ambiguous)
            except _Retryable as failure:
                outcome = outcome or failure.kind
                ambiguous = ambiguous or failure.ambiguous
                last = str(failure)
                log.warning(
                    "%s attempt %d/%d failed app_id=%s: %s",
                    endpoint.name,
                    attempt,
                    self._attempts,
                    app_id,
                    failure,
                )
            except WeChatError:
                outcome = outcome or "http_4xx"  # not 200 and not 5xx (from _attempt)
                raise
            except asyncio.CancelledError:
                outcome = outcome or "cancelled"
                raise
            finally:
                if self._metrics is not None:
                    self._metrics.wechat_request(
                        endpoint.name, outcome or "error", time.perf_counter() - started
                    )
            if attempt < self._attempts:
                delay = random.uniform(0, self._backoff * 2 ** (attempt - 1))  # full jitter
                if budget(deadline, default=float("inf")) < delay + _MIN_ATTEMPT_SECONDS:
                    break
                await self._sleep(delay)
        raise WeChatUnavailable(f"WeChat did not answer usefully ({last})")

    async def _attempt(
        self, url: URL, json_body: Mapping[str, Any] | None, budget: float
    ) -> dict[str, Any]:
        timeout = aiohttp.ClientTimeout(
            total=budget, sock_connect=min(self._connect_timeout, budget)
        )
        token = _REQUEST_SENT.set([False])
        try:
            if json_body is None:
                request = self._http.get(url, timeout=timeout)
            else:
                request = self._http.post(url, json=json_body, timeout=timeout)
            async with request as response:
                status = response.status
                body = await response.read()
        except aiohttp.ClientConnectorError as error:
            # Never connected: WeChat saw nothing.
            raise _Retryable(
                f"cannot connect ({type(error).__name__})", ambiguous=False, kind="network"
            ) from None
        except TimeoutError as error:
            raise _Retryable(
                f"network error ({type(error).__name__})", ambiguous=True, kind="timeout"
            ) from None
        except aiohttp.ClientError as error:
            raise _Retryable(
                f"network error ({type(error).__name__})", ambiguous=True, kind="network"
            ) from None
        finally:
            _REQUEST_SENT.reset(token)
        if status >= 500:
            raise _Retryable(f"HTTP {status}", ambiguous=True, kind="http_5xx")
        if status != 200:
            raise WeChatError(f"WeChat answered HTTP {status}", http_status=str(status))
        # WeChat answers JSON as text/plain, so the content type is not trusted.
        try:
            payload: Any = json.loads(body)
        except ValueError:
            raise _Retryable("response is not JSON", ambiguous=True, kind="bad_response") from None
        if not isinstance(payload, dict):
            raise _Retryable("response is not a JSON object", ambiguous=True, kind="bad_response")
        return payload


# WeChat's errcodes worth a series of their own (the metrics' errcode label); any
# other becomes "other", so that a misbehaving upstream cannot mint label values.
_COUNTED_ERRCODES = frozenset(
    {
        0, -1, 40001, 40013, 40014, 40029, 40125, 40163, 40164, 40226, 41002, 41004, 41008,
        42001, 45009, 45011, 87009, 89002, *ACCESS_TOKEN_REJECTED,
    }
)  # fmt: skip


def _errcode_label(payload: dict[str, Any]) -> str:
    """The errcode of an answer as a bounded label value: the number, or "other"."""
    errcode = payload.get("errcode", 0)
    if isinstance(errcode, int) and not isinstance(errcode, bool) and errcode in _COUNTED_ERRCODES:
        return str(errcode)
    return "other"
