"""A batch of logins: the users upserted, their accounts linked, the sessions inserted, the cap
kept, and each answer kept under its code. Logins that arrive together are written together."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Sequence
from typing import Any

from bson import Binary, ObjectId

from service.batching import GroupCommit, QueueFull
from service.crypto import SessionKeyCipher
from service.deadlines import budget
from service.errors import Overloaded, StoreUnavailable, WxLoginError
from service.metrics import Metrics
from service.records import LoginReplay, NewLogin, SavedLogin, SessionRecord
from service.store._shared import latest_deadline, outage
from service.store.accounts import Accounts
from service.store.login_codes import LoginCodes
from service.store.sessions import Sessions
from service.store.users import BatchUsers, Users


class Logins:
    """Writes logins in batches (service/batching.py) across the rooms they touch.

    A batch costs, in round trips: the users' bulk upsert, one find of those that
    already existed (their ids), one insert of all the sessions, the cap's trim
    only for users that may now be beyond it, and the answers kept under their
    codes, which ride in the same write as the claims of the logins behind them
    (service/store/login_codes.py). That is 4 for a batch of new users under
    load, against 6 to 7 before (claim, upsert, find, insert, trim read and
    delete, keep).
    """

    def __init__(
        self,
        users: Users,
        accounts: Accounts,
        sessions: Sessions,
        codes: LoginCodes,
        cipher: SessionKeyCipher,
        metrics: Metrics | None,
        *,
        max_batch: int,
        max_waiting: int | None,
        batch_interval: float,
    ) -> None:
        self._users = users
        self._accounts = accounts
        self._sessions = sessions
        self._codes = codes
        self._cipher = cipher
        self._batches: GroupCommit[NewLogin, SavedLogin] = GroupCommit(
            self._write,
            max_batch=max_batch,
            max_waiting=max_waiting,
            min_interval=batch_interval,
            on_batch=None if metrics is None else metrics.login_batch_size.observe,
        )

    @property
    def waiting(self) -> int:
        """Logins submitted and not yet in a MongoDB write (the group-commit queue)."""
        return self._batches.waiting

    async def close(self) -> None:
        """Finish the logins already submitted."""
        await self._batches.aclose()

    async def save(self, login: NewLogin) -> SavedLogin:
        """Upsert the user and store the new session; `new_user` when this login created it."""
        seconds = budget(login.deadline, default=float("inf"))
        if seconds <= 0:
            raise StoreUnavailable("no time left for the session store before the deadline")
        try:
            # The caller stops waiting before its deadline; the batch write itself
            # is bounded by the latest deadline in its batch (see _write).
            # A session written after its caller left is never handed out: harmless.
            # asyncio.timeout, not wait_for: no task of its own for each login.
            async with asyncio.timeout(None if seconds == float("inf") else seconds):
                return await self._batches.submit(login)
        except TimeoutError:
            outage.log(
                logging.WARNING, "login wait", "login writes did not finish before their deadlines"
            )
            raise StoreUnavailable() from None
        except QueueFull:
            raise Overloaded("too many logins wait for the session store; retry later") from None

    async def _write(self, logins: Sequence[NewLogin]) -> list[SavedLogin | Exception]:
        deadline = latest_deadline(logins)
        try:
            users = await self._users.upsert(logins, deadline)
        except WxLoginError as error:
            return [type(error)() for _ in logins]
        users = await self._accounts.link_batch(users, deadline)
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
            await self._sessions.insert(docs, results, deadline)
        except WxLoginError as error:
            return [type(error)() for _ in logins]
        await self._sessions.trim(self._may_exceed_cap(logins, users), deadline)
        # new_user goes to the first login of a new user that got its session
        # (the same new user may log in twice in one batch).
        unannounced = {key for key, (_, creator) in users.items() if creator is not None}
        for index, login in enumerate(logins):
            result = results[index]
            if (login.app_id, login.openid) in unannounced and isinstance(result, SavedLogin):
                results[index] = SavedLogin(result.session, new_user=True)
                unannounced.discard((login.app_id, login.openid))
        kept: list[tuple[LoginReplay, SavedLogin]] = [
            (login.replay, result)
            for login, result in zip(logins, results, strict=True)
            if login.replay is not None and isinstance(result, SavedLogin)
        ]
        if kept:
            await self._codes.keep(kept, deadline)
        return results

    def _may_exceed_cap(self, logins: Sequence[NewLogin], users: BatchUsers) -> set[str]:
        """The users of the batch that may now have more live sessions than the cap.

        A user this batch created had no session before it, so it is beyond the
        cap only if the batch itself logged it in more often than that. (Another
        process logging the same brand-new user in at the same moment trims
        after its own insert; only if this batch's insert lands after that trim
        and both together exceed the cap does the excess wait for the user's
        next login: more than the cap of first logins within milliseconds.)
        """
        cap = self._sessions.max_per_user
        if cap is None:
            return set()
        per_user = Counter((login.app_id, login.openid) for login in logins)
        return {
            user.user_id
            for key, (user, creator) in users.items()
            if creator is None or per_user[key] > cap
        }
