"""Linked accounts: User.account_id is shared by the users of all apps with one unionid."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import Any

import grpc
from bson import ObjectId

from tests.conftest import ServiceFactory
from tests.support import APP_A, APP_B, Emulator
from wxlogin.v1 import auth_pb2, auth_pb2_grpc


async def login(stub: auth_pb2_grpc.AuthServiceStub, emu: Emulator, app: str, user: str) -> Any:
    """One Login of `user` in `app` with a fresh code."""
    return await stub.Login(auth_pb2.LoginRequest(app_id=app, code=await emu.code(app, user)))


async def checked(stub: auth_pb2_grpc.AuthServiceStub, token: str) -> Any:
    """The User CheckSession answers for a token."""
    return (await stub.CheckSession(auth_pb2.CheckSessionRequest(token=token))).user


async def test_users_of_two_apps_with_one_unionid_share_an_account(
    stub: auth_pb2_grpc.AuthServiceStub, emu: Emulator
) -> None:
    """Same unionid in apps A and B: one account_id (the first user's id); none: own user_id."""
    for app in (APP_A, APP_B):
        await emu.setup_user(app, "acc-both", unionid="union-acc-both")
    first = await login(stub, emu, APP_A, "acc-both")
    second = await login(stub, emu, APP_B, "acc-both")
    assert first.user.user_id != second.user.user_id
    assert first.user.account_id == second.user.account_id == first.user.user_id
    assert (await checked(stub, second.token)).account_id == first.user.user_id
    lonely = await login(stub, emu, APP_A, "acc-lonely")
    assert lonely.user.unionid == ""
    assert lonely.user.account_id == lonely.user.user_id
    assert (await checked(stub, lonely.token)).account_id == lonely.user.user_id


async def test_a_unionid_on_a_later_login_merges_the_user_into_the_account(
    stub: auth_pb2_grpc.AuthServiceStub, emu: Emulator, db: Any
) -> None:
    """Unionid first seen on a later login: the user joins the account, nothing is lost."""
    early = await login(stub, emu, APP_A, "acc-late")  # no unionid yet
    assert early.user.account_id == early.user.user_id
    assert (await checked(stub, early.token)).account_id == early.user.user_id  # cached now
    await emu.setup_user(APP_B, "acc-late", unionid="union-acc-late")
    other = await login(stub, emu, APP_B, "acc-late")
    # Now WeChat sends the unionid for the app A user too (bound to the open platform).
    await emu.setup_user(APP_A, "acc-late", unionid="union-acc-late")
    later = await login(stub, emu, APP_A, "acc-late")
    assert later.user.user_id == early.user.user_id
    assert later.user.account_id == other.user.account_id == other.user.user_id
    # The session from before the link answers the account too, from this process's cache.
    before = await checked(stub, early.token)
    assert (before.unionid, before.account_id) == ("union-acc-late", other.user.account_id)
    doc = await db.users.find_one({"_id": ObjectId(early.user.user_id)})
    assert doc["merged_account_ids"] == [early.user.user_id]
    account = await db.accounts.find_one({"_id": "union-acc-late"})
    assert sorted(account["user_ids"]) == sorted([early.user.user_id, other.user.user_id])


async def test_a_unionid_in_decrypted_data_links_the_user(
    stub: auth_pb2_grpc.AuthServiceStub, emu: Emulator
) -> None:
    """wx.getUserInfo's unionId, decrypted, links the user; the other app's user joins it."""
    first = await login(stub, emu, APP_A, "acc-decrypt")
    bundle = await emu.user_data(
        APP_A,
        "acc-decrypt",
        data={"openId": first.user.openid, "nickName": "D", "unionId": "union-acc-decrypt"},
    )
    await stub.DecryptUserData(
        auth_pb2.DecryptUserDataRequest(
            token=first.token, encrypted_data=bundle["encryptedData"], iv=bundle["iv"]
        )
    )
    user = await checked(stub, first.token)
    assert (user.unionid, user.account_id) == ("union-acc-decrypt", first.user.user_id)
    await emu.setup_user(APP_B, "acc-decrypt", unionid="union-acc-decrypt")
    other = await login(stub, emu, APP_B, "acc-decrypt")
    assert other.user.account_id == first.user.user_id


def forged_unionid_blob(plain: bytes, bundle: dict[str, str], unionid: str) -> dict[str, str]:
    """`bundle` (encrypting `plain`) cut and re-keyed so that it opens as `{"unionId": unionid...`.

    AES-CBC has no MAC: the sender picks the IV, so the first block it opens to, and may drop
    blocks from the front. `unionid` must start a block of `plain` (the sender's own nickname).
    """
    start = plain.index(unionid.encode())
    assert start % 16 == 0, "the nickname's filler must align the unionid"
    assert start >= 16
    forged = b'{"unionId":    "'
    assert len(forged) == 16
    ciphertext = base64.b64decode(bundle["encryptedData"])
    chain = base64.b64decode(bundle["iv"]) + ciphertext  # C[-1] = iv
    cut = start - 16  # the forged block replaces plaintext block cut // 16
    previous = chain[cut : cut + 16]  # the ciphertext block before it (or the iv)
    iv = bytes(a ^ b ^ c for a, b, c in zip(previous, plain[cut:start], forged, strict=True))
    return {
        "encryptedData": base64.b64encode(ciphertext[cut:]).decode(),
        "iv": base64.b64encode(iv).decode(),
    }


async def test_a_unionid_forged_into_the_senders_own_data_links_nothing(
    stub: auth_pb2_grpc.AuthServiceStub, emu: Emulator
) -> None:
    """A user can't join another person's account by re-keying their own encryptedData.

    The victim's unionid is in the attacker's nickname; the forged data opens, watermark and
    all, as `{"unionId": "<victim's>", ...}` but without the attacker's openId, which every
    wx.getUserInfo payload starts with: the service answers the data and links nothing.
    """
    victim_unionid = "oVictimUnion0123456789abcdef"
    await emu.setup_user(APP_B, "acc-victim", unionid=victim_unionid)
    victim = await login(stub, emu, APP_B, "acc-victim")
    attacker = await login(stub, emu, APP_A, "acc-attacker")
    stamp = int(time.time())
    for filler in range(16):  # a nickname that puts the victim's unionid at a block's start
        data = {
            "openId": attacker.user.openid,
            "nickName": "x" * filler + victim_unionid,
            "gender": 0,
            "watermark": {"appid": APP_A, "timestamp": stamp},
        }
        plain = json.dumps(data, ensure_ascii=False).encode()
        if plain.index(victim_unionid.encode()) % 16 == 0:
            break
    payload = {k: v for k, v in data.items() if k != "watermark"}
    bundle = await emu.user_data(APP_A, "acc-attacker", data=payload, watermark_timestamp=stamp)
    forged = forged_unionid_blob(plain, bundle, victim_unionid)
    reply = await stub.DecryptUserData(
        auth_pb2.DecryptUserDataRequest(
            token=attacker.token, encrypted_data=forged["encryptedData"], iv=forged["iv"]
        )
    )
    assert reply.data["unionId"] == victim_unionid  # the forgery opens...
    assert "openId" not in reply.data
    user = await checked(stub, attacker.token)  # ...and links nothing
    assert (user.unionid, user.account_id) == ("", attacker.user.user_id)
    assert user.account_id != victim.user.account_id


async def test_a_unionid_in_data_of_another_openid_or_of_no_unionid_shape_links_nothing(
    stub: auth_pb2_grpc.AuthServiceStub, emu: Emulator
) -> None:
    """Decrypted data links only with the session's own openId and a unionId shaped like one."""
    user = await login(stub, emu, APP_A, "acc-shapes")
    for data in (
        {"openId": "o-somebody-else", "unionId": "union-acc-shapes"},
        {"unionId": "union-acc-shapes"},  # no openId at all
        {"openId": user.user.openid, "unionId": "u" * 100_000},
        {"openId": user.user.openid, "unionId": "union acc shapes"},
    ):
        bundle = await emu.user_data(APP_A, "acc-shapes", data=data)
        await stub.DecryptUserData(
            auth_pb2.DecryptUserDataRequest(
                token=user.token, encrypted_data=bundle["encryptedData"], iv=bundle["iv"]
            )
        )
        linked = await checked(stub, user.token)
        assert (linked.unionid, linked.account_id) == ("", user.user.user_id), data


async def test_first_logins_racing_in_two_processes_open_one_account(
    start_service: ServiceFactory, emu: Emulator
) -> None:
    """8 persons, each logging in to apps A and B at once via two services: one account each."""
    persons = [f"acc-race-{i}" for i in range(8)]
    for person in persons:
        for app in (APP_A, APP_B):
            await emu.setup_user(app, person, unionid=f"union-{person}")
    async with (
        start_service() as one,
        start_service() as two,
        grpc.aio.insecure_channel(f"127.0.0.1:{one.port}") as first,
        grpc.aio.insecure_channel(f"127.0.0.1:{two.port}") as second,
    ):
        stubs = (auth_pb2_grpc.AuthServiceStub(first), auth_pb2_grpc.AuthServiceStub(second))
        replies = await asyncio.gather(
            *(
                login(stubs[index], emu, app, person)
                for person in persons
                for index, app in enumerate((APP_A, APP_B))
            )
        )
    for in_a, in_b in zip(replies[::2], replies[1::2], strict=True):
        assert in_a.user.account_id == in_b.user.account_id
        assert in_a.user.account_id in (in_a.user.user_id, in_b.user.user_id)
