"""`GET /wxa/checksession`: does WeChat still hold a user's session_key as current?

WeChat signs nothing here: we prove we hold the key by `signature =
hmac_sha256(key=session_key, msg="")` in hex, and WeChat answers ok when that key
is the user's current one, 87009 ("invalid signature") when it is not.
"""

from __future__ import annotations

import hashlib
import hmac
from urllib.parse import urlencode

from yarl import URL

from service.errors import WeChatError
from service.wechat._http import Endpoint, WeChatHttp

INVALID_SIGNATURE = 87009


class _StaleKey(WeChatError):
    """87009: the signing key is not the user's current session_key."""


ENDPOINT = Endpoint("checksession", errcodes={INVALID_SIGNATURE: _StaleKey}, uses_access_token=True)


def session_signature(session_key: str) -> str:
    """WeChat's login-state signature: hmac_sha256(key=session_key, msg="") in hex."""
    return hmac.new(session_key.encode("utf-8"), b"", hashlib.sha256).hexdigest()


def signed_url(path: str, access_token: str, openid: str, session_key: str) -> URL:
    """`path` with the query both wxa session-key endpoints take."""
    query = urlencode(
        {
            "access_token": access_token,
            "openid": openid,
            "signature": session_signature(session_key),
            "sig_method": "hmac_sha256",
        }
    )
    return URL(f"{path}?{query}", encoded=True)


class CheckSessionKey:
    """Asks WeChat whether a session_key is a user's current one."""

    def __init__(self, http: WeChatHttp) -> None:
        self._http = http
        self._path = http.base_url + "/wxa/checksession"

    async def __call__(
        self,
        app_id: str,
        access_token: str,
        openid: str,
        session_key: str,
        *,
        deadline: float | None = None,
    ) -> bool:
        """True when current, False on 87009; AccessTokenRejected if WeChat refuses the token."""
        url = signed_url(self._path, access_token, openid, session_key)
        try:
            await self._http.call(ENDPOINT, url, app_id=app_id, deadline=deadline)
        except _StaleKey:
            return False
        return True
