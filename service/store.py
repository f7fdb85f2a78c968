"""The only code that touches MongoDB: users, sessions and their indexes."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from bson import Binary, ObjectId
from motor.motor_asyncio import AsyncIOMotorClient, AsyncIOMotorDatabase
from pymongo import ASCENDING, ReturnDocument
from pymongo.errors import (
    ConnectionFailure,
    DuplicateKeyError,
    PyMongoError,
    ServerSelectionTimeoutError,
)

from service.crypto import SessionKeyCipher
from service.errors import InternalError, StoreUnavailable

log = logging.getLogger(__name__)

MotorDatabase = AsyncIOMotorDatabase[dict[str, Any]]
MotorClient = AsyncIOMotorClient[dict[str, Any]]


@dataclass(frozen=True)
class UserRecord:
    """A user of one app: one per (app_id, openid)."""

    user_id: str
    app_id: str
    openid: str
    unionid: str | None


@dataclass(frozen=True)
class SessionRecord:
    """A session as stored; the session_key inside stays sealed until asked for."""

    session_id: str
    user: UserRecord
    created_at: datetime
    expires_at: datetime
    sealed_session_key: bytes

    def __repr__(self) -> str:
        return f"SessionRecord(user_id={self.user.user_id!r}, expires_at={self.expires_at})"


def utc_now_ms() -> datetime:
    """Now, truncated to MongoDB's millisecond precision so stored and returned times agree."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def connect(uri: str, *, server_selection_timeout_ms: int = 3000) -> MotorClient:
    """A motor client that fails fast when MongoDB is gone instead of hanging for 30 s."""
    return AsyncIOMotorClient(
        uri,
        tz_aware=True,
        tzinfo=UTC,
        serverSelectionTimeoutMS=server_selection_timeout_ms,
        connectTimeoutMS=3000,
        socketTimeoutMS=10000,
        retryWrites=True,
    )


@asynccontextmanager
async def _translated() -> AsyncIterator[None]:
    # MongoDB's error text can name hosts and internals: callers get our words only.
    try:
        yield
    except (ConnectionFailure, ServerSelectionTimeoutError) as error:
        log.warning("MongoDB unavailable: %s", type(error).__name__)
        raise StoreUnavailable() from None
    except PyMongoError as error:
        log.error("MongoDB error: %s", error)
        raise InternalError() from None


class Store:
    """Users and sessions in MongoDB; session_keys sealed with the server's secret key."""

    def __init__(self, db: MotorDatabase, cipher: SessionKeyCipher) -> None:
        self._db = db
        self._users = db["users"]
        self._sessions = db["sessions"]
        self._cipher = cipher

    async def ensure_indexes(self, expired_session_retention: int = 0) -> None:
        """Create the indexes the data model relies on (idempotent)."""
        async with _translated():
            await self._users.create_index(
                [("app_id", ASCENDING), ("openid", ASCENDING)], unique=True, name="app_openid"
            )
            await self._users.create_index("unionid", sparse=True, name="unionid")
            # Cleans up only: validity is always decided by comparing expires_at,
            # since the TTL monitor runs once a minute at best.
            await self._sessions.create_index(
                "expires_at", expireAfterSeconds=expired_session_retention, name="expires_at_ttl"
            )
            await self._sessions.create_index("user_id", name="user_id")

    async def ping(self) -> None:
        """Raise StoreUnavailable unless MongoDB answers."""
        async with _translated():
            await self._db.command("ping")

    async def upsert_user(
        self, app_id: str, openid: str, unionid: str | None, now: datetime
    ) -> tuple[UserRecord, bool]:
        """Create or touch the user atomically; True when this call created it."""
        fields: dict[str, Any] = {"last_login_at": now}
        if unionid:
            fields["unionid"] = unionid  # a later login without one keeps the old
        candidate = ObjectId()
        update = {"$set": fields, "$setOnInsert": {"_id": candidate, "created_at": now}}
        async with _translated():
            # Two racing upserts of a new key can both try to insert; the loser
            # gets DuplicateKeyError and, retried, finds the winner's document.
            for attempt in (1, 2):
                try:
                    doc = await self._users.find_one_and_update(
                        {"app_id": app_id, "openid": openid},
                        update,
                        upsert=True,
                        return_document=ReturnDocument.AFTER,
                    )
                    break
                except DuplicateKeyError:
                    if attempt == 2:
                        raise
        assert doc is not None  # upsert=True with AFTER always returns a document
        user = UserRecord(str(doc["_id"]), app_id, openid, doc.get("unionid"))
        return user, doc["_id"] == candidate

    async def create_session(
        self,
        session_id: str,
        user: UserRecord,
        session_key: str,
        created_at: datetime,
        expires_at: datetime,
    ) -> SessionRecord:
        """Store a session under the token's hash; the session_key is sealed first."""
        sealed = self._cipher.seal(session_key, session_id)
        doc = {
            "_id": session_id,
            "user_id": ObjectId(user.user_id),
            "app_id": user.app_id,
            "openid": user.openid,
            "unionid": user.unionid,
            "session_key": Binary(sealed),
            "created_at": created_at,
            "expires_at": expires_at,
        }
        async with _translated():
            await self._sessions.insert_one(doc)
        return SessionRecord(session_id, user, created_at, expires_at, sealed)

    async def find_session(self, session_id: str) -> SessionRecord | None:
        """The stored session, expired or not (the caller compares expires_at)."""
        async with _translated():
            doc = await self._sessions.find_one({"_id": session_id})
        if doc is None:
            return None
        user = UserRecord(str(doc["user_id"]), doc["app_id"], doc["openid"], doc.get("unionid"))
        return SessionRecord(
            session_id, user, doc["created_at"], doc["expires_at"], bytes(doc["session_key"])
        )

    async def delete_session(self, session_id: str) -> None:
        """Remove a session (log out); removing an absent one is not an error."""
        async with _translated():
            await self._sessions.delete_one({"_id": session_id})

    def open_session_key(self, record: SessionRecord) -> str:
        """Unseal a session's session_key; a tampered blob is an internal error."""
        try:
            return self._cipher.open(record.sealed_session_key, record.session_id)
        except Exception:
            # Wrong WXLOGIN_SECRET_KEY or a tampered document: say so to operators.
            log.error("session_key of user_id=%s cannot be unsealed", record.user.user_id)
            raise InternalError() from None
