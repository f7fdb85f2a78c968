"""How long a dependency call (MongoDB, WeChat) may take inside an RPC with a deadline.

A call that runs until the caller's deadline is useless: the caller sees a bare
DEADLINE_EXCEEDED and cannot tell our outage from its own slowness, and the
client library does not retry it. So every call inside an RPC gets the time left
minus a margin for the work after it and the answer's way back, and fails with
our own retryable reason (STORE_UNAVAILABLE, WECHAT_UNAVAILABLE) while the
caller is still listening.
"""

from __future__ import annotations

import asyncio

# Kept back from the time left: a tenth of it, at least this many seconds.
_MARGIN_SHARE = 0.1
_MIN_MARGIN = 0.05


def budget(deadline: float | None, *, default: float) -> float:
    """Seconds the next dependency call may take; <= 0 means there is no time for it.

    `deadline` is an absolute loop.time() by which the caller wants its answer,
    or None (no deadline: `default` alone bounds the call).
    """
    if deadline is None:
        return default
    remaining = deadline - asyncio.get_running_loop().time()
    return min(default, remaining - max(_MIN_MARGIN, remaining * _MARGIN_SHARE))
