"""wxlogin-admin's commands: arguments in, one store, tables or JSON out, an exit code."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO

from pymongo.errors import ConfigurationError

from runtime import logs
from service.access_tokens import FORCE_PER_DAY
from service.access_tokens import _day as wechat_day  # the broker's own day (UTC+8)
from service.admin._render import block, iso, table, when
from service.crypto import SessionKeyCipher, key_id
from service.errors import StoreUnavailable, WxLoginError
from service.settings import ConfigError, Settings
from service.store import Store, connect, is_user_id
from service.store.operators import (
    AccessTokenState,
    BlobCount,
    Operators,
    ResealCount,
    SessionDetails,
    UserDetails,
)

PROG = "wxlogin-admin"
# A session is named by this many hex digits of its _id (the token's SHA-256): enough
# to tell a user's sessions apart, and a hash opens nothing anyway.
SESSION_ID_DIGITS = 12
DEFAULT_BATCH_SIZE = 500

NO_URI = (
    "WXLOGIN_MONGODB_URI is unset: wxlogin-admin works on the service's MongoDB and never "
    "starts a mongod of its own; set it (the `make run` banner prints the dev stack's)"
)


class Failure(Exception):
    """Ends a command with one line on stderr and `code`: 1 not found / unavailable, 2 misuse."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Context:
    """What every command works with."""

    settings: Settings
    store: Store
    operators: Operators
    now: datetime
    json: bool
    out: TextIO

    def emit(self, data: Mapping[str, Any], text: str) -> None:
        """JSON with --json, else the text for people."""
        print(json.dumps(data, indent=2, ensure_ascii=False) if self.json else text, file=self.out)


# -- arguments ------------------------------------------------------------------------------


def _batch_size(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not 1 <= value <= 10_000:
        raise argparse.ArgumentTypeError(f"must be 1 to 10000, got {value}")
    return value


def _add_output_options(parser: argparse.ArgumentParser, default: Any) -> None:
    # On the top parser and on each command's, so either place works; SUPPRESS on the
    # commands' keeps them from overwriting a --json given before the command.
    parser.add_argument(
        "--json", action="store_true", default=default, help="print JSON instead of tables"
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=default,
        help="also print the store's own log lines (WARNING and above) to stderr",
    )


def _add_user_selector(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("user_id", nargs="?", metavar="USER_ID", help="the user's user_id")
    parser.add_argument("--openid", help="the user's openid, in --app or in every app")
    parser.add_argument("--app", metavar="APP_ID", help="with --openid: only in this app")
    parser.add_argument("--unionid", help="every user (one per app) with this unionid")


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The top parser and each command's (to report a misuse against the right usage)."""
    top = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "Operate wxlogin: users and their sessions, log out everywhere, sealed blobs by "
            "key and re-sealing after a rotation, access-token state. Reads the service's "
            "configuration (WXLOGIN_MONGODB_URI, WXLOGIN_SECRET_KEY, WXLOGIN_SECRET_KEYS_OLD, "
            "WXLOGIN_APPS, ...). Never prints a token or a session_key."
        ),
        epilog="Exit codes: 0 done, 1 not found or MongoDB unavailable, 2 bad arguments "
        "or configuration.",
    )
    _add_output_options(top, False)
    commands = top.add_subparsers(dest="command", metavar="COMMAND", required=True)
    helps = {
        "user": "look a user up by user_id, --openid [--app] or --unionid",
        "sessions": "list a user's live sessions (never a token or key)",
        "revoke-all": "end every live session of one user (log out everywhere)",
        "keys": "count the sealed blobs under each key id",
        "reseal": "re-seal every blob not under the current key (so an old key can go)",
        "access-tokens": "each app's shared access_token: expiry, version, lease (never the token)",
    }
    parsers: dict[str, argparse.ArgumentParser] = {}
    for name, text in helps.items():
        parser = commands.add_parser(name, help=text, description=text)
        _add_output_options(parser, argparse.SUPPRESS)
        parsers[name] = parser
    for name in ("user", "sessions", "revoke-all"):
        _add_user_selector(parsers[name])
    parsers["reseal"].add_argument(
        "--dry-run", action="store_true", help="count what would be re-sealed, write nothing"
    )
    parsers["reseal"].add_argument(
        "--batch-size",
        type=_batch_size,
        default=DEFAULT_BATCH_SIZE,
        help=f"updates per bulk write (default {DEFAULT_BATCH_SIZE})",
    )
    return top, parsers


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    """The arguments, checked; argparse's SystemExit(2) with its message on a misuse."""
    top, parsers = build_parser()
    args = top.parse_args(argv)
    if args.command in ("user", "sessions", "revoke-all"):
        parser = parsers[args.command]
        named = [
            name
            for name, value in (
                ("USER_ID", args.user_id),
                ("--openid", args.openid),
                ("--unionid", args.unionid),
            )
            if value is not None
        ]
        if len(named) != 1:
            parser.error("name the user by one of USER_ID, --openid or --unionid")
        if args.app is not None and args.openid is None:
            parser.error("--app goes with --openid")
        if args.user_id is not None and not is_user_id(args.user_id):
            parser.error(f"USER_ID must be a wxlogin user_id (24 hex digits), got {args.user_id!r}")
        for option, value in (("--openid", args.openid), ("--unionid", args.unionid)):
            if value is not None and not value.strip():
                parser.error(f"{option} is empty")
    return args


