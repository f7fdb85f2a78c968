"""Sessions: log in with a WeChat code, check a token (renewing it), revoke it."""

from __future__ import annotations

import asyncio
import functools
import logging
import secrets
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from datetime import datetime, timedelta

from runtime import log_context
from runtime.ratelimited_log import RateLimitedLog
from service import crypto
from service.apps import resolve_app
from service.cache import SessionCache, UnknownTokens
from service.callers import REVOKE_BY_USER_ID, authorize_app, current_caller
from service.deadlines import budget
from service.errors import (
    BadRequest,
    CallerForbidden,
    CodeInvalid,
    CodeUsed,
    InternalError,
    SessionExpired,
    SessionInvalid,
    UserBlocked,
    WeChatUnavailable,
    WxLoginError,
    from_reason,
)
from service.limits import LoginRates
from service.records import (
    LoginCode,
    LoginReplay,
    LoginResult,
    NewLogin,
    SessionRecord,
    UserRecord,
    utc_now_ms,
)
from service.session_keys import UserSessionKeys
from service.store import CODE_LIFETIME, Store, code_id_of, is_user_id
from service.wechat import WeChatClient

log = logging.getLogger("service.auth")
_quiet = RateLimitedLog(log)

# WeChat's codes are 32 characters; anything far longer is not a code.
_MAX_CODE_LENGTH = 256
# How long a claim of a code stands before another process may take it over:
# longer than an exchange can take (WeChat's bounded retries, then MongoDB). An
# exchange ends with its first caller's deadline, so with one the lease ends a
# margin after it: a process killed mid-exchange holds the code no longer than
# it could have used it, and a retry on another process takes over within its own.
_CLAIM_LEASE = timedelta(seconds=30)
_CLAIM_MARGIN = timedelta(seconds=1)
# Waiting for another process's exchange: polls from 10 ms, doubling, up to 200 ms.
_FIRST_POLL = 0.01
_MAX_POLL = 0.2


