"""`accounts`: one document per unionid, linking the users of the configured apps that share it."""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from bson import ObjectId
from pymongo import UpdateMany, UpdateOne
from pymongo.errors import BulkWriteError

from service.errors import WxLoginError
from service.metrics import Metrics
from service.records import UserRecord
from service.store._shared import (
    Collection as MongoCollection,
)
from service.store._shared import (
    Database,
    durable,
    log,
    lost_insert_races,
    outage,
    primary,
    timed,
    translated,
)
from service.store.users import BatchUsers, Users


class Accounts:
    """Linked accounts; a link also writes the account onto the users and their sessions."""

    def __init__(
        self, db: Database, users: Users, sessions: MongoCollection, metrics: Metrics | None
    ) -> None:
        self._accounts = durable(db, "accounts")
        self._primary = primary(self._accounts)
        self._users = users
        self._sessions = sessions
        self._metrics = metrics
        self._linked_listeners: list[Callable[[Sequence[str]], None]] = []

    def on_linked(self, listener: Callable[[Sequence[str]], None]) -> None:
        """Call `listener` with the user_ids whose account was just linked."""
        self._linked_listeners.append(listener)

    async def link_batch(self, users: BatchUsers, deadline: float | None) -> BatchUsers:
        """The batch's users, those with a unionid but no account yet linked to theirs.

        Best effort: a login is not failed for its account; the next one links it.
        """
        unlinked = [user for user, _ in users.values() if user.unionid and not user.account_id]
        if not unlinked:
            return users
        new = {user.user_id for user, creator in users.values() if creator is not None}
        try:
            linked = await self.link(unlinked, deadline, without_sessions=new)
        except WxLoginError as error:
            outage.log(logging.WARNING, "link", "linking accounts failed (%s)", error.reason)
            return users
        return {
            key: (linked.get(user.user_id, user), creator) for key, (user, creator) in users.items()
        }

    async def link_unionid(
        self, user: UserRecord, unionid: str, *, deadline: float | None = None
    ) -> UserRecord:
        """A unionid learnt after the login (decrypted data): kept on the user, account linked."""
        await self._users.set_unionid(user.user_id, unionid, deadline)
        with_unionid = replace(user, unionid=unionid, account_id="")
        linked = await self.link([with_unionid], deadline)
        return linked.get(user.user_id, with_unionid)

    async def link(
        self,
        users: Sequence[UserRecord],
        deadline: float | None,
        *,
        without_sessions: Collection[str] = (),
    ) -> dict[str, UserRecord]:
        """Link users (each with a unionid) to the account of their unionid; user_id -> user.

        `accounts` has one document per unionid: the first user to arrive with it
        opens the account under its own user_id (so a user's account_id does not
        change when it is the first), every later one joins. Opening is an
        upsert on the unionid, so users racing in several processes end in one
        account. A user that joins another's account keeps its own user_id (its
        account until now) under `merged_account_ids`: nothing filed under it is
        lost. Its sessions get the account too (`without_sessions`: users that
        have none yet).
        """
        members: dict[str, list[UserRecord]] = {}
        for user in users:
            if user.unionid:
                members.setdefault(user.unionid, []).append(user)
        now = datetime.now(UTC)
        operations = [
            UpdateOne(
                {"_id": unionid},
                {
                    "$setOnInsert": {"account_id": group[0].user_id, "created_at": now},
                    "$addToSet": {"user_ids": {"$each": [user.user_id for user in group]}},
                },
                upsert=True,
            )
            for unionid, group in members.items()
        ]
        linked: dict[str, UserRecord] = {}
        async with timed(self._metrics, "link_accounts"), translated(deadline):
            for attempt in (1, 2):
                try:
                    await self._accounts.bulk_write(operations, ordered=False)
                    break
                except BulkWriteError as error:
                    # Two processes opening one account: the loser joins the winner's.
                    failures = lost_insert_races(error)
                    if attempt == 2 or not failures:
                        raise
                    operations = [operations[f["index"]] for f in failures]
            cursor = self._primary.find({"_id": {"$in": list(members)}}, {"account_id": 1})
            accounts = {str(doc["_id"]): str(doc["account_id"]) async for doc in cursor}
            user_updates: list[UpdateOne] = []
            session_updates: list[UpdateMany] = []
            for unionid, group in members.items():
                account_id = accounts.get(unionid)
                if account_id is None:
                    continue  # gone meanwhile (nothing deletes accounts): the next login retries
                for user in group:
                    update: dict[str, Any] = {"$set": {"account_id": account_id}}
                    if account_id != user.user_id:
                        update["$addToSet"] = {"merged_account_ids": user.user_id}
                    user_updates.append(UpdateOne({"_id": ObjectId(user.user_id)}, update))
                    if user.user_id not in without_sessions:
                        session_updates.append(
                            UpdateMany(
                                {"user_id": ObjectId(user.user_id)},
                                {"$set": {"account_id": account_id, "unionid": unionid}},
                            )
                        )
                    linked[user.user_id] = replace(user, account_id=account_id)
            if user_updates:
                await self._users.collection.bulk_write(user_updates, ordered=False)
            if session_updates:
                await self._sessions.bulk_write(session_updates, ordered=False)
        for user in linked.values():
            if user.account_id != user.user_id:
                log.info("user_id=%s joined account_id=%s", user.user_id, user.account_id)
        # Users that have sessions (cached somewhere, with the user as it was).
        relinked = [user_id for user_id in linked if user_id not in without_sessions]
        if relinked:
            for listener in self._linked_listeners:
                listener(relinked)
        return linked