# -- users and sessions ------------------------------------------------------------------------


def _selector(args: argparse.Namespace, settings: Settings) -> tuple[dict[str, str], str]:
    """The lookup's arguments, and how to name it in a "not found" line."""
    if args.user_id is not None:
        return {"user_id": args.user_id}, f"user_id {args.user_id}"
    if args.unionid is not None:
        return {"unionid": args.unionid}, f"unionid {args.unionid}"
    if args.app is None:
        return {"openid": args.openid}, f"openid {args.openid} in any app"
    unknown = "" if args.app in settings.apps else f" ({args.app} is not in WXLOGIN_APPS)"
    described = f"openid {args.openid} in {args.app}{unknown}"
    return {"openid": args.openid, "app_id": args.app}, described


async def _find(ctx: Context, args: argparse.Namespace) -> list[UserDetails]:
    selector, described = _selector(args, ctx.settings)
    users = await ctx.operators.find_users(now=ctx.now, **selector)
    if not users:
        raise Failure(f"no user with {described}")
    return users


def _user_json(details: UserDetails) -> dict[str, Any]:
    user = details.user
    return {
        "user_id": user.user_id,
        "app_id": user.app_id,
        "openid": user.openid,
        "unionid": user.unionid,
        "account_id": user.account,
        "merged_account_ids": list(details.merged_account_ids),
        "created_at": iso(details.created_at),
        "last_login_at": iso(details.last_login_at),
        "session_key_at": iso(details.session_key_at),
        "live_sessions": details.live_sessions,
    }


def _user_block(details: UserDetails) -> str:
    user = details.user
    account = user.account + ("" if user.account_id else "  (its own: no unionid linked)")
    return block(
        [
            ("user_id", user.user_id),
            ("app_id", user.app_id),
            ("openid", user.openid),
            ("unionid", user.unionid or "-"),
            ("account_id", account),
            ("merged from", ", ".join(details.merged_account_ids) or "-"),
            ("created", when(details.created_at)),
            ("last login", when(details.last_login_at)),
            # When, never what: the key itself stays sealed.
            ("session_key since", when(details.session_key_at)),
            ("live sessions", str(details.live_sessions)),
        ]
    )


async def cmd_user(ctx: Context, args: argparse.Namespace) -> None:
    users = await _find(ctx, args)
    ctx.emit({"users": [_user_json(u) for u in users]}, "\n\n".join(_user_block(u) for u in users))


def last_renewed(session: SessionDetails, settings: Settings) -> tuple[datetime | None, bool]:
    """When the session was last renewed, derived, and whether exactly (else: at or after).

    Nothing stores the time: a renewal sets expires_at = min(now + idle, login + max)
    (README, "Sliding expiry"), so expires_at - WXLOGIN_SESSION_TTL is when it
    happened, unless the absolute cap was reached: then only "at or after". Exact
    as long as WXLOGIN_SESSION_TTL has not changed since. (None, True): never renewed.
    """
    if session.renewals == 0:
        return None, True
    at = session.expires_at - timedelta(seconds=settings.session_ttl)
    capped = session.expires_at >= session.created_at + timedelta(seconds=settings.session_max_ttl)
    return at, not capped


def _session_json(session: SessionDetails, settings: Settings) -> dict[str, Any]:
    renewed, exact = last_renewed(session, settings)
    return {
        "session_id_prefix": session.session_id[:SESSION_ID_DIGITS],
        "app_id": session.app_id,
        "created_at": iso(session.created_at),
        "expires_at": iso(session.expires_at),
        "renewals": session.renewals,
        "last_renewed_at": iso(renewed),
        "last_renewed_exact": exact,
    }


