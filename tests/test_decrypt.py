"""DecryptUserData: WeChat's AES-CBC scheme, signature, watermark, and hostile input."""

from __future__ import annotations

import base64
import hashlib
import json
import time

import grpc
import pytest
from google.protobuf import json_format
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import StubFactory
from tests.support import APP_A, APP_B, Emulator, decrypt_request, error_info
from wxlogin.v1 import auth_pb2, auth_pb2_grpc


async def logged_in(
    stub: auth_pb2_grpc.AuthServiceStub, emu: Emulator, user: str, app: str = APP_A
) -> str:
    response = await stub.Login(auth_pb2.LoginRequest(app_id=app, code=await emu.code(app, user)))
    return response.token


async def decrypt_error(
    stub: auth_pb2_grpc.AuthServiceStub, req: auth_pb2.DecryptUserDataRequest
) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.DecryptUserData(req)
    info = error_info(caught.value)
    return info.code, info.reason


async def test_decrypts_user_data_and_checks_the_signature(
    stub: auth_pb2_grpc.AuthServiceStub, emu: Emulator
) -> None:
    """The decrypted JSON comes back as a Struct with the watermark time."""
    token = await logged_in(stub, emu, "sara")
    blob = await emu.user_data(APP_A, "sara", data={"phoneNumber": "+8613800000000", "n": 3})
    response = await stub.DecryptUserData(decrypt_request(token, blob))
    data = json_format.MessageToDict(response.data)
    assert data["phoneNumber"] == "+8613800000000"
    assert data["n"] == 3
    assert data["watermark"]["appid"] == APP_A
    assert abs(response.watermark_time.seconds - time.time()) < 60


async def test_signature_is_optional(stub: auth_pb2_grpc.AuthServiceStub, emu: Emulator) -> None:
    """Without raw_data and signature, decryption still works."""
    token = await logged_in(stub, emu, "sam")
    blob = await emu.user_data(APP_A, "sam")
    response = await stub.DecryptUserData(decrypt_request(token, blob, raw_data="", signature=""))
    assert response.data.fields["watermark"].struct_value.fields["appid"].string_value == APP_A


async def test_spaces_instead_of_plus_are_repaired(
    stub: auth_pb2_grpc.AuthServiceStub, emu: Emulator
) -> None:
    """Base64 whose '+' a client turned into spaces still decrypts."""
    token = await logged_in(stub, emu, "tess")
    for _ in range(50):  # find a blob that has a '+' to break
        blob = await emu.user_data(APP_A, "tess")
        if "+" in blob["encryptedData"] + blob["iv"]:
            break
    else:
        pytest.fail("the emulator never produced base64 with '+'")
    broken = decrypt_request(
        token,
        blob,
        encrypted_data=blob["encryptedData"].replace("+", " "),
        iv=blob["iv"].replace("+", " "),
    )
    response = await stub.DecryptUserData(broken)
    assert "watermark" in response.data.fields


async def test_wrong_signature_is_signature_mismatch(
    stub: auth_pb2_grpc.AuthServiceStub, emu: Emulator
) -> None:
    """A signature that is not sha1(raw_data + session_key) is rejected."""
    token = await logged_in(stub, emu, "uma")
    blob = await emu.user_data(APP_A, "uma")
    forged = hashlib.sha1(b"something else", usedforsecurity=False).hexdigest()
    assert await decrypt_error(stub, decrypt_request(token, blob, signature=forged)) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "SIGNATURE_MISMATCH",
    )
    tampered = decrypt_request(token, blob, raw_data=blob["rawData"].replace("}", ',"x":1}'))
    assert (await decrypt_error(stub, tampered))[1] == "SIGNATURE_MISMATCH"


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"encrypted_data": ""}, "BAD_REQUEST"),
        ({"iv": ""}, "BAD_REQUEST"),
        ({"encrypted_data": "***not base64***"}, "BAD_REQUEST"),
        ({"iv": base64.b64encode(b"short").decode()}, "BAD_REQUEST"),
        ({"signature": ""}, "BAD_REQUEST"),  # raw_data without signature
        ({"encrypted_data": base64.b64encode(b"x" * 32).decode()}, "DECRYPT_FAILED"),
        ({"encrypted_data": base64.b64encode(b"x" * 33).decode()}, "DECRYPT_FAILED"),
    ],
    ids=["empty-data", "empty-iv", "bad-base64", "short-iv", "half-signature", "garbage", "ragged"],
)
async def test_malformed_input_is_typed(
    stub: auth_pb2_grpc.AuthServiceStub,
    emu: Emulator,
    overrides: dict[str, str],
    reason: str,
) -> None:
    """Each kind of malformed input gets INVALID_ARGUMENT with its reason."""
    token = await logged_in(stub, emu, "vera")
    blob = await emu.user_data(APP_A, "vera")
    assert await decrypt_error(stub, decrypt_request(token, blob, **overrides)) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        reason,
    )


