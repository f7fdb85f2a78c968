"""Sessions: log in with a WeChat code, check a token, revoke it."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from runtime import log_context
from service import crypto
from service.apps import resolve_app
from service.cache import SessionCache, UnknownTokens
from service.callers import authorize_app, current_caller
from service.errors import BadRequest, SessionExpired, SessionInvalid
from service.limits import LoginRates
from service.records import NewLogin, SessionRecord, UserRecord, utc_now_ms
from service.session_keys import UserSessionKeys
from service.store import Store
from service.wechat import WeChatClient

log = logging.getLogger("service.auth")

# WeChat's codes are 32 characters; anything far longer is not a code.
_MAX_CODE_LENGTH = 256


@dataclass(frozen=True)
class LoginResult:
    """A new session: the token is shown to the caller once and never stored."""

    token: str
    expires_at: datetime
    user: UserRecord
    new_user: bool

    def __repr__(self) -> str:
        return f"LoginResult(user={self.user!r}, new_user={self.new_user})"


class Sessions:
    """Login, CheckSession and RevokeSession rules, independent of gRPC."""

    def __init__(
        self,
        store: Store,
        wechat: WeChatClient,
        apps: Mapping[str, str],
        *,
        session_ttl: int,
        cache: SessionCache,
        unknown: UnknownTokens | None = None,
        login_rates: LoginRates | None = None,
        session_keys: UserSessionKeys | None = None,
        now: Callable[[], datetime] = utc_now_ms,
    ) -> None:
        self._store = store
        self._wechat = wechat
        self._apps = apps
        self._session_ttl = timedelta(seconds=session_ttl)
        self._cache = cache
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
        wx = await self._wechat.code2session(app_id, code, deadline=deadline)
        now = self._now()
        token = crypto.new_token()
        saved = await self._store.save_login(
            NewLogin(
                app_id=app_id,
                openid=wx.openid,
                unionid=wx.unionid,
                session_id=crypto.token_id(token),
                session_key=wx.session_key,
                created_at=now,
                expires_at=now + self._session_ttl,
                deadline=deadline,
            )
        )
        self._cache.put(saved.session)
        user = saved.session.user
        if self._session_keys is not None:
            self._session_keys.note(user, wx.session_key)
        log_context.note_user(user.user_id)
        log.info("login user_id=%s app_id=%s new_user=%s", user.user_id, app_id, saved.new_user)
        return LoginResult(token, saved.session.expires_at, user, saved.new_user)

    async def check(self, token: str, *, deadline: float | None = None) -> SessionRecord:
        """The live session behind a token, or SessionInvalid / SessionExpired."""
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
            record = await self._store.find_session(session_id, deadline=deadline)
            if record is None:
                self._unknown.add(session_id)
                raise SessionInvalid()
            self._cache.put(record)
        log_context.note_user(record.user.user_id)
        # Only now is the app known: a backend of app A never sees app B's sessions.
        authorize_app(record.user.app_id)
        # The TTL monitor deletes expired documents only eventually: decide here.
        if now >= record.expires_at:
            raise SessionExpired()
        return record

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
