"""One current session_key per user, as WeChat keeps it, with a small in-process cache.

WeChat holds exactly one valid session_key per user: each wx.login() rotates it
("同一用户在同一时刻仅有一个有效的 session_key"). Whichever login or code exchange
brought the newest key, that key is the user's (stored on the user, sealed), and
DecryptUserData and the wxa/* calls use it, not the key of the session the token
happens to belong to.

DecryptUserData is hot, so the key is served from memory for `max_age` seconds.
A key another process stored meanwhile is not seen here until then; a decryption
that fails re-reads the key from MongoDB before blaming it (service/user_data.py),
so a stale cache entry costs one read, never a wrong answer. The wxa/* calls,
where a stale key would mean a wrong answer from WeChat, always read MongoDB.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

from service.errors import StoreUnavailable
from service.records import SessionRecord, UserRecord
from service.store import Store


class UserSessionKeys:
    """Reads and replaces users' current session_keys; caches them by user_id."""

    def __init__(
        self,
        store: Store,
        *,
        max_age: float = 60.0,
        max_entries: int = 50_000,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._max_age = max_age
        self._max_entries = max_entries
        self._monotonic = monotonic
        self._entries: OrderedDict[str, tuple[float, str]] = OrderedDict()

    def cached(self, record: SessionRecord) -> str | None:
        """The user's current key if memory has it fresh enough, else None (then `current`).

        Synchronous, so that DecryptUserData from memory runs no coroutine for it.
        """
        entry = self._entries.get(record.user.user_id)
        if entry is not None:
            stored_at, session_key = entry
            if self._monotonic() - stored_at <= self._max_age:
                self._entries.move_to_end(record.user.user_id)
                return session_key
        return None

    async def current(self, record: SessionRecord, *, deadline: float | None = None) -> str:
        """The user's current key: from memory when fresh enough, else from MongoDB."""
        cached = self.cached(record)
        if cached is not None:
            return cached
        try:
            return await self.fresh(record, deadline=deadline)
        except StoreUnavailable:
            # MongoDB is down but the session was at hand (CheckSession's cache): its
            # own key is most often still the user's. If it is not, the decryption
            # fails, and the re-read that follows says STORE_UNAVAILABLE after all.
            return self._store.open_session_key(record)

    async def fresh(self, record: SessionRecord, *, deadline: float | None = None) -> str:
        """The user's current key as MongoDB has it now (the cache is refreshed with it)."""
        session_key = await self._store.find_user_session_key(record.user, deadline=deadline)
        if session_key is None:
            # A user stored before keys were kept per user: the session's own key
            # is the newest we know, until the user's next login or exchange.
            session_key = self._store.open_session_key(record)
        self.note(record.user, session_key)
        return session_key

    async def replace(
        self, user: UserRecord, session_key: str, *, deadline: float | None = None
    ) -> None:
        """Store `session_key` as the user's current one (durably), then serve it from here."""
        await self._store.set_user_session_key(user, session_key, deadline=deadline)
        self.note(user, session_key)

    def note(self, user: UserRecord, session_key: str) -> None:
        """Remember a key MongoDB holds as the user's (just read, or written by a login)."""
        if self._max_age <= 0:
            return
        self._entries[user.user_id] = (self._monotonic(), session_key)
        self._entries.move_to_end(user.user_id)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)
