"""`sessions`: one document per token (its SHA-256), the session_key sealed; renewals,
revocation, the per-user cap, and the change stream of ended sessions."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Collection, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, NamedTuple

from bson import Binary, ObjectId
from cryptography.exceptions import InvalidTag
from pymongo import ASCENDING, DESCENDING, UpdateOne
from pymongo.errors import BulkWriteError, OperationFailure, PyMongoError

from service.batching import GroupCommit
from service.crypto import SessionKeyCipher
from service.errors import InternalError, StoreUnavailable, WxLoginError
from service.metrics import Metrics
from service.records import SessionRecord, UserRecord
from service.store._shared import (
    Database,
    Document,
    durable,
    log,
    outage,
    primary,
    quiet,
    timed,
    translated,
)

_MAX_WAITING_RENEWALS = 10_000
# How long each getMore of the revocation change stream waits for events; one
# arriving meanwhile is returned at once.
_WATCH_AWAIT_MS = 1000
# A change stream that cannot go on from its token: the point is no longer in the
# oplog (ChangeStreamHistoryLost 286, ChangeStreamFatalError 280), or the stream was
# invalidated (the collection dropped or renamed: InvalidResumeToken 260).
_CANNOT_RESUME = frozenset({260, 280, 286})
# "All the rest" for $slice, whose count must be a positive 32-bit int.
_MAX_INT32 = 2**31 - 1


class ChangeHistoryLost(Exception):
    """A change stream cannot resume where it broke off: events may have been missed."""


class _Renewal(NamedTuple):
    """One session's sliding-expiry write (see Sessions.renew)."""

    session_id: str
    expires_at: datetime
    due_before: datetime


