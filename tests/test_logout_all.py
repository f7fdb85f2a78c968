"""Log out everywhere: RevokeAllSessions by token or by user_id, the grant, the edge, the client."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest

from clients import CallerForbidden, SessionCache, connect
from service.app import RPC_NAMES
from service.callers import REVOKE_BY_USER_ID, load_callers
from tests.conftest import StubFactory
from tests.edge_support import running_edge
from tests.support import APP_A, APP_B, APPS, Emulator, caller_table, check_reason, error_info
from wxlogin.v1 import auth_pb2, auth_pb2_grpc

DEAD_TOKEN = "wxl1_" + "x" * 43


async def login(stub: auth_pb2_grpc.AuthServiceStub, emu: Emulator, app: str, user: str) -> Any:
    """One Login of `user` with a fresh code."""
    return await stub.Login(auth_pb2.LoginRequest(app_id=app, code=await emu.code(app, user)))


async def revoke_all(stub: auth_pb2_grpc.AuthServiceStub, **who: str) -> int:
    """RevokeAllSessions by token= or user_id=; the count."""
    reply = await stub.RevokeAllSessions(auth_pb2.RevokeAllSessionsRequest(**who))
    return int(reply.revoked)


async def test_revoke_all_by_token_ends_every_session_of_that_user_only(
    stub: auth_pb2_grpc.AuthServiceStub, emu: Emulator
) -> None:
    """A token's RevokeAllSessions ends all 3 sessions of its user; another user's stays live."""
    mine = [await login(stub, emu, APP_A, "everywhere-1") for _ in range(3)]
    other = await login(stub, emu, APP_A, "everywhere-2")
    # Cached in this process first: the revocation must reach the cache too.
    for reply in mine:
        assert await check_reason(stub, reply.token) == "OK"
    assert await revoke_all(stub, token=mine[0].token) == 3
    for reply in mine:
        assert await check_reason(stub, reply.token) == "SESSION_INVALID"
    assert await check_reason(stub, other.token) == "OK"
    # Again (a retry after a lost answer): nothing left, and no error.
    assert await revoke_all(stub, token=mine[1].token) == 0


async def test_dead_tokens_end_nothing(stub: auth_pb2_grpc.AuthServiceStub, emu: Emulator) -> None:
    """Malformed, unknown and revoked tokens answer 0 and leave the user's sessions alone."""
    live = await login(stub, emu, APP_A, "everywhere-dead")
    revoked = await login(stub, emu, APP_A, "everywhere-dead")
    await stub.RevokeSession(auth_pb2.RevokeSessionRequest(token=revoked.token))
    for token in ("not-a-token", DEAD_TOKEN, revoked.token):
        assert await revoke_all(stub, token=token) == 0
    assert await check_reason(stub, live.token) == "OK"


async def test_revoke_all_by_user_id_without_callers(
    stub: auth_pb2_grpc.AuthServiceStub, emu: Emulator
) -> None:
    """Without a callers file anyone may end a user's sessions by user_id (loopback only)."""
    first = await login(stub, emu, APP_B, "everywhere-uid")
    second = await login(stub, emu, APP_B, "everywhere-uid")
    assert await revoke_all(stub, user_id=first.user.user_id) == 2
    assert await check_reason(stub, second.token) == "SESSION_INVALID"
    assert await revoke_all(stub, user_id="0" * 24) == 0


