"""Secret key rotation: key ids in sealed blobs, WXLOGIN_SECRET_KEYS_OLD, re-sealing on use."""

from __future__ import annotations

import base64
import hashlib
import os
from typing import Any

import grpc
import pytest
from bson import Binary
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from service import crypto
from service.settings import ConfigError, Settings
from tests.conftest import SECRET_KEY, StubFactory
from tests.support import APP_A, APPS_ENV, Emulator, error_info
from wxlogin.v1 import auth_pb2, auth_pb2_grpc

KEY_A = SECRET_KEY  # the suite's key: what sessions are sealed with before a rotation
KEY_B = os.urandom(32)
SESSION_KEY = "c2Vzc2lvbmtleTEyMzQ1Ng=="


def legacy_seal(key: bytes, session_key: str, session_id: str) -> bytes:
    """A blob in the format from before key ids: nonce, then ciphertext and tag."""
    nonce = os.urandom(12)
    return nonce + AESGCM(key).encrypt(nonce, session_key.encode(), session_id.encode())


def named_key(blob: bytes) -> bytes:
    """The key id a sealed blob carries."""
    return blob[1:5]


# -- the cipher -----------------------------------------------------------------------------


def test_blobs_carry_the_sealing_keys_id() -> None:
    """A sealed blob names its key by id, and the id is not the key or a plain hash of it."""
    blob = crypto.SessionKeyCipher(KEY_A).seal(SESSION_KEY, "s-1")
    assert named_key(blob) == crypto.key_id(KEY_A)
    assert crypto.key_id(KEY_A) != crypto.key_id(KEY_B)
    assert crypto.key_id(KEY_A) not in (KEY_A, hashlib.sha256(KEY_A).digest())


def test_old_keys_open_but_never_seal() -> None:
    """After a rotation old blobs open; new blobs are sealed under the current key only."""
    before = crypto.SessionKeyCipher(KEY_A).seal(SESSION_KEY, "s-1")
    rotated = crypto.SessionKeyCipher(KEY_B, old_keys=[KEY_A])
    assert rotated.open(before, "s-1") == SESSION_KEY
    assert not rotated.is_current(before)
    after = rotated.seal(SESSION_KEY, "s-2")
    assert named_key(after) == crypto.key_id(KEY_B)
    assert rotated.is_current(after)
    with pytest.raises(InvalidTag):
        crypto.SessionKeyCipher(KEY_A).open(after, "s-2")


def test_reseal_moves_a_blob_to_the_current_key() -> None:
    """reseal() gives a blob the current key alone opens; a current blob needs none."""
    rotated = crypto.SessionKeyCipher(KEY_B, old_keys=[KEY_A])
    resealed = rotated.reseal(crypto.SessionKeyCipher(KEY_A).seal(SESSION_KEY, "s-1"), "s-1")
    assert resealed is not None
    assert crypto.SessionKeyCipher(KEY_B).open(resealed, "s-1") == SESSION_KEY
    assert rotated.reseal(resealed, "s-1") is None


def test_blobs_without_a_key_id_still_open() -> None:
    """Blobs from before key ids open under the current key, or an old one after a rotation."""
    legacy = legacy_seal(KEY_A, SESSION_KEY, "s-1")
    assert crypto.SessionKeyCipher(KEY_A).open(legacy, "s-1") == SESSION_KEY
    assert not crypto.SessionKeyCipher(KEY_A).is_current(legacy)
    assert crypto.SessionKeyCipher(KEY_B, old_keys=[KEY_A]).open(legacy, "s-1") == SESSION_KEY
    with pytest.raises(InvalidTag):
        crypto.SessionKeyCipher(KEY_B).open(legacy, "s-1")


def test_header_and_session_are_authenticated() -> None:
    """A blob opens only under its session, and a rewritten key id does not open at all."""
    cipher = crypto.SessionKeyCipher(KEY_B, old_keys=[KEY_A])
    blob = cipher.seal(SESSION_KEY, "s-1")
    with pytest.raises(InvalidTag):
        cipher.open(blob, "s-2")
    relabelled = blob[:1] + crypto.key_id(KEY_A) + blob[5:]
    with pytest.raises(InvalidTag):
        cipher.open(relabelled, "s-1")


# -- configuration ----------------------------------------------------------------------------


def b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


def test_old_keys_are_read_from_the_environment() -> None:
    """WXLOGIN_SECRET_KEYS_OLD is a comma-separated list of keys, hidden from repr."""
    env = {
        "WXLOGIN_APPS": APPS_ENV,
        "WXLOGIN_SECRET_KEY": b64(KEY_B),
        "WXLOGIN_SECRET_KEYS_OLD": f" {b64(KEY_A)} , {b64(bytes(32))}",
    }
    settings = Settings.from_env(env)
    assert settings.old_secret_keys == (KEY_A, bytes(32))
    assert b64(KEY_A) not in repr(settings)
    assert Settings.from_env({**env, "WXLOGIN_SECRET_KEYS_OLD": ""}).old_secret_keys == ()


