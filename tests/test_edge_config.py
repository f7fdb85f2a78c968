"""The edge's configuration: its WXLOGIN_* variables into EdgeConfig, defaults and errors."""

from __future__ import annotations

import pytest

from clients.edge.config import EdgeConfig
from runtime.config import ConfigError, ListenAddress


def test_edge_defaults_follow_the_contract() -> None:
    """With nothing set the edge listens on 127.0.0.1:8080 and calls 127.0.0.1:50051."""
    config = EdgeConfig.from_env({})
    assert config.listen == ListenAddress("127.0.0.1", 8080)
    assert config.upstream == "127.0.0.1:50051"
    assert config.log_level == "INFO"
    assert config.session_cache_seconds == 2.0


def test_edge_variables_are_read() -> None:
    """Each variable the edge knows reaches its EdgeConfig field."""
    config = EdgeConfig.from_env(
        {
            "WXLOGIN_HTTP_LISTEN": "[::1]:0",
            "WXLOGIN_UPSTREAM": "dns:///wxlogin.internal:50051",
            "WXLOGIN_LOG_LEVEL": "debug",
            "WXLOGIN_EDGE_SESSION_CACHE": "0",
        }
    )
    assert config.listen == ListenAddress("::1", 0)
    assert config.upstream == "dns:///wxlogin.internal:50051"
    assert config.log_level == "DEBUG"
    assert config.session_cache_seconds == 0.0


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("WXLOGIN_HTTP_LISTEN", "no-port"),
        ("WXLOGIN_HTTP_LISTEN", "127.0.0.1:99999"),
        ("WXLOGIN_UPSTREAM", "has space:50051"),
        ("WXLOGIN_LOG_LEVEL", "LOUD"),
        ("WXLOGIN_EDGE_SESSION_CACHE", "61"),
        ("WXLOGIN_EDGE_SESSION_CACHE", "a while"),
    ],
)
def test_bad_configuration_is_one_line_naming_the_variable(variable: str, value: str) -> None:
    """A bad variable is a ConfigError whose one line starts with the variable's name."""
    with pytest.raises(ConfigError) as caught:
        EdgeConfig.from_env({variable: value})
    assert caught.value.variable == variable
    assert str(caught.value).startswith(variable + ": ")
    assert "\n" not in str(caught.value)
