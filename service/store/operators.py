"""`operators`: what the operator's CLI (service/admin/) asks of MongoDB, beside the other rooms.

Users by user_id, openid or unionid, with their live sessions; every sealed blob
counted by the key it names, and re-sealed under the current key; each app's
access-token state. Reads go to the primary: an operator acts on what is stored
now. No token or session_key ever leaves this room: blobs stay sealed (the key
report opens only those that name no key we hold, to tell the format from before
key ids apart from a key nobody configured), and access tokens are not even read.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from bson import Binary, ObjectId
from cryptography.exceptions import InvalidTag
from pymongo import DESCENDING, UpdateOne

from service.crypto import SessionKeyCipher, sealed_key_id
from service.records import UserRecord
from service.store._shared import Collection, Database, Document, durable, primary, translated
from service.store.access_tokens import access_token_aad

# The rooms' own bindings (private to their rooms, shared within the store), so a
# blob re-sealed here is bound exactly as the room that opens it expects.
from service.store.login_codes import answer_aad
from service.store.users import user_key_aad, user_record

# Bounds on what one command reads: an openid or a unionid names a user per app, and
# a user has at most WXLOGIN_MAX_SESSIONS_PER_USER live sessions (briefly more).
_MAX_USERS = 1000
_MAX_SESSIONS = 10_000


@dataclass(frozen=True)
class UserDetails:
    """A user as an operator sees it: the record, its times, its count of live sessions."""

    user: UserRecord
    created_at: datetime | None
    last_login_at: datetime | None
    # When the user's current session_key was stored (the key itself is never shown).
    session_key_at: datetime | None
    merged_account_ids: tuple[str, ...]
    live_sessions: int


@dataclass(frozen=True)
class SessionDetails:
    """A live session, without its session_key; `session_id` is the token's SHA-256."""

    session_id: str
    user_id: str
    app_id: str
    created_at: datetime
    expires_at: datetime
    renewals: int  # sliding-expiry writes that renewed it (Sessions._write_renewals)


@dataclass(frozen=True)
class BlobCount:
    """How many blobs of one place are sealed under one key.

    `key_id`: the hex id the blobs name (crypto.key_id); None for the format from
    before key ids. `opens`: a configured key opens them: by the key they name, or
    (for blobs that name none we hold) by trying every configured key.
    """

    where: str
    key_id: str | None
    opens: bool
    count: int


@dataclass
class ResealCount:
    """What re-sealing did to the blobs of one place."""

    where: str
    current: int = 0  # already under the current key
    resealed: int = 0  # moved to the current key (dry run: would be)
    changed: int = 0  # rewritten by someone else between our read and our write: theirs stands
    unopenable: int = 0  # no configured key opens it: left as it is


@dataclass(frozen=True)
class AccessTokenState:
    """An app's shared access_token document, without the token (or its hash)."""

    app_id: str
    has_token: bool
    version: int
    expires_at: datetime | None
    refresh_at: datetime | None
    fetched_at: datetime | None
    lease_owner: str | None
    lease_until: datetime | None
    force_day: int  # WeChat's day (UTC+8) of the last forced refresh; -1: never
    forces_that_day: int
    last_force_at: datetime | None


@dataclass(frozen=True)
class SealedPlace:
    """One place that holds sealed blobs, and what each blob there is bound to."""

    collection: str
    field: str
    fields: tuple[str, ...]  # what the binding is made of, besides _id
    bound_to: Callable[[Document], str]

    @property
    def where(self) -> str:
        return f"{self.collection}.{self.field}"


# Every place the service seals something with WXLOGIN_SECRET_KEY.
SEALED = (
    SealedPlace("sessions", "session_key", (), lambda doc: str(doc["_id"])),
    SealedPlace(
        "users",
        "session_key",
        ("app_id", "openid"),
        lambda doc: user_key_aad(doc["app_id"], doc["openid"]),
    ),
    SealedPlace("access_tokens", "token", (), lambda doc: access_token_aad(str(doc["_id"]))),
    SealedPlace("login_codes", "result", (), lambda doc: answer_aad(str(doc["_id"]))),
)


