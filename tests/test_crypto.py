"""The service's cryptography: login tokens, base64 repair, session_key sealing, AES-CBC checks."""

from __future__ import annotations

import base64

import pytest
from cryptography.exceptions import InvalidTag

from emulator import crypto as emulator_crypto
from service import crypto
from service.errors import BadRequest, DecryptFailed


def test_spaces_in_base64_are_repaired() -> None:
    """The '+'-became-space client bug and dropped padding are repaired."""
    raw = bytes([0xFB, 0xEF, 0xBE]) * 4  # encodes to '++++' runs
    encoded = base64.b64encode(raw).decode()
    assert "+" in encoded
    assert crypto.decode_b64("iv", encoded.replace("+", " ")) == raw
    assert crypto.decode_b64("iv", base64.b64encode(b"ab").decode().rstrip("=")) == b"ab"
    with pytest.raises(BadRequest):
        crypto.decode_b64("iv", "@@@@")


def test_decrypt_rejects_a_wrong_size_key_or_ciphertext() -> None:
    """Anything that cannot be AES-128-CBC is DECRYPT_FAILED, never a crash."""
    iv = base64.b64encode(b"\0" * 16).decode()
    good_key = base64.b64encode(b"k" * 16).decode()
    with pytest.raises(DecryptFailed):
        crypto.decrypt_user_data(
            base64.b64encode(b"k" * 15).decode(), "AAAAAAAAAAAAAAAAAAAAAA==", iv
        )
    with pytest.raises(DecryptFailed):
        crypto.decrypt_user_data(good_key, base64.b64encode(b"x" * 17).decode(), iv)


def test_tokens_are_random_urlsafe_and_hashed() -> None:
    """Tokens carry 32 random bytes, are URL-safe, and their id is SHA-256 hex."""
    tokens = {crypto.new_token() for _ in range(100)}
    assert len(tokens) == 100
    assert all(crypto.is_well_formed_token(t) for t in tokens)
    token = tokens.pop()
    assert len(base64.urlsafe_b64decode(token.removeprefix("wxl1_") + "=")) == 32
    assert len(crypto.token_id(token)) == 64
    assert crypto.token_id(token) != token


def test_sealed_session_key_is_bound_to_its_session() -> None:
    """A sealed session_key opens only under its own session id."""
    cipher = crypto.SessionKeyCipher(bytes(32))
    blob = cipher.seal("c2Vzc2lvbmtleTEyMzQ1Ng==", "session-1")
    assert cipher.open(blob, "session-1") == "c2Vzc2lvbmtleTEyMzQ1Ng=="
    with pytest.raises(InvalidTag):
        cipher.open(blob, "session-2")


def _sealed(plaintext: bytes) -> tuple[str, str, str]:
    """(session_key, encryptedData, iv) that open to `plaintext`, as WeChat would seal them."""
    key = base64.b64encode(b"k" * 16).decode()
    encrypted, iv = emulator_crypto.encrypt(key, plaintext)
    return key, encrypted, iv


@pytest.mark.parametrize(
    "plaintext",
    [
        b'{"a": NaN}',
        b'{"a": Infinity}',
        b'{"a": -Infinity}',
        b'{"a": ' + b"[" * 33 + b"]" * 33 + b"}",  # deeper than any WeChat payload
        b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",  # deeper than Python's stack
    ],
    ids=["NaN", "Infinity", "-Infinity", "depth-34", "depth-100001"],
)
def test_data_no_json_reader_could_take_is_decrypt_failed(plaintext: bytes) -> None:
    """Not JSON (NaN, Infinity), or nested past what a Struct can travel: DECRYPT_FAILED.

    Answered as data, a NaN broke the clients' JSON and the edge answered 500; a Struct
    nested past protobuf's 100 levels could not be read by the client at all.
    """
    with pytest.raises(DecryptFailed):
        crypto.decrypt_user_data(*_sealed(plaintext))


@pytest.mark.parametrize(
    "plaintext",
    [b'{"a": 1e999}', b'{"a": -1e999}', b'{"a": 1' + b"0" * 400 + b"}", b"1e999 garbage"],
)
def test_a_number_beyond_a_double_is_decrypt_failed_like_any_failure(plaintext: bytes) -> None:
    """No Struct holds it (its numbers are doubles), and WeChat never sends one.

    Its own answer would be an oracle: it is raised as soon as the reader meets the
    number, before the rest is read (`1e999 garbage`), so it would say "the padding
    is valid and the plaintext starts with a huge number".
    """
    with pytest.raises(DecryptFailed):
        crypto.decrypt_user_data(*_sealed(plaintext))


def test_data_as_deep_as_the_limit_still_opens() -> None:
    """32 levels (WeChat's payloads have 2) and ordinary numbers open as they are."""
    plaintext = b'{"a": ' + b"[" * 31 + b"1.5e3" + b"]" * 31 + b', "b": -7}'
    data = crypto.decrypt_user_data(*_sealed(plaintext))
    assert data["b"] == -7
    inner = data["a"]
    for _ in range(31):
        inner = inner[0]
    assert inner == 1500.0
