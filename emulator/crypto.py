"""WeChat's user-data crypto, encrypting side: AES-128-CBC + PKCS#7 and the rawData signature."""

from __future__ import annotations

import base64
import hashlib
import os

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes


def encrypt(session_key: str, plaintext: bytes) -> tuple[str, str]:
    """Encrypt under base64 ``session_key`` with a fresh iv; returns (encryptedData, iv) base64."""
    key = base64.b64decode(session_key)
    iv = os.urandom(16)
    padder = padding.PKCS7(algorithms.AES.block_size).padder()
    padded = padder.update(plaintext) + padder.finalize()
    encryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    ciphertext = encryptor.update(padded) + encryptor.finalize()
    return base64.b64encode(ciphertext).decode("ascii"), base64.b64encode(iv).decode("ascii")


def sign(raw_data: str, session_key: str) -> str:
    """WeChat's rawData signature: hex sha1 of rawData followed by the base64 session_key."""
    # sha1 is WeChat's choice, not ours.
    digest = hashlib.sha1((raw_data + session_key).encode("utf-8"), usedforsecurity=False)
    return digest.hexdigest()