def _sessions_text(details: UserDetails, sessions: Sequence[SessionDetails], s: Settings) -> str:
    user = details.user
    head = (
        f"user_id {user.user_id}  app_id {user.app_id}  openid {user.openid}: "
        f"{len(sessions)} live session(s) (WXLOGIN_MAX_SESSIONS_PER_USER {s.max_sessions_per_user})"
    )
    if not sessions:
        return head
    rows = []
    for session in sessions:
        renewed, exact = last_renewed(session, s)
        shown = "-" if renewed is None else (when(renewed) if exact else ">= " + when(renewed))
        rows.append(
            [
                session.session_id[:SESSION_ID_DIGITS],
                when(session.created_at),
                shown,
                when(session.expires_at),
                str(session.renewals),
            ]
        )
    headers = ["session", "created", "last renewed", "expires", "renewals"]
    return head + "\n" + table(headers, rows)


async def cmd_sessions(ctx: Context, args: argparse.Namespace) -> None:
    users = await _find(ctx, args)
    found = [(u, await ctx.operators.live_sessions(u.user.user_id, now=ctx.now)) for u in users]
    ctx.emit(
        {
            "users": [
                {
                    "user": _user_json(u),
                    "sessions": [_session_json(s, ctx.settings) for s in sessions],
                }
                for u, sessions in found
            ]
        },
        "\n\n".join(_sessions_text(u, sessions, ctx.settings) for u, sessions in found)
        + "\n(session: the first digits of the token's SHA-256; last renewed: derived from "
        "expires_at and WXLOGIN_SESSION_TTL)",
    )


async def _caches_note(ctx: Context) -> str:
    """How soon running processes stop accepting ended sessions (README, "Session lifecycle")."""
    edge = (
        "The edge's own short cache (and a backend's opt-in client cache) keeps its "
        'bound (README, "For mini-programs").'
    )
    if await ctx.store.has_change_streams():
        return (
            "Service processes drop them from their caches at once: they watch this "
            "replica set's deletions of sessions (revocation change stream). " + edge
        )
    return (
        "This MongoDB has no change streams (a standalone mongod): each running service "
        "process may still accept a session it had cached for up to "
        f"{ctx.settings.session_cache_seconds:g} s. " + edge
    )


async def cmd_revoke_all(ctx: Context, args: argparse.Namespace) -> None:
    users = await _find(ctx, args)
    if len(users) > 1:
        apps = ", ".join(u.user.app_id for u in users)
        raise Failure(
            f"{len(users)} users match (apps {apps}): name one by USER_ID or with --app", 2
        )
    user = users[0].user
    # The same durable delete of the live sessions as RevokeAllSessions.
    revoked = await ctx.store.delete_user_sessions(user.user_id, now=ctx.now)
    note = await _caches_note(ctx)
    ctx.emit(
        {"user": _user_json(users[0]), "revoked": revoked, "caches": note},
        f"revoked {revoked} live session(s) of user_id {user.user_id} "
        f"(app_id {user.app_id}, openid {user.openid})\n{note}",
    )


# -- sealed blobs by key -------------------------------------------------------------------------


def configured_keys(settings: Settings) -> dict[str, str]:
    """Each configured key's id (hex) -> what it is; never the key."""
    keys = {key_id(settings.secret_key).hex(): "current (WXLOGIN_SECRET_KEY)"}
    for number, old in enumerate(settings.old_secret_keys, start=1):
        keys.setdefault(key_id(old).hex(), f"old (WXLOGIN_SECRET_KEYS_OLD entry {number})")
    return keys


def _role(count: BlobCount, keys: Mapping[str, str]) -> str:
    if not count.opens:
        return "NOT CONFIGURED: no configured key opens these"
    if count.key_id is None:
        return "from before key ids (a configured key opens them)"
    return keys[count.key_id]