class Sessions:
    """Login, CheckSession and RevokeSession rules, independent of gRPC."""

    def __init__(
        self,
        store: Store,
        wechat: WeChatClient,
        apps: Mapping[str, str],
        *,
        session_ttl: int,
        session_max_ttl: int | None = None,
        cache: SessionCache,
        unknown: UnknownTokens | None = None,
        login_rates: LoginRates | None = None,
        session_keys: UserSessionKeys | None = None,
        now: Callable[[], datetime] = utc_now_ms,
    ) -> None:
        self._store = store
        self._wechat = wechat
        self._apps = apps
        # Sliding expiry: `session_ttl` idle, renewed by use up to `session_max_ttl`
        # after the login (None: as long as `session_ttl`, so never renewed).
        self._session_ttl = timedelta(seconds=session_ttl)
        self._session_max_ttl = timedelta(seconds=max(session_max_ttl or 0, session_ttl))
        # A check renews a session with less than half its idle lifetime left: at
        # most one renewal per session per half idle lifetime.
        self._renew_within = self._session_ttl / 2
        # Sessions whose renewal write is out, and the tasks writing them.
        self._renewing: set[str] = set()
        self._renewal_tasks: set[asyncio.Task[None]] = set()
        # code id -> the exchange of that code running in this process.
        self._exchanges: dict[str, asyncio.Task[LoginResult]] = {}
        self._cache = cache
        # Sessions the store ends by itself (beyond the cap) must not be answered from memory.
        store.on_sessions_ended(cache.drop_many)
        # Nor sessions of a user whose account was just linked: their user changed.
        store.on_users_linked(cache.evict_users)
        # Not `or`: an empty one is falsy (it has a length).
        self._unknown = UnknownTokens(0) if unknown is None else unknown
        self._login_rates = login_rates
        # The login's key is now the user's current one (the store wrote it with the login).
        self._session_keys = session_keys
        self._now = now

    async def login(self, app_id: str, code: str, *, deadline: float | None) -> LoginResult:
        """Exchange the code with WeChat, upsert the user and open a session."""
        app_id = resolve_app(self._apps, app_id)
        # Before WeChat: a caller outside its grant must not spend the app's quota.
        authorize_app(app_id)
        if not code:
            raise BadRequest("code is empty")
        if len(code) > _MAX_CODE_LENGTH:
            raise BadRequest("code is too long to be a wx.login() code")
        if self._login_rates is not None:
            self._login_rates.admit(app_id, current_caller())
        code_id = code_id_of(app_id, code)
        # One exchange per code: callers in this process with the same code share
        # it; other processes wait for its answer in login_codes. Detached from the
        # first caller (within its deadline), so that when that caller goes away
        # the answer is still kept for its retry.
        exchange = self._exchanges.get(code_id)
        # The exchange is bounded by its first caller's deadline; others, by their own.
        seconds = None
        if exchange is None:
            exchange = asyncio.create_task(self._login_once(app_id, code, code_id, deadline))
            self._exchanges[code_id] = exchange
            exchange.add_done_callback(functools.partial(self._exchange_done, code_id))
        elif deadline is not None:
            seconds = max(budget(deadline, default=float("inf")), 0)
        try:
            if seconds is None:
                # The exchange's first caller, or one without a deadline: no wait_for
                # (a coroutine more per Login) when there is nothing to time.
                return await asyncio.shield(exchange)
            return await asyncio.wait_for(asyncio.shield(exchange), seconds)
        except TimeoutError:
            # Only a caller that joined an exchange started with a later deadline.
            raise WeChatUnavailable("a login with this code is still in progress; retry") from None
        except WxLoginError as error:
            # A new exception per caller: one shared instance would grow its traceback.
            raise type(error)(error.message, **error.metadata) from None

    def _exchange_done(self, code_id: str, exchange: asyncio.Task[LoginResult]) -> None:
        if self._exchanges.get(code_id) is exchange:
            del self._exchanges[code_id]
        if not exchange.cancelled():
            exchange.exception()  # retrieved: its callers may all have gone

    async def _login_once(
        self, app_id: str, code: str, code_id: str, deadline: float | None
    ) -> LoginResult:
        """Claim the code and exchange it, or answer what the exchange that has it answered."""
        owner = secrets.token_hex(8)
        while True:
            now = self._now()
            state = await self._store.claim_login_code(
                code_id,
                owner,
                lease_until=now + _lease(deadline),
                expires_at=now + CODE_LIFETIME,
                deadline=deadline,
            )
            if state is None:
                return await self._exchange(app_id, code, code_id, owner, deadline)
            if state.state == "pending" and not self._lease_over(state):
                state = await self._await_exchange(code_id, deadline)
            if state is None or state.state == "gone":
                continue  # released after a failure worth retrying: claim it again
            if state.state == "done":
                return self._replayed(state)
            if state.state == "failed":
                raise from_reason(state.reason, state.metadata)
            if state.state != "pending":
                log.error("login code in an unknown state %r", state.state[:20])
                raise InternalError()
            # Its owner's lease ran out (it crashed, or is stuck): take it over.
            now = self._now()
            if await self._store.take_over_login_code(
                code_id, owner, now=now, lease_until=now + _lease(deadline), deadline=deadline
            ):
                return await self._exchange(app_id, code, code_id, owner, deadline)

    def _lease_over(self, state: LoginCode) -> bool:
        return state.lease_until is None or state.lease_until <= self._now()

    async def _await_exchange(self, code_id: str, deadline: float | None) -> LoginCode | None:
        """Poll the code another process exchanges until it is answered or its lease ends.

        WECHAT_UNAVAILABLE (retryable) if the deadline comes first.
        """
        pause = _FIRST_POLL
        while True:
            if budget(deadline, default=pause) < pause:
                raise WeChatUnavailable("a login with this code is still in progress; retry")
            await asyncio.sleep(pause)
            pause = min(pause * 2, _MAX_POLL)
            state = await self._store.find_login_code(code_id)
            if state is None or state.state != "pending" or self._lease_over(state):
                return state

    def _replayed(self, state: LoginCode) -> LoginResult:
        """The answer of the first login with this code, again: same token, same everything."""
        kept = self._store.open_login_answer(state)
        log_context.note_user(kept.user.user_id)
        log.info("login replayed for the same code user_id=%s", kept.user.user_id)
        return kept

    async def _exchange(
        self, app_id: str, code: str, code_id: str, owner: str, deadline: float | None
    ) -> LoginResult:
        """As the code's claimant: WeChat, then the user and the session, the answer kept."""
        try:
            wx = await self._wechat.code2session(app_id, code, deadline=deadline)
        except (CodeInvalid, CodeUsed, UserBlocked) as error:
            # Final: the same code sent again gets the same answer, without WeChat.
            await _best_effort(
                self._store.fail_login_code(code_id, owner, error.reason, dict(error.metadata))
            )
            raise
        except Exception:
            # Worth retrying (WeChat unavailable...): the next request claims it anew.
            await _best_effort(self._store.release_login_code(code_id, owner))
            raise
        now = self._now()
        token = crypto.new_token()
        try:
            saved = await self._store.save_login(
                NewLogin(
                    app_id=app_id,
                    openid=wx.openid,
                    unionid=wx.unionid,
                    session_id=crypto.token_id(token),
                    session_key=wx.session_key,
                    created_at=now,
                    expires_at=now + min(self._session_ttl, self._session_max_ttl),
                    deadline=deadline,
                    replay=LoginReplay(code_id, owner, token),
                )
            )
        except Exception:
            await _best_effort(self._store.release_login_code(code_id, owner))
            raise
        # Refused by the cache if the store already ended it (newer logins of the
        # user raced it past the cap).
        self._cache.put(saved.session)
        user = saved.session.user
        if self._session_keys is not None:
            self._session_keys.note(user, wx.session_key)
        log_context.note_user(user.user_id)
        log.info("login user_id=%s app_id=%s new_user=%s", user.user_id, app_id, saved.new_user)
        return LoginResult(token, saved.session.expires_at, user, saved.new_user)

    def check_in_memory(self, token: str) -> SessionRecord | None:
        """`check` when memory can answer: the live session or its error; None: `check_stored`.

        Synchronous, so that CheckSession answered from the cache (the hot path)
        runs no coroutine of its own.
        """
        if not token:
            raise BadRequest("token is empty")
        if not crypto.is_well_formed_token(token):
            raise SessionInvalid()
        session_id = crypto.token_id(token)
        now = self._now()
        record = self._cache.get(session_id, now)
        if record is None:
            if session_id in self._unknown:
                raise SessionInvalid()
            return None
        return self._live(record, now)

    async def check(self, token: str, *, deadline: float | None = None) -> SessionRecord:
        """The live session behind a token, or SessionInvalid / SessionExpired."""
        return self.check_in_memory(token) or await self.check_stored(token, deadline=deadline)

    async def check_stored(self, token: str, *, deadline: float | None = None) -> SessionRecord:
        """`check` for a token `check_in_memory` could not answer (it said None): MongoDB.

        Only after `check_in_memory` (which checked the token's shape). Expiry is
        decided at the time of the answer, after the read.
        """
        session_id = crypto.token_id(token)
        record = await self._store.find_session(session_id, deadline=deadline)
        if record is None:
            self._unknown.add(session_id)
            raise SessionInvalid()
        self._cache.put(record)
        return self._live(record, self._now())

    def _live(self, record: SessionRecord, now: datetime) -> SessionRecord:
        """The session if it is live for this caller now, renewed when due."""
        log_context.note_user(record.user.user_id)
        # Only now is the app known: a backend of app A never sees app B's sessions.
        authorize_app(record.user.app_id)
        # The TTL monitor deletes expired documents only eventually: decide here.
        if now >= record.expires_at:
            raise SessionExpired()
        # One comparison on the hot path; the rest only once per half idle lifetime.
        if record.expires_at - now < self._renew_within:
            return self._renew(record, now)
        return record

    def _renew(self, record: SessionRecord, now: datetime) -> SessionRecord:
        """The session with its idle lifetime restarted (capped by the absolute one).

        Answered at once; the write goes out in the background (batched with
        other renewals, durable), off CheckSession's latency. If it fails, the
        cached record keeps answering until it ages out of the cache, and the
        next check after that renews again.
        """
        renewed_until = min(now + self._session_ttl, record.created_at + self._session_max_ttl)
        if renewed_until <= record.expires_at:
            return record  # at the absolute limit: the session ends when it says
        renewed = replace(record, expires_at=renewed_until)
        # So that the next checks here neither renew again nor answer the old expiry.
        self._cache.refresh(renewed)
        if record.session_id not in self._renewing:
            self._renewing.add(record.session_id)
            task = asyncio.create_task(self._write_renewal(renewed, now + self._renew_within))
            self._renewal_tasks.add(task)
            task.add_done_callback(self._renewal_tasks.discard)
        return renewed

    async def _write_renewal(self, renewed: SessionRecord, due_before: datetime) -> None:
        try:
            await self._store.renew_session(
                renewed.session_id, renewed.expires_at, due_before=due_before
            )
        except Exception as error:  # best effort: a later check renews again
            _quiet.log(
                logging.WARNING,
                f"renewal {type(error).__name__}",
                "renewing a session failed (%s); a later check retries",
                getattr(error, "reason", type(error).__name__),
            )
        finally:
            self._renewing.discard(renewed.session_id)

    async def settle(self) -> None:
        """Wait for the renewal writes started so far (tests; shutdown is Store.close)."""
        while self._renewal_tasks:
            await asyncio.wait(list(self._renewal_tasks))

    async def revoke(self, token: str, *, deadline: float | None = None) -> None:
        """End a session now; unknown and malformed tokens are already as good as revoked."""
        if not token:
            raise BadRequest("token is empty")
        if not crypto.is_well_formed_token(token):
            return
        session_id = crypto.token_id(token)
        caller = current_caller()
        if caller is not None and caller.apps is not None:
            # A caller limited to some apps may end only their sessions: look first
            # (one more read, for such callers only).
            record = self._cache.get(session_id, self._now()) or await self._store.find_session(
                session_id, deadline=deadline
            )
            if record is None:
                return
            authorize_app(record.user.app_id)
        self._cache.drop(session_id)
        await self._store.delete_session(session_id, deadline=deadline)

    async def learn_unionid(
        self, user: UserRecord, unionid: str, *, deadline: float | None = None
    ) -> UserRecord:
        """A unionid that arrived after the login (decrypted data): link the user's account now.

        Best effort, like linking at login: a failure is logged, and the next
        login with the unionid (or the next such decrypt) links.
        """
        if user.unionid == unionid and user.account_id:
            return user  # linked already: nothing to write
        if user.unionid and user.unionid != unionid:
            # WeChat gives one user one unionid for good: keep the first.
            log.warning("decrypted unionId differs from user_id=%s's; kept the old", user.user_id)
            return user
        try:
            linked = await self._store.link_unionid(user, unionid, deadline=deadline)
        except WxLoginError as error:
            log.warning("linking user_id=%s failed (%s)", user.user_id, error.reason)
            return user
        log.info("user_id=%s linked by decrypted data: account_id=%s", user.user_id, linked.account)
        return linked

    async def revoke_all_by_token(self, token: str, *, deadline: float | None = None) -> int:
        """Log the token's user out everywhere; how many live sessions ended.

        Only a live session may do this: a token that is malformed, unknown,
        revoked or expired ends nothing and answers 0, like RevokeSession
        answers success (and a retry after a lost answer gets 0, not an error).
        """
        if not token:
            raise BadRequest("token is empty")
        if not crypto.is_well_formed_token(token):
            return 0
        now = self._now()
        # From MongoDB, not the cache: rare, and it must not act on a session
        # another process revoked a moment ago.
        record = await self._store.find_session(crypto.token_id(token), deadline=deadline)
        if record is None or now >= record.expires_at:
            return 0
        authorize_app(record.user.app_id)
        return await self._revoke_user(record.user.user_id, now, deadline)

    async def revoke_all_of_user(self, user_id: str, *, deadline: float | None = None) -> int:
        """Log a user out everywhere by user_id (a grant of its own); how many sessions ended."""
        caller = current_caller()
        if caller is not None and not caller.may_call(REVOKE_BY_USER_ID):
            raise CallerForbidden(
                f"this caller may end sessions by token only (grant {REVOKE_BY_USER_ID})"
            )
        if not user_id:
            raise BadRequest("user_id is empty")
        if not is_user_id(user_id):
            raise BadRequest("user_id is not a wxlogin user id")
        if caller is not None and caller.apps is not None:
            # The app is known only from the user (one more read, for such callers only).
            user = await self._store.find_user(user_id, deadline=deadline)
            if user is None:
                return 0
            authorize_app(user.app_id)
        return await self._revoke_user(user_id, self._now(), deadline)

    async def _revoke_user(self, user_id: str, now: datetime, deadline: float | None) -> int:
        revoked = await self._store.delete_user_sessions(user_id, now=now, deadline=deadline)
        # After the write: a CheckSession here meanwhile may have cached one again.
        self._cache.drop_user(user_id)
        log_context.note_user(user_id)
        log.info("revoked all sessions user_id=%s revoked=%d", user_id, revoked)
        return revoked


async def _best_effort(write: Awaitable[None]) -> None:
    """A clean-up write whose failure must not replace the error being raised."""
    try:
        await write
    except WxLoginError as error:
        log.warning("login code clean-up failed (%s); its lease ends it", error.reason)


def _lease(deadline: float | None) -> timedelta:
    """How long a claim made now stands: to the exchange's deadline and a margin, at most
    _CLAIM_LEASE (and that long without a deadline)."""
    if deadline is None:
        return _CLAIM_LEASE
    left = timedelta(seconds=max(deadline - asyncio.get_running_loop().time(), 0.0))
    return min(_CLAIM_LEASE, left + _CLAIM_MARGIN)
