"""`access_tokens`: one document per app: every service process shares one token, one fetcher."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pymongo
from bson import Binary
from pymongo.errors import DuplicateKeyError

from service.crypto import SessionKeyCipher, token_id
from service.metrics import Metrics
from service.records import AccessTokenRecord
from service.store._shared import (
    Database,
    Document,
    durable,
    epoch,
    from_epoch,
    log,
    primary,
    timed,
    translated,
)


class AccessTokens:
    """The apps' shared access_tokens, sealed at rest, with the refresh lease."""

    def __init__(self, db: Database, cipher: SessionKeyCipher, metrics: Metrics | None) -> None:
        # Durable, so a failover never brings back a replaced token.
        self._tokens = durable(db, "access_tokens")
        self._primary = primary(self._tokens)
        self._cipher = cipher
        self._metrics = metrics

    async def find(self, app_id: str, *, deadline: float | None = None) -> AccessTokenRecord | None:
        """The app's shared access_token document (token "" before the first fetch), or None."""
        async with timed(self._metrics, "find_access_token"), translated(deadline):
            doc = await self._primary.find_one({"_id": app_id})
        return None if doc is None else self._record(doc)

    async def claim_refresh(
        self,
        app_id: str,
        *,
        owner: str,
        version: int,
        now: float,
        lease_seconds: float,
        deadline: float | None = None,
    ) -> bool:
        """Take the app's refresh lease if the token is still at `version` and no lease is held.

        The compare-and-set that lets exactly one process refresh a given token;
        version 0 (no token yet) creates the document.
        """
        query = {
            "_id": app_id,
            "version": version,
            "$or": [{"lease_until": {"$lte": from_epoch(now)}}, {"lease_until": None}],
        }
        update = {"$set": {"lease_owner": owner, "lease_until": from_epoch(now + lease_seconds)}}
        async with timed(self._metrics, "claim_access_token"), translated(deadline):
            try:
                result = await self._tokens.update_one(query, update, upsert=version == 0)
            except DuplicateKeyError:
                return False  # the document exists at another version, or is leased
        return result.matched_count == 1 or result.upserted_id is not None

    async def save(
        self,
        app_id: str,
        *,
        owner: str,
        version: int,
        token: str,
        expires_at: float,
        refresh_at: float,
        forced: tuple[float, int, int] | None = None,
        deadline: float | None = None,
    ) -> AccessTokenRecord | None:
        """Store a fetched token as `version + 1` and release the lease; None if the lease was lost.

        `forced`: (when, day, forced refreshes that day) after a forced refresh.
        """
        fields: dict[str, Any] = {
            "token": Binary(self._cipher.seal(token, access_token_aad(app_id))),
            "token_sha256": token_id(token),
            "expires_at": from_epoch(expires_at),
            "refresh_at": from_epoch(refresh_at),
            "version": version + 1,
            "lease_until": from_epoch(0),
            "fetched_at": datetime.now(UTC),
        }
        if forced is not None:
            at, day, count = forced
            fields.update(last_force_at=from_epoch(at), force_day=day, forces_that_day=count)
        async with timed(self._metrics, "save_access_token"), translated(deadline):
            doc = await self._tokens.find_one_and_update(
                {"_id": app_id, "version": version, "lease_owner": owner},
                {"$set": fields},
                return_document=pymongo.ReturnDocument.AFTER,
            )
        return None if doc is None else self._record(doc)

    async def release_lease(
        self, app_id: str, *, owner: str, deadline: float | None = None
    ) -> None:
        """Give the refresh lease back early (the fetch failed): another process may try."""
        async with timed(self._metrics, "release_access_token"), translated(deadline):
            await self._tokens.update_one(
                {"_id": app_id, "lease_owner": owner}, {"$set": {"lease_until": from_epoch(0)}}
            )

    def _record(self, doc: Document) -> AccessTokenRecord:
        app_id = str(doc["_id"])
        token = ""
        if doc.get("token") is not None:
            try:
                token = self._cipher.open(bytes(doc["token"]), access_token_aad(app_id))
            except Exception:
                # Sealed under a key no longer configured: as good as no token; the
                # next fetch replaces it (tokens live two hours, so none outlives a
                # rotation by long: no re-sealing here).
                log.error("the access_token of app_id=%s cannot be unsealed; refetching", app_id)
        last_force = doc.get("last_force_at")
        return AccessTokenRecord(
            app_id=app_id,
            token=token,
            token_sha256=str(doc.get("token_sha256", "")) if token else "",
            expires_at=epoch(doc.get("expires_at")),
            refresh_at=epoch(doc.get("refresh_at")),
            version=int(doc.get("version", 0)),
            lease_owner=doc.get("lease_owner"),
            lease_until=epoch(doc.get("lease_until")),
            last_force_at=None if last_force is None else epoch(last_force),
            force_day=int(doc.get("force_day", -1)),
            forces_that_day=int(doc.get("forces_that_day", 0)),
        )


def access_token_aad(app_id: str) -> str:
    """What an app's sealed access_token is bound to: it can't be moved to another app."""
    return f"access_token:{app_id}"
