"""Revocations made in other service processes reach this one's session cache at once.

CheckSession answers from a per-process cache (service/cache.py) for up to
`session_cache_seconds`; a session revoked through another process used to stay
valid here that long. On a replica set (or a sharded cluster) every process
watches the deletions of sessions with a MongoDB change stream and drops each
from its cache as it comes: revocations, logs-out-everywhere, sessions ended by
the per-user cap, and the TTL monitor's sweeps alike.

When the stream breaks (a failover, a network cut), pymongo resumes it once;
after that this watcher reopens it from the last resume token every second, so
the deletions made meanwhile still arrive. If the token can no longer be resumed
from, deletions may have been missed: the whole cache is cleared. In every case
the cache's own bound stays: no entry is served longer than
`session_cache_seconds` after it was read, stream or not. On a standalone mongod
(no change streams) that bound is the only one, as before.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

from runtime.ratelimited_log import RateLimitedLog
from service.cache import SessionCache
from service.errors import WxLoginError
from service.store import ChangeHistoryLost, Store

log = logging.getLogger(__name__)
_quiet = RateLimitedLog(log)

# Between attempts to reopen a broken stream.
RETRY_SECONDS = 1.0
# Start-up waits this long for the stream to open before serving without it.
OPEN_TIMEOUT = 5.0


class RevocationWatcher:
    """Drops every session deleted anywhere from this process's cache (replica sets only)."""

    def __init__(self, store: Store, cache: SessionCache, *, retry: float = RETRY_SECONDS) -> None:
        self._store = store
        self._cache = cache
        self._retry = retry
        self._opened = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # Plain counters, for tests and operators' debugging.
        self.dropped = 0
        self.reopened = 0

    @property
    def watching(self) -> bool:
        """True while the task runs (a stream is open or being reopened)."""
        return self._task is not None and not self._task.done()

    async def start(self, open_timeout: float = OPEN_TIMEOUT) -> bool:
        """Start watching if MongoDB has change streams; True if it does.

        Waits (bounded) until the stream is open, so that every deletion after
        the service starts serving is seen.
        """
        if not await self._store.has_change_streams():
            log.info(
                "MongoDB is a standalone mongod (no change streams): a session revoked "
                "through another process stays cached there for up to the cache's bound"
            )
            return False
        self._task = asyncio.create_task(self._run())
        try:
            await asyncio.wait_for(self._opened.wait(), open_timeout)
        except TimeoutError:
            log.warning("the revocation stream did not open in %.0fs; still trying", open_timeout)
        return True

    async def aclose(self) -> None:
        """Stop watching (bounded, like every shutdown step)."""
        if self._task is None:
            return
        self._task.cancel()
        # wait(), not await: never raises the task's own outcome into a shutdown.
        await asyncio.wait([self._task], timeout=2)

    async def _run(self) -> None:
        token: Mapping[str, Any] | None = None
        # After a stream that could not resume: what was cached before the new one
        # opened may have been revoked unseen, so it is forgotten once it is open.
        forget = False

        def opened() -> None:
            nonlocal forget
            if forget:
                self._cache.clear()
                forget = False
            self._opened.set()

        while True:
            try:
                stream = self._store.ended_sessions(token, opened)
                async for session_id, resume_token in stream:
                    if session_id is not None:
                        self._cache.drop(session_id)
                        self.dropped += 1
                    token = resume_token  # everything up to here is handled
            except ChangeHistoryLost:
                # Deletions may have been missed: nothing cached can be trusted,
                # now nor until a new stream is open.
                self._cache.clear()
                forget = True
                token = None
                log.warning("revocation stream could not resume: session cache cleared")
            except WxLoginError as error:
                _quiet.log(
                    logging.WARNING,
                    error.reason,
                    "revocation stream broken (%s); reopening from its resume token",
                    error.reason,
                )
            except asyncio.CancelledError:
                raise
            except Exception:
                _quiet.log(logging.ERROR, "crash", "revocation stream failed", exc_info=True)
            await asyncio.sleep(self._retry)
            self.reopened += 1