@pytest.mark.parametrize(
    "who",
    [{}, {"token": ""}, {"user_id": ""}, {"user_id": "someone"}, {"user_id": "abcdefghijkl"}],
)
async def test_malformed_requests_are_bad_requests(
    stub: auth_pb2_grpc.AuthServiceStub, who: dict[str, str]
) -> None:
    """Neither field, an empty one, or a user_id that is no ObjectId: BAD_REQUEST."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await revoke_all(stub, **who)
    assert error_info(caught.value).reason == "BAD_REQUEST"


KEYS = {
    "token-only": "token-only-caller-key-0001",
    "by-user-id": "by-user-id-caller-key-0001",
    "star": "star-caller-key-0000000001",
    "app-b-admin": "app-b-admin-caller-key-001",
}
GRANTS = {
    "token-only": ('["CheckSession", "Login", "RevokeAllSessions"]', '["*"]'),
    "by-user-id": (f'["Login", "CheckSession", "{REVOKE_BY_USER_ID}"]', '["*"]'),
    "star": ('["*"]', '["*"]'),
    "app-b-admin": (f'["*", "{REVOKE_BY_USER_ID}"]', f'["{APP_B}"]'),
}


def callers_file(path: Path) -> Path:
    """A callers file with the four callers of KEYS."""
    path.write_text("".join(caller_table(name, key, *GRANTS[name]) for name, key in KEYS.items()))
    return path


def as_caller(name: str) -> tuple[tuple[str, str], ...]:
    """The metadata that makes a call come from caller `name`."""
    return (("x-wxlogin-caller-key", KEYS[name]),)


def test_the_user_id_grant_is_given_only_by_name(tmp_path: Path) -> None:
    """ "*" does not grant RevokeAllSessions:user_id; naming it grants it and the RPC."""
    callers = {
        caller.name: caller
        for caller in load_callers(callers_file(tmp_path / "c"), apps=APPS, rpcs=RPC_NAMES).callers
    }
    assert not callers["star"].may_call(REVOKE_BY_USER_ID)
    assert callers["star"].may_call("RevokeAllSessions")
    assert not callers["token-only"].may_call(REVOKE_BY_USER_ID)
    assert callers["by-user-id"].may_call(REVOKE_BY_USER_ID)
    assert callers["by-user-id"].may_call("RevokeAllSessions")
    assert callers["app-b-admin"].may_call(REVOKE_BY_USER_ID)
    assert not callers["app-b-admin"].may_call("GetAccessToken")


async def test_by_user_id_only_for_callers_granted_it(
    start_stub: StubFactory, emu: Emulator, tmp_path: Path
) -> None:
    """By user_id: CALLER_FORBIDDEN without the grant or for another app; by token: no grant."""
    async with start_stub(callers_file=callers_file(tmp_path / "callers.toml")) as stub:

        async def log_in(app: str, user: str) -> Any:
            code = await emu.code(app, user)
            request = auth_pb2.LoginRequest(app_id=app, code=code)
            return await stub.Login(request, metadata=as_caller("star"))

        async def forbidden(name: str, **who: str) -> None:
            request = auth_pb2.RevokeAllSessionsRequest(**who)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.RevokeAllSessions(request, metadata=as_caller(name))
            info = error_info(caught.value)
            assert (info.code, info.reason) == (
                grpc.StatusCode.PERMISSION_DENIED,
                "CALLER_FORBIDDEN",
            ), name

        async def revoked(name: str, **who: str) -> int:
            request = auth_pb2.RevokeAllSessionsRequest(**who)
            reply = await stub.RevokeAllSessions(request, metadata=as_caller(name))
            return int(reply.revoked)

        a_user = await log_in(APP_A, "granted-a")
        b_user = await log_in(APP_B, "granted-b")
        await forbidden("token-only", user_id=a_user.user.user_id)
        await forbidden("star", user_id=a_user.user.user_id)
        # Limited to app B: not app A's users, by user_id or by token.
        await forbidden("app-b-admin", user_id=a_user.user.user_id)
        await forbidden("app-b-admin", token=a_user.token)
        assert await revoked("app-b-admin", user_id=b_user.user.user_id) == 1
        assert await revoked("by-user-id", user_id=a_user.user.user_id) == 1
        again = await log_in(APP_A, "granted-a")
        assert await revoked("token-only", token=again.token) == 1


async def test_edge_logout_all_and_client_library(
    stub: auth_pb2_grpc.AuthServiceStub,
    emu: Emulator,
    http: aiohttp.ClientSession,
    service: Any,
) -> None:
    """Edge POST /v1/logout {"all": true} answers the count; the client's cache forgets the user."""
    target = f"127.0.0.1:{service.port}"
    tokens = [(await login(stub, emu, APP_A, "edge-everywhere")).token for _ in range(3)]
    async with running_edge(target) as base:
        bad = await http.post(
            f"{base}/v1/logout",
            json={"all": "yes"},
            headers={"Authorization": f"Bearer {tokens[0]}"},
        )
        assert bad.status == 400
        assert (await bad.json())["error"]["reason"] == "BAD_REQUEST"
        one = await http.post(
            f"{base}/v1/logout",
            json={"all": False},
            headers={"Authorization": f"Bearer {tokens[0]}"},
        )
        assert one.status == 204
        answer = await http.post(
            f"{base}/v1/logout",
            json={"all": True},
            headers={"Authorization": f"Bearer {tokens[1]}"},
        )
        assert answer.status == 200
        assert await answer.json() == {"revoked": 2}
    for token in tokens:
        assert await check_reason(stub, token) == "SESSION_INVALID"

    more = [(await login(stub, emu, APP_A, "client-everywhere")).token for _ in range(2)]
    async with connect(target) as client:
        client.session_cache = SessionCache(max_age=60)
        for token in more:
            await client.check_session(token)
        assert len(client.session_cache) == 2
        with pytest.raises(ValueError, match="exactly one"):
            await client.revoke_all_sessions(more[0], user_id="x")
        assert await client.revoke_all_sessions(more[0]) == 2
        # Its own cache must not answer for the other token now.
        assert len(client.session_cache) == 0
        assert await client.revoke_all_sessions(more[1]) == 0


async def test_client_by_user_id_without_grant_raises_caller_forbidden(
    start_service: Any, emu: Emulator, tmp_path: Path
) -> None:
    """The client library raises CallerForbidden for user_id without the grant."""
    async with (
        start_service(callers_file=callers_file(tmp_path / "callers.toml")) as running,
        connect(f"127.0.0.1:{running.port}", caller_key=KEYS["token-only"]) as client,
    ):
        with pytest.raises(CallerForbidden):
            await client.revoke_all_sessions(user_id="0" * 24)
