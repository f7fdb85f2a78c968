"""The emulator's model of WeChat's ``stable_token``: one access_token per app, as WeChat keeps it.

Normal mode (``force_refresh`` false) answers the app's current token until
``overlap`` seconds (WeChat: 5 minutes) before it expires; the first call inside
that window mints a new one, and the old one keeps working until its own expiry,
so every holder has time to move over. Force mode mints a new token at once and
invalidates every earlier one (40001 for them afterwards); it is allowed at most
``force_per_day`` times a day (45009 beyond) and ``force_interval`` seconds apart
(45011 sooner).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass

# WeChat's answers for a token that cannot be used, and their messages.
SUPERSEDED = 40001  # invalidated by a forced refresh (or by the dev API)
UNKNOWN = 40014  # never issued
EXPIRED = 42001
MISSING = 41001
DAILY_LIMIT = 45009
TOO_FREQUENT = 45011

ERRMSG: dict[int, str] = {
    SUPERSEDED: "invalid credential, access_token is invalid or not latest",
    UNKNOWN: "invalid access_token",
    EXPIRED: "access_token expired",
    MISSING: "access_token missing",
    DAILY_LIMIT: "reach max api daily quota limit",
    TOO_FREQUENT: "api freq out of limit",
}


@dataclass
class _Token:
    appid: str
    value: str
    expires_at: float
    invalid: bool = False  # superseded by a forced refresh, or invalidated by the dev API


@dataclass
class _AppTokens:
    current: _Token | None = None
    last_force_at: float | None = None
    force_day: int = -1
    forces_today: int = 0


class AccessTokenError(Exception):
    """A token or stable_token failure, answered as ``{"errcode", "errmsg"}`` by the caller."""

    def __init__(self, errcode: int) -> None:
        self.errcode = errcode
        super().__init__(errcode)


class AccessTokens:
    """Every app's access_token; all methods synchronous, so each is atomic on the event loop."""

    def __init__(
        self,
        clock: Callable[[], float],
        *,
        ttl: float = 7200.0,
        overlap: float = 300.0,
        force_per_day: int = 20,
        force_interval: float = 30.0,
    ) -> None:
        self._clock = clock
        self.ttl = ttl
        self.overlap = overlap
        self._force_per_day = force_per_day
        self._force_interval = force_interval
        self._apps: dict[str, _AppTokens] = {}
        # Every token ever issued, so that an old one answers 40001 or 42001, not 40014.
        self._issued: dict[str, _Token] = {}

    def _mint(self, appid: str, now: float) -> _Token:
        token = _Token(appid, "emu_" + secrets.token_urlsafe(48), now + self.ttl)
        self._issued[token.value] = token
        return token

    def stable_token(self, appid: str, *, force_refresh: bool) -> tuple[str, int]:
        """The app's token and its seconds left (see the module docstring); appid is checked."""
        now = self._clock()
        app = self._apps.setdefault(appid, _AppTokens())
        if force_refresh:
            day = int(now // 86400)
            if day != app.force_day:
                app.force_day, app.forces_today = day, 0
            if app.forces_today >= self._force_per_day:
                raise AccessTokenError(DAILY_LIMIT)
            if app.last_force_at is not None and now - app.last_force_at < self._force_interval:
                raise AccessTokenError(TOO_FREQUENT)
            app.forces_today += 1
            app.last_force_at = now
            # Every earlier token of the app stops working at once.
            for token in self._issued.values():
                if token.appid == appid:
                    token.invalid = True
            app.current = self._mint(appid, now)
        elif app.current is None or now >= app.current.expires_at:
            app.current = self._mint(appid, now)
        elif app.current.expires_at - now <= self.overlap:
            # Inside the last window: a new token; the old one works until its own expiry.
            app.current = self._mint(appid, now)
        current = app.current
        return current.value, max(0, int(current.expires_at - now))

    def app_of(self, value: str) -> str:
        """The app a usable token belongs to; AccessTokenError(40001/40014/41001/42001) if none."""
        if not value:
            raise AccessTokenError(MISSING)
        token = self._issued.get(value)
        if token is None:
            raise AccessTokenError(UNKNOWN)
        if token.invalid:
            raise AccessTokenError(SUPERSEDED)
        if self._clock() >= token.expires_at:
            raise AccessTokenError(EXPIRED)
        return token.appid

    def invalidate(self, appid: str) -> str | None:
        """Make the app's current token fail with 40001 while normal mode still answers it.

        What a backend meets when its token was invalidated behind WeChat's
        stable_token cache: only a forced refresh gets a working one.
        """
        app = self._apps.get(appid)
        if app is None or app.current is None:
            return None
        app.current.invalid = True
        return app.current.value

    def report(self, apps: Mapping[str, str]) -> dict[str, object]:
        """Per app: forced refreshes today and the current token's seconds left (dev API)."""
        now = self._clock()
        answer: dict[str, object] = {}
        for appid in sorted(apps):
            app = self._apps.get(appid, _AppTokens())
            current = app.current
            answer[appid] = {
                "forces_today": app.forces_today if app.force_day == int(now // 86400) else 0,
                "expires_in": None if current is None else int(current.expires_at - now),
            }
        return {"ttl": self.ttl, "overlap": self.overlap, "apps": answer}
