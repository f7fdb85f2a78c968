"""The access-token broker: one access_token per app, shared by every service process.

WeChat's access_token is per app, and a new one can invalidate the old: when
several servers each fetch their own they take turns breaking each other
("40001 invalid credential, access_token is invalid or not latest"). WeChat
recommends one central token service; this is it.

- The token lives in MongoDB (`access_tokens`, one document per app, token
  sealed at rest). Every process reads it from there and serves it from memory
  until its refresh time, then reads again.
- A refresh is a compare-and-set: a process takes the app's lease only if the
  token is still at the version it saw and nobody holds the lease. Exactly one
  process calls WeChat per refresh; the others wait for the new version.
- Proactive: each process that has served an app's token wakes at the token's
  refresh time (`refresh_before` seconds before expiry, inside WeChat's
  5-minute overlap window, where normal-mode stable_token mints the next token
  while the current one still works); one of them wins the lease and refreshes.
  Callers never wait for a refresh except for the very first token.
- `rejected_token` (WeChat said 40001/40014/42001 to it): replaced only if it is
  still the current token, so a storm of rejections of one token makes one
  refresh. Normal mode first; force mode (which invalidates the token for every
  holder at once) only when normal mode hands back the very token that was
  rejected, at most once per `force_interval` and `force_per_day` times a day.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TypeVar

from service import crypto
from service.apps import resolve_app
from service.callers import authorize_app, current_caller
from service.deadlines import budget
from service.errors import (
    BadRequest,
    CallerForbidden,
    RateLimited,
    StoreUnavailable,
    WxLoginError,
)
from service.metrics import Metrics
from service.records import AccessTokenRecord
from service.store import Store
from service.wechat import AccessTokenRejected
from service.wechat.stable_token import FetchedToken, StableToken

log = logging.getLogger("service.access_tokens")

T = TypeVar("T")

# WeChat's rules for force mode.
FORCE_INTERVAL = 30.0
FORCE_PER_DAY = 20
# WeChat's daily quotas reset at midnight Beijing time (UTC+8).
_DAY_OFFSET = 8 * 3600
# How often a process that is not refreshing looks again while a refresh is due.
_RECHECK = 1.0
# A caller waiting for another process's fetch polls MongoDB this often.
_POLL = 0.05
# Without a caller deadline, waiting for a token (someone else's fetch) ends after this.
_DEFAULT_WAIT = 10.0
# The longest an access token can be long: WeChat's are 512 characters at most.
_MAX_TOKEN_LENGTH = 2048


@dataclass(frozen=True)
class AccessToken:
    """A token to hand out, and until when it may be used."""

    token: str = field(repr=False)
    expires_at: datetime


@dataclass
class _Cached:
    record: AccessTokenRecord
    serve_until: float  # epoch seconds


class AccessTokens:
    """GetAccessToken's rules and the shared refresh; `call` runs a WeChat call with a token."""

    def __init__(
        self,
        store: Store,
        stable_token: StableToken,
        apps: Mapping[str, str],
        *,
        refresh_before: float = 240.0,
        lease_seconds: float = 30.0,
        force_interval: float = FORCE_INTERVAL,
        force_per_day: int = FORCE_PER_DAY,
        clock: Callable[[], float] = time.time,
        owner: str | None = None,
        granted_only: bool = False,
        metrics: Metrics | None = None,
    ) -> None:
        self._store = store
        self._metrics = metrics
        self._fetch = stable_token
        self._apps = apps
        self._refresh_before = refresh_before
        # A token with less than this left is not handed out: the caller could not use it.
        self._min_left = min(60.0, refresh_before / 4)
        self._lease_seconds = lease_seconds
        self._force_interval = force_interval
        self._force_per_day = force_per_day
        self._clock = clock
        self._owner = owner or uuid.uuid4().hex
        # True: GetAccessToken needs an authenticated caller (see service/callers.py,
        # which grants it only by name); set when no callers file guards a
        # non-loopback listen address.
        self._granted_only = granted_only
        self._cache: dict[str, _Cached] = {}
        self._locks: dict[str, asyncio.Lock] = {app_id: asyncio.Lock() for app_id in apps}
        # Apps whose token this process keeps fresh: those it has been asked for.
        self._known: set[str] = set()
        self._wake = asyncio.Event()
        self._refresher: asyncio.Task[None] | None = None
        self.fetches = 0  # stable_token calls made by this process (tests, metrics)

    # -- the RPC ------------------------------------------------------------------------------

    async def get(
        self, app_id: str, rejected_token: str = "", *, deadline: float | None = None
    ) -> AccessToken:
        """The app's current token; with `rejected_token`, replace that one if still current."""
        if self._granted_only and current_caller() is None:
            raise CallerForbidden(
                "GetAccessToken is only for callers granted it by name in WXLOGIN_CALLERS_FILE"
            )
        app_id = resolve_app(self._apps, app_id)
        authorize_app(app_id)
        if len(rejected_token) > _MAX_TOKEN_LENGTH:
            raise BadRequest("rejected_token is too long to be an access_token")
        if rejected_token:
            record = await self._replace(app_id, crypto.token_id(rejected_token), deadline)
        else:
            record = await self._current(app_id, deadline)
        return AccessToken(record.token, datetime.fromtimestamp(record.expires_at, UTC))

    async def call(
        self,
        app_id: str,
        request: Callable[[str], Awaitable[T]],
        *,
        deadline: float | None = None,
    ) -> T:
        """Run a WeChat call with the app's token; rejected, refresh it once and retry once."""
        record = await self._current(app_id, deadline)
        try:
            return await request(record.token)
        except AccessTokenRejected as rejected:
            log.warning(
                "WeChat rejected the access_token of app_id=%s (errcode %s); replacing it",
                app_id,
                rejected.metadata.get("errcode", "?"),
            )
        record = await self._replace(app_id, record.token_sha256, deadline)
        return await request(record.token)

    # -- reading ------------------------------------------------------------------------------

    async def _current(self, app_id: str, deadline: float | None) -> AccessTokenRecord:
        """The token to use now: from memory, else MongoDB, else fetched (first time only)."""
        cached = self._cache.get(app_id)
        if cached is not None and self._clock() < cached.serve_until:
            return cached.record
        async with self._locks[app_id]:
            cached = self._cache.get(app_id)
            if cached is not None and self._clock() < cached.serve_until:
                return cached.record
            record = await self._store.find_access_token(app_id, deadline=deadline)
            if record is None or not self._usable(record):
                record = await self._refresh(app_id, record, force=False, deadline=deadline)
            self._remember(record)
            return record

    def _usable(self, record: AccessTokenRecord) -> bool:
        return bool(record.token) and record.expires_at - self._clock() > self._min_left

    def _remember(self, record: AccessTokenRecord) -> None:
        """Serve `record` from memory until its refresh time (then briefly, while one is due)."""
        now = self._clock()
        if now < record.refresh_at:
            serve_until = record.refresh_at
        else:
            # Due: some process is refreshing it; look again soon, meanwhile it still works.
            serve_until = min(now + _RECHECK, record.expires_at - self._min_left)
        self._cache[record.app_id] = _Cached(record, serve_until)
        if self._metrics is not None:
            self._metrics.access_token_expires(record.app_id, record.expires_at)
        if record.app_id not in self._known:
            self._known.add(record.app_id)
        self._wake.set()

    # -- replacing a rejected token ---------------------------------------------------------

    async def _replace(
        self, app_id: str, rejected_sha256: str, deadline: float | None
    ) -> AccessTokenRecord:
        """Replace the rejected token if it is still current; otherwise the current one."""
        async with self._locks[app_id]:
            record = await self._store.find_access_token(app_id, deadline=deadline)
            if (
                record is not None
                and self._usable(record)
                and record.token_sha256 != rejected_sha256
            ):
                # Already replaced (by us or another process), or never ours.
                self._remember(record)
                return record
            # Still the current one (or there is none): normal mode first.
            record = await self._refresh(app_id, record, force=False, deadline=deadline)
            if record.token_sha256 == rejected_sha256:
                # WeChat's normal mode still hands out the token it rejected: only a
                # forced refresh gets a working one.
                self._check_force_allowed(record)
                record = await self._refresh(app_id, record, force=True, deadline=deadline)
            self._remember(record)
            return record

    def _check_force_allowed(self, record: AccessTokenRecord) -> None:
        now = self._clock()
        if record.last_force_at is not None:
            wait = record.last_force_at + self._force_interval - now
            if wait > 0:
                raise RateLimited(
                    "the rejected access_token can be replaced only by a forced refresh, "
                    "which WeChat allows every 30 s; retry shortly",
                    retry_after_seconds=str(max(1, math.ceil(wait))),
                )
        if record.force_day == _day(now) and record.forces_that_day >= self._force_per_day:
            log.error(
                "app_id=%s: WeChat keeps handing out a rejected access_token and today's "
                "forced refreshes (%d) are spent",
                record.app_id,
                self._force_per_day,
            )
            raise RateLimited(
                "the rejected access_token needs a forced refresh and today's are spent",
                retry_after_seconds=str(max(1, math.ceil(_next_day(now) - now))),
            )

    # -- refreshing ---------------------------------------------------------------------------

    async def _refresh(
        self,
        app_id: str,
        seen: AccessTokenRecord | None,
        *,
        force: bool,
        deadline: float | None,
    ) -> AccessTokenRecord:
        """A token newer than `seen`: fetched by this process if it wins the lease, else waited for.

        Raises StoreUnavailable when no token came before the deadline.
        """
        version = 0 if seen is None else seen.version
        loop = asyncio.get_running_loop()
        give_up = loop.time() + budget(deadline, default=_DEFAULT_WAIT)
        while True:
            claimed = await self._store.claim_access_token_refresh(
                app_id,
                owner=self._owner,
                version=version,
                now=self._clock(),
                lease_seconds=self._lease_seconds,
                deadline=deadline,
            )
            if claimed:
                return await self._fetch_and_save(app_id, version, seen, force, deadline)
            # Another process holds the lease, or has already written a newer token.
            record = await self._store.find_access_token(app_id, deadline=deadline)
            if record is not None and record.version != version and record.token:
                return record
            if record is not None and record.lease_until <= self._clock():
                # The holder gave up or died: claim at the version now stored.
                version, seen = record.version, record
                continue
            if loop.time() + _POLL >= give_up:
                raise StoreUnavailable("no access_token yet: another process is fetching it")
            await asyncio.sleep(_POLL)

    async def _fetch_and_save(
        self,
        app_id: str,
        version: int,
        seen: AccessTokenRecord | None,
        force: bool,
        deadline: float | None,
    ) -> AccessTokenRecord:
        try:
            self.fetches += 1
            fetched = await self._fetch(app_id, force=force, deadline=deadline)
        except BaseException as error:
            if self._metrics is not None and not isinstance(error, asyncio.CancelledError):
                self._metrics.access_token_refresh(app_id, "error")
            # Let another process (or a later call) try at once rather than after the lease.
            with contextlib.suppress(WxLoginError):  # else the lease expires on its own
                await self._store.release_access_token_lease(app_id, owner=self._owner)
            raise
        if self._metrics is not None:
            self._metrics.access_token_refresh(app_id, "ok")
        now = self._clock()
        expires_at = now + fetched.expires_in
        same = seen is not None and seen.token_sha256 == crypto.token_id(fetched.access_token)
        refresh_at = self._next_refresh(now, expires_at, same=same and not force)
        forced = None
        if force:
            day = _day(now)
            count = seen.forces_that_day + 1 if seen is not None and seen.force_day == day else 1
            forced = (now, day, count)
            log.warning("app_id=%s: forced access_token refresh (%d today)", app_id, count)
        saved = await self._store.save_access_token(
            app_id,
            owner=self._owner,
            version=version,
            token=fetched.access_token,
            expires_at=expires_at,
            refresh_at=refresh_at,
            forced=forced,
            deadline=deadline,
        )
        if saved is None:
            # Our lease ran out and another process wrote meanwhile: theirs wins.
            record = await self._store.find_access_token(app_id, deadline=deadline)
            if record is None or not record.token:
                raise StoreUnavailable("the access_token could not be stored")
            return record
        log.info(
            "app_id=%s: access_token %s, %d s left",
            app_id,
            "unchanged" if same else "refreshed",
            fetched.expires_in,
        )
        return saved

    def _next_refresh(self, now: float, expires_at: float, *, same: bool) -> float:
        """When to refresh a token just fetched.

        A new token: `refresh_before` seconds before it expires, inside WeChat's
        overlap window. The same token again (asked too early, or clocks
        disagree): a little later, never in a loop.
        """
        if not same:
            return expires_at - self._refresh_before
        left = expires_at - now
        return now + max(1.0, min(30.0, left / 4))

    # -- the proactive refresher --------------------------------------------------------------

    def start(self) -> None:
        """Start keeping the known apps' tokens fresh in the background."""
        if self._refresher is None:
            self._refresher = asyncio.create_task(self._refresh_forever())

    async def aclose(self) -> None:
        """Stop the background refresher (bounded: a refresh in flight is cancelled)."""
        if self._refresher is not None:
            self._refresher.cancel()
            await asyncio.wait([self._refresher], timeout=5)
            self._refresher = None

    async def _refresh_forever(self) -> None:
        while True:
            self._wake.clear()
            now = self._clock()
            due = [
                cached.record
                for app_id in self._known
                if (cached := self._cache.get(app_id)) is not None
            ]
            soonest = min((record.refresh_at for record in due), default=now + 60.0)
            if soonest > now:
                # Woken early when a token is remembered (it may be due sooner).
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), min(soonest - now, 60.0))
                continue
            for record in due:
                if record.refresh_at <= self._clock():
                    await self._refresh_one(record.app_id)

    async def _refresh_one(self, app_id: str) -> None:
        """Refresh the app's token if it is due and no one else is at it; never raises."""
        try:
            async with self._locks[app_id]:
                record = await self._store.find_access_token(app_id)
                if record is None:
                    self._known.discard(app_id)
                    return
                now = self._clock()
                if now >= record.refresh_at and record.lease_until <= now:
                    claimed = await self._store.claim_access_token_refresh(
                        app_id,
                        owner=self._owner,
                        version=record.version,
                        now=now,
                        lease_seconds=self._lease_seconds,
                    )
                    if claimed:
                        record = await self._fetch_and_save(
                            app_id, record.version, record, False, None
                        )
                self._remember(record)
            if self._clock() < record.refresh_at:
                return
            # Someone else holds the lease: look again shortly, not in a loop.
        except asyncio.CancelledError:
            raise
        except WxLoginError as error:
            log.warning(
                "proactive access_token refresh of app_id=%s failed: %s", app_id, error.reason
            )
        except Exception:
            log.exception("proactive access_token refresh of app_id=%s crashed", app_id)
        await asyncio.sleep(_RECHECK)


def _day(epoch: float) -> int:
    """WeChat's day number (quotas reset at midnight Beijing time)."""
    return int((epoch + _DAY_OFFSET) // 86400)


def _next_day(epoch: float) -> float:
    return (_day(epoch) + 1) * 86400 - _DAY_OFFSET


__all__ = ["AccessToken", "AccessTokens", "FetchedToken"]
