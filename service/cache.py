"""A small in-process cache of sessions for CheckSession, the hot path.

Backends call CheckSession on every request they serve; most of those ask about
the same few tokens again and again. An entry is served for at most `max_age`
seconds after it was read from MongoDB, and never once its `expires_at` has
passed. The price: a session revoked through *another* process stays valid here
for up to `max_age` seconds (a revoke through this process drops it at once).

A dropped session is remembered as ended for `max_age` seconds, and a `put` of
it meanwhile is refused: a CheckSession that read the session from MongoDB just
before it was revoked must not bring it back for another `max_age`.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from datetime import datetime

from service.records import SessionRecord

# How many sessions (and unknown token hashes) the service keeps in memory, at most.
CACHE_ENTRIES = 50_000


class SessionCache:
    """Bounded LRU of token-hash -> SessionRecord with a freshness limit."""

    def __init__(
        self,
        max_age: float,
        max_entries: int = CACHE_ENTRIES,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._max_age = max_age
        self._max_entries = max_entries
        self._monotonic = monotonic
        self._entries: OrderedDict[str, tuple[float, SessionRecord]] = OrderedDict()
        # session id -> when it was dropped (monotonic), oldest first.
        self._ended: OrderedDict[str, float] = OrderedDict()
        # Plain ints, read by the metrics collector at scrape time (service/metrics.py).
        self.hits = 0
        self.misses = 0

    def get(self, session_id: str, now: datetime) -> SessionRecord | None:
        """A cached session that is still fresh and not expired, else None."""
        if self._max_age <= 0:
            return None
        entry = self._entries.get(session_id)
        if entry is None:
            self.misses += 1
            return None
        stored_at, record = entry
        if self._monotonic() - stored_at > self._max_age or now >= record.expires_at:
            del self._entries[session_id]
            self.misses += 1
            return None
        self._entries.move_to_end(session_id)
        self.hits += 1
        return record

    def put(self, record: SessionRecord) -> None:
        """Remember a session just read from (or written to) MongoDB."""
        if self._max_age <= 0:
            return
        now = self._monotonic()
        if self._ended and self._is_ended(record.session_id, now):
            return
        self._entries[record.session_id] = (now, record)
        self._entries.move_to_end(record.session_id)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)
        # Stale entries can never be served again; without this they stayed until
        # the size bound pushed them out, and a soak grew the service's memory by
        # ~10 % before the cache filled (README "Reliability"). The least recently
        # used end is the oldest: drop at most two per put, so it costs O(1) and
        # still outpaces the puts that add entries.
        for _ in range(2):
            oldest = next(iter(self._entries.values()))
            if now - oldest[0] <= self._max_age:
                break
            self._entries.popitem(last=False)

    def refresh(self, record: SessionRecord) -> None:
        """Replace a cached session by a newer state of it (renewed), keeping its age.

        The age stays: an answer from memory is never older than `max_age`
        since MongoDB last said the session exists.
        """
        entry = self._entries.get(record.session_id)
        if entry is not None:
            self._entries[record.session_id] = (entry[0], record)

    def drop(self, session_id: str) -> None:
        """Forget a session (revoked), and refuse to cache it again for `max_age`."""
        self._entries.pop(session_id, None)
        if self._max_age <= 0:
            return
        now = self._monotonic()
        self._ended[session_id] = now
        self._ended.move_to_end(session_id)
        # Bounded like the entries; the oldest marks go first, and are the first to age out.
        while len(self._ended) > self._max_entries:
            self._ended.popitem(last=False)
        for _ in range(2):
            oldest = next(iter(self._ended.values()))
            if now - oldest <= self._max_age:
                break
            self._ended.popitem(last=False)

    def drop_many(self, session_ids: Iterable[str]) -> None:
        """`drop` each of them."""
        for session_id in session_ids:
            self.drop(session_id)

    def _is_ended(self, session_id: str, now: float) -> bool:
        dropped_at = self._ended.get(session_id)
        return dropped_at is not None and now - dropped_at <= self._max_age

    def evict_users(self, user_ids: Iterable[str]) -> None:
        """Forget users' sessions for now (their account changed); unlike `drop`, they may return.

        A scan, like `drop_user`: linking happens once per user.
        """
        users = set(user_ids)
        if not users or not self._entries:
            return
        for session_id in [
            sid for sid, (_, rec) in self._entries.items() if rec.user.user_id in users
        ]:
            del self._entries[session_id]

    def drop_user(self, user_id: str) -> int:
        """Forget every session of a user (log out everywhere); how many were cached.

        A scan: rare (one per log-out-everywhere) and bounded by max_entries,
        where an index by user would cost every put on the hot path.
        """
        gone = [sid for sid, (_, rec) in self._entries.items() if rec.user.user_id == user_id]
        self.drop_many(gone)
        return len(gone)

    def clear(self) -> None:
        """Forget every session (revocations may have been missed); the ended marks stay."""
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


class UnknownTokens:
    """Token hashes MongoDB just said it does not know: asked again soon, answered from here.

    A client stuck on a stale token, or a flood replaying one, would otherwise
    cost a MongoDB read per call. Safe because a token is handed out only after
    its session is stored (durably): a hash unknown now was never handed out,
    and only a token we mint can become known, which no one can know beforehand.
    Bounded in size and age like the positive cache.
    """

    def __init__(
        self,
        max_age: float,
        max_entries: int = CACHE_ENTRIES,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._max_age = max_age
        self._max_entries = max_entries
        self._monotonic = monotonic
        self._entries: OrderedDict[str, float] = OrderedDict()

    def __contains__(self, session_id: object) -> bool:
        if self._max_age <= 0 or not isinstance(session_id, str):
            return False
        stored_at = self._entries.get(session_id)
        if stored_at is None:
            return False
        if self._monotonic() - stored_at > self._max_age:
            del self._entries[session_id]
            return False
        return True

    def add(self, session_id: str) -> None:
        """Remember that MongoDB does not know this session id."""
        if self._max_age <= 0:
            return
        self._entries[session_id] = self._monotonic()
        self._entries.move_to_end(session_id)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)