class Sessions:
    """The sessions collection."""

    def __init__(
        self,
        db: Database,
        cipher: SessionKeyCipher,
        metrics: Metrics | None,
        *,
        max_batch: int,
        batch_interval: float,
        max_per_user: int | None,
    ) -> None:
        self.collection = self._sessions = durable(db, "sessions")
        self._primary = primary(self._sessions)
        self._cipher = cipher
        self._metrics = metrics
        # None: no cap (tests of other things, tools); the service always sets one.
        self.max_per_user = max_per_user
        self._ended_listeners: list[Callable[[Sequence[str]], None]] = []
        # Sliding expiry: renewals are fire-and-forget for CheckSession, and
        # written together when they come together.
        self._renewals: GroupCommit[_Renewal, None] = GroupCommit(
            self._write_renewals,
            max_batch=max_batch,
            # Beyond this many behind a write in flight, a renewal is dropped (and
            # tried again at a later check).
            max_waiting=_MAX_WAITING_RENEWALS,
            min_interval=batch_interval,
        )

    async def ensure_indexes(self, expired_session_retention: int) -> None:
        """TTL on expires_at (clean-up only), by user, and a user's newest first (the cap)."""
        # Cleans up only: validity is always decided by comparing expires_at,
        # since the TTL monitor runs once a minute at best.
        await self._sessions.create_index(
            "expires_at", expireAfterSeconds=expired_session_retention, name="expires_at_ttl"
        )
        await self._sessions.create_index("user_id", name="user_id")
        await self._sessions.create_index(
            [("user_id", ASCENDING), ("created_at", DESCENDING)], name="user_newest"
        )

    async def close(self) -> None:
        """Finish the renewals already submitted."""
        await self._renewals.aclose()

    async def insert(
        self, docs: Sequence[Document], results: list[Any], deadline: float | None
    ) -> None:
        """Insert a batch of new sessions; a session that failed alone gets InternalError in
        `results` at its index. Raises WxLoginError when the whole batch failed, or when it
        was written but not durably acknowledged: no token may be handed out on it."""
        async with timed(self._metrics, "insert_sessions"), translated(deadline):
            try:
                await self._sessions.insert_many(docs, ordered=False)
            except BulkWriteError as error:
                # ordered=False: the others were inserted; fail just these.
                for failure in error.details.get("writeErrors", []):
                    log.error("session insert failed: MongoDB code %s", failure.get("code"))
                    results[failure["index"]] = InternalError()
                if error.details.get("writeConcernErrors"):
                    raise

    def on_ended(self, listener: Callable[[Sequence[str]], None]) -> None:
        """Call `listener` with the ids of sessions ended by the cap, before the logins of
        the batch are answered (so a cache can refuse them before anyone puts them in)."""
        self._ended_listeners.append(listener)

    async def trim(self, user_ids: Collection[str], deadline: float | None) -> None:
        """End each user's live sessions beyond the cap, the newest kept; tell the listeners.

        Runs after a batch's insert, in every process, for every user of the batch
        that may now be beyond the cap (see Logins.write). Logins of one user
        racing in several processes still end within the cap: all trims order
        sessions the same way (created_at, then _id), a session among the
        newest `cap` is never ended by any of them, and of two trims the later
        read sees both inserts (each process inserts before it reads), so it
        ends everything else. Until then, for a moment, there may be more.
        Best effort: the logins are stored either way, and the next login of
        the user trims again.
        """
        if self.max_per_user is None or not user_ids:
            return
        pipeline: list[dict[str, Any]] = [
            {
                "$match": {
                    "user_id": {"$in": [ObjectId(user_id) for user_id in user_ids]},
                    "expires_at": {"$gt": datetime.now(UTC)},
                }
            },
            {"$sort": {"user_id": 1, "created_at": -1, "_id": -1}},
            {"$group": {"_id": "$user_id", "ids": {"$push": "$_id"}}},
            {"$project": {"excess": {"$slice": ["$ids", self.max_per_user, _MAX_INT32]}}},
            {"$match": {"excess.0": {"$exists": True}}},
        ]
        try:
            async with timed(self._metrics, "trim_sessions"), translated(deadline):
                # From the primary: a secondary may not have this batch's sessions yet.
                cursor = await self._primary.aggregate(pipeline)
                ended = [session_id async for doc in cursor for session_id in doc["excess"]]
                if ended:
                    await self._sessions.delete_many({"_id": {"$in": ended}})
        except WxLoginError as error:
            outage.log(
                logging.WARNING,
                "trim",
                "ending sessions beyond WXLOGIN_MAX_SESSIONS_PER_USER failed (%s); "
                "the next login of the user retries",
                error.reason,
            )
            return
        if ended:
            log.info("ended %d sessions beyond WXLOGIN_MAX_SESSIONS_PER_USER", len(ended))
            for listener in self._ended_listeners:
                listener(ended)

    async def find(self, session_id: str, *, deadline: float | None = None) -> SessionRecord | None:
        """The stored session, expired or not (the caller compares expires_at)."""
        async with timed(self._metrics, "find_session"), translated(deadline):
            doc = await self._primary.find_one({"_id": session_id})
        if doc is None:
            return None
        user = UserRecord(
            str(doc["user_id"]),
            doc["app_id"],
            doc["openid"],
            doc.get("unionid"),
            doc.get("account_id", ""),
        )
        sealed = bytes(doc["session_key"])
        # An expired session is never opened again: nothing to gain from a write.
        if not self._cipher.is_current(sealed) and doc["expires_at"] > datetime.now(UTC):
            sealed = await self._reseal(session_id, user, sealed, deadline)
        return SessionRecord(session_id, user, doc["created_at"], doc["expires_at"], sealed)

    async def _reseal(
        self, session_id: str, user: UserRecord, sealed: bytes, deadline: float | None
    ) -> bytes:
        """Re-seal a session_key found under an old key (or the format without a key id).

        Done on read, not left to the next login, so that every session in use
        moves to the current key at its first use after a rotation, and the old
        key can go once the sessions nobody uses have expired. The write is
        conditional on the blob still being the one read, durable, and best
        effort: if it fails, the session still opens with the old key.
        """
        try:
            resealed = self._cipher.reseal(sealed, session_id)
        except InvalidTag:
            # Under a key we no longer hold: DecryptUserData will say INTERNAL;
            # CheckSession needs no session_key and keeps working.
            # Once per interval: every check of such a session comes here.
            quiet.log(
                logging.ERROR,
                "unknown sealing key",
                "a session_key (user_id=%s) is sealed under a key not in WXLOGIN_SECRET_KEY "
                "or WXLOGIN_SECRET_KEYS_OLD",
                user.user_id,
            )
            return sealed
        if resealed is None:
            return sealed
        try:
            async with timed(self._metrics, "reseal"), translated(deadline):
                await self._sessions.update_one(
                    {"_id": session_id, "session_key": Binary(sealed)},
                    {"$set": {"session_key": Binary(resealed)}},
                )
        except WxLoginError as error:
            log.warning("re-sealing a session_key failed (%s); retried at next use", error.reason)
            return sealed
        log.debug("re-sealed the session_key of user_id=%s under the current key", user.user_id)
        return resealed

    def open_session_key(self, record: SessionRecord) -> str:
        """Unseal a session's session_key; a tampered blob is an internal error."""
        try:
            return self._cipher.open(record.sealed_session_key, record.session_id)
        except Exception:
            # Wrong WXLOGIN_SECRET_KEY or a tampered document: say so to operators.
            log.error("session_key of user_id=%s cannot be unsealed", record.user.user_id)
            raise InternalError() from None

    async def delete(self, session_id: str, *, deadline: float | None = None) -> None:
        """Remove a session (log out), durably; removing an absent one is not an error."""
        async with timed(self._metrics, "delete_session"), translated(deadline):
            await self._sessions.delete_one({"_id": session_id})

    async def delete_user_sessions(
        self, user_id: str, *, now: datetime, deadline: float | None = None
    ) -> int:
        """End every live session of a user (log out everywhere), durably; how many were live.

        Expired ones are left to the TTL monitor: they are over already, and
        counting them would tell the user about sessions that were not ended now.
        """
        async with timed(self._metrics, "delete_user_sessions"), translated(deadline):
            result = await self._sessions.delete_many(
                {"user_id": ObjectId(user_id), "expires_at": {"$gt": now}}
            )
        return int(result.deleted_count)

    async def renew(self, session_id: str, expires_at: datetime, *, due_before: datetime) -> None:
        """Move a session's expires_at to `expires_at`, durably, if it is still before `due_before`.

        The condition makes it once per renewal period across processes: when
        several see a session due at about the same time, the first write moves
        expires_at past `due_before` and the others match nothing. Renewals that
        arrive together are one bulk write. QueueFull if too many wait already.
        """
        await self._renewals.submit(_Renewal(session_id, expires_at, due_before))

    async def _write_renewals(self, renewals: Sequence[_Renewal]) -> list[Exception | None]:
        operations = [
            UpdateOne(
                {"_id": renewal.session_id, "expires_at": {"$lt": renewal.due_before}},
                # `renewals` counts the writes that renewed (operators, tests).
                {"$set": {"expires_at": renewal.expires_at}, "$inc": {"renewals": 1}},
            )
            for renewal in renewals
        ]
        try:
            async with timed(self._metrics, "renew_sessions"), translated():
                await self._sessions.bulk_write(operations, ordered=False)
        except WxLoginError as error:
            return [type(error)() for _ in renewals]
        return [None] * len(renewals)

    async def ended(
        self, resume_after: Mapping[str, Any] | None, opened: Callable[[], None]
    ) -> AsyncIterator[tuple[str | None, Mapping[str, Any]]]:
        """Each session deleted from now on, anywhere (revoked, trimmed, swept): its id and
        the stream's resume token after it; (None, token) when a second passed without one,
        so that the token stays current.

        `resume_after`: a token from before, to go on exactly after it (events
        missed meanwhile come first). `opened` is called once the stream is
        open (deletions after that are all seen). StoreUnavailable when the
        stream breaks (pymongo has already tried to resume once), and
        ChangeHistoryLost when it can't go on from its token, or was invalidated.
        """
        pipeline: list[Mapping[str, Any]] = [
            {"$match": {"operationType": "delete"}},
            {"$project": {"documentKey": 1}},
        ]
        try:
            stream = await self._sessions.watch(
                pipeline, resume_after=resume_after, max_await_time_ms=_WATCH_AWAIT_MS
            )
            async with stream:
                opened()
                while stream.alive:
                    change = await stream.try_next()
                    token = stream.resume_token or {}
                    yield (None if change is None else str(change["documentKey"]["_id"])), token
            # Closed by MongoDB: invalidated (the collection was dropped or renamed),
            # and no token from before the invalidation can go on past it.
            raise ChangeHistoryLost()
        except OperationFailure as error:
            if error.code in _CANNOT_RESUME:
                raise ChangeHistoryLost() from None
            outage.log(logging.WARNING, "watch", "revocation stream failed: code %s", error.code)
            raise StoreUnavailable() from None
        except PyMongoError as error:
            kind = type(error).__name__
            outage.log(logging.WARNING, f"watch {kind}", "revocation stream broken: %s", kind)
            raise StoreUnavailable() from None
