"""The service's configuration: WXLOGIN_* variables into Settings, defaults and errors."""

from __future__ import annotations

import base64

import pytest

from service.settings import ConfigError, Settings
from tests.support import APPS, APPS_ENV

KEY = base64.b64encode(bytes(range(32))).decode()
SHORT_KEY = "c2hvcnQ="  # base64, but of 5 bytes
# Enough for Settings.from_env to succeed; each bad case below overrides one variable.
GOOD_ENV = {"WXLOGIN_APPS": APPS_ENV, "WXLOGIN_SECRET_KEY": KEY}


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


def test_the_good_environment_is_accepted() -> None:
    """The base of the bad cases below is itself valid, so each failure is its one variable's."""
    assert Settings.from_env(GOOD_ENV).apps == APPS


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"WXLOGIN_APPS": ""}, "WXLOGIN_APPS"),
        ({"WXLOGIN_APPS": "justanappid"}, "WXLOGIN_APPS"),
        ({"WXLOGIN_APPS": APPS_ENV + ",justanappid"}, "WXLOGIN_APPS"),
        ({"WXLOGIN_APPS": APPS_ENV + "," + APPS_ENV}, "WXLOGIN_APPS"),
        ({"WXLOGIN_SECRET_KEY": ""}, "WXLOGIN_SECRET_KEY"),
        ({"WXLOGIN_SECRET_KEY": SHORT_KEY}, "WXLOGIN_SECRET_KEY"),
        ({"WXLOGIN_SECRET_KEY": "not base64!"}, "WXLOGIN_SECRET_KEY"),
        ({"WXLOGIN_SESSION_TTL": "soon"}, "WXLOGIN_SESSION_TTL"),
        ({"WXLOGIN_SESSION_TTL": "0"}, "WXLOGIN_SESSION_TTL"),
        ({"WXLOGIN_WATERMARK_MAX_AGE": "-5"}, "WXLOGIN_WATERMARK_MAX_AGE"),
        ({"WXLOGIN_GRPC_LISTEN": "nowhere"}, "WXLOGIN_GRPC_LISTEN"),
        ({"WXLOGIN_WECHAT_API_BASE": "ftp://x"}, "WXLOGIN_WECHAT_API_BASE"),
    ],
)
def test_bad_configuration_is_one_line_naming_the_variable(
    env: dict[str, str], variable: str
) -> None:
    """A bad variable is a ConfigError: one line that names it and echoes no secret."""
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({**GOOD_ENV, **env})
    message = str(caught.value)
    assert caught.value.variable == variable
    assert message.startswith(variable + ": ")
    assert "\n" not in message
    assert "secret-a-123" not in message
    assert "secret-b-456" not in message
    assert SHORT_KEY not in message
    assert KEY not in message
