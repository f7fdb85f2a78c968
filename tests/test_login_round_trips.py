"""The MongoDB commands of a login batch, counted by the driver's own command monitoring."""

from __future__ import annotations

import asyncio
import secrets
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import timedelta

import pytest_asyncio
from pymongo import AsyncMongoClient, monitoring

from service.crypto import SessionKeyCipher
from service.records import LoginReplay, NewLogin, SavedLogin, utc_now_ms
from service.settings import Settings
from service.store import Store
from tests.conftest import SECRET_KEY
from tests.test_store_logins import new_login as plain_login

BATCH = 8


class Commands(monitoring.CommandListener):
    """Every command the client sends, by (name, collection)."""

    def __init__(self) -> None:
        self.sent: Counter[tuple[str, str]] = Counter()

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        collection = event.command.get(event.command_name)
        self.sent[event.command_name, collection if isinstance(collection, str) else ""] += 1

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


@pytest_asyncio.fixture
async def counted(settings: Settings) -> AsyncIterator[tuple[Store, Commands]]:
    """A store (cap 10) whose client reports every command it sends."""
    listener = Commands()
    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(
        settings.mongodb_uri or "", tz_aware=True, event_listeners=[listener]
    )
    store = Store(client[settings.database], SessionKeyCipher(SECRET_KEY), max_sessions_per_user=10)
    await store.ensure_indexes()
    yield store, listener
    await store.close()
    await client.close()


def new_login(openid: str) -> NewLogin:
    """A login of `openid` (app A) with a fresh token and code to keep its answer under."""
    token = secrets.token_urlsafe(32)
    return replace(plain_login(openid), replay=LoginReplay(secrets.token_hex(32), "owner", token))


async def log_in(store: Store, logins: list[NewLogin]) -> None:
    """What Sessions does for each login, all at once: claim the code, then save the login."""
    now = utc_now_ms()

    async def one(login: NewLogin) -> None:
        assert login.replay is not None
        claimed = await store.claim_login_code(
            login.replay.code_id,
            login.replay.owner,
            lease_until=now + timedelta(seconds=30),
            expires_at=now + timedelta(minutes=5),
        )
        assert claimed is None
        await store.save_login(login)

    await asyncio.gather(*(one(login) for login in logins))


async def test_a_batch_of_new_users_costs_four_commands(
    counted: tuple[Store, Commands],
) -> None:
    """8 new users at once: one claims write, one upsert, one insert, one kept-answers write."""
    store, commands = counted
    commands.sent.clear()
    await log_in(store, [new_login(f"new-{i}") for i in range(BATCH)])
    assert commands.sent == Counter(
        {("update", "login_codes"): 2, ("update", "users"): 1, ("insert", "sessions"): 1}
    )


async def test_a_batch_of_returning_users_reads_them_and_keeps_the_cap(
    counted: tuple[Store, Commands],
) -> None:
    """Returning users: besides the four, one find of the users and one trim read (no delete
    while every user is within the cap)."""
    store, commands = counted
    openids = [f"back-{i}" for i in range(BATCH)]
    await log_in(store, [new_login(openid) for openid in openids])
    commands.sent.clear()
    await log_in(store, [new_login(openid) for openid in openids])
    assert commands.sent == Counter(
        {
            ("update", "login_codes"): 2,
            ("update", "users"): 1,
            ("find", "users"): 1,
            ("insert", "sessions"): 1,
            ("aggregate", "sessions"): 1,
        }
    )


async def test_kept_answers_ride_with_the_claims_written_beside_them(
    counted: tuple[Store, Commands],
) -> None:
    """Answers of one batch and claims of the next that wait together go in one write."""
    store, commands = counted
    first = [new_login(f"first-{i}") for i in range(BATCH)]
    await log_in(store, first)
    records = [await store.find_session(login.session_id) for login in first]
    answers = [
        (login.replay, SavedLogin(record, new_user=False))
        for login, record in zip(first, records, strict=True)
        if login.replay is not None and record is not None
    ]
    now = utc_now_ms()
    commands.sent.clear()
    claims = [
        store.claim_login_code(
            secrets.token_hex(32),
            "next",
            lease_until=now + timedelta(seconds=30),
            expires_at=now + timedelta(minutes=5),
        )
        for _ in range(BATCH)
    ]
    outcomes = await asyncio.gather(store.login_codes.keep(answers, None), *claims)
    assert outcomes[1:] == [None] * BATCH
    assert commands.sent == Counter({("update", "login_codes"): 1})
