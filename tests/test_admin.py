"""wxlogin-admin (python -m service.admin) on a real mongod, its users logged in by the service."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from bson import Binary, ObjectId

from service import crypto
from service.admin import main, run
from service.embedded_mongo import free_port
from service.settings import Settings
from service.store.operators import SEALED, Operators, ResealCount, resealing
from tests.conftest import SECRET_KEY, StubFactory, b64_secret_key
from tests.support import (
    APP_A,
    APP_B,
    APPS_ENV,
    Emulator,
    check_reason,
    decrypt_request,
    run_to_exit,
)
from tests.test_access_tokens import get_token, token_emulator
from tests.test_key_rotation import legacy_seal
from wxlogin.v1 import auth_pb2, auth_pb2_grpc

KEY_A = SECRET_KEY  # the suite's key: what the service seals with before the rotation
KEY_B = os.urandom(32)
KEY_C = os.urandom(32)  # configured nowhere


async def admin(settings: Settings, *argv: str) -> tuple[int, str, str]:
    """Run wxlogin-admin in-process with these settings: exit code, stdout, stderr."""
    out, err = io.StringIO(), io.StringIO()
    code = await run(list(argv), out=out, err=err, settings=settings)
    return code, out.getvalue(), err.getvalue()


async def admin_json(settings: Settings, *argv: str) -> Any:
    """wxlogin-admin ... --json, which must succeed; its JSON."""
    code, out, err = await admin(settings, *argv, "--json")
    assert code == 0, err
    return json.loads(out)


async def login(
    stub: auth_pb2_grpc.AuthServiceStub, emu: Emulator, user: str, app: str = APP_A
) -> tuple[auth_pb2.LoginResponse, str]:
    """One Login with a fresh code; the reply and the session_key WeChat gave with it."""
    minted = await emu.wx_login(app, user)
    reply = await stub.Login(auth_pb2.LoginRequest(app_id=app, code=minted["code"]))
    return reply, str(minted["session_key"])


def unique(prefix: str) -> str:
    """An emulator user name no other test uses (the emulator is shared)."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# -- users and sessions ------------------------------------------------------------------------


async def test_a_user_is_found_by_user_id_openid_and_unionid(
    settings: Settings, stub: auth_pb2_grpc.AuthServiceStub, emu: Emulator
) -> None:
    """user_id, openid (in one app or all) and unionid name the same users, with their fields."""
    name = unique("admin-find")
    for app in (APP_A, APP_B):
        await emu.setup_user(app, name, unionid=f"union-{name}")
    a, _ = await login(stub, emu, name, APP_A)
    b, _ = await login(stub, emu, name, APP_B)
    by_id = (await admin_json(settings, "user", a.user.user_id))["users"]
    assert [u["user_id"] for u in by_id] == [a.user.user_id]
    assert by_id[0]["openid"] == a.user.openid
    assert by_id[0]["unionid"] == f"union-{name}"
    assert by_id[0]["live_sessions"] == 1
    assert by_id[0]["created_at"] is not None
    in_app = await admin_json(settings, "user", "--openid", b.user.openid, "--app", APP_B)
    assert [u["user_id"] for u in in_app["users"]] == [b.user.user_id]
    anywhere = await admin_json(settings, "user", "--openid", b.user.openid)
    assert [u["user_id"] for u in anywhere["users"]] == [b.user.user_id]
    code, before_command, _ = await admin(settings, "--json", "user", a.user.user_id)
    assert (code, json.loads(before_command)["users"]) == (0, by_id)  # --json either side
    linked = (await admin_json(settings, "user", "--unionid", f"union-{name}"))["users"]
    assert sorted(u["user_id"] for u in linked) == sorted([a.user.user_id, b.user.user_id])
    assert {u["account_id"] for u in linked} == {a.user.account_id}
    # The table form: one aligned block per user.
    code, out, _ = await admin(settings, "user", a.user.user_id)
    assert code == 0
    assert f"user_id            {a.user.user_id}" in out
    assert "live sessions      1" in out


