"""CheckSessionKey and ResetSessionKey: the user's current session_key, asked about at WeChat.

Both sign with the key we hold as the user's current one (service/session_keys.py),
read from MongoDB each time: a stale cached key would make WeChat answer about
the wrong key. A reset's new key becomes the user's current one at once.

`is_current` is also what DecryptUserData asks after a failed decryption; there
it must not turn a flood of bad requests into a flood of WeChat calls, so its
answer for a (user, key) is remembered for a minute.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable

from service.access_tokens import AccessTokens
from service.errors import WxLoginError
from service.records import UserRecord
from service.session_keys import UserSessionKeys
from service.sessions import Sessions
from service.wechat import WeChatClient

log = logging.getLogger("service.auth")


class WxaSessionKeys:
    """Checks and resets users' session_keys at WeChat with the app's shared access_token."""

    def __init__(
        self,
        sessions: Sessions,
        keys: UserSessionKeys,
        access_tokens: AccessTokens,
        wechat: WeChatClient,
        *,
        remember_seconds: float = 60.0,
        max_entries: int = 10_000,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sessions = sessions
        self._keys = keys
        self._access_tokens = access_tokens
        self._wechat = wechat
        self._remember_seconds = remember_seconds
        self._max_entries = max_entries
        self._monotonic = monotonic
        # user_id -> (digest of the key asked about, WeChat's answer, when)
        self._answers: OrderedDict[str, tuple[bytes, bool, float]] = OrderedDict()

    async def check(self, token: str, *, deadline: float | None = None) -> bool:
        """CheckSessionKey: whether WeChat holds our key for the token's user as current."""
        record = await self._sessions.check(token, deadline=deadline)
        session_key = await self._keys.fresh(record, deadline=deadline)
        valid = await self._ask(record.user, session_key, deadline)
        log.info("session_key check user_id=%s valid=%s", record.user.user_id, valid)
        return valid

    async def reset(self, token: str, *, deadline: float | None = None) -> None:
        """ResetSessionKey: WeChat mints a new key for the user; it becomes the current one.

        SESSION_KEY_STALE when the key we hold is no longer current (WeChat's 87009):
        only a fresh wx.login() code can bring the current one.
        """
        record = await self._sessions.check(token, deadline=deadline)
        user = record.user
        session_key = await self._keys.fresh(record, deadline=deadline)
        reset = self._wechat.resetusersessionkey

        async def request(access_token: str) -> str:
            answer = await reset(
                user.app_id, access_token, user.openid, session_key, deadline=deadline
            )
            return answer.session_key

        new_key = await self._access_tokens.call(user.app_id, request, deadline=deadline)
        # WeChat now holds only the new key: store it before answering, so no
        # later call of ours signs or decrypts with the old one.
        await self._keys.replace(user, new_key, deadline=deadline)
        self._answers.pop(user.user_id, None)
        log.info("session_key reset user_id=%s", user.user_id)

    async def is_current(
        self, user: UserRecord, session_key: str, deadline: float | None
    ) -> bool | None:
        """Whether `session_key` is the user's current key at WeChat; None if WeChat can't say."""
        digest = hashlib.sha256(session_key.encode()).digest()
        known = self._answers.get(user.user_id)
        if (
            known is not None
            and known[0] == digest
            and self._monotonic() - known[2] <= self._remember_seconds
        ):
            return known[1]
        try:
            return await self._ask(user, session_key, deadline)
        except WxLoginError as error:
            # No answer (WeChat down, no access_token): the caller keeps its own verdict.
            log.warning(
                "could not ask WeChat about the session_key of user_id=%s: %s",
                user.user_id,
                error.reason,
            )
            return None

    async def _ask(self, user: UserRecord, session_key: str, deadline: float | None) -> bool:
        check = self._wechat.checksession

        async def request(access_token: str) -> bool:
            return await check(
                user.app_id, access_token, user.openid, session_key, deadline=deadline
            )

        valid = await self._access_tokens.call(user.app_id, request, deadline=deadline)
        digest = hashlib.sha256(session_key.encode()).digest()
        self._answers[user.user_id] = (digest, valid, self._monotonic())
        self._answers.move_to_end(user.user_id)
        while len(self._answers) > self._max_entries:
            self._answers.popitem(last=False)
        return valid