def resealing(place: SealedPlace, doc_id: Any, blob: bytes, resealed: bytes) -> UpdateOne:
    """The write that replaces `blob` with `resealed`, only if `blob` is still the one stored."""
    return UpdateOne(
        {"_id": doc_id, place.field: Binary(blob)}, {"$set": {place.field: Binary(resealed)}}
    )


_USER_DETAIL_FIELDS = {
    "_id": 1,
    "app_id": 1,
    "openid": 1,
    "unionid": 1,
    "account_id": 1,
    "merged_account_ids": 1,
    "created_at": 1,
    "last_login_at": 1,
    "session_key_at": 1,
}


class Operators:
    """The operator's queries and the re-sealing of blobs after a key rotation."""

    def __init__(self, db: Database, cipher: SessionKeyCipher) -> None:
        self._db = db
        self._cipher = cipher

    def _reads(self, name: str) -> Collection:
        return primary(durable(self._db, name))

    async def find_users(
        self,
        *,
        now: datetime,
        user_id: str | None = None,
        openid: str | None = None,
        app_id: str | None = None,
        unionid: str | None = None,
    ) -> list[UserDetails]:
        """The users with this user_id, this openid (in `app_id`, or in every app) or this
        unionid, each with its count of sessions live at `now`; [] when there is none."""
        users = self._reads("users")
        async with translated():
            if user_id is not None:
                query: Document = {"_id": ObjectId(user_id)}
            elif openid is not None:
                # The (app_id, openid) index serves both: the apps are few.
                apps = [app_id] if app_id is not None else await users.distinct("app_id")
                query = {"app_id": {"$in": apps}, "openid": openid}
            elif unionid is not None:
                query = {"unionid": unionid}
            else:
                raise ValueError("name a user: user_id, openid or unionid")
            cursor = users.find(query, _USER_DETAIL_FIELDS).sort("app_id").limit(_MAX_USERS)
            docs = await cursor.to_list()
            live = await self._live_counts([doc["_id"] for doc in docs], now)
        return [
            UserDetails(
                user=user_record(doc),
                created_at=doc.get("created_at"),
                last_login_at=doc.get("last_login_at"),
                session_key_at=doc.get("session_key_at"),
                merged_account_ids=tuple(str(a) for a in doc.get("merged_account_ids") or ()),
                live_sessions=live.get(str(doc["_id"]), 0),
            )
            for doc in docs
        ]

    async def _live_counts(self, user_ids: Sequence[ObjectId], now: datetime) -> dict[str, int]:
        if not user_ids:
            return {}
        cursor = await self._reads("sessions").aggregate(
            [
                {"$match": {"user_id": {"$in": list(user_ids)}, "expires_at": {"$gt": now}}},
                {"$group": {"_id": "$user_id", "live": {"$sum": 1}}},
            ]
        )
        return {str(doc["_id"]): int(doc["live"]) async for doc in cursor}

    async def live_sessions(self, user_id: str, *, now: datetime) -> list[SessionDetails]:
        """The user's sessions live at `now`, newest first (never their session_key)."""
        fields = {"user_id": 1, "app_id": 1, "created_at": 1, "expires_at": 1, "renewals": 1}
        async with translated():
            cursor = (
                self._reads("sessions")
                .find({"user_id": ObjectId(user_id), "expires_at": {"$gt": now}}, fields)
                .sort([("created_at", DESCENDING), ("_id", DESCENDING)])
                .limit(_MAX_SESSIONS)
            )
            docs = await cursor.to_list()
        return [
            SessionDetails(
                session_id=str(doc["_id"]),
                user_id=str(doc["user_id"]),
                app_id=str(doc["app_id"]),
                created_at=doc["created_at"],
                expires_at=doc["expires_at"],
                renewals=int(doc.get("renewals", 0)),
            )
            for doc in docs
        ]

    async def count_sealed(self, *, batch_size: int = 1000) -> list[BlobCount]:
        """Every sealed blob, counted by place and by the key it is sealed under.

        One pass over each place, reading only the blobs (and what binds them).
        """
        counts: Counter[tuple[str, str | None, bool]] = Counter()
        async with translated():
            for place in SEALED:
                async for doc in self._blobs(place, batch_size):
                    blob = bytes(doc[place.field])
                    kid = sealed_key_id(blob)
                    if kid is not None and self._cipher.holds(kid):
                        counts[place.where, kid.hex(), True] += 1
                        continue
                    # No key we hold by name: from before key ids (any configured key
                    # may open it), or under a key nobody configured.
                    opens = self._opens(blob, place.bound_to(doc))
                    named = None if opens or kid is None else kid.hex()
                    counts[place.where, named, opens] += 1
        order = {place.where: index for index, place in enumerate(SEALED)}
        return sorted(
            (BlobCount(where, kid, opens, n) for (where, kid, opens), n in counts.items()),
            key=lambda c: (order[c.where], not c.opens, c.key_id or ""),
        )

    async def reseal(self, *, batch_size: int, dry_run: bool) -> list[ResealCount]:
        """Seal every blob that is not under the current key again under it.

        Each write is conditional on the blob still being the one read (like
        Sessions._reseal), so a blob the service rewrote meanwhile keeps the
        service's; durable; `batch_size` updates per bulk write. Idempotent: a
        second run finds everything current. `dry_run`: count, write nothing.
        """
        outcomes = []
        async with translated():
            for place in SEALED:
                outcome = ResealCount(place.where)
                batch: list[UpdateOne] = []
                async for doc in self._blobs(place, batch_size):
                    blob = bytes(doc[place.field])
                    if self._cipher.is_current(blob):
                        outcome.current += 1
                        continue
                    try:
                        resealed = self._cipher.reseal(blob, place.bound_to(doc))
                    except InvalidTag:
                        outcome.unopenable += 1
                        continue
                    if resealed is None:  # is_current said no: cannot happen, but be exact
                        outcome.current += 1
                        continue
                    if dry_run:
                        outcome.resealed += 1
                        continue
                    batch.append(resealing(place, doc["_id"], blob, resealed))
                    if len(batch) >= batch_size:
                        await self._write(place, batch, outcome)
                        batch = []
                if batch:
                    await self._write(place, batch, outcome)
                outcomes.append(outcome)
        return outcomes

    async def _write(
        self, place: SealedPlace, batch: list[UpdateOne], outcome: ResealCount
    ) -> None:
        """One bulk write of re-sealings; those whose blob changed since the read match nothing."""
        result = await durable(self._db, place.collection).bulk_write(batch, ordered=False)
        outcome.resealed += result.modified_count
        outcome.changed += len(batch) - result.modified_count

    def _blobs(self, place: SealedPlace, batch_size: int) -> AsyncIterator[Document]:
        fields = {"_id": 1, place.field: 1, **dict.fromkeys(place.fields, 1)}
        cursor = self._reads(place.collection).find(
            {place.field: {"$type": "binData"}}, fields, batch_size=batch_size
        )
        return aiter(cursor)

    def _opens(self, blob: bytes, bound_to: str) -> bool:
        try:
            self._cipher.open(blob, bound_to)
        except InvalidTag:
            return False
        return True

    async def access_token_states(self) -> list[AccessTokenState]:
        """Every app's access_tokens document, by app_id; the token itself is never read."""
        pipeline: list[dict[str, Any]] = [
            {"$addFields": {"has_token": {"$eq": [{"$type": "$token"}, "binData"]}}},
            {"$project": {"token": 0, "token_sha256": 0}},
            {"$sort": {"_id": 1}},
        ]
        async with translated():
            cursor = await self._reads("access_tokens").aggregate(pipeline)
            docs = await cursor.to_list()
        return [
            AccessTokenState(
                app_id=str(doc["_id"]),
                has_token=bool(doc.get("has_token")),
                version=int(doc.get("version", 0)),
                expires_at=doc.get("expires_at"),
                refresh_at=doc.get("refresh_at"),
                fetched_at=doc.get("fetched_at"),
                lease_owner=doc.get("lease_owner"),
                lease_until=doc.get("lease_until"),
                force_day=int(doc.get("force_day", -1)),
                forces_that_day=int(doc.get("forces_that_day", 0)),
                last_force_at=doc.get("last_force_at"),
            )
            for doc in docs
        ]