async def test_sessions_are_listed_without_tokens_or_keys(
    settings: Settings, stub: auth_pb2_grpc.AuthServiceStub, emu: Emulator
) -> None:
    """A user's live sessions are listed newest first; no token, session_key or full id shows."""
    name = unique("admin-sessions")
    logins = [await login(stub, emu, name) for _ in range(3)]
    user_id = logins[0][0].user.user_id
    listed = (await admin_json(settings, "sessions", user_id))["users"][0]["sessions"]
    ids = [crypto.token_id(reply.token) for reply, _ in logins]
    assert [s["session_id_prefix"] for s in listed] == [i[:12] for i in reversed(ids)]
    assert {s["renewals"] for s in listed} == {0}
    assert {s["last_renewed_at"] for s in listed} == {None}
    _, table, _ = await admin(settings, "sessions", user_id)
    assert "3 live session(s)" in table
    for output in (json.dumps(listed), table):
        for (reply, session_key), session_id in zip(logins, ids, strict=True):
            assert reply.token not in output
            assert reply.token.removeprefix(crypto.TOKEN_PREFIX) not in output
            assert session_key not in output
            assert base64.b64decode(session_key).hex() not in output
            assert session_id not in output  # a prefix only
            assert session_id[:12] in output


async def test_last_renewed_is_derived_from_the_stored_expiry(
    settings: Settings, stub: auth_pb2_grpc.AuthServiceStub, emu: Emulator, db: Any
) -> None:
    """A renewal shows as expires_at - WXLOGIN_SESSION_TTL; one at the absolute cap, as a bound."""
    name = unique("admin-renewed")
    renewed, _ = await login(stub, emu, name)
    capped, _ = await login(stub, emu, name)
    renewed_at = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=5)
    await db.sessions.update_one(
        {"_id": crypto.token_id(renewed.token)},
        {
            "$set": {"expires_at": renewed_at + timedelta(seconds=settings.session_ttl)},
            "$inc": {"renewals": 2},
        },
    )
    doc = await db.sessions.find_one({"_id": crypto.token_id(capped.token)})
    at_cap = doc["created_at"] + timedelta(seconds=settings.session_max_ttl)
    await db.sessions.update_one(
        {"_id": doc["_id"]}, {"$set": {"expires_at": at_cap}, "$inc": {"renewals": 1}}
    )
    listed = (await admin_json(settings, "sessions", renewed.user.user_id))["users"][0]["sessions"]
    by_prefix = {s["session_id_prefix"]: s for s in listed}
    exact = by_prefix[crypto.token_id(renewed.token)[:12]]
    assert exact["renewals"] == 2
    assert exact["last_renewed_at"] == renewed_at.isoformat(timespec="milliseconds")[:-6] + "Z"
    assert exact["last_renewed_exact"] is True
    bound = by_prefix[crypto.token_id(capped.token)[:12]]
    assert bound["last_renewed_exact"] is False
    _, table, _ = await admin(settings, "sessions", renewed.user.user_id)
    assert ">= " in table


async def test_revoke_all_ends_every_live_session_of_the_user(
    settings: Settings, start_stub: StubFactory, emu: Emulator
) -> None:
    """revoke-all ends the user's sessions (CheckSession: SESSION_INVALID), and no one else's."""
    name = unique("admin-revoke")
    # No session cache in the service: on a standalone mongod a cached session would
    # answer OK for its bound (what the command's note says), which is not under test here.
    async with start_stub(session_cache_seconds=0) as stub:
        mine = [await login(stub, emu, name) for _ in range(2)]
        other, _ = await login(stub, emu, unique("admin-revoke-other"))
        user_id = mine[0][0].user.user_id
        code, out, err = await admin(settings, "revoke-all", user_id)
        assert (code, err) == (0, "")
        assert f"revoked 2 live session(s) of user_id {user_id}" in out
        assert "no change streams" in out  # the test mongod is a standalone one
        assert f"up to {settings.session_cache_seconds:g} s" in out
        for reply, _ in mine:
            assert await check_reason(stub, reply.token) == "SESSION_INVALID"
        assert await check_reason(stub, other.token) == "OK"
        again = await admin_json(settings, "revoke-all", user_id)
        assert again["revoked"] == 0
        assert mine[0][0].token not in out + json.dumps(again)


async def test_revoke_all_refuses_an_openid_of_several_users(
    settings: Settings, stub: auth_pb2_grpc.AuthServiceStub, emu: Emulator, db: Any
) -> None:
    """An openid that names a user in two apps revokes nothing until --app or USER_ID says which."""
    openid = f"o-shared-{uuid.uuid4().hex[:8]}"
    reply, _ = await login(stub, emu, unique("admin-ambiguous"))
    # Two apps' users with one openid: WeChat never does it, but the lookup must not guess.
    await db.users.update_one({"_id": ObjectId(reply.user.user_id)}, {"$set": {"openid": openid}})
    await db.users.insert_one({"app_id": APP_B, "openid": openid, "created_at": datetime.now(UTC)})
    code, out, err = await admin(settings, "revoke-all", "--openid", openid)
    assert (code, out) == (2, "")
    assert err == (
        f"wxlogin-admin: 2 users match (apps {APP_A}, {APP_B}): name one by USER_ID or with --app\n"
    )
    assert await check_reason(stub, reply.token) == "OK"
    code, out, _ = await admin(settings, "revoke-all", "--openid", openid, "--app", APP_A)
    assert code == 0
    assert "revoked 1 live session(s)" in out


