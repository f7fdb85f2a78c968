"""The only code that touches MongoDB: users (with their current session_key), sessions, the
apps' shared access_tokens, linked accounts, login codes (idempotent login), the change
stream of ended sessions, and the indexes."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Collection, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from dataclasses import replace
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, NamedTuple

import pymongo
from bson import Binary, ObjectId
from cryptography.exceptions import InvalidTag
from motor.motor_asyncio import AsyncIOMotorClient, AsyncIOMotorDatabase
from pymongo import ASCENDING, DESCENDING, ReadPreference, UpdateMany, UpdateOne, WriteConcern
from pymongo.errors import (
    BulkWriteError,
    ConnectionFailure,
    DuplicateKeyError,
    OperationFailure,
    PyMongoError,
    ServerSelectionTimeoutError,
)

from runtime.ratelimited_log import RateLimitedLog
from service.batching import GroupCommit, QueueFull
from service.crypto import SessionKeyCipher, token_id
from service.deadlines import budget
from service.errors import InternalError, Overloaded, StoreUnavailable, WxLoginError
from service.metrics import Metrics
from service.records import (
    AccessTokenRecord,
    LoginCode,
    LoginResult,
    NewLogin,
    SavedLogin,
    SessionRecord,
    UserRecord,
)

log = logging.getLogger(__name__)
# During an outage every call fails the same way: one line per kind of failure
# every 10 s, with the count of the others, says as much as thousands would.
_outage = RateLimitedLog(log, 10.0)
_quiet = RateLimitedLog(log)

MotorDatabase = AsyncIOMotorDatabase[dict[str, Any]]
MotorClient = AsyncIOMotorClient[dict[str, Any]]

_DUPLICATE_KEY = 11000
_MAX_WAITING_RENEWALS = 10_000


# How long each getMore of the revocation change stream waits for events; one
# arriving meanwhile is returned at once.
_WATCH_AWAIT_MS = 1000
# A change stream that cannot go on from its token: the point is no longer in the
# oplog (ChangeStreamHistoryLost 286, ChangeStreamFatalError 280), or the stream was
# invalidated (the collection dropped or renamed: InvalidResumeToken 260).
_CANNOT_RESUME = frozenset({260, 280, 286})


class ChangeHistoryLost(Exception):
    """A change stream cannot resume where it broke off: events may have been missed."""


class _Claim(NamedTuple):
    """One login's claim of its code (see Store.claim_login_code)."""

    code_id: str
    owner: str
    lease_until: datetime
    expires_at: datetime
    deadline: float | None


class _Renewal(NamedTuple):
    """One session's sliding-expiry write (see Store.renew_session)."""

    session_id: str
    expires_at: datetime
    due_before: datetime


# "All the rest" for $slice, whose count must be a positive 32-bit int.
_MAX_INT32 = 2**31 - 1
# A write that hands a token to a caller, or revokes one, is journaled and (on a
# replica set) on a majority of members before we answer: a token handed out
# survives any crash or failover, a revocation acknowledged stays revoked.
# Without j, mongod flushes its journal only every ~100 ms: a SIGKILL right
# after a burst of logins lost every token of the burst (tests/test_durability.py).
DURABLE = WriteConcern(w="majority", j=True)


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
async def _translated(deadline: float | None = None) -> AsyncIterator[None]:
    """Our errors, never pymongo's; with a caller deadline, the calls inside end before it.

    Without a deadline (start-up, health pings) pymongo's own timeouts bound the
    calls (`connect`). With one, pymongo.timeout() bounds server selection, the
    command and the majority wait together (motor carries the setting into its
    executor thread), and replaces serverSelectionTimeoutMS: a caller with time
    left waits out a replica-set election instead of failing after 3 s.
    """
    seconds = None if deadline is None else budget(deadline, default=float("inf"))
    if seconds is not None and seconds <= 0:
        raise StoreUnavailable("no time left for the session store before the deadline")
    # MongoDB's error text can name hosts and internals: callers get our words only.
    try:
        if seconds is None:
            yield
        else:
            # asyncio's timeout is the hard stop: pymongo's server selection only
            # wakes every 500 ms, so alone it overshoots a deadline by up to that.
            # pymongo's makes the executor thread give up too, instead of running on.
            async with asyncio.timeout(seconds):
                with pymongo.timeout(seconds):
                    yield
    except TimeoutError:
        _outage.log(logging.WARNING, "deadline", "MongoDB did not answer before the deadline")
        raise StoreUnavailable() from None
    except (ConnectionFailure, ServerSelectionTimeoutError) as error:
        kind = type(error).__name__
        _outage.log(logging.WARNING, kind, "MongoDB unavailable: %s", kind)
        raise StoreUnavailable() from None
    except PyMongoError as error:
        if error.timeout:  # the deadline came first: retryable, like an outage
            kind = type(error).__name__
            _outage.log(logging.WARNING, kind, "MongoDB did not answer in time: %s", kind)
            raise StoreUnavailable() from None
        log.error("MongoDB error: %s", error)
        raise InternalError() from None


