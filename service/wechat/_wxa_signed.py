"""What the two wxa session-key APIs share: WeChat's signature rule and the signed call.

WeChat signs nothing here: we prove we hold a user's key with `signature =
hmac_sha256(key=session_key, msg="")` in hex, and WeChat answers 87009 ("invalid
signature") when that key is not the user's current one. checksession.py and
resetusersessionkey.py say what 87009 means for each.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any
from urllib.parse import urlencode

from yarl import URL

from service.wechat._http import Endpoint, WeChatHttp

INVALID_SIGNATURE = 87009


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


class SignedSessionKeyCall:
    """A GET to one wxa endpoint, signed with the user's session_key."""

    def __init__(self, http: WeChatHttp, endpoint: Endpoint, path: str) -> None:
        self._http = http
        self._endpoint = endpoint
        self._path = http.base_url + path

    async def _send(
        self,
        app_id: str,
        access_token: str,
        openid: str,
        session_key: str,
        deadline: float | None,
    ) -> dict[str, Any]:
        url = signed_url(self._path, access_token, openid, session_key)
        return await self._http.call(self._endpoint, url, app_id=app_id, deadline=deadline)
