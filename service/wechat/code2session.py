"""`GET /sns/jscode2session`: a wx.login() code for openid, session_key and maybe unionid."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import quote, urlencode

from yarl import URL

from service.errors import (
    AppUnknown,
    CodeInvalid,
    CodeUsed,
    RateLimited,
    UserBlocked,
    WeChatError,
)
from service.wechat._http import Endpoint, WeChatHttp

ENDPOINT = Endpoint(
    "jscode2session",
    errcodes={40029: CodeInvalid, 40163: CodeUsed, 45011: RateLimited, 40226: UserBlocked},
    spent_errcode=40163,
)


@dataclass(frozen=True)
class WeChatSession:
    """What jscode2session gives for a code. session_key never leaves the server."""

    openid: str
    session_key: str = ""
    unionid: str | None = None

    def __repr__(self) -> str:
        return f"WeChatSession(openid={self.openid!r}, unionid={self.unionid!r})"


class Code2Session:
    """Exchanges wx.login() codes for the configured apps."""

    def __init__(self, http: WeChatHttp, apps: Mapping[str, str]) -> None:
        self._http = http
        # Each app's query, encoded once: only the code differs between calls,
        # and letting aiohttp build and re-quote the URL cost ~2% of a Login.
        url = http.base_url + "/sns/jscode2session"
        self._url_prefixes = {
            app_id: url
            + "?"
            + urlencode({"appid": app_id, "secret": secret, "grant_type": "authorization_code"})
            + "&js_code="
            for app_id, secret in apps.items()
        }

    async def __call__(
        self, app_id: str, code: str, *, deadline: float | None = None
    ) -> WeChatSession:
        """Exchange a code; `deadline` is an absolute loop.time(), or None."""
        prefix = self._url_prefixes.get(app_id)
        if prefix is None:
            raise AppUnknown()
        url = URL(prefix + quote(code, safe=""), encoded=True)
        payload = await self._http.call(ENDPOINT, url, app_id=app_id, deadline=deadline)
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
