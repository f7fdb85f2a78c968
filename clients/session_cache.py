"""An opt-in, short-lived memory of CheckSession answers for callers on a hot path.

The edge answers `GET /v1/session` and backends authenticate every request; most
of those ask about the same few tokens again and again. A cached answer is used
for at most `max_age` seconds after wxlogin gave it, and never once the
session's `expires_at` has passed. The price: a session revoked elsewhere stays
accepted here for up to `max_age` seconds (a revoke through the same client
drops it at once). Keys are SHA-256 digests, so the cache holds no token.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime

from clients._models import Session


def _utc_now() -> datetime:
    return datetime.now(UTC)


class SessionCache:
    """Bounded LRU of token digest -> Session, with a freshness limit."""

    def __init__(
        self,
        max_age: float = 2.0,
        max_entries: int = 10_000,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = _utc_now,
    ) -> None:
        self.max_age = max_age
        self._max_entries = max_entries
        self._monotonic = monotonic
        self._now = now
        self._entries: OrderedDict[bytes, tuple[float, Session]] = OrderedDict()
        # Moves on every drop: an answer asked for before a drop (a check racing a revoke
        # through this client) is not remembered after it.
        self._generation = 0

    @property
    def generation(self) -> int:
        """Take it before asking wxlogin; give it to `put` with the answer."""
        return self._generation

    @staticmethod
    def _key(token: str) -> bytes:
        return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()

    def get(self, token: str) -> Session | None:
        """A remembered session that is still fresh and not expired, else None."""
        key = self._key(token)
        entry = self._entries.get(key)
        if entry is None:
            return None
        stored_at, session = entry
        if self._monotonic() - stored_at > self.max_age or self._now() >= session.expires_at:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return session

    def put(self, token: str, session: Session, *, generation: int | None = None) -> None:
        """Remember what wxlogin just said about a token (unless a drop came since `generation`)."""
        if generation is not None and generation != self._generation:
            return
        key = self._key(token)
        now = self._monotonic()
        self._entries[key] = (now, session)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)
        # A stale entry is never served again, but stayed until the size bound pushed
        # it out (memory grew in a soak). The least recently used end is the oldest:
        # drop at most two per put, O(1), still faster than puts add entries.
        for _ in range(2):
            stored_at, _ = next(iter(self._entries.values()))
            if now - stored_at <= self.max_age:
                break
            self._entries.popitem(last=False)

    def drop(self, token: str) -> None:
        """Forget a token (revoked through this client)."""
        self._generation += 1
        self._entries.pop(self._key(token), None)

    def drop_user(self, user_id: str) -> None:
        """Forget every token of a user (logged out everywhere through this client)."""
        if not user_id:
            return
        self._generation += 1
        gone = [
            key for key, (_, session) in self._entries.items() if session.user.user_id == user_id
        ]
        for key in gone:
            del self._entries[key]

    def clear(self) -> None:
        """Forget everything (a user logged out everywhere whose tokens are not known here)."""
        self._generation += 1
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
