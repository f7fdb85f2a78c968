"""What the client returns: plain frozen dataclasses, so callers never touch protobuf."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class User:
    """A user of one mini-program; `unionid` is None when WeChat gave none."""

    user_id: str
    app_id: str
    openid: str
    unionid: str | None = None


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
