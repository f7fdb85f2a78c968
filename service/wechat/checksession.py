"""`GET /wxa/checksession`: does WeChat still hold a user's session_key as current?

Signed with the key we hold (service/wechat/_wxa_signed.py): WeChat answers ok
when it is the user's current one, 87009 ("invalid signature") when it is not.
"""

from __future__ import annotations

from service.errors import WeChatError
from service.wechat._http import Endpoint, WeChatHttp
from service.wechat._wxa_signed import INVALID_SIGNATURE, SignedSessionKeyCall


class _StaleKey(WeChatError):
    """87009: the signing key is not the user's current session_key."""


ENDPOINT = Endpoint("checksession", errcodes={INVALID_SIGNATURE: _StaleKey}, uses_access_token=True)


class CheckSessionKey(SignedSessionKeyCall):
    """Asks WeChat whether a session_key is a user's current one."""

    def __init__(self, http: WeChatHttp) -> None:
        super().__init__(http, ENDPOINT, "/wxa/checksession")

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
        try:
            await self._send(app_id, access_token, openid, session_key, deadline)
        except _StaleKey:
            return False
        return True
