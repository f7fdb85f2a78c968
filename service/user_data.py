"""User data: decrypt encryptedData with the session's key; check signature and watermark."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from service import crypto
from service.errors import BadRequest, SignatureMismatch, WatermarkExpired, WatermarkMismatch
from service.records import utc_now_ms
from service.sessions import Sessions
from service.store import Store

log = logging.getLogger("service.auth")

_MAX_FIELD_LENGTH = 1 << 20  # encryptedData of a phone number is ~200 bytes


@dataclass(frozen=True)
class UserData:
    """Decrypted encryptedData and the time WeChat watermarked it."""

    data: dict[str, Any]
    watermark_time: datetime | None


class UserDataDecryptor:
    """DecryptUserData's rules, independent of gRPC; sessions are resolved through `Sessions`."""

    def __init__(
        self,
        sessions: Sessions,
        store: Store,
        *,
        watermark_max_age: int,
        now: Callable[[], datetime] = utc_now_ms,
    ) -> None:
        self._sessions = sessions
        self._store = store
        self._watermark_max_age = watermark_max_age
        self._now = now

    async def decrypt(
        self,
        token: str,
        encrypted_data: str,
        iv: str,
        raw_data: str = "",
        signature: str = "",
        *,
        deadline: float | None = None,
    ) -> UserData:
        """Decrypt encryptedData with the session's key and check signature and watermark."""
        for name, value in (("encrypted_data", encrypted_data), ("iv", iv)):
            if not value:
                raise BadRequest(f"{name} is empty")
            if len(value) > _MAX_FIELD_LENGTH:
                raise BadRequest(f"{name} is too long")
        if bool(raw_data) != bool(signature):
            raise BadRequest("raw_data and signature go together: give both or neither")
        record = await self._sessions.check(token, deadline=deadline)
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
