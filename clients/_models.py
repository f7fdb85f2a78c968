"""What the client returns: plain frozen dataclasses, so callers never touch protobuf."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class User:
    """A user of one mini-program; `unionid` is None when WeChat gave none.

    `account_id` is the same for every user of wxlogin's apps with the same
    unionid (one person across apps); `user_id` while there is no unionid.
    """

    user_id: str
    app_id: str
    openid: str
    unionid: str | None = None
    account_id: str = ""


@dataclass(frozen=True)
class LoginResult:
    """A new session. The token goes to the mini-program and nowhere else (not in repr)."""

    token: str = field(repr=False)
    expires_at: datetime
    user: User
    new_user: bool


@dataclass(frozen=True)
class Session:
    """A live session behind a token."""

    user: User
    expires_at: datetime


@dataclass(frozen=True)
class UserData:
    """WeChat's decrypted encryptedData (watermark included) and its watermark time."""

    data: dict[str, Any]
    watermark_time: datetime | None = None


@dataclass(frozen=True)
class PhoneNumber:
    """A user's phone number from a getPhoneNumber code; personal data, so not in repr."""

    phone_number: str = field(repr=False)  # "+1 4155550100" outside China, else no prefix
    pure_phone_number: str = field(repr=False)
    country_code: str  # a string, e.g. "86"
    watermark_time: datetime | None = None


@dataclass(frozen=True)
class AccessToken:
    """An app's WeChat access_token, shared by every backend; use it until `expires_at`."""

    access_token: str = field(repr=False)
    expires_at: datetime