@pytest.mark.parametrize(
    "value",
    ["not base64!", base64.b64encode(b"short").decode(), b64(bytes(32))],
    ids=["not-base64", "short", "repeated"],
)
def test_a_bad_old_key_fails_naming_the_variable(value: str) -> None:
    """A bad or repeated old key is one line naming WXLOGIN_SECRET_KEYS_OLD, never the key."""
    env = {
        "WXLOGIN_APPS": APPS_ENV,
        "WXLOGIN_SECRET_KEY": b64(KEY_B),
        "WXLOGIN_SECRET_KEYS_OLD": f"{b64(bytes(32))},{value}",
    }
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(env)
    assert caught.value.variable == "WXLOGIN_SECRET_KEYS_OLD"
    assert b64(KEY_A) not in str(caught.value)
    assert "entry 2" in str(caught.value)


# -- a real service, a real rotation ------------------------------------------------------------


async def login(stub: auth_pb2_grpc.AuthServiceStub, emu: Emulator, user: str) -> str:
    code = await emu.code(APP_A, user)
    return (await stub.Login(auth_pb2.LoginRequest(app_id=APP_A, code=code))).token


async def decrypts(
    stub: auth_pb2_grpc.AuthServiceStub, emu: Emulator, token: str, user: str
) -> str:
    """ "ok" when DecryptUserData opens this session's key, else the failure's reason."""
    blob = await emu.user_data(APP_A, user, data={"phoneNumber": "+8613800000000"})
    request = auth_pb2.DecryptUserDataRequest(
        token=token, encrypted_data=blob["encryptedData"], iv=blob["iv"]
    )
    try:
        reply = await stub.DecryptUserData(request)
    except grpc.aio.AioRpcError as error:
        return error_info(error).reason
    assert reply.data.fields["phoneNumber"].string_value == "+8613800000000"
    return "ok"


async def stored_blob(db: Any, token: str) -> bytes:
    doc = await db.sessions.find_one({"_id": crypto.token_id(token)})
    return bytes(doc["session_key"])


async def test_rotation_keeps_sessions_and_the_old_key_can_then_go(
    start_stub: StubFactory, emu: Emulator, db: Any
) -> None:
    """Rotate: old sessions decrypt and are re-sealed on use; then without the old key all works."""
    async with start_stub(secret_key=KEY_A) as stub:
        token = await login(stub, emu, "rhea")
        assert named_key(await stored_blob(db, token)) == crypto.key_id(KEY_A)
    async with start_stub(secret_key=KEY_B, old_secret_keys=(KEY_A,)) as stub:
        assert await decrypts(stub, emu, token, "rhea") == "ok"
        assert named_key(await stored_blob(db, token)) == crypto.key_id(KEY_B)
        fresh = await login(stub, emu, "remy")
        assert named_key(await stored_blob(db, fresh)) == crypto.key_id(KEY_B)
    async with start_stub(secret_key=KEY_B) as stub:
        assert await decrypts(stub, emu, token, "rhea") == "ok"
        assert await decrypts(stub, emu, fresh, "remy") == "ok"


async def test_checking_a_session_reseals_it(
    start_stub: StubFactory, emu: Emulator, db: Any
) -> None:
    """CheckSession alone re-seals an old session, so sessions in use leave the old key."""
    async with start_stub(secret_key=KEY_A) as stub:
        token = await login(stub, emu, "rosa")
    async with start_stub(secret_key=KEY_B, old_secret_keys=(KEY_A,)) as stub:
        await stub.CheckSession(auth_pb2.CheckSessionRequest(token=token))
    assert named_key(await stored_blob(db, token)) == crypto.key_id(KEY_B)


async def test_a_session_from_before_key_ids_opens_and_is_resealed(
    start_stub: StubFactory, emu: Emulator, db: Any
) -> None:
    """A blob stored in the old format (no key id) decrypts under the current key, then gets one."""
    async with start_stub(secret_key=KEY_A) as stub:
        token = await login(stub, emu, "ruth")
        key = crypto.SessionKeyCipher(KEY_A).open(
            await stored_blob(db, token), crypto.token_id(token)
        )
        legacy = legacy_seal(KEY_A, key, crypto.token_id(token))
        await db.sessions.update_one(
            {"_id": crypto.token_id(token)}, {"$set": {"session_key": Binary(legacy)}}
        )
    async with start_stub(secret_key=KEY_A) as stub:
        assert await decrypts(stub, emu, token, "ruth") == "ok"
    assert named_key(await stored_blob(db, token)) == crypto.key_id(KEY_A)


async def test_dropping_a_key_too_early_fails_only_decryption(
    start_stub: StubFactory, emu: Emulator
) -> None:
    """A new key without WXLOGIN_SECRET_KEYS_OLD: sessions still check, decryption is INTERNAL."""
    async with start_stub(secret_key=KEY_A) as stub:
        token = await login(stub, emu, "rick")
    async with start_stub(secret_key=KEY_B) as stub:
        reply = await stub.CheckSession(auth_pb2.CheckSessionRequest(token=token))
        assert reply.user.app_id == APP_A
        assert await decrypts(stub, emu, token, "rick") == "INTERNAL"
