"""The only code that speaks HTTP to WeChat: jscode2session with bounded, deadline-aware retries."""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp
from yarl import URL

from service.errors import (
    AppUnknown,
    CodeUsed,
    WeChatError,
    WeChatUnavailable,
    WxLoginError,
    from_wechat_errcode,
)

log = logging.getLogger(__name__)

_SYSTEM_BUSY = -1
_CODE_USED = 40163
# Never start an attempt with less time than this left: it could only time out.
_MIN_ATTEMPT_SECONDS = 0.05


@dataclass(frozen=True)
class WeChatSession:
    """What jscode2session gives for a code. session_key never leaves the server."""

    openid: str
    session_key: str = ""
    unionid: str | None = None

    def __repr__(self) -> str:
        return f"WeChatSession(openid={self.openid!r}, unionid={self.unionid!r})"


class _Retryable(Exception):
    """An attempt failed in a way worth retrying; `ambiguous` if WeChat may have used the code."""

    def __init__(self, what: str, *, ambiguous: bool) -> None:
        super().__init__(what)
        self.ambiguous = ambiguous


class WeChatClient:
    """Calls jscode2session through one shared aiohttp ClientSession.

    Retries only what may succeed on a second try: errcode -1 ("system busy"),
    HTTP 5xx and network errors; never 40029/40163/40226/45011 or any other
    errcode. Attempts are bounded in count and always end before the caller's
    deadline.
    """

    def __init__(
        self,
        http: aiohttp.ClientSession,
        base_url: str,
        apps: Mapping[str, str],
        *,
        attempts: int = 3,
        connect_timeout: float = 2.0,
        total_timeout: float = 5.0,
        backoff: float = 0.1,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._http = http
        # Each app's query, encoded once: only the code differs between calls,
        # and letting aiohttp build and re-quote the URL cost ~2% of a Login.
        url = base_url.rstrip("/") + "/sns/jscode2session"
        self._url_prefixes = {
            app_id: url
            + "?"
            + urlencode({"appid": app_id, "secret": secret, "grant_type": "authorization_code"})
            + "&js_code="
            for app_id, secret in apps.items()
        }
        self._attempts = max(1, attempts)
        self._connect_timeout = connect_timeout
        self._total_timeout = total_timeout
        self._backoff = backoff
        self._sleep = sleep

    async def code2session(
        self, app_id: str, code: str, *, deadline: float | None = None
    ) -> WeChatSession:
        """Exchange a wx.login() code; `deadline` is an absolute loop.time(), or None."""
        prefix = self._url_prefixes.get(app_id)
        if prefix is None:
            raise AppUnknown()
        loop = asyncio.get_running_loop()
        ambiguous = False
        last = "no attempt"
        for attempt in range(1, self._attempts + 1):
            remaining = self._total_timeout if deadline is None else deadline - loop.time()
            if remaining < _MIN_ATTEMPT_SECONDS:
                break
            try:
                return await self._attempt(prefix, code, min(remaining, self._total_timeout))
            except _Retryable as failure:
                ambiguous = ambiguous or failure.ambiguous
                last = str(failure)
                log.warning(
                    "jscode2session attempt %d/%d failed app_id=%s: %s",
                    attempt,
                    self._attempts,
                    app_id,
                    failure,
                )
            except CodeUsed:
                if ambiguous:
                    # An earlier attempt may have spent the code at WeChat before
                    # failing; "code used" would blame the user for our retry.
                    raise WeChatUnavailable(
                        "WeChat failed mid-exchange and the code is spent; call wx.login() again",
                        errcode=str(_CODE_USED),
                    ) from None
                raise
            if attempt < self._attempts:
                delay = random.uniform(0, self._backoff * 2 ** (attempt - 1))  # full jitter
                if deadline is not None and loop.time() + delay + _MIN_ATTEMPT_SECONDS > deadline:
                    break
                await self._sleep(delay)
        raise WeChatUnavailable(f"WeChat did not answer usefully ({last})")

    async def _attempt(self, url_prefix: str, code: str, budget: float) -> WeChatSession:
        url = URL(url_prefix + quote(code, safe=""), encoded=True)
        timeout = aiohttp.ClientTimeout(
            total=budget, sock_connect=min(self._connect_timeout, budget)
        )
        # Exception texts can carry the request URL, whose query holds the app
        # secret: only exception *types* ever reach logs and messages.
        try:
            async with self._http.get(url, timeout=timeout) as response:
                status = response.status
                body = await response.read()
        except aiohttp.ClientConnectorError as error:
            raise _Retryable(f"cannot connect ({type(error).__name__})", ambiguous=False) from None
        except (TimeoutError, aiohttp.ClientError) as error:
            raise _Retryable(f"network error ({type(error).__name__})", ambiguous=True) from None
        if status >= 500:
            raise _Retryable(f"HTTP {status}", ambiguous=True)
        if status != 200:
            raise WeChatError(f"WeChat answered HTTP {status}", http_status=str(status))
        return _parse(body)


def _parse(body: bytes) -> WeChatSession:
    # WeChat answers JSON as text/plain, so the content type is not trusted.
    try:
        payload: Any = json.loads(body)
    except ValueError:
        raise _Retryable("response is not JSON", ambiguous=True) from None
    if not isinstance(payload, dict):
        raise _Retryable("response is not a JSON object", ambiguous=True)
    errcode = payload.get("errcode", 0)
    if not isinstance(errcode, int):
        raise WeChatError("WeChat answered a malformed errcode")
    if errcode == _SYSTEM_BUSY:
        raise _Retryable("errcode -1 (system busy)", ambiguous=True)
    if errcode != 0:
        error: WxLoginError = from_wechat_errcode(errcode)
        raise error
    openid, session_key = payload.get("openid"), payload.get("session_key")
    unionid = payload.get("unionid")
    if not isinstance(openid, str) or not openid or not isinstance(session_key, str):
        raise WeChatError("WeChat answered without openid or session_key")
    if not session_key:
        raise WeChatError("WeChat answered an empty session_key")
    return WeChatSession(
        openid=openid,
        session_key=session_key,
        unionid=unionid if isinstance(unionid, str) and unionid else None,
    )
