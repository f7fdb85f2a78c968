"""Tokens, session_key encryption at rest, and WeChat's encryptedData scheme."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import math
import os
import re
import secrets
import sys
from collections.abc import Sequence
from typing import Any

from cryptography.exceptions import InvalidTag
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


# Sealed blobs since key rotation: version byte, key id, nonce, ciphertext+tag.
# Blobs from before (nonce, ciphertext+tag; no header) still open: see `open`.
_SEALED_V1 = 1
_KEY_ID_BYTES = 4
_HEADER_BYTES = 1 + _KEY_ID_BYTES
_TAG_BYTES = 16


def key_id(secret_key: bytes) -> bytes:
    """A short public name for a secret key: HMAC of a label, so it reveals nothing of the key."""
    return hmac.new(secret_key, b"wxlogin sealed session_key id", "sha256").digest()[:_KEY_ID_BYTES]


def sealed_key_id(blob: bytes) -> bytes | None:
    """The key id a sealed blob names; None for the format from before key ids.

    From the header alone, no decryption: a blob from before key ids whose random
    nonce happens to start like a header (1 in 256) names a "key" nobody has.
    """
    if len(blob) < _HEADER_BYTES + _NONCE_BYTES + _TAG_BYTES or blob[0] != _SEALED_V1:
        return None
    return blob[1:_HEADER_BYTES]


class SessionKeyCipher:
    """AES-256-GCM for session_keys at rest, bound to the session they belong to.

    Seals with the current key only; opens with the current key or any of
    `old_keys` (WXLOGIN_SECRET_KEYS_OLD), found by the key id each blob carries.
    """

    def __init__(self, secret_key: bytes, old_keys: Sequence[bytes] = ()) -> None:
        self._current_id = key_id(secret_key)
        self._aead = AESGCM(secret_key)
        self._by_id: dict[bytes, AESGCM] = {self._current_id: self._aead}
        for old in old_keys:
            kid = key_id(old)
            if kid == self._current_id:
                continue  # the current key listed as old too: harmless
            if kid in self._by_id:
                raise ValueError("two secret keys share a key id; generate a new key")
            self._by_id[kid] = AESGCM(old)
        # Legacy blobs name no key: the current one first (the common case), then the old ones.
        self._all = list(self._by_id.values())

    def seal(self, session_key: str, session_id: str) -> bytes:
        """Encrypt, with the session id as associated data: blobs can't move between sessions."""
        header = bytes([_SEALED_V1]) + self._current_id
        nonce = os.urandom(_NONCE_BYTES)
        aad = header + session_id.encode()
        return header + nonce + self._aead.encrypt(nonce, session_key.encode(), aad)

    def open(self, blob: bytes, session_id: str) -> str:
        """Decrypt a sealed session_key; raises cryptography's InvalidTag if no key opens it."""
        aead = self._keyed(blob)
        if aead is not None:
            body = blob[_HEADER_BYTES:]
            aad = blob[:_HEADER_BYTES] + session_id.encode()
            try:
                return aead.decrypt(body[:_NONCE_BYTES], body[_NONCE_BYTES:], aad).decode()
            except InvalidTag:
                pass  # a legacy blob whose random nonce happens to look like a header
        # The format from before key ids: nonce, ciphertext; any configured key may be its.
        nonce, ciphertext = blob[:_NONCE_BYTES], blob[_NONCE_BYTES:]
        for candidate in self._all:
            try:
                return candidate.decrypt(nonce, ciphertext, session_id.encode()).decode()
            except InvalidTag:
                continue
        raise InvalidTag()

    def is_current(self, blob: bytes) -> bool:
        """True when `blob` names the current key: nothing to re-seal (no decryption needed)."""
        return self._keyed(blob) is self._aead

    def reseal(self, blob: bytes, session_id: str) -> bytes | None:
        """The same session_key sealed under the current key, or None if it already is."""
        if self.is_current(blob):
            return None
        return self.seal(self.open(blob, session_id), session_id)

    def holds(self, kid: bytes) -> bool:
        """True when `kid` names the current key or one of the old ones."""
        return kid in self._by_id

    def _keyed(self, blob: bytes) -> AESGCM | None:
        """The key a v1 blob names, if it is one we hold."""
        kid = sealed_key_id(blob)
        return None if kid is None else self._by_id.get(kid)


def decode_b64(field: str, value: str) -> bytes:
    """Decode standard base64, repairing the classic `+`-became-space client bug."""
    if value:
        # Most clients send it clean: decoded as it is, without the repairs below
        # (DecryptUserData decodes two fields per call). Anything else falls through.
        try:
            return base64.b64decode(value + "=" * (-len(value) % 4), validate=True)
        except (binascii.Error, ValueError):
            pass
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
        data = _STRICT_JSON.decode(plain.decode("utf-8"))
    # _BeyondADouble: raised the moment the reader meets the number, before the rest is
    # read; answered apart, it would say "valid padding, a number first": DECRYPT_FAILED
    # like every other failure (WeChat's data has no such numbers).
    # RecursionError: nested deeper than Python's stack (json's C reader recurses).
    except (ValueError, UnicodeDecodeError, RecursionError, _BeyondADouble):
        raise DecryptFailed() from None
    if not isinstance(data, dict):
        raise DecryptFailed()
    # Fewer brackets than levels allowed can't nest too deep: WeChat's payloads skip the walk.
    if plain.count(b"{") + plain.count(b"[") > _MAX_DEPTH and _too_deep(data):
        raise DecryptFailed()
    return data


# The data goes out as a google.protobuf.Struct, whose numbers are doubles and which
# protobuf reads only 100 levels deep; WeChat's payloads are 2 levels deep, JSON
# proper, and their numbers small. Anything else answered as data broke the readers:
# a NaN is no JSON (the edge answered 500), a Struct past 100 levels no client could
# read. So the plaintext is read as strict JSON, at most _MAX_DEPTH levels deep.
_MAX_DEPTH = 32


class _BeyondADouble(Exception):
    """A JSON number no double holds (a Struct could not carry it)."""


def _not_json(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _BeyondADouble()
    return value


def _double_int(text: str) -> int:
    value = int(text)  # over 4,300 digits: ValueError (Python's own limit)
    if abs(value) > _DOUBLE_MAX:
        raise _BeyondADouble()
    return value


_DOUBLE_MAX = int(sys.float_info.max)


# One decoder for every call: json.loads with hooks builds a new one each time (~15 us).
_STRICT_JSON = json.JSONDecoder(
    parse_constant=_not_json, parse_float=_finite_float, parse_int=_double_int
)


def _too_deep(data: dict[str, Any]) -> bool:
    """True when containers nest more than _MAX_DEPTH levels (the outer object is level 1)."""
    level: list[Any] = [data]
    for _ in range(_MAX_DEPTH):
        deeper: list[Any] = []
        for container in level:
            children = container.values() if type(container) is dict else container
            deeper.extend(child for child in children if type(child) in _CONTAINERS)
        if not deeper:
            return False
        level = deeper
    return True


_CONTAINERS = (dict, list)  # what json makes; a tuple: `dict | list` is built on each use


def signature_matches(raw_data: str, session_key: str, signature: str) -> bool:
    """WeChat's rawData check: sha1(rawData + session_key) in hex, compared in constant time."""
    expected = hashlib.sha1((raw_data + session_key).encode(), usedforsecurity=False).hexdigest()
    return hmac.compare_digest(expected.encode(), signature.strip().lower().encode())
