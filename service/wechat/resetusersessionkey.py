"""`GET /wxa/resetusersessionkey`: have WeChat replace a user's session_key with a new one.

Signed like checksession with the user's current key; 87009 means the key we hold
is no longer current (the user called wx.login() since), so we cannot reset it.
"""

from __future__ import annotations

from dataclasses import dataclass

from service.errors import SessionKeyStale, WeChatError
from service.wechat._http import Endpoint, WeChatHttp
from service.wechat._wxa_signed import INVALID_SIGNATURE, SignedSessionKeyCall

ENDPOINT = Endpoint(
    "resetusersessionkey",
    errcodes={INVALID_SIGNATURE: SessionKeyStale},
    uses_access_token=True,
)


@dataclass(frozen=True)
class NewSessionKey:
    """What a reset answers. session_key never leaves the server."""

    openid: str
    session_key: str = ""

    def __repr__(self) -> str:
        return f"NewSessionKey(openid={self.openid!r})"


class ResetSessionKey(SignedSessionKeyCall):
    """Resets users' session_keys at WeChat."""

    def __init__(self, http: WeChatHttp) -> None:
        super().__init__(http, ENDPOINT, "/wxa/resetusersessionkey")

    async def __call__(
        self,
        app_id: str,
        access_token: str,
        openid: str,
        session_key: str,
        *,
        deadline: float | None = None,
    ) -> NewSessionKey:
        """The new key; SessionKeyStale on 87009, AccessTokenRejected if the token is refused."""
        payload = await self._send(app_id, access_token, openid, session_key, deadline)
        new_key = payload.get("session_key")
        if not isinstance(new_key, str) or not new_key:
            raise WeChatError("WeChat answered resetusersessionkey without a session_key")
        answered = payload.get("openid")
        if isinstance(answered, str) and answered and answered != openid:
            raise WeChatError("WeChat answered resetusersessionkey for another openid")
        return NewSessionKey(openid, new_key)
