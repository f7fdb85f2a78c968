"""The only code that speaks HTTP to WeChat: one module per API over one shared HTTP layer.

    _http.py          WeChatHttp: timeouts, deadline-bounded retries, errcode parsing,
                      one request per attempt (no hidden resends)
    code2session.py   GET /sns/jscode2session
    stable_token.py   POST /cgi-bin/stable_token (the app's access_token; used only by
                      the broker, service/access_tokens.py)
    getuserphonenumber.py    POST /wxa/business/getuserphonenumber
    checksession.py          GET /wxa/checksession (and the hmac signature rule)
    resetusersessionkey.py   GET /wxa/resetusersessionkey

The last three take an access_token: `Endpoint(uses_access_token=True)` turns
40001/40014/42001 into `AccessTokenRejected`, on which the broker refreshes the
token once and the call is retried once.

`WeChatClient` bundles the APIs for the rest of the service, which never sees
URLs, query strings or errcodes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING

import aiohttp

from service.wechat._http import (
    AccessTokenRejected,
    Endpoint,
    WeChatHttp,
    new_http_session,
    one_request_per_attempt,
)
from service.wechat.checksession import CheckSessionKey
from service.wechat.code2session import Code2Session, WeChatSession
from service.wechat.getuserphonenumber import GetUserPhoneNumber, PhoneInfo
from service.wechat.resetusersessionkey import NewSessionKey, ResetSessionKey
from service.wechat.stable_token import StableToken

if TYPE_CHECKING:
    from service.metrics import Metrics

__all__ = [
    "AccessTokenRejected",
    "Endpoint",
    "NewSessionKey",
    "PhoneInfo",
    "WeChatClient",
    "WeChatHttp",
    "WeChatSession",
    "new_http_session",
    "one_request_per_attempt",
]


class WeChatClient:
    """Every WeChat API the service uses, over one WeChatHttp."""

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
        sleep: Callable[[float], Awaitable[None]] | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        extra = {} if sleep is None else {"sleep": sleep}
        self.http = WeChatHttp(
            http,
            base_url,
            attempts=attempts,
            connect_timeout=connect_timeout,
            total_timeout=total_timeout,
            backoff=backoff,
            metrics=metrics,
            **extra,
        )
        self.code2session = Code2Session(self.http, apps)
        self.stable_token = StableToken(self.http, apps)
        self.getuserphonenumber = GetUserPhoneNumber(self.http)
        self.checksession = CheckSessionKey(self.http)
        self.resetusersessionkey = ResetSessionKey(self.http)