async def test_rotated_session_key_fails_to_decrypt(
    stub: auth_pb2_grpc.AuthServiceStub, emu: Emulator
) -> None:
    """Data under a newer session_key (wx.login ran again, code unseen) is SESSION_KEY_STALE."""
    token = await logged_in(stub, emu, "wade")
    await emu.code(APP_A, "wade")  # wx.login() again: WeChat rotates the key
    blob = await emu.user_data(APP_A, "wade")
    req = decrypt_request(token, blob, raw_data="", signature="")
    # Issue 11: WeChat (wxa/checksession) confirms our key is stale; tests/test_session_key.py.
    assert (await decrypt_error(stub, req))[1] == "SESSION_KEY_STALE"


async def test_watermark_of_another_app_is_rejected(
    stub: auth_pb2_grpc.AuthServiceStub, emu: Emulator
) -> None:
    """A session of app A cannot decrypt data watermarked for app B."""
    token = await logged_in(stub, emu, "xena", APP_A)
    blob = await emu.user_data(APP_A, "xena", watermark_appid=APP_B)
    assert await decrypt_error(stub, decrypt_request(token, blob)) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "WATERMARK_MISMATCH",
    )


async def test_old_watermark_is_rejected_unless_disabled(
    start_stub: StubFactory, stub: auth_pb2_grpc.AuthServiceStub, emu: Emulator
) -> None:
    """Older than WXLOGIN_WATERMARK_MAX_AGE is WATERMARK_EXPIRED; max age 0 turns it off."""
    token = await logged_in(stub, emu, "yuri")
    old = int(time.time()) - 2 * 86400
    blob = await emu.user_data(APP_A, "yuri", watermark_timestamp=old)
    assert (await decrypt_error(stub, decrypt_request(token, blob)))[1] == "WATERMARK_EXPIRED"
    async with start_stub(watermark_max_age=0) as lenient:
        response = await lenient.DecryptUserData(decrypt_request(token, blob))
        assert response.watermark_time.seconds == old


async def test_bad_token_is_a_session_error(stub: auth_pb2_grpc.AuthServiceStub) -> None:
    """Decryption needs a live session."""
    req = auth_pb2.DecryptUserDataRequest(
        token="wxl1_" + "B" * 43, encrypted_data="AAAA", iv="AAAA"
    )
    assert (await decrypt_error(stub, req))[1] == "SESSION_INVALID"


async def test_hostile_bytes_never_crash_the_server(
    stub: auth_pb2_grpc.AuthServiceStub, emu: Emulator
) -> None:
    """Random base64 and text, in every field, is always a typed client error, never INTERNAL."""
    token = await logged_in(stub, emu, "fuzz")
    allowed = {"BAD_REQUEST", "DECRYPT_FAILED", "SIGNATURE_MISMATCH", "WATERMARK_MISMATCH"}
    seen: list[str] = []

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(
        data=st.one_of(
            st.binary(max_size=96).map(lambda b: base64.b64encode(b).decode()), st.text(max_size=64)
        ),
        iv=st.one_of(
            st.binary(min_size=15, max_size=17).map(lambda b: base64.b64encode(b).decode()),
            st.text(max_size=30),
        ),
        raw=st.one_of(st.just(""), st.text(max_size=40)),
    )
    def probe(data: str, iv: str, raw: str) -> None:
        seen.append(json.dumps([data, iv, raw]))

    probe()
    for item in seen:
        data, iv, raw = json.loads(item)
        req = auth_pb2.DecryptUserDataRequest(
            token=token, encrypted_data=data, iv=iv, raw_data=raw, signature="ab" if raw else ""
        )
        reason = "OK"
        try:
            await stub.DecryptUserData(req)
        except grpc.aio.AioRpcError as error:
            reason = error_info(error).reason
        assert reason in allowed, item
    # The server is still fine afterwards.
    await stub.CheckSession(auth_pb2.CheckSessionRequest(token=token))


async def test_a_number_no_struct_can_hold_is_decrypt_failed(
    stub: auth_pb2_grpc.AuthServiceStub, emu: Emulator
) -> None:
    """Decrypted JSON with an integer beyond a double's range: DECRYPT_FAILED, never INTERNAL."""
    token = await logged_in(stub, emu, "huge")
    blob = await emu.user_data(APP_A, "huge", data={"n": 10**400})
    assert await decrypt_error(stub, decrypt_request(token, blob)) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "DECRYPT_FAILED",
    )


@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["NaN", "Infinity"])
async def test_data_that_is_not_json_is_decrypt_failed_never_answered(
    stub: auth_pb2_grpc.AuthServiceStub, emu: Emulator, value: float
) -> None:
    """NaN and Infinity open but are no JSON: DECRYPT_FAILED (as data, they broke the edge)."""
    token = await logged_in(stub, emu, "not-json")
    blob = await emu.user_data(APP_A, "not-json", data={"n": value})
    assert await decrypt_error(stub, decrypt_request(token, blob)) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "DECRYPT_FAILED",
    )
