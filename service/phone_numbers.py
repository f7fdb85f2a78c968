"""GetPhoneNumber: a getPhoneNumber button's code for the session user's phone number.

WeChat's getuserphonenumber, with the app's shared access_token. The number is
returned and never stored or logged: nothing here needs it again, and a store of
phone numbers is one more thing to leak. The watermark must name the session's
app: a code from another mini-program is not this user's consent.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime

from service.access_tokens import AccessTokens
from service.errors import BadRequest, WatermarkMismatch
from service.sessions import Sessions
from service.wechat import PhoneInfo, WeChatClient

log = logging.getLogger("service.auth")

# WeChat's phone codes are 32 characters; anything far longer is not one.
_MAX_CODE_LENGTH = 256


@dataclass(frozen=True)
class PhoneNumber:
    """A user's phone number as WeChat gives it; personal data, so kept out of repr."""

    phone_number: str = field(repr=False)
    pure_phone_number: str = field(repr=False)
    country_code: str
    watermark_time: datetime | None


class PhoneNumbers:
    """GetPhoneNumber's rules, independent of gRPC."""

    def __init__(
        self, sessions: Sessions, access_tokens: AccessTokens, wechat: WeChatClient
    ) -> None:
        self._sessions = sessions
        self._access_tokens = access_tokens
        self._wechat = wechat

    async def get(
        self, token: str, phone_code: str, *, deadline: float | None = None
    ) -> PhoneNumber:
        """The number behind a phone code, for the token's user's app."""
        if not phone_code:
            raise BadRequest("phone_code is empty")
        if len(phone_code) > _MAX_CODE_LENGTH:
            raise BadRequest("phone_code is too long to be a getPhoneNumber code")
        record = await self._sessions.check(token, deadline=deadline)
        app_id = record.user.app_id
        exchange = self._wechat.getuserphonenumber

        async def request(access_token: str) -> PhoneInfo:
            return await exchange(app_id, access_token, phone_code, deadline=deadline)

        info = await self._access_tokens.call(app_id, request, deadline=deadline)
        if info.watermark_appid != app_id:
            raise WatermarkMismatch("the phone code is watermarked for another app")
        watermark_time = None
        if info.watermark_timestamp is not None:
            # An absurd timestamp says nothing; the number itself is fine.
            with contextlib.suppress(OverflowError, OSError, ValueError):
                watermark_time = datetime.fromtimestamp(info.watermark_timestamp, UTC)
        log.info("phone number read user_id=%s", record.user.user_id)
        return PhoneNumber(
            phone_number=info.phone_number,
            pure_phone_number=info.pure_phone_number,
            country_code=info.country_code,
            watermark_time=watermark_time,
        )
