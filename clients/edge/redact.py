"""Caller-chosen text made fit for a log line: no token-shaped runs, no control characters."""

from __future__ import annotations

import re

# wxlogin's tokens are "wxl1_" + 43 URL-safe characters. A careless client may
# send one anywhere (path, query, method, request id), with or without the prefix.
_PREFIXED = re.compile(r"wxl1_[A-Za-z0-9_-]*")
# No route or method of the edge has a run this long; a bare token body (43) does.
_LONG_RUN = re.compile(r"[A-Za-z0-9_-]{40,}")
_MAX_CHARS = 200


def has_token(text: str) -> bool:
    """True when `text` holds something that looks like a wxlogin token with its prefix."""
    return _PREFIXED.search(text) is not None


def loggable(text: str, limit: int = _MAX_CHARS) -> str:
    """`text` with token-shaped runs replaced, unprintable characters escaped, cut at `limit`."""
    text = _LONG_RUN.sub("<redacted>", _PREFIXED.sub("<redacted>", text))
    # A decoded %0A must not start a forged log line; non-ASCII is escaped alike.
    safe = (
        text  # the usual case, checked at C speed
        if text.isascii() and text.isprintable()
        else "".join(
            c if c.isascii() and c.isprintable() else c.encode("unicode_escape").decode("ascii")
            for c in text
        )
    )
    return safe if len(safe) <= limit else safe[:limit] + "..."
