"""Each RPC's request id: the caller's `x-request-id` metadata when usable, else one made here.

The edge sends the id of the HTTP request it serves (clients/client.py), so a
mini-program request is found by one id in the edge's access log and in every
service line of the call. Backends that send none get one generated, which
still ties together the lines of one call.
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Iterable
from typing import Any

from service.crypto import TOKEN_PREFIX

REQUEST_ID_METADATA = "x-request-id"
# Printable ASCII without spaces, as the client library sends: cannot break a line.
_SHAPE = re.compile(r"[!-~]{1,128}")


class RequestIds:
    """Ids unique per process without a syscall each: a random prefix and a counter."""

    def __init__(self) -> None:
        self._prefix = os.urandom(8).hex()
        self._counter = itertools.count(1)

    def new(self) -> str:
        """A fresh id: 32 hex digits, like a uuid (and like the edge's)."""
        return f"{self._prefix}{next(self._counter):016x}"

    def of_call(self, metadata: Iterable[Any] | None) -> str:
        """The caller's request id from the call's metadata, or a new one.

        One that could break a log line, or that carries one of our tokens (a
        careless caller's way of "correlating"), is replaced: it goes on every line.
        """
        for item in metadata or ():
            if item[0] == REQUEST_ID_METADATA:
                value = item[1]
                if isinstance(value, str) and _SHAPE.fullmatch(value) and TOKEN_PREFIX not in value:
                    return value
                break
        return self.new()
