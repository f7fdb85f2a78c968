"""The only code that speaks HTTP to WeChat: one module per API over one shared HTTP layer.

    _http.py          WeChatHttp: timeouts, deadline-bounded retries, errcode parsing,
                      one request per attempt (no hidden resends)
    code2session.py   GET /sns/jscode2session

`WeChatClient` bundles the APIs for the rest of the service, which never sees
URLs, query strings or errcodes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

import aiohttp

from service.wechat._http import (
    AccessTokenRejected,
    Endpoint,
    WeChatHttp,
    new_http_session,
    one_request_per_attempt,
)
from service.wechat.code2session import Code2Session, WeChatSession

__all__ = [
    "AccessTokenRejected",
    "Endpoint",
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
    ) -> None:
        extra = {} if sleep is None else {"sleep": sleep}
        self.http = WeChatHttp(
            http,
            base_url,
            attempts=attempts,
            connect_timeout=connect_timeout,
            total_timeout=total_timeout,
            backoff=backoff,
            **extra,
        )
        self.code2session = Code2Session(self.http, apps)
