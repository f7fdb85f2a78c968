"""The call a log line belongs to: its request id and, once known, its caller and user_id.

A server begins a `CallContext` when it starts handling a call (the service in
its RPC decorator, the edge in its middleware) and ends it when the call ends;
`ContextFilter`, on the log handler, copies the current one onto every record
made meanwhile, so each line of a call can be found by its request id. A
context variable rather than an argument: the lines come from every layer
(WeChat, MongoDB, the domain), which know nothing of the call.

Tasks started during a call inherit the call's context (asyncio copies it);
work that outlives or serves several calls (a batch writer) must be started
with a fresh `contextvars.Context()`, or its lines would name the first call.
"""

from __future__ import annotations

import logging
from contextvars import ContextVar, Token
from dataclasses import dataclass


@dataclass(slots=True)
class CallContext:
    """What the log lines of one call share."""

    request_id: str
    caller: str | None = None  # the authenticated caller's name (note_caller)
    user_id: str | None = None  # set once the domain knows it (note_user)


_CURRENT: ContextVar[CallContext | None] = ContextVar("wxlogin_call", default=None)


def begin(request_id: str) -> Token[CallContext | None]:
    """Start a call's context; pass the token to `end` when the call is done."""
    return _CURRENT.set(CallContext(request_id))


def end(token: Token[CallContext | None]) -> None:
    """End the call's context started by `begin`."""
    _CURRENT.reset(token)


def current() -> CallContext | None:
    """The context of the call being handled, or None outside a call."""
    return _CURRENT.get()


def note_caller(name: str) -> None:
    """Name the call's caller (a callers-file name, never its key) on its later log lines."""
    call = _CURRENT.get()
    if call is not None:
        call.caller = name


def note_user(user_id: str) -> None:
    """Name the call's user (a user_id, never an openid or token) on its later log lines."""
    call = _CURRENT.get()
    if call is not None:
        call.user_id = user_id


class ContextFilter(logging.Filter):
    """Puts the current call's request_id (caller, user_id) on each record; drops nothing.

    Attributes a record already has (from `extra=`) are left alone: the edge's
    access line names its request after the request's context has ended.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        call = _CURRENT.get()
        if call is not None:
            if not hasattr(record, "request_id"):
                record.request_id = call.request_id
            if call.caller is not None and not hasattr(record, "caller"):
                record.caller = call.caller
            if call.user_id is not None and not hasattr(record, "user_id"):
                record.user_id = call.user_id
        return True
