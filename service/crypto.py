"""Tokens, session_key encryption at rest, and WeChat's encryptedData scheme."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import re
import secrets
from typing import Any

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from service.errors import BadRequest, DecryptFailed

# A recognisable prefix lets secret scanners and humans spot a leaked token;
# the "1" versions the format.
TOKEN_PREFIX = "wxl1_"  # noqa: S105 - a format marker, not a secret
_TOKEN_BYTES = 32
_TOKEN_RE = re.compile(r"wxl1_[A-Za-z0-9_-]{43}")
_NONCE_BYTES = 12


def new_token() -> str:
    """A fresh opaque login token: 32 random bytes, URL-safe."""
    return TOKEN_PREFIX + secrets.token_urlsafe(_TOKEN_BYTES)


def is_well_formed_token(token: str) -> bool:
    """Cheap shape check, so garbage never costs a database round trip."""
    return _TOKEN_RE.fullmatch(token) is not None


def token_id(token: str) -> str:
    """The session's _id: SHA-256 of the token, so a database dump holds no usable token."""
    return hashlib.sha256(token.encode()).hexdigest()


class SessionKeyCipher:
    """AES-256-GCM for session_keys at rest, bound to the session they belong to."""

    def __init__(self, secret_key: bytes) -> None:
        self._aead = AESGCM(secret_key)

    def seal(self, session_key: str, session_id: str) -> bytes:
        """Encrypt, with the session id as associated data: blobs can't move between sessions."""
        nonce = os.urandom(_NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, session_key.encode(), session_id.encode())

    def open(self, blob: bytes, session_id: str) -> str:
        """Decrypt a sealed session_key; raises cryptography's InvalidTag if tampered with."""
        nonce, ciphertext = blob[:_NONCE_BYTES], blob[_NONCE_BYTES:]
        return self._aead.decrypt(nonce, ciphertext, session_id.encode()).decode()


def decode_b64(field: str, value: str) -> bytes:
    """Decode standard base64, repairing the classic `+`-became-space client bug."""
    # Spaces first: a leading or trailing '+' that became a space is data, not padding.
    cleaned = "".join(value.replace(" ", "+").split())
    if not cleaned:
        raise BadRequest(f"{field} is empty")
    cleaned += "=" * (-len(cleaned) % 4)  # some clients drop the padding
    try:
        return base64.b64decode(cleaned, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(f"{field} is not valid base64") from None


def decrypt_user_data(session_key: str, encrypted_data: str, iv: str) -> dict[str, Any]:
    """Decrypt WeChat's encryptedData: AES-128-CBC, PKCS#7, JSON object inside."""
    iv_bytes = decode_b64("iv", iv)
    if len(iv_bytes) != 16:
        raise BadRequest(f"iv must decode to 16 bytes, got {len(iv_bytes)}")
    ciphertext = decode_b64("encrypted_data", encrypted_data)
    key = base64.b64decode(session_key)
    # One message for every failure below: telling "bad padding" apart from
    # "bad JSON" would hand callers a padding oracle.
    if len(key) != 16 or not ciphertext or len(ciphertext) % 16:
        raise DecryptFailed()
    decryptor = Cipher(algorithms.AES(key), modes.CBC(iv_bytes)).decryptor()
    unpadder = padding.PKCS7(128).unpadder()
    try:
        plain = unpadder.update(decryptor.update(ciphertext) + decryptor.finalize())
        plain += unpadder.finalize()
        data = json.loads(plain.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise DecryptFailed() from None
    if not isinstance(data, dict):
        raise DecryptFailed()
    return data


def signature_matches(raw_data: str, session_key: str, signature: str) -> bool:
    """WeChat's rawData check: sha1(rawData + session_key) in hex, compared in constant time."""
    expected = hashlib.sha1((raw_data + session_key).encode(), usedforsecurity=False).hexdigest()
    return hmac.compare_digest(expected.encode(), signature.strip().lower().encode())
