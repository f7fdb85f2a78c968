"""`users`: one per (app_id, openid), upserted at login, with the user's one current session_key."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from bson import Binary, ObjectId
from pymongo import ASCENDING, UpdateOne
from pymongo.errors import BulkWriteError

from service.crypto import SessionKeyCipher
from service.errors import InternalError, WxLoginError
from service.metrics import Metrics
from service.records import NewLogin, UserRecord
from service.store._shared import (
    Database,
    Document,
    durable,
    log,
    lost_insert_races,
    primary,
    timed,
    translated,
)

# Each (app_id, openid) of a batch -> its user, and the login that created it (None:
# the user was there before).
BatchUsers = dict[tuple[str, str], tuple[UserRecord, NewLogin | None]]


class Users:
    """The users collection."""

    def __init__(self, db: Database, cipher: SessionKeyCipher, metrics: Metrics | None) -> None:
        self.collection = durable(db, "users")
        # A user just created by another process must be seen: read from the primary.
        self._primary = primary(self.collection)
        self._cipher = cipher
        self._metrics = metrics

    async def ensure_indexes(self) -> None:
        """Unique (app_id, openid); unionid (sparse)."""
        await self.collection.create_index(
            [("app_id", ASCENDING), ("openid", ASCENDING)], unique=True, name="app_openid"
        )
        await self.collection.create_index("unionid", sparse=True, name="unionid")

    async def upsert(self, logins: Sequence[NewLogin], deadline: float | None) -> BatchUsers:
        """Touch or create the user of every login, in one bulk upsert, and read the ids of
        those that were there before in one find: two round trips for the batch."""
        first: dict[tuple[str, str], NewLogin] = {}
        last: dict[tuple[str, str], NewLogin] = {}
        unionids: dict[tuple[str, str], str] = {}
        for login in logins:
            key = (login.app_id, login.openid)
            first.setdefault(key, login)
            last[key] = login
            if login.unionid:
                unionids[key] = login.unionid
        keys = list(first)
        candidates = [ObjectId() for _ in keys]
        operations = [
            UpdateOne(
                {"app_id": app_id, "openid": openid},
                {
                    "$set": {
                        **_touched_fields(last[app_id, openid], unionids.get((app_id, openid))),
                        # The user's one current session_key: the batch's latest login brought it.
                        **self.key_fields(
                            app_id, openid, last[app_id, openid].session_key, last[app_id, openid]
                        ),
                    },
                    "$setOnInsert": {
                        "_id": candidate,
                        "created_at": first[app_id, openid].created_at,
                    },
                },
                upsert=True,
            )
            for (app_id, openid), candidate in zip(keys, candidates, strict=True)
        ]
        created: set[int] = set()
        pending = list(range(len(keys)))
        async with timed(self._metrics, "upsert_users"), translated(deadline):
            # Two racing upserts of a new key can both try to insert; the loser
            # gets a duplicate key error and, retried, finds the winner's document.
            for attempt in (1, 2):
                try:
                    result = await self.collection.bulk_write(
                        [operations[i] for i in pending], ordered=False
                    )
                    created.update(pending[i] for i in result.upserted_ids or {})
                    break
                except BulkWriteError as error:
                    created.update(pending[u["index"]] for u in error.details.get("upserted", []))
                    # Only duplicate-key races are retried; a write-concern error
                    # (no writeErrors) or anything else fails the batch.
                    failures = lost_insert_races(error)
                    if attempt == 2 or not failures:
                        raise
                    pending = [pending[f["index"]] for f in failures]
            stored = await self._find_many([keys[i] for i in range(len(keys)) if i not in created])
        users: BatchUsers = {}
        for index, (app_id, openid) in enumerate(keys):
            if index in created:
                unionid = unionids.get((app_id, openid))
                user = UserRecord(str(candidates[index]), app_id, openid, unionid)
                users[app_id, openid] = (user, first[app_id, openid])
            else:
                doc = stored.get((app_id, openid))
                if doc is None:
                    log.error("user upserted but not found: was it deleted meanwhile?")
                    raise InternalError()
                user = UserRecord(
                    str(doc["_id"]), app_id, openid, doc.get("unionid"), doc.get("account_id", "")
                )
                users[app_id, openid] = (user, None)
        return users

    async def _find_many(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], Document]:
        if not keys:
            return {}
        openids: dict[str, list[str]] = {}
        for app_id, openid in keys:
            openids.setdefault(app_id, []).append(openid)
        query = {
            "$or": [{"app_id": app_id, "openid": {"$in": ids}} for app_id, ids in openids.items()]
        }
        # One batch for all of them: one round trip. The limit tells mongod the cursor
        # ends there; with a batch size alone a full first batch costs a getMore too.
        cursor = self._primary.find(query, _USER_FIELDS, batch_size=len(keys), limit=len(keys))
        return {(doc["app_id"], doc["openid"]): doc async for doc in cursor}

    async def find(self, user_id: str, *, deadline: float | None = None) -> UserRecord | None:
        """The user with this id, or None (from the primary: it may have just been created)."""
        async with timed(self._metrics, "find_user"), translated(deadline):
            doc = await self._primary.find_one({"_id": ObjectId(user_id)}, _USER_FIELDS)
        return None if doc is None else user_record(doc)

    async def set_unionid(self, user_id: str, unionid: str, deadline: float | None) -> None:
        """Keep a unionid learnt after the login (decrypted data) on the user."""
        async with timed(self._metrics, "set_unionid"), translated(deadline):
            await self.collection.update_one(
                {"_id": ObjectId(user_id)}, {"$set": {"unionid": unionid}}
            )

    def key_fields(
        self, app_id: str, openid: str, session_key: str, login: NewLogin | None = None
    ) -> dict[str, Any]:
        """The fields that make `session_key` the user's current one, sealed."""
        sealed = self._cipher.seal(session_key, user_key_aad(app_id, openid))
        at = datetime.now(UTC) if login is None else login.created_at
        return {"session_key": Binary(sealed), "session_key_at": at}

    async def find_session_key(
        self, user: UserRecord, *, deadline: float | None = None
    ) -> str | None:
        """The user's current session_key, unsealed; None for a user stored before there was one.

        Read from the primary: a key another process stored a moment ago must be seen.
        """
        async with timed(self._metrics, "find_user_session_key"), translated(deadline):
            doc = await self._primary.find_one({"_id": ObjectId(user.user_id)}, {"session_key": 1})
        if doc is None or doc.get("session_key") is None:
            return None
        sealed = bytes(doc["session_key"])
        aad = user_key_aad(user.app_id, user.openid)
        try:
            session_key = self._cipher.open(sealed, aad)
        except Exception:
            log.error("the session_key of user_id=%s cannot be unsealed", user.user_id)
            raise InternalError() from None
        if not self._cipher.is_current(sealed):
            # Like sessions' keys (Sessions._reseal): moved to the current secret key on
            # use, conditional on the blob still being the one read, best effort.
            try:
                async with timed(self._metrics, "reseal"), translated(deadline):
                    await self.collection.update_one(
                        {"_id": ObjectId(user.user_id), "session_key": Binary(sealed)},
                        {"$set": {"session_key": Binary(self._cipher.seal(session_key, aad))}},
                    )
            except WxLoginError as error:
                log.warning("re-sealing a user's session_key failed (%s)", error.reason)
        return session_key

    async def set_session_key(
        self, user: UserRecord, session_key: str, *, deadline: float | None = None
    ) -> None:
        """Make `session_key` the user's current one (a code exchange or a reset brought it)."""
        fields = self.key_fields(user.app_id, user.openid, session_key)
        async with timed(self._metrics, "set_user_session_key"), translated(deadline):
            await self.collection.update_one({"_id": ObjectId(user.user_id)}, {"$set": fields})


_USER_FIELDS = {"_id": 1, "app_id": 1, "openid": 1, "unionid": 1, "account_id": 1}


def user_record(doc: Document) -> UserRecord:
    """A user as stored (with at least _USER_FIELDS)."""
    return UserRecord(
        str(doc["_id"]), doc["app_id"], doc["openid"], doc.get("unionid"), doc.get("account_id", "")
    )


def is_user_id(text: str) -> bool:
    """True when `text` has the shape of a user_id (an ObjectId's 24 hex digits)."""
    # ObjectId.is_valid alone also takes any 12-character string (as raw bytes).
    return len(text) == 24 and ObjectId.is_valid(text)


def user_key_aad(app_id: str, openid: str) -> str:
    """What a user's sealed session_key is bound to: the blob can't move to another user.

    Not the user's _id: a login's upsert seals the key before it knows the id.
    The "user:" prefix keeps it apart from a session's binding (its hex id).
    """
    return f"user:{app_id}:{openid}"


def _touched_fields(login: NewLogin, unionid: str | None) -> dict[str, Any]:
    fields: dict[str, Any] = {"last_login_at": login.created_at}
    if unionid:
        fields["unionid"] = unionid  # a later login without one keeps the old
    return fields