# -- keys ----------------------------------------------------------------------------------------


def by_where(report: Any) -> dict[tuple[str, str | None], int]:
    """The key report's blobs as (place, key id) -> count."""
    return {(b["where"], b["key_id"]): b["count"] for b in report["blobs"]}


def by_key(report: Any) -> dict[str | None, int]:
    """The key report's totals as key id -> blobs."""
    return {k["key_id"]: k["blobs"] for k in report["keys"]}


PLACES = ("sessions.session_key", "users.session_key", "access_tokens.token", "login_codes.result")


async def test_rotation_reseal_leaves_nothing_under_the_old_key(
    settings: Settings, start_stub: StubFactory, emu: Emulator
) -> None:
    """Key A, then B with A old: every blob is reported under A, re-sealed, then opens under B."""
    a, b = crypto.key_id(KEY_A).hex(), crypto.key_id(KEY_B).hex()
    name = unique("admin-rotate")
    async with start_stub() as stub:
        minted = await emu.wx_login(APP_A, name)
        first = await stub.Login(auth_pb2.LoginRequest(app_id=APP_A, code=minted["code"]))
        access = await get_token(stub)
    before = await admin_json(settings, "keys")
    assert by_where(before) == {(place, a): 1 for place in PLACES}
    assert by_key(before) == {a: 4}
    rotated = replace(settings, secret_key=KEY_B, old_secret_keys=(KEY_A,))
    moved = await admin_json(rotated, "keys")
    assert by_key(moved) == {b: 0, a: 4}
    assert moved["not_current"] == 4
    roles = {k["key_id"]: k["role"] for k in moved["keys"]}
    assert roles == {
        b: "current (WXLOGIN_SECRET_KEY)",
        a: "old (WXLOGIN_SECRET_KEYS_OLD entry 1)",
    }
    dry = await admin_json(rotated, "reseal", "--dry-run")
    assert (dry["dry_run"], dry["resealed"]) == (True, 4)
    assert by_key(await admin_json(rotated, "keys")) == {b: 0, a: 4}  # nothing written
    done = await admin_json(rotated, "reseal", "--batch-size", "1")
    assert (done["resealed"], done["changed"], done["unopenable"]) == (4, 0, 0)
    again = await admin_json(rotated, "reseal")
    assert again["resealed"] == 0
    assert {p["where"]: p["current"] for p in again["places"]} == dict.fromkeys(PLACES, 1)
    after = await admin_json(rotated, "keys")
    assert by_key(after) == {b: 4, a: 0}
    assert after["not_current"] == 0
    _, text, _ = await admin(rotated, "keys")
    assert "WXLOGIN_SECRET_KEYS_OLD can be emptied" in text
    # The old key can go: a service with B alone opens every re-sealed blob.
    async with start_stub(secret_key=KEY_B, old_secret_keys=()) as stub:
        assert await check_reason(stub, first.token) == "OK"
        blob = await emu.user_data(APP_A, name)
        data = await stub.DecryptUserData(decrypt_request(first.token, blob))
        assert data.data["watermark"]["appid"] == APP_A
        replay = await stub.Login(auth_pb2.LoginRequest(app_id=APP_A, code=minted["code"]))
        assert replay.token == first.token  # the kept answer opened under B
        assert (await get_token(stub)).access_token == access.access_token


