"""`POST /cgi-bin/stable_token`: an app's access_token, in normal or forced mode.

Normal mode returns the token WeChat already has for the app until about five
minutes before it expires; inside those five minutes it returns a new one and
the old one keeps working until its own expiry. Force mode invalidates every
earlier token at once: WeChat allows it 20 times a day, 30 s apart. Which mode,
and when, is decided by the broker (service/access_tokens.py), never here.

The errcodes that only an operator can fix (IP whitelist, appid, secret) get a
log line that says what to do, once per cause per minute.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

from yarl import URL

from service.errors import AppUnknown, RateLimited, WeChatError
from service.wechat._http import Endpoint, WeChatHttp

log = logging.getLogger("service.wechat")

IP_NOT_WHITELISTED = 40164
INVALID_APPID = 40013
INVALID_SECRET = 40125
DAILY_QUOTA = 45009
TOO_FREQUENT = 45011


class AccessTokenUnavailable(WeChatError):
    """WeChat refuses the app's access_token for a reason only an operator can fix."""

    default_message = (
        "WeChat refuses this app an access_token (see errcode; wxlogin's log says what to fix)"
    )


class AccessTokenQuota(RateLimited):
    """WeChat's daily quota of access_token requests, or of forced refreshes, is spent."""

    default_message = "WeChat's daily access_token quota for this app is spent; retry tomorrow"


ENDPOINT = Endpoint(
    "stable_token",
    errcodes={
        IP_NOT_WHITELISTED: AccessTokenUnavailable,
        INVALID_APPID: AccessTokenUnavailable,
        INVALID_SECRET: AccessTokenUnavailable,
        DAILY_QUOTA: AccessTokenQuota,
        TOO_FREQUENT: RateLimited,
    },
    hints={
        DAILY_QUOTA: (
            "the app's daily quota of access_token requests (or of forced refreshes) is spent; "
            "it resets at midnight, Beijing time"
        )
    },
)


@dataclass(frozen=True)
class FetchedToken:
    """What stable_token answered: the token and its seconds left."""

    access_token: str = field(repr=False)
    expires_in: int


class StableToken:
    """Fetches access_tokens for the configured apps."""

    def __init__(self, http: WeChatHttp, apps: Mapping[str, str]) -> None:
        self._http = http
        self._apps = apps
        self._url = URL(http.base_url + "/cgi-bin/stable_token")

    async def __call__(
        self, app_id: str, *, force: bool = False, deadline: float | None = None
    ) -> FetchedToken:
        """One stable_token call; `deadline` is an absolute loop.time(), or None."""
        secret = self._apps.get(app_id)
        if secret is None:
            raise AppUnknown()
        body = {
            "grant_type": "client_credential",
            "appid": app_id,
            "secret": secret,
            "force_refresh": force,
        }
        # WeChatHttp logs what an operator must fix (OPERATOR_HINTS, the quota's hint).
        payload = await self._http.call(
            ENDPOINT, self._url, app_id=app_id, json_body=body, deadline=deadline
        )
        token, expires_in = payload.get("access_token"), payload.get("expires_in")
        if not isinstance(token, str) or not token:
            raise WeChatError("WeChat answered stable_token without an access_token")
        if isinstance(expires_in, bool) or not isinstance(expires_in, int) or expires_in <= 0:
            raise WeChatError("WeChat answered stable_token without a valid expires_in")
        return FetchedToken(token, expires_in)
