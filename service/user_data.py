"""User data: decrypt encryptedData with the user's current session_key; signature, watermark.

The key is the user's current one (service/session_keys.py), not the session's:
WeChat encrypts with the key of the latest wx.login(). With a fresh `code`
(wx.login() just before fetching the data) the code is exchanged first and its
key becomes the user's: the pattern that never fails. Without one, a failed
decryption re-reads the key from MongoDB (another process may have stored a
newer one), and then asks WeChat (wxa/checksession) whether the key we hold is
still current: SESSION_KEY_STALE if not, so the mini-program knows to send a
code; DECRYPT_FAILED if it is (the data itself is bad).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from runtime.ratelimited_log import RateLimitedLog
from service import crypto
from service.errors import (
    BadRequest,
    CodeUserMismatch,
    DecryptFailed,
    SessionKeyStale,
    SignatureMismatch,
    WatermarkExpired,
    WatermarkMismatch,
)
from service.records import SessionRecord, UserRecord, utc_now_ms
from service.session_keys import UserSessionKeys
from service.sessions import Sessions
from service.store import Store
from service.wechat import WeChatClient

# Asks WeChat whether `session_key` is still the user's current key: True, False,
# or None when WeChat could not say (the caller then keeps its own answer).
KeyIsCurrent = Callable[[UserRecord, str, float | None], Awaitable[bool | None]]

log = logging.getLogger("service.auth")

_MAX_FIELD_LENGTH = 1 << 20  # encryptedData of a phone number is ~200 bytes
# WeChat's unionids are 28-29 URL-safe base64 characters; room to spare, none for junk.
_UNIONID = re.compile(r"[0-9A-Za-z_-]{1,64}")
# WeChat's codes are 32 characters; anything far longer is not a code.
_MAX_CODE_LENGTH = 256


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
        session_keys: UserSessionKeys | None = None,
        wechat: WeChatClient | None = None,
        key_is_current: KeyIsCurrent | None = None,
        now: Callable[[], datetime] = utc_now_ms,
    ) -> None:
        self._sessions = sessions
        self._store = store
        self._watermark_max_age = watermark_max_age
        self._keys = UserSessionKeys(store) if session_keys is None else session_keys
        self._wechat = wechat
        self._key_is_current = key_is_current
        self._now = now
        # One line a minute per cause: a sender of forged data must not flood the log.
        self._quiet = RateLimitedLog(log)

    async def decrypt(
        self,
        token: str,
        encrypted_data: str,
        iv: str,
        raw_data: str = "",
        signature: str = "",
        *,
        code: str = "",
        deadline: float | None = None,
    ) -> UserData:
        """Decrypt encryptedData with the user's current key; check signature and watermark.

        `code`, if given, is a fresh wx.login() code: exchanged first, and its key
        becomes the user's current one (see the module docstring). A unionId in the
        data (wx.getUserInfo's) links the user's account.
        """
        for name, value in (("encrypted_data", encrypted_data), ("iv", iv)):
            if not value:
                raise BadRequest(f"{name} is empty")
            if len(value) > _MAX_FIELD_LENGTH:
                raise BadRequest(f"{name} is too long")
        if bool(raw_data) != bool(signature):
            raise BadRequest("raw_data and signature go together: give both or neither")
        if len(code) > _MAX_CODE_LENGTH:
            raise BadRequest("code is too long to be a wx.login() code")
        # From memory without a coroutine of its own when it can (the hot path, like
        # CheckSession's); from MongoDB otherwise.
        record = self._sessions.check_in_memory(token) or await self._sessions.check_stored(
            token, deadline=deadline
        )
        if code:
            session_key = await self._exchange(record, code, deadline)
            decrypted = self._open(record, session_key, encrypted_data, iv, raw_data, signature)
        else:
            session_key = self._keys.cached(record) or await self._keys.current(
                record, deadline=deadline
            )
            failure: DecryptFailed | SignatureMismatch | None = None
            try:
                decrypted = self._open(record, session_key, encrypted_data, iv, raw_data, signature)
            except (DecryptFailed, SignatureMismatch) as failed:
                failure = failed
            if failure is not None:
                # Outside the except: what the retry raises is not chained to this failure.
                decrypted = await self._retry_with_fresh_key(
                    record, session_key, failure, encrypted_data, iv, raw_data, signature, deadline
                )
        unionid = decrypted.data.get("unionId")
        if isinstance(unionid, str) and unionid:
            await self._link(record.user, decrypted.data, unionid, deadline)
        return decrypted

    async def _link(
        self, user: UserRecord, data: Mapping[str, Any], unionid: str, deadline: float | None
    ) -> None:
        """Link the user's account by a decrypted unionId, if the data can only be theirs.

        encryptedData is AES-CBC without a MAC: whoever sends it picks the IV, and so
        the first block it opens to, and may drop blocks from its front. A forged
        `{"unionId": "` block followed by the sender's own nickname opens, genuine
        watermark and all, to any unionId they like (another person's account). Every
        wx.getUserInfo payload starts with the user's openId, which such a forgery
        loses: link only when the data names the session's openId, and only a unionId
        shaped like WeChat's (it is stored, and answered on every CheckSession).

        This rests on WeChat's layout: `{"openId":"` and the openid's first 5 characters
        fill block 0 exactly, so keeping them leaves the forger no chosen byte; splicing
        blocks of several blobs only adds 16 random bytes per seam, which break a key or
        the JSON; and quotes inside the user's own fields arrive escaped. Were WeChat ever
        to put a field its user controls before openId, this check would stop holding.
        """
        if data.get("openId") != user.openid:
            why = "its openId is not the session's"
        elif not _UNIONID.fullmatch(unionid):
            why = "it is not shaped like a unionid"
        else:
            await self._sessions.learn_unionid(user, unionid, deadline=deadline)
            return
        self._quiet.log(
            logging.WARNING,
            f"unlinked: {why}",
            "decrypted unionId not linked for user_id=%s: %s",
            user.user_id,
            why,
        )

    async def _retry_with_fresh_key(
        self,
        record: SessionRecord,
        session_key: str,
        first_failure: DecryptFailed | SignatureMismatch,
        encrypted_data: str,
        iv: str,
        raw_data: str,
        signature: str,
        deadline: float | None,
    ) -> UserData:
        """After `session_key` failed: the key MongoDB has now, or SESSION_KEY_STALE, or the
        first failure."""
        # Another process may have stored a newer key since it was cached here.
        fresh = await self._keys.fresh(record, deadline=deadline)
        if fresh != session_key:
            try:
                return self._open(record, fresh, encrypted_data, iv, raw_data, signature)
            except (DecryptFailed, SignatureMismatch) as failure:
                first_failure = failure
        if self._key_is_current is not None:
            current = await self._key_is_current(record.user, fresh, deadline)
            if current is False:
                log.info("decryption failed: session_key stale user_id=%s", record.user.user_id)
                raise SessionKeyStale() from None
        raise first_failure

    async def _exchange(self, record: SessionRecord, code: str, deadline: float | None) -> str:
        """Exchange a fresh code for the session's user; its key becomes the user's current one."""
        if self._wechat is None:
            raise BadRequest("code is not supported here")
        user = record.user
        wx = await self._wechat.code2session(user.app_id, code, deadline=deadline)
        if wx.openid != user.openid:
            # The code was spent at WeChat all the same: the mini-program needs a new one.
            log.warning("DecryptUserData code of another user (session user_id=%s)", user.user_id)
            raise CodeUserMismatch()
        await self._keys.replace(user, wx.session_key, deadline=deadline)
        return wx.session_key

    def _open(
        self,
        record: SessionRecord,
        session_key: str,
        encrypted_data: str,
        iv: str,
        raw_data: str,
        signature: str,
    ) -> UserData:
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