async def cmd_keys(ctx: Context, args: argparse.Namespace) -> None:
    counts = await ctx.operators.count_sealed()
    keys = configured_keys(ctx.settings)
    current = key_id(ctx.settings.secret_key).hex()
    by_key: dict[tuple[str | None, bool], int] = {(kid, True): 0 for kid in keys}
    for count in counts:
        by_key[count.key_id, count.opens] = by_key.get((count.key_id, count.opens), 0) + count.count
    # (key id, what it is, blobs): every configured key, with 0 when nothing is under it.
    summary = [
        (kid, _role(BlobCount("", kid, opens, n), keys), n) for (kid, opens), n in by_key.items()
    ]
    movable = sum(c.count for c in counts if c.opens and c.key_id != current)
    unopenable = sum(c.count for c in counts if not c.opens)
    verdict = []
    if movable:
        verdict.append(
            f"{movable} blob(s) are under an old key or from before key ids: "
            f"`{PROG} reseal` moves them to the current key ({current})."
        )
    if unopenable:
        verdict.append(
            f"{unopenable} blob(s) are sealed under no configured key: nothing opens them "
            "and re-sealing cannot move them (DecryptUserData of such a session fails; such "
            "an access token is fetched again). Put the key back in WXLOGIN_SECRET_KEYS_OLD "
            "if you still have it."
        )
    if not movable and not unopenable:
        verdict.append(
            "Every sealed blob is under the current key"
            + (
                ": WXLOGIN_SECRET_KEYS_OLD can be emptied, if every service process "
                "already sealed with this WXLOGIN_SECRET_KEY before this count (else restart "
                "them, re-seal and count again)."
                if ctx.settings.old_secret_keys
                else "."
            )
        )
    rows = [[kid or "-", role, str(n)] for kid, role, n in summary]
    places = [[c.where, c.key_id or "-", _role(c, keys), str(c.count)] for c in counts]
    text = table(["key id", "key", "blobs"], rows)
    if places:
        text += "\n\n" + table(["where", "key id", "key", "blobs"], places)
    ctx.emit(
        {
            "keys": [
                {"key_id": kid, "role": role, "configured": kid in keys, "blobs": n}
                for kid, role, n in summary
            ],
            "blobs": [
                {"where": c.where, "key_id": c.key_id, "role": _role(c, keys), "count": c.count}
                for c in counts
            ],
            "not_current": movable,
            "unopenable": unopenable,
        },
        text + "\n\n" + "\n".join(verdict),
    )


def _reseal_json(outcome: ResealCount) -> dict[str, Any]:
    return {
        "where": outcome.where,
        "current": outcome.current,
        "resealed": outcome.resealed,
        "changed": outcome.changed,
        "unopenable": outcome.unopenable,
    }


async def cmd_reseal(ctx: Context, args: argparse.Namespace) -> None:
    outcomes = await ctx.operators.reseal(batch_size=args.batch_size, dry_run=args.dry_run)
    current = key_id(ctx.settings.secret_key).hex()
    resealed = sum(o.resealed for o in outcomes)
    changed = sum(o.changed for o in outcomes)
    unopenable = sum(o.unopenable for o in outcomes)
    moved = "would re-seal" if args.dry_run else "re-sealed"
    rows = [
        [o.where, str(o.current), str(o.resealed), str(o.changed), str(o.unopenable)]
        for o in outcomes
    ]
    lines = [
        table(["where", "already current", moved, "changed meanwhile", "no key opens"], rows),
        "",
        f"dry run: nothing written; {resealed} blob(s) would be re-sealed under key {current}."
        if args.dry_run
        else f"re-sealed {resealed} blob(s) under key {current}.",
    ]
    if changed:
        lines.append(
            f"{changed} blob(s) were rewritten by the service between the read and the write "
            f"(its write stands): `{PROG} keys` says under which key."
        )
    if unopenable:
        lines.append(
            f"{unopenable} blob(s) are under no configured key and stay as they are "
            f"(`{PROG} keys`)."
        )
    lines.append(
        "A service process still configured with an old key as WXLOGIN_SECRET_KEY keeps "
        f"sealing under it: restart every process with the new key before relying on `{PROG} keys`."
    )
    ctx.emit(
        {
            "dry_run": args.dry_run,
            "current_key_id": current,
            "places": [_reseal_json(o) for o in outcomes],
            "resealed": resealed,
            "changed": changed,
            "unopenable": unopenable,
        },
        "\n".join(lines),
    )


# -- access tokens -------------------------------------------------------------------------------


def _forced_today(state: AccessTokenState, now: datetime) -> int:
    return state.forces_that_day if state.force_day == wechat_day(now.timestamp()) else 0


def _lease_held(state: AccessTokenState, now: datetime) -> bool:
    return (
        state.lease_owner is not None and state.lease_until is not None and state.lease_until > now
    )


def _token_json(app_id: str, state: AccessTokenState | None, ctx: Context) -> dict[str, Any]:
    configured = app_id in ctx.settings.apps
    if state is None:
        return {"app_id": app_id, "configured": configured, "has_token": False, "version": 0}
    return {
        "app_id": app_id,
        "configured": configured,
        "has_token": state.has_token,
        "version": state.version,
        "expires_at": iso(state.expires_at),
        "refresh_at": iso(state.refresh_at),
        "fetched_at": iso(state.fetched_at),
        "lease_owner": state.lease_owner,
        "lease_until": iso(state.lease_until),
        "lease_held": _lease_held(state, ctx.now),
        "forced_today": _forced_today(state, ctx.now),
        "forced_per_day": FORCE_PER_DAY,
        "last_forced_at": iso(state.last_force_at),
    }


