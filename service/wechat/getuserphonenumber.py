"""`POST /wxa/business/getuserphonenumber`: a getPhoneNumber button's code for the phone number."""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import quote

from yarl import URL

from service.errors import CodeInvalid, CodeUsed, RateLimited, WeChatError
from service.wechat._http import Endpoint, WeChatHttp

ENDPOINT = Endpoint(
    "getuserphonenumber",
    errcodes={40029: CodeInvalid, 40163: CodeUsed, 45011: RateLimited},
    # Phone codes are single use like login codes: "used" after a retry is ours.
    spent_errcode=40163,
    uses_access_token=True,
    code_name="phone code",
    fresh_code="have the user tap the getPhoneNumber button again",
)


@dataclass(frozen=True)
class PhoneInfo:
    """WeChat's phone_info; personal data, so kept out of repr."""

    phone_number: str = field(repr=False)
    pure_phone_number: str = field(repr=False)
    country_code: str
    watermark_appid: str
    watermark_timestamp: int | None


class GetUserPhoneNumber:
    """Exchanges phone codes; the caller supplies the app's access_token."""

    def __init__(self, http: WeChatHttp) -> None:
        self._http = http
        self._url = http.base_url + "/wxa/business/getuserphonenumber?access_token="

    async def __call__(
        self, app_id: str, access_token: str, code: str, *, deadline: float | None = None
    ) -> PhoneInfo:
        """One exchange; AccessTokenRejected if WeChat refuses the token."""
        url = URL(self._url + quote(access_token, safe=""), encoded=True)
        payload = await self._http.call(
            ENDPOINT, url, app_id=app_id, json_body={"code": code}, deadline=deadline
        )
        info = payload.get("phone_info")
        if not isinstance(info, dict):
            raise WeChatError("WeChat answered getuserphonenumber without phone_info")
        phone, pure = info.get("phoneNumber"), info.get("purePhoneNumber")
        if not isinstance(phone, str) or not isinstance(pure, str) or not phone:
            raise WeChatError("WeChat answered getuserphonenumber without a phone number")
        # WeChat documents countryCode as a number and sends a string: take either.
        country = info.get("countryCode")
        if isinstance(country, int) and not isinstance(country, bool):
            country = str(country)
        watermark = info.get("watermark")
        appid: str = ""
        timestamp: int | None = None
        if isinstance(watermark, dict):
            stated, stamp = watermark.get("appid"), watermark.get("timestamp")
            appid = stated if isinstance(stated, str) else ""
            if isinstance(stamp, int) and not isinstance(stamp, bool):
                timestamp = stamp
        return PhoneInfo(
            phone_number=phone,
            pure_phone_number=pure,
            country_code=country if isinstance(country, str) else "",
            watermark_appid=appid,
            watermark_timestamp=timestamp,
        )