async def test_blobs_under_an_unconfigured_key_are_reported_and_left(
    settings: Settings, db: Any
) -> None:
    """A blob under no configured key is reported and left; one from before key ids is moved."""
    sealed = {
        "s-unknown": crypto.SessionKeyCipher(KEY_C).seal("a2V5LXVua25vd24xMjM0NQ==", "s-unknown"),
        "s-legacy": legacy_seal(KEY_A, "a2V5LWxlZ2FjeTEyMzQ1Ng==", "s-legacy"),
    }
    now = datetime.now(UTC)
    await db.sessions.insert_many(
        [
            {
                "_id": session_id,
                "user_id": ObjectId(),
                "app_id": APP_A,
                "openid": "o-blob",
                "session_key": Binary(blob),
                "created_at": now,
                "expires_at": now + timedelta(days=1),
            }
            for session_id, blob in sealed.items()
        ]
    )
    report = await admin_json(settings, "keys")
    c = crypto.key_id(KEY_C).hex()
    assert by_where(report) == {
        ("sessions.session_key", None): 1,
        ("sessions.session_key", c): 1,
    }
    assert report["unopenable"] == 1
    assert {b["key_id"]: b["role"] for b in report["blobs"]}[c].startswith("NOT CONFIGURED")
    _, text, _ = await admin(settings, "keys")
    assert "1 blob(s) are sealed under no configured key" in text
    outcome = await admin_json(settings, "reseal")
    assert (outcome["resealed"], outcome["unopenable"]) == (1, 1)
    assert (await db.sessions.find_one({"_id": "s-unknown"}))["session_key"] == sealed["s-unknown"]
    assert by_key(await admin_json(settings, "keys")) == {crypto.key_id(KEY_A).hex(): 1, c: 1}


async def test_a_blob_rewritten_since_the_read_keeps_the_newer_one(db: Any) -> None:
    """A re-sealing writes only if the blob is still the one read: a newer one stands, counted."""
    cipher = crypto.SessionKeyCipher(KEY_B, old_keys=[KEY_A])
    read = crypto.SessionKeyCipher(KEY_A).seal("a2V5LXJlYWQxMjM0NTY3OA==", "s-raced")
    newer = cipher.seal("a2V5LW5ld2VyMTIzNDU2Nw==", "s-raced")  # a login meanwhile
    await db.sessions.insert_one({"_id": "s-raced", "session_key": Binary(newer)})
    sessions = next(place for place in SEALED if place.where == "sessions.session_key")
    outcome = ResealCount(sessions.where)
    update = resealing(sessions, "s-raced", read, cipher.reseal(read, "s-raced") or b"")
    await Operators(db, cipher)._write(sessions, [update], outcome)
    assert (outcome.resealed, outcome.changed) == (0, 1)
    assert (await db.sessions.find_one({"_id": "s-raced"}))["session_key"] == newer


# -- access tokens -------------------------------------------------------------------------------


async def test_access_token_state_without_the_token(
    settings: Settings, start_stub: StubFactory
) -> None:
    """Each app's version, expiry, lease and forced refreshes today show; the token never does."""
    async with token_emulator(dict(settings.apps)) as wechat:
        async with start_stub(wechat_api_base=wechat.base) as stub:
            first = await get_token(stub)
            shown = {a["app_id"]: a for a in (await admin_json(settings, "access-tokens"))["apps"]}
            assert shown[APP_A]["has_token"] is True
            assert shown[APP_A]["version"] == 1
            assert shown[APP_A]["forced_today"] == 0
            assert shown[APP_A]["lease_held"] is False
            expires = datetime.fromisoformat(shown[APP_A]["expires_at"])
            assert expires == first.expires_at.ToDatetime(UTC)
            assert (shown[APP_B]["has_token"], shown[APP_B]["version"]) == (False, 0)
            # Normal mode repeats a token WeChat refuses: one forced refresh.
            await wechat.json("POST", "/_dev/access-tokens/invalidate", {"appid": APP_A})
            second = await get_token(stub, rejected=first.access_token)
            assert second.access_token != first.access_token
        code, table, _ = await admin(settings, "access-tokens")
        raw = json.dumps(await admin_json(settings, "access-tokens"))
    assert code == 0
    forced = {a["app_id"]: a for a in json.loads(raw)["apps"]}[APP_A]
    # Two writes: normal mode's (the refused token again), then force mode's.
    assert (forced["version"], forced["forced_today"]) == (3, 1)
    assert forced["last_forced_at"] is not None
    assert "1 of 20" in table
    assert "none yet" in table
    for token in (first.access_token, second.access_token):
        assert token not in table + raw
        assert crypto.token_id(token) not in table + raw