def _token_row(app_id: str, state: AccessTokenState | None, ctx: Context) -> list[str]:
    configured = "yes" if app_id in ctx.settings.apps else "NO"
    if state is None:
        return [app_id, configured, "none yet", "0", "-", "-", "-", "free", f"0 of {FORCE_PER_DAY}"]
    lease = "free"
    if _lease_held(state, ctx.now):
        lease = f"{state.lease_owner} until {when(state.lease_until)}"
    return [
        app_id,
        configured,
        "yes" if state.has_token else "none yet",
        str(state.version),
        when(state.expires_at),
        when(state.refresh_at),
        when(state.fetched_at),
        lease,
        f"{_forced_today(state, ctx.now)} of {FORCE_PER_DAY}",
    ]


async def cmd_access_tokens(ctx: Context, args: argparse.Namespace) -> None:
    states = {state.app_id: state for state in await ctx.operators.access_token_states()}
    app_ids = sorted(set(ctx.settings.apps) | set(states))
    headers = [
        "app_id",
        "configured",
        "token",
        "version",
        "expires",
        "refresh at",
        "fetched",
        "lease (holder: a process's id)",
        "forced today",
    ]
    ctx.emit(
        {"apps": [_token_json(app_id, states.get(app_id), ctx) for app_id in app_ids]},
        table(headers, [_token_row(app_id, states.get(app_id), ctx) for app_id in app_ids]),
    )


Command = Callable[[Context, argparse.Namespace], Awaitable[None]]
COMMANDS: dict[str, Command] = {
    "user": cmd_user,
    "sessions": cmd_sessions,
    "revoke-all": cmd_revoke_all,
    "keys": cmd_keys,
    "reseal": cmd_reseal,
    "access-tokens": cmd_access_tokens,
}


# -- running it ----------------------------------------------------------------------------------


async def execute(
    args: argparse.Namespace,
    *,
    env: Mapping[str, str],
    out: TextIO,
    err: TextIO,
    settings: Settings | None = None,
) -> int:
    """Run the parsed command; the exit code. Failures are one line on `err`, no traceback."""
    try:
        if settings is None:
            settings = Settings.from_env(env)
        if settings.mongodb_uri is None:
            raise Failure(NO_URI, 2)
        try:
            client = connect(settings.mongodb_uri)
        except ConfigurationError:
            # pymongo's text may quote the URI, password included.
            raise ConfigError("WXLOGIN_MONGODB_URI", "not a valid MongoDB URI") from None
        try:
            cipher = SessionKeyCipher(settings.secret_key, settings.old_secret_keys)
            db = client[settings.database]
            store = Store(db, cipher)
            try:
                await store.ping()
                ctx = Context(
                    settings, store, Operators(db, cipher), datetime.now(UTC), args.json, out
                )
                await COMMANDS[args.command](ctx, args)
            finally:
                await store.close()
        finally:
            await client.close()
    except ConfigError as error:
        print(f"{PROG}: bad configuration: {error}", file=err)
        return 2
    except Failure as failure:
        print(f"{PROG}: {failure}", file=err)
        return failure.code
    except StoreUnavailable:
        print(
            f"{PROG}: MongoDB does not answer (STORE_UNAVAILABLE): is WXLOGIN_MONGODB_URI "
            "the service's, and is it up?",
            file=err,
        )
        return 1
    except WxLoginError as error:
        print(
            f"{PROG}: MongoDB failed the operation ({error.reason}); "
            "--verbose prints MongoDB's own message",
            file=err,
        )
        return 1
    return 0


async def run(
    argv: Sequence[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
    settings: Settings | None = None,
) -> int:
    """wxlogin-admin on a running event loop (tests: `settings` replaces the environment)."""
    try:
        args = parse(argv)
    except SystemExit as exit_:  # argparse has printed the usage and the problem
        return int(exit_.code or 0)
    return await execute(
        args,
        env=os.environ if env is None else env,
        out=sys.stdout if out is None else out,
        err=sys.stderr if err is None else err,
        settings=settings,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m service.admin` and the `wxlogin-admin` console script; the exit code."""
    try:
        args = parse(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    if args.verbose:
        logs.configure(logging.WARNING)
    else:
        # The store logs outages and MongoDB's errors as it does in the service; here the
        # one line `execute` prints says it all, unless asked.
        logging.getLogger().addHandler(logging.NullHandler())
    return asyncio.run(execute(args, env=os.environ, out=sys.stdout, err=sys.stderr))
