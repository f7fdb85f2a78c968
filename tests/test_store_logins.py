"""Store.save_login against a real mongod: batched writes with per-login outcomes."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
import pytest_asyncio
from bson import ObjectId
from pymongo.errors import BulkWriteError

from service.crypto import SessionKeyCipher
from service.errors import InternalError, StoreUnavailable
from service.records import LoginReplay, NewLogin, utc_now_ms
from service.settings import Settings
from service.store import Store, connect
from tests.conftest import SECRET_KEY
from tests.support import APP_A, APP_B


@pytest_asyncio.fixture
async def store(settings: Settings) -> AsyncIterator[Store]:
    client = connect(settings.mongodb_uri or "")
    store = Store(client[settings.database], SessionKeyCipher(SECRET_KEY))
    await store.ensure_indexes()
    yield store
    await store.close()
    await client.close()


def new_login(openid: str, app_id: str = APP_A, unionid: str | None = None) -> NewLogin:
    now = utc_now_ms()
    return NewLogin(
        app_id=app_id,
        openid=openid,
        unionid=unionid,
        session_id=secrets.token_hex(32),
        session_key="a2V5a2V5a2V5a2V5a2V5aw==",
        created_at=now,
        expires_at=now + timedelta(hours=1),
    )


async def command_counts(db: Any) -> dict[str, int]:
    """How many insert/update/find commands mongod has served so far."""
    commands = (await db.command("serverStatus"))["metrics"]["commands"]
    return {name: int(commands[name]["total"]) for name in ("insert", "update", "find")}


async def test_concurrent_logins_share_one_write_per_collection(store: Store, db: Any) -> None:
    """20 logins at once, known and new users, repeats among them: three commands in all."""
    known = [new_login(f"known-{i}") for i in range(3)]
    before_known = await asyncio.gather(*(store.save_login(login) for login in known))
    known_ids = {record.user.openid: record.user.user_id for record, _ in before_known}

    logins = [new_login(f"known-{i % 3}") for i in range(6)]
    logins += [new_login(f"new-{i % 7}", app_id=APP_B) for i in range(14)]
    before = await command_counts(db)
    results = await asyncio.gather(*(store.save_login(login) for login in logins))
    after = await command_counts(db)

    # One bulk upsert, one read of the existing users, one insert of the sessions.
    assert {name: after[name] - before[name] for name in after} == {
        "insert": 1,
        "update": 1,
        "find": 1,
    }
    # new_user: exactly once per new user, never for a known one.
    created = [record.user.openid for record, new_user in results if new_user]
    assert sorted(created) == sorted(f"new-{i}" for i in range(7))
    for (record, _), login in zip(results, logins, strict=True):
        assert record.session_id == login.session_id
        assert record.user.app_id == login.app_id
        if login.openid.startswith("known"):
            assert record.user.user_id == known_ids[login.openid]
        stored_user = await db.users.find_one({"app_id": login.app_id, "openid": login.openid})
        assert stored_user["_id"] == ObjectId(record.user.user_id)
        stored_session = await db.sessions.find_one({"_id": login.session_id})
        assert stored_session["user_id"] == ObjectId(record.user.user_id)
        assert stored_session["expires_at"] == login.expires_at
    assert await db.users.count_documents({}) == 3 + 7
    assert await db.sessions.count_documents({}) == 3 + 20


async def test_a_unionid_from_any_login_of_the_batch_is_kept(store: Store, db: Any) -> None:
    """Two logins of one new user in one batch, only the first with a unionid."""
    logins = [new_login("dora", unionid="union-dora"), new_login("dora")]
    results = await asyncio.gather(*(store.save_login(login) for login in logins))
    assert [new_user for _, new_user in results] == [True, False]
    assert {record.user.unionid for record, _ in results} == {"union-dora"}
    doc = await db.users.find_one({"openid": "dora"})
    assert doc["unionid"] == "union-dora"
    assert doc["last_login_at"] == logins[1].created_at
    assert doc["created_at"] == logins[0].created_at


async def test_a_failed_session_insert_fails_only_its_own_login(store: Store, db: Any) -> None:
    """A session id that already exists fails that login; the rest of its batch succeeds,
    and new_user moves to the next login of the same new user that did get a session."""
    clash = new_login("erin")
    await db.sessions.insert_one({"_id": clash.session_id})
    others = [new_login(f"frank-{i}") for i in range(2)]
    erin_again = new_login("erin")
    results = await asyncio.gather(
        *(store.save_login(login) for login in [others[0], clash, others[1], erin_again]),
        return_exceptions=True,
    )
    assert isinstance(results[1], InternalError)
    assert all(isinstance(result, tuple) for i, result in enumerate(results) if i != 1)
    assert results[3][1] is True  # type: ignore[index]  # erin_again announces the new user
    for login in [*others, erin_again]:
        assert await db.sessions.find_one({"_id": login.session_id}) is not None


async def test_an_unreachable_mongodb_fails_every_login_of_the_batch(settings: Settings) -> None:
    """Nothing listens on the port: each caller gets its own STORE_UNAVAILABLE."""
    client = connect("mongodb://127.0.0.1:9/", server_selection_timeout_ms=200)
    store = Store(client[settings.database], SessionKeyCipher(SECRET_KEY))
    try:
        results = await asyncio.gather(
            *(store.save_login(new_login(f"gus-{i}")) for i in range(3)), return_exceptions=True
        )
    finally:
        await store.close()
        await client.close()
    assert all(isinstance(result, StoreUnavailable) for result in results)
    assert len({id(result) for result in results}) == 3  # no exception object is shared


async def test_close_finishes_what_was_submitted(store: Store, db: Any) -> None:
    """Closing the store saves a login already submitted, then refuses new ones."""
    login = new_login("hana")
    pending = asyncio.create_task(store.save_login(login))
    await asyncio.sleep(0)
    await store.close()
    _, new_user = await pending
    assert new_user is True
    assert await db.sessions.find_one({"_id": login.session_id}) is not None
    with pytest.raises(RuntimeError):
        await store.save_login(new_login("ivan"))


class OneBulkWriteFailure:
    """The real users collection, except that its first bulk_write fails as told.

    A duplicate-key race between processes is rare to provoke on one mongod
    (MongoDB retries most of them itself), so the failure is injected here, at
    Store's own boundary; every other call reaches the real mongod.
    """

    def __init__(self, real: Any, details: dict[str, Any]) -> None:
        self._real = real
        self._details: dict[str, Any] | None = details
        self.calls: list[int] = []

    async def bulk_write(self, operations: list[Any], **options: Any) -> Any:
        self.calls.append(len(operations))
        if self._details is not None:
            details, self._details = self._details, None
            # What the server did for the others: upsert them for real first.
            failed = {f["index"] for f in details.get("writeErrors", [])}
            kept = [op for i, op in enumerate(operations) if i not in failed]
            result = await self._real.bulk_write(kept, **options) if kept else None
            upserted = sorted((result.upserted_ids or {}).items()) if result else []
            survivors = [i for i in range(len(operations)) if i not in failed]
            details["upserted"] = [{"index": survivors[i], "_id": _id} for i, _id in upserted]
            raise BulkWriteError(details)
        return await self._real.bulk_write(operations, **options)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


async def test_a_duplicate_key_race_is_retried_for_just_the_losers(store: Store, db: Any) -> None:
    """Op 1 of 3 loses a race: only it is sent again, and every login succeeds."""
    flaky = OneBulkWriteFailure(
        store.users.collection, {"writeErrors": [{"index": 1, "code": 11000, "errmsg": "dup"}]}
    )
    store.users.collection = flaky  # type: ignore[assignment]
    logins = [new_login(f"race-{i}") for i in range(3)]
    results = await asyncio.gather(*(store.save_login(login) for login in logins))
    assert flaky.calls == [3, 1]
    assert [new_user for _, new_user in results] == [True, True, True]
    for (record, _), login in zip(results, logins, strict=True):
        doc = await db.users.find_one({"openid": login.openid})
        assert doc["_id"] == ObjectId(record.user.user_id)


async def test_a_write_concern_error_fails_the_batch_instead_of_retrying(
    store: Store, db: Any
) -> None:
    """No writeErrors, only a write-concern error: INTERNAL for all, no second bulk_write."""
    flaky = OneBulkWriteFailure(
        store.users.collection,
        {"writeErrors": [], "writeConcernErrors": [{"code": 64, "errmsg": "wc"}]},
    )
    store.users.collection = flaky  # type: ignore[assignment]
    results = await asyncio.gather(
        *(store.save_login(new_login(f"wc-{i}")) for i in range(2)), return_exceptions=True
    )
    assert flaky.calls == [2]
    assert all(isinstance(result, InternalError) for result in results)


async def test_answers_that_cannot_be_queued_are_given_up_not_raised(store: Store, db: Any) -> None:
    """keep() is best effort: once the claims' queue is closed, the login stands all the same."""
    saved = await store.save_login(new_login("kai"))
    replay = LoginReplay("code-of-kai", "owner-of-kai", "token-of-kai")
    await store.login_codes.close()
    await store.login_codes.keep([(replay, saved)], None)  # refused at once: no exception
    assert await db.login_codes.find_one({"_id": "code-of-kai"}) is None
    assert await db.sessions.find_one({"_id": saved.session.session_id}) is not None
