"""Pure pieces without I/O: settings parsing, base64 repair, tokens, the session cache."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.exceptions import InvalidTag

from service import crypto
from service.cache import SessionCache
from service.errors import BadRequest, DecryptFailed
from service.records import SessionRecord, UserRecord
from service.settings import ConfigError, Settings

KEY = base64.b64encode(bytes(range(32))).decode()


def test_settings_defaults_follow_the_contract() -> None:
    """Only the two required variables set: every default is the documented one."""
    settings = Settings.from_env({"WXLOGIN_APPS": "wx1:s1", "WXLOGIN_SECRET_KEY": KEY})
    assert settings.apps == {"wx1": "s1"}
    assert settings.grpc_listen == "127.0.0.1:50051"
    assert settings.mongodb_uri is None
    assert str(settings.data_dir) == ".data"
    assert settings.wechat_api_base == "https://api.weixin.qq.com"
    assert settings.session_ttl == 604800
    assert settings.watermark_max_age == 86400


def test_settings_repr_hides_secrets() -> None:
    """Printing Settings never shows app secrets or the secret key."""
    settings = Settings.from_env({"WXLOGIN_APPS": "wx1:topsecret", "WXLOGIN_SECRET_KEY": KEY})
    assert "topsecret" not in repr(settings)
    assert KEY not in repr(settings)


def test_several_apps_parse_and_duplicates_are_rejected() -> None:
    """WXLOGIN_APPS holds several apps; the same appid twice is a configuration error."""
    env = {"WXLOGIN_APPS": " wx1:s1 , wx2:s2 ", "WXLOGIN_SECRET_KEY": KEY}
    assert Settings.from_env(env).apps == {"wx1": "s1", "wx2": "s2"}
    with pytest.raises(ConfigError, match="WXLOGIN_APPS"):
        Settings.from_env({**env, "WXLOGIN_APPS": "wx1:s1,wx1:s2"})


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


def _record(expires_at: datetime) -> SessionRecord:
    user = UserRecord("u1", "wx1", "o1", None)
    return SessionRecord("sid", user, expires_at - timedelta(days=1), expires_at, b"")


def test_cache_never_serves_a_session_past_expires_at() -> None:
    """A cached session is dropped the moment its expires_at passes, however fresh."""
    clock = [0.0]
    cache = SessionCache(max_age=60, monotonic=lambda: clock[0])
    expires = datetime(2030, 1, 1, tzinfo=UTC)
    cache.put(_record(expires))
    assert cache.get("sid", expires - timedelta(milliseconds=1)) is not None
    assert cache.get("sid", expires) is None
    assert len(cache) == 0


def test_cache_entries_go_stale_and_the_cache_is_bounded() -> None:
    """Entries older than max_age are re-read; the cache never grows past max_entries."""
    clock = [0.0]
    cache = SessionCache(max_age=5, max_entries=3, monotonic=lambda: clock[0])
    now = datetime(2029, 1, 1, tzinfo=UTC)
    cache.put(_record(datetime(2030, 1, 1, tzinfo=UTC)))
    clock[0] = 5.1
    assert cache.get("sid", now) is None
    for index in range(10):
        user = UserRecord("u", "wx1", "o", None)
        cache.put(SessionRecord(f"s{index}", user, now, datetime(2030, 1, 1, tzinfo=UTC), b""))
    assert len(cache) == 3
