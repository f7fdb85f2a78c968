"""What every room of the store shares: the driver, write concerns, and error translation."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Protocol

import pymongo
from pymongo import AsyncMongoClient, ReadPreference, WriteConcern
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import (
    BulkWriteError,
    ConnectionFailure,
    PyMongoError,
    ServerSelectionTimeoutError,
)

from runtime.ratelimited_log import RateLimitedLog
from service.deadlines import budget
from service.errors import InternalError, StoreUnavailable
from service.metrics import Metrics

log = logging.getLogger("service.store")
# During an outage every call fails the same way: one line per kind of failure
# every 10 s, with the count of the others, says as much as thousands would.
outage = RateLimitedLog(log, 10.0)
quiet = RateLimitedLog(log)

Document = dict[str, Any]
MongoClient = AsyncMongoClient[Document]
Database = AsyncDatabase[Document]
Collection = AsyncCollection[Document]

DUPLICATE_KEY = 11000

# A write that hands a token to a caller, or revokes one, is journaled and (on a
# replica set) on a majority of members before we answer: a token handed out
# survives any crash or failover, a revocation acknowledged stays revoked.
# Without j, mongod flushes its journal only every ~100 ms: a SIGKILL right
# after a burst of logins lost every token of the burst (tests/test_durability.py).
DURABLE = WriteConcern(w="majority", j=True)


def connect(uri: str, *, server_selection_timeout_ms: int = 3000) -> MongoClient:
    """A client that fails fast when MongoDB is gone instead of hanging for 30 s.

    PyMongo's own asyncio client (motor's successor): its I/O runs on the event
    loop, so a call costs no hop to a thread pool and back (bench/README.md,
    "The MongoDB driver").
    """
    return AsyncMongoClient(
        uri,
        tz_aware=True,
        tzinfo=UTC,
        serverSelectionTimeoutMS=server_selection_timeout_ms,
        connectTimeoutMS=3000,
        socketTimeoutMS=10000,
        retryWrites=True,
    )


def durable(db: Database, name: str) -> Collection:
    """A collection whose writes are DURABLE."""
    return db.get_collection(name, write_concern=DURABLE)


def primary(collection: Collection) -> Collection:
    """The same collection read from the primary: what another process wrote a moment
    ago (majority-acknowledged) is there even when the URI prefers secondaries."""
    return collection.with_options(read_preference=ReadPreference.PRIMARY)


@asynccontextmanager
async def translated(deadline: float | None = None) -> AsyncIterator[None]:
    """Our errors, never pymongo's; with a caller deadline, the calls inside end before it.

    Without a deadline (start-up, health pings) pymongo's own timeouts bound the
    calls (`connect`). With one, pymongo.timeout() bounds server selection, the
    command and the majority wait together, and replaces
    serverSelectionTimeoutMS: a caller with time left waits out a replica-set
    election instead of failing after 3 s.
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
            # pymongo's tells the server (maxTimeMS) to give up too.
            async with asyncio.timeout(seconds):
                with pymongo.timeout(seconds):
                    yield
    except TimeoutError:
        outage.log(logging.WARNING, "deadline", "MongoDB did not answer before the deadline")
        raise StoreUnavailable() from None
    except (ConnectionFailure, ServerSelectionTimeoutError) as error:
        kind = type(error).__name__
        outage.log(logging.WARNING, kind, "MongoDB unavailable: %s", kind)
        raise StoreUnavailable() from None
    except PyMongoError as error:
        if error.timeout:  # the deadline came first: retryable, like an outage
            kind = type(error).__name__
            outage.log(logging.WARNING, kind, "MongoDB did not answer in time: %s", kind)
            raise StoreUnavailable() from None
        log.error("MongoDB error: %s", error)
        raise InternalError() from None


class _Timed:
    """Times one MongoDB operation for the metrics, by how it ended (see `translated`)."""

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


def timed(metrics: Metrics | None, operation: str) -> AbstractAsyncContextManager[None]:
    """Time `operation` when metrics are on; wraps `translated`, so it sees our errors."""
    return _NOT_TIMED if metrics is None else _Timed(metrics, operation)


def lost_insert_races(error: BulkWriteError) -> list[dict[str, Any]]:
    """The bulk write's errors if every one is a duplicate key (an upsert that lost an
    insert race, worth retrying once), else [] (the error stands)."""
    failures: list[dict[str, Any]] = error.details.get("writeErrors", [])
    if failures and all(f.get("code") == DUPLICATE_KEY for f in failures):
        return failures
    return []


class HasDeadline(Protocol):
    """Anything batched with its caller's deadline."""

    @property
    def deadline(self) -> float | None: ...


def latest_deadline(items: Sequence[HasDeadline]) -> float | None:
    """A batch may take as long as its most patient caller; None if one has no deadline."""
    deadlines = [item.deadline for item in items]
    if any(deadline is None for deadline in deadlines):
        return None
    return max(deadline for deadline in deadlines if deadline is not None)


def epoch(value: Any) -> float:
    """A stored datetime as epoch seconds (0 for none)."""
    return value.timestamp() if isinstance(value, datetime) else 0.0


def from_epoch(seconds: float) -> datetime:
    """Epoch seconds as a stored (UTC) datetime."""
    return datetime.fromtimestamp(seconds, UTC)
