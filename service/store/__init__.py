"""The only code that touches MongoDB, one room per collection family:

- `_shared`: the driver (PyMongo's AsyncMongoClient), write concerns, error translation, timing;
- `users`: users and their one current session_key;
- `accounts`: linked accounts (one per unionid);
- `sessions`: sessions, renewals, the per-user cap, the change stream of ended sessions;
- `login_codes`: idempotent login (claims and kept answers);
- `access_tokens`: each app's shared access_token and its refresh lease;
- `logins`: a batch of logins across users, accounts, sessions and login_codes.

`Store` is the one interface the rest of the service sees; each of its methods is a room's.
"""

from __future__ import annotations

from service.crypto import SessionKeyCipher
from service.metrics import Metrics
from service.store._shared import (
    DURABLE,
    Database,
    MongoClient,
    connect,
    timed,
    translated,
)
from service.store.access_tokens import AccessTokens
from service.store.accounts import Accounts
from service.store.login_codes import CODE_LIFETIME, LoginCodes, code_id_of
from service.store.logins import Logins
from service.store.sessions import ChangeHistoryLost, Sessions
from service.store.users import Users, is_user_id

__all__ = [
    "CODE_LIFETIME",
    "DURABLE",
    "ChangeHistoryLost",
    "Database",
    "MongoClient",
    "Store",
    "code_id_of",
    "connect",
    "is_user_id",
]


class Store:
    """Users and sessions in MongoDB; session_keys sealed with the server's secret key."""

    def __init__(
        self,
        db: Database,
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
        self.users = Users(db, cipher, metrics)
        self.sessions = Sessions(
            db,
            cipher,
            metrics,
            max_batch=max_batch,
            batch_interval=batch_interval,
            max_per_user=max_sessions_per_user,
        )
        self.accounts = Accounts(db, self.users, self.sessions.collection, metrics)
        self.login_codes = LoginCodes(
            db,
            cipher,
            metrics,
            max_batch=max_batch,
            max_waiting=max_waiting_logins,
            batch_interval=batch_interval,
        )
        self.access_tokens = AccessTokens(db, cipher, metrics)
        self._logins = Logins(
            self.users,
            self.accounts,
            self.sessions,
            self.login_codes,
            cipher,
            metrics,
            max_batch=max_batch,
            max_waiting=max_waiting_logins,
            batch_interval=batch_interval,
        )
        # The interface, each method its room's (go to the room for its docstring).
        self.save_login = self._logins.save
        self.claim_login_code = self.login_codes.claim
        self.find_login_code = self.login_codes.find
        self.take_over_login_code = self.login_codes.take_over
        self.fail_login_code = self.login_codes.fail
        self.release_login_code = self.login_codes.release
        self.open_login_answer = self.login_codes.open_answer
        self.find_session = self.sessions.find
        self.renew_session = self.sessions.renew
        self.delete_session = self.sessions.delete
        self.delete_user_sessions = self.sessions.delete_user_sessions
        self.open_session_key = self.sessions.open_session_key
        self.ended_sessions = self.sessions.ended
        self.on_sessions_ended = self.sessions.on_ended
        self.find_user = self.users.find
        self.find_user_session_key = self.users.find_session_key
        self.set_user_session_key = self.users.set_session_key
        self.link_unionid = self.accounts.link_unionid
        self.on_users_linked = self.accounts.on_linked
        self.find_access_token = self.access_tokens.find
        self.claim_access_token_refresh = self.access_tokens.claim_refresh
        self.save_access_token = self.access_tokens.save
        self.release_access_token_lease = self.access_tokens.release_lease

    async def ensure_indexes(self, expired_session_retention: int = 0) -> None:
        """Create the indexes the data model relies on (idempotent)."""
        async with timed(self._metrics, "ensure_indexes"), translated():
            await self.users.ensure_indexes()
            await self.sessions.ensure_indexes(expired_session_retention)
            await self.login_codes.ensure_indexes()

    async def ping(self) -> None:
        """Raise StoreUnavailable unless MongoDB answers."""
        async with timed(self._metrics, "ping"), translated():
            await self._db.command("ping")

    async def has_change_streams(self) -> bool:
        """True when MongoDB offers change streams: a replica set or a sharded cluster."""
        async with translated():
            hello = await self._db.client.admin.command("hello")
        return "setName" in hello or hello.get("msg") == "isdbgrid"

    @property
    def logins_waiting(self) -> int:
        """Logins submitted and not yet in a MongoDB write (the group-commit queue)."""
        return self._logins.waiting

    async def close(self) -> None:
        """Finish the logins, answers and renewals already submitted; call before closing
        the client. Logins first: a batch's last step submits its answers to login_codes."""
        await self._logins.close()
        await self.login_codes.close()
        await self.sessions.close()
