"""The service's in-process CheckSession cache (service/cache.py): bounded, never past expiry.

The client library's and the edge's cache is another one, in tests/test_session_cache.py.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from service.cache import SessionCache
from service.records import SessionRecord, UserRecord
from service.servicer import CheckAnswers


def _record(expires_at: datetime) -> SessionRecord:
    """A session of one user that expires at `expires_at`, created a day before."""
    user = UserRecord("u1", "wx1", "o1", None)
    return SessionRecord("sid", user, expires_at - timedelta(days=1), expires_at, b"")


def test_cache_never_serves_a_session_past_expires_at() -> None:
    """A cached session is dropped the moment its expires_at passes, however fresh."""
    clock = [0.0]
    cache = SessionCache(max_age=60, monotonic=lambda: clock[0])
    expires = datetime(2030, 1, 1, tzinfo=UTC)
    cache.put(_record(expires))
    assert cache.get("sid", expires - timedelta(milliseconds=1)) is not None
    assert cache.get("sid", expires) is None
    assert len(cache) == 0


def test_cache_entries_go_stale_and_the_cache_is_bounded() -> None:
    """Entries older than max_age are re-read; the cache never grows past max_entries."""
    clock = [0.0]
    cache = SessionCache(max_age=5, max_entries=3, monotonic=lambda: clock[0])
    now = datetime(2029, 1, 1, tzinfo=UTC)
    cache.put(_record(datetime(2030, 1, 1, tzinfo=UTC)))
    clock[0] = 5.1
    assert cache.get("sid", now) is None
    for index in range(10):
        user = UserRecord("u", "wx1", "o", None)
        cache.put(SessionRecord(f"s{index}", user, now, datetime(2030, 1, 1, tzinfo=UTC), b""))
    assert len(cache) == 3


def test_stale_entries_leave_as_new_ones_arrive() -> None:
    """Entries past max_age are dropped by later puts, not kept until the size bound."""
    clock = [0.0]
    cache = SessionCache(max_age=5, max_entries=50_000, monotonic=lambda: clock[0])
    expires = datetime(2030, 1, 1, tzinfo=UTC)
    user = UserRecord("u", "wx1", "o", None)
    for index in range(100):
        cache.put(SessionRecord(f"old{index}", user, expires - timedelta(days=1), expires, b""))
    clock[0] = 6.0
    for index in range(100):
        cache.put(SessionRecord(f"new{index}", user, expires - timedelta(days=1), expires, b""))
    assert len(cache) == 100


def test_check_answers_are_reused_only_for_the_very_same_record() -> None:
    """CheckSession's built response is shared while the cache hands out one record object.

    A renewed (or re-read) session is a new record: it gets a new answer with its
    own expiry, never the old one. The memo is bounded.
    """
    answers = CheckAnswers(60.0, max_entries=2)
    first = _record(datetime(2030, 1, 1, tzinfo=UTC))
    answer = answers.of(first)
    assert answer.user.user_id == "u1"
    assert answer.expires_at.ToDatetime(UTC) == first.expires_at
    assert answers.of(first) is answer
    renewed = replace(first, expires_at=datetime(2030, 1, 2, tzinfo=UTC))
    assert answers.of(renewed).expires_at.ToDatetime(UTC) == renewed.expires_at
    # Equal but not the same object (read again from MongoDB): built anew, equal.
    again = replace(renewed)
    rebuilt = answers.of(again)
    assert rebuilt is not answers.of(renewed)
    assert rebuilt == answers.of(renewed)
    for index in range(5):
        answers.of(replace(first, session_id=f"s{index}"))
    assert len(answers) == 2


def test_check_answers_of_stale_records_leave_as_new_ones_arrive() -> None:
    """An answer whose record the cache can no longer hand out (older than max_age) is dropped.

    Only the size bound held them before: every record ever checked stayed (a soak's
    memory grew by ~20 %).
    """
    clock = [0.0]
    answers = CheckAnswers(5.0, max_entries=50_000, monotonic=lambda: clock[0])
    first = _record(datetime(2030, 1, 1, tzinfo=UTC))
    for index in range(100):
        answers.of(replace(first, session_id=f"old{index}"))
    assert len(answers) == 100
    clock[0] = 6.0
    for index in range(60):
        answers.of(replace(first, session_id=f"new{index}"))
    assert len(answers) == 60  # two stale ones leave per new answer: all 100 are gone
    fresh = replace(first, session_id="fresh")
    assert answers.of(fresh) is answers.of(fresh)  # a fresh one is still shared
