"""`login_codes`: idempotent login, one document per code being (or having been) exchanged.

A code is claimed before it goes to WeChat (insert-if-absent: of the processes
that claim one code, exactly one wins), and its answer is kept under it, sealed,
so that the same code sent again gets the same session. Claims and kept answers
travel in one queue and so in one bulk write: under load, the answers of one
batch of logins ride with the claims of the next, one round trip for both.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

from bson import Binary
from pymongo import UpdateOne
from pymongo.errors import BulkWriteError

from service.batching import GroupCommit, QueueFull
from service.crypto import SessionKeyCipher
from service.deadlines import budget
from service.errors import InternalError, Overloaded, StoreUnavailable, WxLoginError
from service.metrics import Metrics
from service.records import LoginCode, LoginReplay, LoginResult, SavedLogin, UserRecord
from service.store._shared import (
    DUPLICATE_KEY,
    Database,
    Document,
    durable,
    latest_deadline,
    log,
    outage,
    primary,
    timed,
    translated,
)

# A wx.login() code is valid 5 minutes: its claim and kept answer live as long.
CODE_LIFETIME = timedelta(minutes=5)


def code_id_of(app_id: str, code: str) -> str:
    """What a code is kept under: its SHA-256 with the app's (the code itself is never stored)."""
    return hashlib.sha256(f"{app_id}\n{code}".encode()).hexdigest()


class _Claim(NamedTuple):
    """One login's claim of its code (see LoginCodes.claim)."""

    code_id: str
    owner: str
    lease_until: datetime
    expires_at: datetime
    deadline: float | None


class _Answer(NamedTuple):
    """A login's answer to keep under its code, sealed (see LoginCodes.keep)."""

    code_id: str
    owner: str
    sealed: bytes
    deadline: float | None


