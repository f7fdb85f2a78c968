"""The domain: log in with a WeChat code, check sessions, decrypt user data."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from service import crypto
from service.cache import SessionCache
from service.errors import (
    AppUnknown,
    BadRequest,
    SessionExpired,
    SessionInvalid,
    SignatureMismatch,
    WatermarkExpired,
    WatermarkMismatch,
)
from service.store import NewLogin, SessionRecord, Store, UserRecord, utc_now_ms
from service.wechat import WeChatClient

log = logging.getLogger(__name__)

# WeChat's codes are 32 characters; anything far longer is not a code.
_MAX_CODE_LENGTH = 256
_MAX_FIELD_LENGTH = 1 << 20  # encryptedData of a phone number is ~200 bytes


@dataclass(frozen=True)
class LoginResult:
    """A new session: the token is shown to the caller once and never stored."""

    token: str
    expires_at: datetime
    user: UserRecord
    new_user: bool

    def __repr__(self) -> str:
        return f"LoginResult(user={self.user!r}, new_user={self.new_user})"


@dataclass(frozen=True)
class UserData:
    """Decrypted encryptedData and the time WeChat watermarked it."""

    data: dict[str, Any]
    watermark_time: datetime | None


class Authenticator:
    """Login, CheckSession and DecryptUserData rules, independent of gRPC."""

    def __init__(
        self,
        store: Store,
        wechat: WeChatClient,
        apps: Mapping[str, str],
        *,
        session_ttl: int,
        watermark_max_age: int,
        cache: SessionCache,
        now: Callable[[], datetime] = utc_now_ms,
    ) -> None:
        self._store = store
        self._wechat = wechat
        self._apps = apps
        self._session_ttl = timedelta(seconds=session_ttl)
        self._watermark_max_age = watermark_max_age
        self._cache = cache
        self._now = now

    def resolve_app(self, app_id: str) -> str:
        """The app a request is for; empty means the only configured app."""
        if not app_id:
            if len(self._apps) == 1:
                return next(iter(self._apps))
            raise BadRequest("app_id is required: several apps are configured")
        if app_id not in self._apps:
            raise AppUnknown(f"app_id {app_id[:64]!r} is not configured")
        return app_id

    async def login(self, app_id: str, code: str, *, deadline: float | None) -> LoginResult:
        """Exchange the code with WeChat, upsert the user and open a session."""
        app_id = self.resolve_app(app_id)
        if not code:
            raise BadRequest("code is empty")
        if len(code) > _MAX_CODE_LENGTH:
            raise BadRequest("code is too long to be a wx.login() code")
        wx = await self._wechat.code2session(app_id, code, deadline=deadline)
        now = self._now()
        token = crypto.new_token()
        record, new_user = await self._store.save_login(
            NewLogin(
                app_id=app_id,
                openid=wx.openid,
                unionid=wx.unionid,
                session_id=crypto.token_id(token),
                session_key=wx.session_key,
                created_at=now,
                expires_at=now + self._session_ttl,
            )
        )
        self._cache.put(record)
        user = record.user
        log.info("login user_id=%s app_id=%s new_user=%s", user.user_id, app_id, new_user)
        return LoginResult(token, record.expires_at, user, new_user)

    async def check_session(self, token: str) -> SessionRecord:
        """The live session behind a token, or SessionInvalid / SessionExpired."""
        if not token:
            raise BadRequest("token is empty")
        if not crypto.is_well_formed_token(token):
            raise SessionInvalid()
        session_id = crypto.token_id(token)
        now = self._now()
        record = self._cache.get(session_id, now)
        if record is None:
            record = await self._store.find_session(session_id)
            if record is None:
                raise SessionInvalid()
            self._cache.put(record)
        # The TTL monitor deletes expired documents only eventually: decide here.
        if now >= record.expires_at:
            raise SessionExpired()
        return record

    async def decrypt_user_data(
        self,
        token: str,
        encrypted_data: str,
        iv: str,
        raw_data: str = "",
        signature: str = "",
    ) -> UserData:
        """Decrypt encryptedData with the session's key and check signature and watermark."""
        for name, value in (("encrypted_data", encrypted_data), ("iv", iv)):
            if not value:
                raise BadRequest(f"{name} is empty")
            if len(value) > _MAX_FIELD_LENGTH:
                raise BadRequest(f"{name} is too long")
        if bool(raw_data) != bool(signature):
            raise BadRequest("raw_data and signature go together: give both or neither")
        record = await self.check_session(token)
        session_key = self._store.open_session_key(record)
        if signature and not crypto.signature_matches(raw_data, session_key, signature):
            raise SignatureMismatch()
        data = crypto.decrypt_user_data(session_key, encrypted_data, iv)
        watermark_time = self._check_watermark(data, record.user.app_id)
        # DEBUG, not INFO: a line per call cost ~10% of DecryptUserData's throughput
        # (bench/README.md); failures are still logged by the servicer.
        log.debug("decrypted user data user_id=%s", record.user.user_id)
        return UserData(data, watermark_time)

    def _check_watermark(self, data: Mapping[str, Any], app_id: str) -> datetime | None:
        watermark = data.get("watermark")
        if not isinstance(watermark, dict) or watermark.get("appid") != app_id:
            raise WatermarkMismatch()
        timestamp = watermark.get("timestamp")
        if isinstance(timestamp, bool) or not isinstance(timestamp, int | float):
            if self._watermark_max_age:
                raise WatermarkExpired("the data's watermark has no timestamp")
            return None
        try:
            stamped = datetime.fromtimestamp(timestamp, UTC)
        except (OverflowError, OSError, ValueError):
            raise WatermarkExpired("the data's watermark timestamp is out of range") from None
        age = (self._now() - stamped).total_seconds()
        if self._watermark_max_age and age > self._watermark_max_age:
            raise WatermarkExpired()
        return stamped

    async def revoke(self, token: str) -> None:
        """End a session now; unknown and malformed tokens are already as good as revoked."""
        if not token:
            raise BadRequest("token is empty")
        if not crypto.is_well_formed_token(token):
            return
        session_id = crypto.token_id(token)
        self._cache.drop(session_id)
        await self._store.delete_session(session_id)