# -- arguments, misses and outages ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "the following arguments are required: COMMAND"),
        (["nope"], "invalid choice: 'nope'"),
        (["user"], "name the user by one of USER_ID, --openid or --unionid"),
        (["user", "abc"], "USER_ID must be a wxlogin user_id (24 hex digits), got 'abc'"),
        (["user", "--unionid", "u", "--openid", "o"], "name the user by one of"),
        (["sessions", "--app", APP_A, "0" * 24], "--app goes with --openid"),
        (["revoke-all", "--openid", " "], "--openid is empty"),
        (["reseal", "--batch-size", "0"], "must be 1 to 10000, got 0"),
        (["keys", "--reseal"], "unrecognized arguments: --reseal"),
    ],
)
def test_bad_arguments_exit_2_saying_what_is_wrong(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A misuse exits 2 before anything is read, with argparse's usage and the problem."""
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert message in captured.err
    assert "Traceback" not in captured.err


async def test_an_unknown_user_exits_1_in_one_line(settings: Settings) -> None:
    """A user that is not there: exit 1 and one line saying which lookup found nothing."""
    missing = str(ObjectId())
    assert await admin(settings, "user", missing) == (
        1,
        "",
        f"wxlogin-admin: no user with user_id {missing}\n",
    )
    code, _, err = await admin(settings, "sessions", "--openid", "o-nobody", "--app", "wxnotours")
    assert (code, err) == (
        1,
        "wxlogin-admin: no user with openid o-nobody in wxnotours "
        "(wxnotours is not in WXLOGIN_APPS)\n",
    )
    assert (await admin(settings, "revoke-all", "--unionid", "u-nobody"))[0] == 1


async def test_no_mongodb_uri_or_no_mongodb_is_one_clear_line(settings: Settings) -> None:
    """No WXLOGIN_MONGODB_URI: exit 2, no mongod started; an unreachable one: exit 1, one line."""
    code, _, err = await admin(replace(settings, mongodb_uri=None), "keys")
    assert code == 2
    assert err.startswith("wxlogin-admin: WXLOGIN_MONGODB_URI is unset")
    assert err.count("\n") == 1
    nowhere = f"mongodb://127.0.0.1:{free_port()}/?directConnection=true"
    code, _, err = await admin(replace(settings, mongodb_uri=nowhere), "user", str(ObjectId()))
    assert code == 1
    assert err == (
        "wxlogin-admin: MongoDB does not answer (STORE_UNAVAILABLE): is WXLOGIN_MONGODB_URI "
        "the service's, and is it up?\n"
    )
    code, _, err = await admin(replace(settings, mongodb_uri="mongodb://:secret@/x"), "keys")
    assert (code, "secret" in err) == (2, False)


async def test_as_a_process_with_the_services_environment(
    settings: Settings, start_stub: StubFactory, emu: Emulator, mongod: str
) -> None:
    """`python -m service.admin` reads WXLOGIN_* like the service: a lookup, a listing, a revoke."""
    # The database the service's own configuration names (Settings.database); this
    # test's user is its own, and is deleted at the end.
    production = replace(settings, database=Settings.database)
    env = {
        "WXLOGIN_MONGODB_URI": mongod,
        "WXLOGIN_APPS": APPS_ENV,
        "WXLOGIN_SECRET_KEY": b64_secret_key(),
        "WXLOGIN_SECRET_KEYS_OLD": "",
    }
    name = unique("admin-process")
    async with start_stub(database=production.database, session_cache_seconds=0) as stub:
        reply, session_key = await login(stub, emu, name)
        try:
            args = ("user", "--openid", reply.user.openid, "--app", APP_A, "--json")
            found = await run_to_exit("service.admin", *args, env=env)
            assert (found.returncode, found.stderr) == (0, "")
            assert json.loads(found.stdout)["users"][0]["user_id"] == reply.user.user_id
            listed = await run_to_exit("service.admin", "sessions", reply.user.user_id, env=env)
            assert listed.returncode == 0
            assert crypto.token_id(reply.token)[:12] in listed.stdout
            assert reply.token not in listed.stdout
            assert session_key not in listed.stdout
            revoked = await run_to_exit("service.admin", "revoke-all", reply.user.user_id, env=env)
            assert revoked.returncode == 0
            assert "revoked 1 live session(s)" in revoked.stdout
            assert await check_reason(stub, reply.token) == "SESSION_INVALID"
            unset = await run_to_exit(
                "service.admin", "keys", env={**env, "WXLOGIN_MONGODB_URI": ""}
            )
            assert unset.returncode == 2
            assert unset.stderr.startswith("wxlogin-admin: WXLOGIN_MONGODB_URI is unset")
            assert unset.stderr.count("\n") == 1
        finally:
            await cleanup(production, reply.user.user_id)


async def cleanup(settings: Settings, user_id: str) -> None:
    """Delete a user and its sessions from a database other tests share."""
    from service.store import connect

    client = connect(settings.mongodb_uri or "")
    try:
        db = client[settings.database]
        await asyncio.gather(
            db.users.delete_one({"_id": ObjectId(user_id)}),
            db.sessions.delete_many({"user_id": ObjectId(user_id)}),
        )
    finally:
        await client.close()