class LoginCodes:
    """Claims of codes, their kept answers and final failures."""

    def __init__(
        self,
        db: Database,
        cipher: SessionKeyCipher,
        metrics: Metrics | None,
        *,
        max_batch: int,
        max_waiting: int | None,
        batch_interval: float,
    ) -> None:
        # Durable: a kept answer hands a token out again, like the session it names;
        # the claims in the same write are durable with it (a claim lost in a crash
        # would cost one more WeChat call, answered "code used").
        self._codes = durable(db, "login_codes")
        self._primary = primary(self._codes)
        self._cipher = cipher
        self._metrics = metrics
        self._writes: GroupCommit[_Claim | _Answer, LoginCode | None] = GroupCommit(
            self._write,
            max_batch=max_batch,
            max_waiting=max_waiting,
            min_interval=batch_interval,
        )

    async def ensure_indexes(self) -> None:
        """A code lives 5 minutes; its document (and the answer sealed in it) no longer."""
        await self._codes.create_index("expires_at", expireAfterSeconds=0, name="expires_at_ttl")

    async def close(self) -> None:
        """Finish the claims and answers already submitted."""
        await self._writes.aclose()

    async def claim(
        self,
        code_id: str,
        owner: str,
        *,
        lease_until: datetime,
        expires_at: datetime,
        deadline: float | None = None,
    ) -> LoginCode | None:
        """Claim a code for `owner` to exchange (None), or say how it stands: claimed by
        another, done (the answer sealed in it) or failed."""
        seconds = budget(deadline, default=float("inf"))
        if seconds <= 0:
            raise StoreUnavailable("no time left for the session store before the deadline")
        claim = _Claim(code_id, owner, lease_until, expires_at, deadline)
        try:
            # asyncio.timeout, not wait_for: no task of its own for each call.
            async with asyncio.timeout(None if seconds == float("inf") else seconds):
                return await self._writes.submit(claim)
        except TimeoutError:
            raise StoreUnavailable() from None
        except QueueFull:
            raise Overloaded("too many logins wait for the session store; retry later") from None

    async def keep(
        self,
        answers: Sequence[tuple[LoginReplay, SavedLogin]],
        deadline: float | None,
    ) -> None:
        """Seal each answer under its code, so the same code sent again gets it again.

        Best effort: the logins succeeded either way; a code whose answer was not
        kept stays claimed until its lease ends, then a retry exchanges it again
        (and WeChat says it was used).
        """
        # Futures, not submit() coroutines: gather wraps each coroutine in a task of
        # its own, a task per login for nothing.
        # All sealed before any is queued: a failure here leaves none half-submitted.
        sealed = [
            _Answer(replay.code_id, replay.owner, self._seal(replay, saved), deadline)
            for replay, saved in answers
        ]
        outcomes: list[object] = []
        pending: list[asyncio.Future[LoginCode | None]] = []
        for answer in sealed:
            try:
                pending.append(self._writes.enqueue(answer))
            except (QueueFull, RuntimeError) as refused:  # full, or closed: as a failed write
                outcomes.append(refused)
        outcomes += await asyncio.gather(*pending, return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, asyncio.CancelledError):
                raise outcome
            if isinstance(outcome, Exception):
                # Any failure, ours or the queue's (full, closed, a crashed batch): the
                # sessions are stored and their logins answered all the same.
                outage.log(
                    logging.WARNING,
                    "keep answers",
                    "keeping login answers for replays failed (%s)",
                    getattr(outcome, "reason", type(outcome).__name__),
                )

    def _seal(self, replay: LoginReplay, saved: SavedLogin) -> bytes:
        user = saved.session.user
        answer = {
            "token": replay.token,
            "expires_at_ms": int(saved.session.expires_at.timestamp() * 1000),
            "user": {
                "user_id": user.user_id,
                "app_id": user.app_id,
                "openid": user.openid,
                "unionid": user.unionid,
                "account_id": user.account_id,
            },
            "new_user": saved.new_user,
        }
        return self._cipher.seal(json.dumps(answer), answer_aad(replay.code_id))

    async def _write(self, items: Sequence[_Claim | _Answer]) -> list[LoginCode | Exception | None]:
        operations = [
            UpdateOne(
                {"_id": item.code_id},
                {
                    "$setOnInsert": {
                        "state": "pending",
                        "owner": item.owner,
                        "lease_until": item.lease_until,
                        "expires_at": item.expires_at,
                    }
                },
                upsert=True,
            )
            if isinstance(item, _Claim)
            else UpdateOne(
                {"_id": item.code_id, "owner": item.owner, "state": "pending"},
                {"$set": {"state": "done", "result": Binary(item.sealed)}},
            )
            for item in items
        ]
        claims = {index for index, item in enumerate(items) if isinstance(item, _Claim)}
        results: list[LoginCode | Exception | None] = [None] * len(items)
        inserted: set[int] = set()
        found: dict[str, LoginCode] = {}
        taken: list[int] = []
        try:
            async with (
                timed(self._metrics, "write_login_codes"),
                translated(latest_deadline(items)),
            ):
                try:
                    written = await self._codes.bulk_write(operations, ordered=False)
                    inserted.update(written.upserted_ids or {})
                except BulkWriteError as error:
                    inserted.update(u["index"] for u in error.details.get("upserted", []))
                    if error.details.get("writeConcernErrors"):
                        raise  # maybe written, not durably: fails them all
                    for failure in error.details.get("writeErrors", []):
                        # Two claims racing to insert one code: the loser finds it taken.
                        if failure.get("code") != DUPLICATE_KEY:
                            log.error(
                                "login code write failed: MongoDB code %s", failure.get("code")
                            )
                            results[failure["index"]] = InternalError()
                taken = [i for i in claims if i not in inserted and results[i] is None]
                if taken:
                    cursor = self._primary.find({"_id": {"$in": [items[i].code_id for i in taken]}})
                    found = {doc["_id"]: _login_code(doc) async for doc in cursor}
        except WxLoginError as error:
            return [type(error)() for _ in items]
        for index in taken:
            code_id = items[index].code_id
            # Gone between the write and the read (released, or swept): try again.
            results[index] = found.get(code_id, LoginCode(code_id, "gone"))
        return results

    async def find(self, code_id: str, *, deadline: float | None = None) -> LoginCode | None:
        """How a claimed code stands now (from the primary), or None if it has no document."""
        async with timed(self._metrics, "find_login_code"), translated(deadline):
            doc = await self._primary.find_one({"_id": code_id})
        return None if doc is None else _login_code(doc)

    async def take_over(
        self,
        code_id: str,
        owner: str,
        *,
        now: datetime,
        lease_until: datetime,
        deadline: float | None = None,
    ) -> bool:
        """Claim a code whose owner's lease ran out (it crashed, or never finished); True if won."""
        async with timed(self._metrics, "take_over_login_code"), translated(deadline):
            result = await self._codes.update_one(
                {"_id": code_id, "state": "pending", "lease_until": {"$lte": now}},
                {"$set": {"owner": owner, "lease_until": lease_until}},
            )
        return bool(result.modified_count == 1)

    async def fail(
        self,
        code_id: str,
        owner: str,
        reason: str,
        metadata: dict[str, str],
        *,
        deadline: float | None = None,
    ) -> None:
        """Keep a final failure (invalid, used...): the same code gets the same error again."""
        async with timed(self._metrics, "fail_login_code"), translated(deadline):
            await self._codes.update_one(
                {"_id": code_id, "owner": owner, "state": "pending"},
                {"$set": {"state": "failed", "reason": reason, "metadata": metadata}},
            )

    async def release(self, code_id: str, owner: str, *, deadline: float | None = None) -> None:
        """Give a claim up after a failure worth retrying (WeChat or MongoDB unavailable)."""
        async with timed(self._metrics, "release_login_code"), translated(deadline):
            await self._codes.delete_one({"_id": code_id, "owner": owner, "state": "pending"})

    def open_answer(self, code: LoginCode) -> LoginResult:
        """The answer kept under a done code; InternalError if it cannot be unsealed."""
        try:
            answer = json.loads(self._cipher.open(code.result, answer_aad(code.code_id)))
            user = answer["user"]
            return LoginResult(
                token=answer["token"],
                expires_at=datetime.fromtimestamp(answer["expires_at_ms"] / 1000, UTC),
                user=UserRecord(
                    user["user_id"],
                    user["app_id"],
                    user["openid"],
                    user["unionid"],
                    user.get("account_id", ""),
                ),
                new_user=bool(answer["new_user"]),
            )
        except Exception:
            log.error("a kept login answer cannot be unsealed (WXLOGIN_SECRET_KEY changed?)")
            raise InternalError() from None


def _login_code(doc: Document) -> LoginCode:
    result = doc.get("result")
    return LoginCode(
        code_id=str(doc["_id"]),
        state=str(doc.get("state", "")),
        owner=str(doc.get("owner", "")),
        lease_until=doc.get("lease_until"),
        result=b"" if result is None else bytes(result),
        reason=str(doc.get("reason", "")),
        metadata={str(k): str(v) for k, v in (doc.get("metadata") or {}).items()},
    )


def answer_aad(code_id: str) -> str:
    """What a kept login answer is bound to: its code; it can't be moved to another."""
    return f"login_code:{code_id}"
