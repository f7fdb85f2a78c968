"""What the service knows about users and sessions, as plain values (no MongoDB, no gRPC)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import NamedTuple


@dataclass(frozen=True)
class UserRecord:
    """A user of one app: one per (app_id, openid).

    `account_id` is shared by every user of the configured apps with the same
    unionid; "" until the user is linked (no unionid yet): then it is the user's
    own user_id, which `account` gives either way.
    """

    user_id: str
    app_id: str
    openid: str
    unionid: str | None
    account_id: str = ""

    @property
    def account(self) -> str:
        """The account the user belongs to: its linked account, else its own user_id."""
        return self.account_id or self.user_id


@dataclass(frozen=True)
class SessionRecord:
    """A session as stored; the session_key inside stays sealed until asked for."""

    session_id: str
    user: UserRecord
    created_at: datetime
    expires_at: datetime
    sealed_session_key: bytes

    def __repr__(self) -> str:
        return f"SessionRecord(user_id={self.user.user_id!r}, expires_at={self.expires_at})"


@dataclass(frozen=True)
class NewLogin:
    """A login to write: touch or create the user, open the session."""

    app_id: str
    openid: str
    unionid: str | None
    session_id: str
    session_key: str
    created_at: datetime
    expires_at: datetime
    # loop.time() by which the caller wants its answer; None: no deadline.
    deadline: float | None = None
    # Where the answer is kept for the same code sent again (idempotent login).
    replay: LoginReplay | None = None

    def __repr__(self) -> str:
        return f"NewLogin(app_id={self.app_id!r}, openid={self.openid!r})"


@dataclass(frozen=True)
class LoginReplay:
    """What the store needs to keep a login's answer under its code: sealed, for replays."""

    code_id: str  # SHA-256 of the app and the code
    owner: str  # the claim (login_codes) this login holds
    token: str = field(repr=False)


@dataclass(frozen=True)
class LoginCode:
    """A code's document in login_codes: being exchanged, answered, or failed for good.

    `state` is "pending" (`owner` exchanges it until `lease_until`), "done"
    (`result`: the answer, sealed) or "failed" (`reason`, `metadata`: the error).
    """

    code_id: str
    state: str
    owner: str = ""
    lease_until: datetime | None = None
    result: bytes = field(default=b"", repr=False)
    reason: str = ""
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class LoginResult:
    """A login's answer: a new session's, or the one kept under its code for a replay.

    The token is shown to the caller (again, for the same code) and never stored in
    the clear: sessions hold its hash, a kept answer is sealed.
    """

    token: str
    expires_at: datetime
    user: UserRecord
    new_user: bool

    def __repr__(self) -> str:
        return f"LoginResult(user={self.user!r}, new_user={self.new_user})"


def utc_now_ms() -> datetime:
    """Now, truncated to MongoDB's millisecond precision so stored and returned times agree."""
    # From whole milliseconds (exact: fromtimestamp rounds to the microsecond): every
    # CheckSession asks for now, and this is 1.3 us where now().replace(...) was 3.2 us.
    return datetime.fromtimestamp(time.time_ns() // 1_000_000 / 1000, UTC)


class SavedLogin(NamedTuple):
    """The outcome of writing one login: its session, and whether it created the user."""

    session: SessionRecord
    new_user: bool


@dataclass(frozen=True)
class AccessTokenRecord:
    """An app's shared access_token as stored (service/access_tokens.py), the token unsealed.

    `version` grows with every write of a token: the compare-and-set that makes
    one process, and one only, replace a given token. Times are epoch seconds.
    """

    app_id: str
    token: str = field(repr=False)
    token_sha256: str = field(repr=False)
    expires_at: float
    refresh_at: float
    version: int
    lease_owner: str | None = None
    lease_until: float = 0.0
    last_force_at: float | None = None
    force_day: int = -1
    forces_that_day: int = 0