class _Timed:
    """Times one MongoDB operation for the metrics, by how it ended (see `_translated`)."""

    __slots__ = ("_metrics", "_operation", "_started")

    def __init__(self, metrics: Metrics, operation: str) -> None:
        self._metrics = metrics
        self._operation = operation
        self._started = 0.0

    async def __aenter__(self) -> None:
        self._started = time.perf_counter()

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if kind is None:
            outcome = "ok"
        elif issubclass(kind, StoreUnavailable):
            outcome = "unavailable"
        elif issubclass(kind, asyncio.CancelledError):
            outcome = "cancelled"
        else:
            outcome = "error"
        self._metrics.mongodb_operation(
            self._operation, outcome, time.perf_counter() - self._started
        )


_NOT_TIMED: AbstractAsyncContextManager[None] = nullcontext()


def _timed(metrics: Metrics | None, operation: str) -> AbstractAsyncContextManager[None]:
    """Time `operation` when metrics are on; wraps `_translated`, so it sees our errors."""
    return _NOT_TIMED if metrics is None else _Timed(metrics, operation)


class Store:
    """Users and sessions in MongoDB; session_keys sealed with the server's secret key."""

    def __init__(
        self,
        db: MotorDatabase,
        cipher: SessionKeyCipher,
        *,
        max_batch: int = 256,
        max_waiting_logins: int | None = None,
        max_sessions_per_user: int | None = None,
        batch_interval: float = 0.0,
        metrics: Metrics | None = None,
    ) -> None:
        self._db = db
        self._metrics = metrics
        # None: no cap (tests of other things, tools); the service always sets one.
        self._max_sessions_per_user = max_sessions_per_user
        self._ended_listeners: list[Callable[[Sequence[str]], None]] = []
        self._linked_listeners: list[Callable[[Sequence[str]], None]] = []
        self._users = db.get_collection("users", write_concern=DURABLE)
        # motor's stubs type read_preference as the class; pymongo passes instances.
        self._primary_users = self._users.with_options(
            read_preference=ReadPreference.PRIMARY  # type: ignore[arg-type]
        )
        self._sessions = db.get_collection("sessions", write_concern=DURABLE)
        # One document per app; durable, so a failover never brings back a replaced token.
        self._access_tokens = db.get_collection("access_tokens", write_concern=DURABLE)
        self._primary_access_tokens = self._access_tokens.with_options(
            read_preference=ReadPreference.PRIMARY  # type: ignore[arg-type]
        )
        # motor's stubs type read_preference as the class; pymongo passes instances.
        self._primary_sessions = self._sessions.with_options(
            read_preference=ReadPreference.PRIMARY  # type: ignore[arg-type]
        )
        # Linked accounts: one document per unionid (see _link).
        self._accounts = db.get_collection("accounts", write_concern=DURABLE)
        self._primary_accounts = self._accounts.with_options(
            read_preference=ReadPreference.PRIMARY  # type: ignore[arg-type]
        )
        # Idempotent login: one document per code being (or having been) exchanged.
        # A claim needs no journal: lost in a crash, it costs at most one more
        # WeChat call, which WeChat answers "code used". The kept answer is
        # durable, like the session it hands out again.
        self._login_codes = db.get_collection("login_codes", write_concern=WriteConcern(w=1))
        self._durable_login_codes = db.get_collection("login_codes", write_concern=DURABLE)
        self._primary_login_codes = self._login_codes.with_options(
            read_preference=ReadPreference.PRIMARY  # type: ignore[arg-type]
        )
        self._claims: GroupCommit[_Claim, LoginCode | None] = GroupCommit(
            self._write_claims,
            max_batch=max_batch,
            max_waiting=max_waiting_logins,
            min_interval=batch_interval,
        )
        self._cipher = cipher
        self._logins: GroupCommit[NewLogin, SavedLogin] = GroupCommit(
            self._write_logins,
            max_batch=max_batch,
            max_waiting=max_waiting_logins,
            min_interval=batch_interval,
            on_batch=None if metrics is None else metrics.login_batch_size.observe,
        )
        # Sliding expiry: renewals are fire-and-forget for CheckSession, and
        # written together when they come together.
        self._renewals: GroupCommit[_Renewal, None] = GroupCommit(
            self._write_renewals,
            max_batch=max_batch,
            # Beyond this, a renewal is dropped (and tried again at a later check).
            max_waiting=_MAX_WAITING_RENEWALS,
            min_interval=batch_interval,
        )

    async def ensure_indexes(self, expired_session_retention: int = 0) -> None:
        """Create the indexes the data model relies on (idempotent)."""
        async with _timed(self._metrics, "ensure_indexes"), _translated():
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
            # A code lives 5 minutes; its document (and the answer sealed in it) no longer.
            await self._login_codes.create_index(
                "expires_at", expireAfterSeconds=0, name="expires_at_ttl"
            )
            # A user's sessions newest first: the trim to WXLOGIN_MAX_SESSIONS_PER_USER.
            await self._sessions.create_index(
                [("user_id", ASCENDING), ("created_at", DESCENDING)], name="user_newest"
            )

    async def ping(self) -> None:
        """Raise StoreUnavailable unless MongoDB answers."""
        async with _timed(self._metrics, "ping"), _translated():
            await self._db.command("ping")

    async def save_login(self, login: NewLogin) -> SavedLogin:
        """Upsert the user and store the new session; `new_user` when this login created the user.

        Logins that arrive together are written together (service/batching.py):
        per batch one bulk upsert of the users, one read of the users that
        already existed (for their ids) and one insert of all the sessions,
        instead of two round trips per login.
        """
        seconds = budget(login.deadline, default=float("inf"))
        if seconds <= 0:
            raise StoreUnavailable("no time left for the session store before the deadline")
        try:
            # The caller stops waiting before its deadline; the batch write itself
            # is bounded by the latest deadline in its batch (see _write_logins).
            # A session written after its caller left is never handed out: harmless.
            return await asyncio.wait_for(
                self._logins.submit(login), None if seconds == float("inf") else seconds
            )
        except TimeoutError:
            _outage.log(
                logging.WARNING, "login wait", "login writes did not finish before their deadlines"
            )
            raise StoreUnavailable() from None
        except QueueFull:
            raise Overloaded("too many logins wait for the session store; retry later") from None

    @property
    def logins_waiting(self) -> int:
        """Logins submitted and not yet in a MongoDB write (the group-commit queue)."""
        return self._logins.waiting

    async def close(self) -> None:
        """Finish the logins and renewals already submitted; call before closing motor."""
        await self._claims.aclose()
        await self._logins.aclose()
        await self._renewals.aclose()

    async def renew_session(
        self, session_id: str, expires_at: datetime, *, due_before: datetime
    ) -> None:
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
            async with _timed(self._metrics, "renew_sessions"), _translated():
                await self._sessions.bulk_write(operations, ordered=False)
        except WxLoginError as error:
            return [type(error)() for _ in renewals]
        return [None] * len(renewals)

    async def _write_logins(self, logins: Sequence[NewLogin]) -> list[SavedLogin | Exception]:
        deadline = _latest_deadline(logins)
        try:
            users = await self._upsert_users(logins, deadline)
        except WxLoginError as error:
            return [type(error)() for _ in logins]
        users = await self._link_accounts(users, deadline)
        docs: list[dict[str, Any]] = []
        results: list[SavedLogin | Exception] = []
        for login in logins:
            user, _ = users[login.app_id, login.openid]
            sealed = self._cipher.seal(login.session_key, login.session_id)
            docs.append(
                {
                    "_id": login.session_id,
                    "user_id": ObjectId(user.user_id),
                    "app_id": user.app_id,
                    "openid": user.openid,
                    "unionid": user.unionid,
                    "account_id": user.account_id,
                    "session_key": Binary(sealed),
                    "created_at": login.created_at,
                    "expires_at": login.expires_at,
                }
            )
            record = SessionRecord(
                login.session_id, user, login.created_at, login.expires_at, sealed
            )
            results.append(SavedLogin(record, new_user=False))
        try:
            async with _timed(self._metrics, "insert_sessions"), _translated(deadline):
                try:
                    await self._sessions.insert_many(docs, ordered=False)
                except BulkWriteError as error:
                    # ordered=False: the others were inserted; fail just these.
                    for failure in error.details.get("writeErrors", []):
                        log.error("session insert failed: MongoDB code %s", failure.get("code"))
                        results[failure["index"]] = InternalError()
                    if error.details.get("writeConcernErrors"):
                        # Written, maybe, but not durably acknowledged: no token
                        # may be handed out on it. Fails the whole batch.
                        raise
        except WxLoginError as error:
            return [type(error)() for _ in logins]
        await self._trim_sessions({user.user_id for user, _ in users.values()}, deadline)
        # new_user goes to the first login of a new user that got its session
        # (the same new user may log in twice in one batch).
        unannounced = {key for key, (_, creator) in users.items() if creator is not None}
        for index, login in enumerate(logins):
            result = results[index]
            if (login.app_id, login.openid) in unannounced and isinstance(result, SavedLogin):
                results[index] = SavedLogin(result.session, new_user=True)
                unannounced.discard((login.app_id, login.openid))
        await self._keep_answers(logins, results, deadline)
        return results

    # -- idempotent login: login_codes ------------------------------------------------------

    async def claim_login_code(
        self,
        code_id: str,
        owner: str,
        *,
        lease_until: datetime,
        expires_at: datetime,
        deadline: float | None = None,
    ) -> LoginCode | None:
        """Claim a code for `owner` to exchange (None), or say how it stands: claimed by
        another, done (the answer sealed in it) or failed.

        An insert-if-absent: of the processes that claim one code, exactly one
        inserts. Claims that arrive together are one insert (group commit).
        """
        seconds = budget(deadline, default=float("inf"))
        if seconds <= 0:
            raise StoreUnavailable("no time left for the session store before the deadline")
        claim = _Claim(code_id, owner, lease_until, expires_at, deadline)
        try:
            return await asyncio.wait_for(
                self._claims.submit(claim), None if seconds == float("inf") else seconds
            )
        except TimeoutError:
            raise StoreUnavailable() from None
        except QueueFull:
            raise Overloaded("too many logins wait for the session store; retry later") from None

    async def _write_claims(self, claims: Sequence[_Claim]) -> list[LoginCode | Exception | None]:
        deadlines = [claim.deadline for claim in claims]
        deadline = None if None in deadlines else max(d for d in deadlines if d is not None)
        docs = [
            {
                "_id": claim.code_id,
                "state": "pending",
                "owner": claim.owner,
                "lease_until": claim.lease_until,
                "expires_at": claim.expires_at,
            }
            for claim in claims
        ]
        results: list[LoginCode | Exception | None] = [None] * len(claims)
        taken: list[int] = []
        found: dict[str, LoginCode] = {}
        try:
            async with _timed(self._metrics, "claim_login_codes"), _translated(deadline):
                try:
                    await self._login_codes.insert_many(docs, ordered=False)
                except BulkWriteError as error:
                    for failure in error.details.get("writeErrors", []):
                        if failure.get("code") == _DUPLICATE_KEY:
                            taken.append(failure["index"])
                        else:
                            log.error(
                                "login code claim failed: MongoDB code %s", failure.get("code")
                            )
                            results[failure["index"]] = InternalError()
                    if error.details.get("writeConcernErrors"):
                        raise
                if taken:
                    ids = [claims[index].code_id for index in taken]
                    cursor = self._primary_login_codes.find({"_id": {"$in": ids}})
                    found = {doc["_id"]: _login_code(doc) async for doc in cursor}
        except WxLoginError as error:
            return [type(error)() for _ in claims]
        for index in taken:
            code_id = claims[index].code_id
            # Gone between the insert and the read (released, or swept): try again.
            results[index] = found.get(code_id, LoginCode(code_id, "gone"))
        return results

    async def find_login_code(
        self, code_id: str, *, deadline: float | None = None
    ) -> LoginCode | None:
        """How a claimed code stands now (from the primary), or None if it has no document."""
        async with _timed(self._metrics, "find_login_code"), _translated(deadline):
            doc = await self._primary_login_codes.find_one({"_id": code_id})
        return None if doc is None else _login_code(doc)

    async def take_over_login_code(
        self,
        code_id: str,
        owner: str,
        *,
        now: datetime,
        lease_until: datetime,
        deadline: float | None = None,
    ) -> bool:
        """Claim a code whose owner's lease ran out (it crashed, or never finished); True if won."""
        async with _timed(self._metrics, "take_over_login_code"), _translated(deadline):
            result = await self._login_codes.update_one(
                {"_id": code_id, "state": "pending", "lease_until": {"$lte": now}},
                {"$set": {"owner": owner, "lease_until": lease_until}},
            )
        return bool(result.modified_count == 1)

    async def fail_login_code(
        self,
        code_id: str,
        owner: str,
        reason: str,
        metadata: dict[str, str],
        *,
        deadline: float | None = None,
    ) -> None:
        """Keep a final failure (invalid, used...): the same code gets the same error again."""
        async with _timed(self._metrics, "fail_login_code"), _translated(deadline):
            await self._login_codes.update_one(
                {"_id": code_id, "owner": owner, "state": "pending"},
                {"$set": {"state": "failed", "reason": reason, "metadata": metadata}},
            )

    async def release_login_code(
        self, code_id: str, owner: str, *, deadline: float | None = None
    ) -> None:
        """Give a claim up after a failure worth retrying (WeChat or MongoDB unavailable)."""
        async with _timed(self._metrics, "release_login_code"), _translated(deadline):
            await self._login_codes.delete_one({"_id": code_id, "owner": owner, "state": "pending"})

    def open_login_answer(self, code: LoginCode) -> LoginResult:
        """The answer kept under a done code; InternalError if it cannot be unsealed."""
        try:
            answer = json.loads(self._cipher.open(code.result, _login_code_aad(code.code_id)))
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

    async def _keep_answers(
        self,
        logins: Sequence[NewLogin],
        results: Sequence[SavedLogin | Exception],
        deadline: float | None,
    ) -> None:
        """Seal each answer under its code, so the same code sent again gets it again.

        Best effort: the logins succeeded either way; a code whose answer was not
        kept stays claimed until its lease ends, then a retry exchanges it again
        (and WeChat says it was used).
        """
        operations = []
        for login, result in zip(logins, results, strict=True):
            if login.replay is None or not isinstance(result, SavedLogin):
                continue
            code_id = login.replay.code_id
            user = result.session.user
            answer = {
                "token": login.replay.token,
                "expires_at_ms": int(result.session.expires_at.timestamp() * 1000),
                "user": {
                    "user_id": user.user_id,
                    "app_id": user.app_id,
                    "openid": user.openid,
                    "unionid": user.unionid,
                    "account_id": user.account_id,
                },
                "new_user": result.new_user,
            }
            sealed = self._cipher.seal(json.dumps(answer), _login_code_aad(code_id))
            operations.append(
                UpdateOne(
                    {"_id": code_id, "owner": login.replay.owner, "state": "pending"},
                    {"$set": {"state": "done", "result": Binary(sealed)}},
                )
            )
        if not operations:
            return
        try:
            async with _timed(self._metrics, "keep_login_answers"), _translated(deadline):
                await self._durable_login_codes.bulk_write(operations, ordered=False)
        except WxLoginError as error:
            _outage.log(
                logging.WARNING,
                "keep answers",
                "keeping login answers for replays failed (%s)",
                error.reason,
            )

    async def has_change_streams(self) -> bool:
        """True when MongoDB offers change streams: a replica set or a sharded cluster."""
        async with _translated():
            hello = await self._db.client.admin.command("hello")
        return "setName" in hello or hello.get("msg") == "isdbgrid"

    async def ended_sessions(
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
            async with self._sessions.watch(
                pipeline, resume_after=resume_after, max_await_time_ms=_WATCH_AWAIT_MS
            ) as stream:
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
            _outage.log(logging.WARNING, "watch", "revocation stream failed: code %s", error.code)
            raise StoreUnavailable() from None
        except PyMongoError as error:
            kind = type(error).__name__
            _outage.log(logging.WARNING, f"watch {kind}", "revocation stream broken: %s", kind)
            raise StoreUnavailable() from None

    def on_sessions_ended(self, listener: Callable[[Sequence[str]], None]) -> None:
        """Call `listener` with the ids of sessions this store ends on its own (the cap).

        Called before the logins of the batch are answered, so a cache can
        refuse them before anyone puts them in.
        """
        self._ended_listeners.append(listener)

    async def _trim_sessions(self, user_ids: Collection[str], deadline: float | None) -> None:
        """End each user's live sessions beyond the cap, the newest kept; tell the listeners.

        Runs after every batch's insert, in every process. Logins of one user
        racing in several processes still end within the cap: all trims order
        sessions the same way (created_at, then _id), a session among the
        newest `cap` is never ended by any of them, and of two trims the later
        read sees both inserts (each process inserts before it reads), so it
        ends everything else. Until then, for a moment, there may be more.
        Best effort: the logins are stored either way, and the next login of
        the user trims again.
        """
        if self._max_sessions_per_user is None or not user_ids:
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
            {"$project": {"excess": {"$slice": ["$ids", self._max_sessions_per_user, _MAX_INT32]}}},
            {"$match": {"excess.0": {"$exists": True}}},
        ]
        try:
            async with _timed(self._metrics, "trim_sessions"), _translated(deadline):
                # From the primary (the default unless the URI says otherwise): a
                # secondary may not have this batch's sessions yet.
                cursor = self._primary_sessions.aggregate(pipeline)
                ended = [session_id async for doc in cursor for session_id in doc["excess"]]
                if ended:
                    await self._sessions.delete_many({"_id": {"$in": ended}})
        except WxLoginError as error:
            _outage.log(
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

    async def _upsert_users(
        self, logins: Sequence[NewLogin], deadline: float | None
    ) -> dict[tuple[str, str], tuple[UserRecord, NewLogin | None]]:
        """Each (app_id, openid) of the batch -> its user, and the login that created it."""
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
                        **self._user_key_fields(
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
        async with _timed(self._metrics, "upsert_users"), _translated(deadline):
            # Two racing upserts of a new key can both try to insert; the loser
            # gets a duplicate key error and, retried, finds the winner's document.
            for attempt in (1, 2):
                try:
                    result = await self._users.bulk_write(
                        [operations[i] for i in pending], ordered=False
                    )
                    created.update(pending[i] for i in result.upserted_ids or {})
                    break
                except BulkWriteError as error:
                    created.update(pending[u["index"]] for u in error.details.get("upserted", []))
                    # Only duplicate-key races are retried; a write-concern error
                    # (no writeErrors) or anything else fails the batch.
                    failures = _lost_insert_races(error)
                    if attempt == 2 or not failures:
                        raise
                    pending = [pending[f["index"]] for f in failures]
            stored = await self._find_users([keys[i] for i in range(len(keys)) if i not in created])
        users: dict[tuple[str, str], tuple[UserRecord, NewLogin | None]] = {}
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

    async def _find_users(
        self, keys: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], dict[str, Any]]:
        if not keys:
            return {}
        openids: dict[str, list[str]] = {}
        for app_id, openid in keys:
            openids.setdefault(app_id, []).append(openid)
        query = {
            "$or": [{"app_id": app_id, "openid": {"$in": ids}} for app_id, ids in openids.items()]
        }
        projection = {"_id": 1, "app_id": 1, "openid": 1, "unionid": 1, "account_id": 1}
        # One batch for all of them: one round trip.
        # From the primary: a user just created by another process must be there.
        # motor's stubs type this as the ReadPreference class, pymongo passes instances.
        users = self._users.with_options(read_preference=ReadPreference.PRIMARY)  # type: ignore[arg-type]
        cursor = users.find(query, projection, batch_size=len(keys))
        return {(doc["app_id"], doc["openid"]): doc async for doc in cursor}

    async def find_session(
        self, session_id: str, *, deadline: float | None = None
    ) -> SessionRecord | None:
        """The stored session, expired or not (the caller compares expires_at)."""
        async with _timed(self._metrics, "find_session"), _translated(deadline):
            # From the primary: a session majority-written a moment ago is there
            # even when the URI prefers secondaries.
            doc = await self._primary_sessions.find_one({"_id": session_id})
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
            _quiet.log(
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
            async with _timed(self._metrics, "reseal"), _translated(deadline):
                await self._sessions.update_one(
                    {"_id": session_id, "session_key": Binary(sealed)},
                    {"$set": {"session_key": Binary(resealed)}},
                )
        except WxLoginError as error:
            log.warning("re-sealing a session_key failed (%s); retried at next use", error.reason)
            return sealed
        log.debug("re-sealed the session_key of user_id=%s under the current key", user.user_id)
        return resealed

    async def delete_session(self, session_id: str, *, deadline: float | None = None) -> None:
        """Remove a session (log out), durably; removing an absent one is not an error."""
        async with _timed(self._metrics, "delete_session"), _translated(deadline):
            await self._sessions.delete_one({"_id": session_id})

    async def delete_user_sessions(
        self, user_id: str, *, now: datetime, deadline: float | None = None
    ) -> int:
        """End every live session of a user (log out everywhere), durably; how many were live.

        Expired ones are left to the TTL monitor: they are over already, and
        counting them would tell the user about sessions that were not ended now.
        """
        async with _timed(self._metrics, "delete_user_sessions"), _translated(deadline):
            result = await self._sessions.delete_many(
                {"user_id": ObjectId(user_id), "expires_at": {"$gt": now}}
            )
        return int(result.deleted_count)

    async def find_user(self, user_id: str, *, deadline: float | None = None) -> UserRecord | None:
        """The user with this id, or None (from the primary: it may have just been created)."""
        async with _timed(self._metrics, "find_user"), _translated(deadline):
            doc = await self._primary_users.find_one(
                {"_id": ObjectId(user_id)},
                {"app_id": 1, "openid": 1, "unionid": 1, "account_id": 1},
            )
        if doc is None:
            return None
        return UserRecord(
            str(doc["_id"]),
            doc["app_id"],
            doc["openid"],
            doc.get("unionid"),
            doc.get("account_id", ""),
        )

    # -- linked accounts ------------------------------------------------------------------

    async def _link_accounts(
        self,
        users: dict[tuple[str, str], tuple[UserRecord, NewLogin | None]],
        deadline: float | None,
    ) -> dict[tuple[str, str], tuple[UserRecord, NewLogin | None]]:
        """The batch's users, those with a unionid but no account yet linked to theirs.

        Best effort: a login is not failed for its account; the next one links it.
        """
        unlinked = [user for user, _ in users.values() if user.unionid and not user.account_id]
        if not unlinked:
            return users
        new = {user.user_id for user, creator in users.values() if creator is not None}
        try:
            linked = await self._link(unlinked, deadline, without_sessions=new)
        except WxLoginError as error:
            _outage.log(logging.WARNING, "link", "linking accounts failed (%s)", error.reason)
            return users
        return {
            key: (linked.get(user.user_id, user), creator) for key, (user, creator) in users.items()
        }

    async def link_unionid(
        self, user: UserRecord, unionid: str, *, deadline: float | None = None
    ) -> UserRecord:
        """A unionid learnt after the login (decrypted data): kept on the user, account linked."""
        async with _timed(self._metrics, "set_unionid"), _translated(deadline):
            await self._users.update_one(
                {"_id": ObjectId(user.user_id)}, {"$set": {"unionid": unionid}}
            )
        with_unionid = replace(user, unionid=unionid, account_id="")
        linked = await self._link([with_unionid], deadline)
        return linked.get(user.user_id, with_unionid)

    async def _link(
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
        async with _timed(self._metrics, "link_accounts"), _translated(deadline):
            for attempt in (1, 2):
                try:
                    await self._accounts.bulk_write(operations, ordered=False)
                    break
                except BulkWriteError as error:
                    # Two processes opening one account: the loser joins the winner's.
                    failures = _lost_insert_races(error)
                    if attempt == 2 or not failures:
                        raise
                    operations = [operations[f["index"]] for f in failures]
            cursor = self._primary_accounts.find({"_id": {"$in": list(members)}}, {"account_id": 1})
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
                await self._users.bulk_write(user_updates, ordered=False)
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

    def on_users_linked(self, listener: Callable[[Sequence[str]], None]) -> None:
        """Call `listener` with the user_ids whose account this store just linked."""
        self._linked_listeners.append(listener)

    def _user_key_fields(
        self, app_id: str, openid: str, session_key: str, login: NewLogin | None = None
    ) -> dict[str, Any]:
        sealed = self._cipher.seal(session_key, _user_key_aad(app_id, openid))
        at = datetime.now(UTC) if login is None else login.created_at
        return {"session_key": Binary(sealed), "session_key_at": at}

    async def find_user_session_key(
        self, user: UserRecord, *, deadline: float | None = None
    ) -> str | None:
        """The user's current session_key, unsealed; None for a user stored before there was one.

        Read from the primary: a key another process stored a moment ago must be seen.
        """
        async with _timed(self._metrics, "find_user_session_key"), _translated(deadline):
            doc = await self._primary_users.find_one(
                {"_id": ObjectId(user.user_id)}, {"session_key": 1}
            )
        if doc is None or doc.get("session_key") is None:
            return None
        sealed = bytes(doc["session_key"])
        aad = _user_key_aad(user.app_id, user.openid)
        try:
            session_key = self._cipher.open(sealed, aad)
        except Exception:
            log.error("the session_key of user_id=%s cannot be unsealed", user.user_id)
            raise InternalError() from None
        if not self._cipher.is_current(sealed):
            # Like sessions' keys (_reseal): moved to the current secret key on use,
            # conditional on the blob still being the one read, best effort.
            try:
                async with _timed(self._metrics, "reseal"), _translated(deadline):
                    await self._users.update_one(
                        {"_id": ObjectId(user.user_id), "session_key": Binary(sealed)},
                        {"$set": {"session_key": Binary(self._cipher.seal(session_key, aad))}},
                    )
            except WxLoginError as error:
                log.warning("re-sealing a user's session_key failed (%s)", error.reason)
        return session_key

    async def set_user_session_key(
        self, user: UserRecord, session_key: str, *, deadline: float | None = None
    ) -> None:
        """Make `session_key` the user's current one (a code exchange or a reset brought it)."""
        fields = self._user_key_fields(user.app_id, user.openid, session_key)
        async with _timed(self._metrics, "set_user_session_key"), _translated(deadline):
            await self._users.update_one({"_id": ObjectId(user.user_id)}, {"$set": fields})

    async def find_access_token(
        self, app_id: str, *, deadline: float | None = None
    ) -> AccessTokenRecord | None:
        """The app's shared access_token document (token "" before the first fetch), or None."""
        async with _timed(self._metrics, "find_access_token"), _translated(deadline):
            doc = await self._primary_access_tokens.find_one({"_id": app_id})
        return None if doc is None else self._access_token_record(doc)

    async def claim_access_token_refresh(
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
            "$or": [{"lease_until": {"$lte": _datetime(now)}}, {"lease_until": None}],
        }
        update = {"$set": {"lease_owner": owner, "lease_until": _datetime(now + lease_seconds)}}
        async with _timed(self._metrics, "claim_access_token"), _translated(deadline):
            try:
                result = await self._access_tokens.update_one(query, update, upsert=version == 0)
            except DuplicateKeyError:
                return False  # the document exists at another version, or is leased
        return result.matched_count == 1 or result.upserted_id is not None

    async def save_access_token(
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
            "token": Binary(self._cipher.seal(token, _access_token_aad(app_id))),
            "token_sha256": token_id(token),
            "expires_at": _datetime(expires_at),
            "refresh_at": _datetime(refresh_at),
            "version": version + 1,
            "lease_until": _datetime(0),
            "fetched_at": datetime.now(UTC),
        }
        if forced is not None:
            at, day, count = forced
            fields.update(last_force_at=_datetime(at), force_day=day, forces_that_day=count)
        async with _timed(self._metrics, "save_access_token"), _translated(deadline):
            doc = await self._access_tokens.find_one_and_update(
                {"_id": app_id, "version": version, "lease_owner": owner},
                {"$set": fields},
                return_document=pymongo.ReturnDocument.AFTER,
            )
        return None if doc is None else self._access_token_record(doc)

    async def release_access_token_lease(
        self, app_id: str, *, owner: str, deadline: float | None = None
    ) -> None:
        """Give the refresh lease back early (the fetch failed): another process may try."""
        async with _timed(self._metrics, "release_access_token"), _translated(deadline):
            await self._access_tokens.update_one(
                {"_id": app_id, "lease_owner": owner}, {"$set": {"lease_until": _datetime(0)}}
            )

    def _access_token_record(self, doc: dict[str, Any]) -> AccessTokenRecord:
        app_id = str(doc["_id"])
        token = ""
        if doc.get("token") is not None:
            try:
                token = self._cipher.open(bytes(doc["token"]), _access_token_aad(app_id))
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
            expires_at=_epoch(doc.get("expires_at")),
            refresh_at=_epoch(doc.get("refresh_at")),
            version=int(doc.get("version", 0)),
            lease_owner=doc.get("lease_owner"),
            lease_until=_epoch(doc.get("lease_until")),
            last_force_at=None if last_force is None else _epoch(last_force),
            force_day=int(doc.get("force_day", -1)),
            forces_that_day=int(doc.get("forces_that_day", 0)),
        )

    def open_session_key(self, record: SessionRecord) -> str:
        """Unseal a session's session_key; a tampered blob is an internal error."""
        try:
            return self._cipher.open(record.sealed_session_key, record.session_id)
        except Exception:
            # Wrong WXLOGIN_SECRET_KEY or a tampered document: say so to operators.
            log.error("session_key of user_id=%s cannot be unsealed", record.user.user_id)
            raise InternalError() from None


def _login_code(doc: dict[str, Any]) -> LoginCode:
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


def _login_code_aad(code_id: str) -> str:
    """What a kept login answer is bound to: its code; it can't be moved to another."""
    return f"login_code:{code_id}"


def is_user_id(text: str) -> bool:
    """True when `text` has the shape of a user_id (an ObjectId's 24 hex digits)."""
    # ObjectId.is_valid alone also takes any 12-character string (as raw bytes).
    return len(text) == 24 and ObjectId.is_valid(text)


def _access_token_aad(app_id: str) -> str:
    """What an app's sealed access_token is bound to: it can't be moved to another app."""
    return f"access_token:{app_id}"


def _datetime(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


def _epoch(value: Any) -> float:
    return value.timestamp() if isinstance(value, datetime) else 0.0


def _user_key_aad(app_id: str, openid: str) -> str:
    """What a user's sealed session_key is bound to: the blob can't move to another user.

    Not the user's _id: a login's upsert seals the key before it knows the id.
    The "user:" prefix keeps it apart from a session's binding (its hex id).
    """
    return f"user:{app_id}:{openid}"


def _lost_insert_races(error: BulkWriteError) -> list[dict[str, Any]]:
    """The bulk write's errors if every one is a duplicate key (an upsert that lost an
    insert race, worth retrying once), else [] (the error stands)."""
    failures: list[dict[str, Any]] = error.details.get("writeErrors", [])
    if failures and all(f.get("code") == _DUPLICATE_KEY for f in failures):
        return failures
    return []


def _latest_deadline(logins: Sequence[NewLogin]) -> float | None:
    """The batch may take as long as its most patient caller; None if one has no deadline."""
    deadlines = [login.deadline for login in logins]
    if any(deadline is None for deadline in deadlines):
        return None
    return max(deadline for deadline in deadlines if deadline is not None)


def _touched_fields(login: NewLogin, unionid: str | None) -> dict[str, Any]:
    fields: dict[str, Any] = {"last_login_at": login.created_at}
    if unionid:
        fields["unionid"] = unionid  # a later login without one keeps the old
    return fields
