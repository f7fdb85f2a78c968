"""Value rules all programs share (runtime/config.py): listen addresses, apps, levels, seconds."""

from __future__ import annotations

import pytest

from runtime.config import (
    ConfigError,
    ListenAddress,
    parse_apps,
    parse_listen,
    parse_log_level,
    parse_number,
    parse_seconds,
    parse_whole,
)

VAR = "WXLOGIN_SOMETHING"


def test_config_error_names_the_variable_first() -> None:
    """A ConfigError reads 'VARIABLE: problem' and keeps both parts for callers."""
    error = ConfigError(VAR, "expected HOST:PORT")
    assert str(error) == f"{VAR}: expected HOST:PORT"
    assert (error.variable, error.problem) == (VAR, "expected HOST:PORT")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("127.0.0.1:50051", ListenAddress("127.0.0.1", 50051)),
        (" 0.0.0.0:0 ", ListenAddress("0.0.0.0", 0)),
        ("localhost:65535", ListenAddress("localhost", 65535)),
        ("[::1]:8080", ListenAddress("::1", 8080)),
        ("[::]:9", ListenAddress("::", 9)),
    ],
)
def test_listen_addresses_parse_to_host_and_port(value: str, expected: ListenAddress) -> None:
    """HOST:PORT and [IPv6]:PORT parse, with surrounding spaces dropped and IPv6 unbracketed."""
    assert parse_listen(VAR, value, "127.0.0.1:1") == expected


@pytest.mark.parametrize("value", [None, ""])
def test_an_unset_listen_address_is_the_default(value: str | None) -> None:
    """Unset or empty, the address is the program's default."""
    assert parse_listen(VAR, value, "[::1]:7") == ListenAddress("::1", 7)


def test_a_bare_ipv6_listen_address_is_refused() -> None:
    """'::1:8080' is ambiguous (is 8080 a port or a group?): the error asks for brackets."""
    with pytest.raises(ConfigError) as caught:
        parse_listen(VAR, "::1:8080", "127.0.0.1:1")
    assert caught.value.variable == VAR
    assert "[ADDR]:PORT" in str(caught.value)


@pytest.mark.parametrize(
    "value",
    [
        "nowhere",
        "127.0.0.1",
        "127.0.0.1:",
        ":8080",
        "[]:8080",
        "127.0.0.1:99999",
        "127.0.0.1:65536",
        "127.0.0.1:-1",
        "127.0.0.1:http",
        "[::1]",
    ],
)
def test_a_listen_address_without_a_good_port_or_host_is_refused(value: str) -> None:
    """No host, no port, or a port outside 0..65535: a ConfigError naming the variable."""
    with pytest.raises(ConfigError) as caught:
        parse_listen(VAR, value, "127.0.0.1:1")
    assert caught.value.variable == VAR
    assert str(caught.value).startswith(VAR + ": ")


@pytest.mark.parametrize(
    ("address", "url_host", "text"),
    [
        (ListenAddress("127.0.0.1", 80), "127.0.0.1", "127.0.0.1:80"),
        (ListenAddress("localhost", 0), "localhost", "localhost:0"),
        (ListenAddress("::1", 443), "[::1]", "[::1]:443"),
        (ListenAddress("fe80::1", 8080), "[fe80::1]", "[fe80::1]:8080"),
    ],
)
def test_a_listen_address_prints_as_urls_and_grpc_want_it(
    address: ListenAddress, url_host: str, text: str
) -> None:
    """url_host brackets IPv6 only; str() is url_host:port and parses back to the same address."""
    assert address.url_host == url_host
    assert str(address) == text
    assert parse_listen(VAR, str(address), "127.0.0.1:1") == address


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("localhost", True),
        ("::1", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.1", False),
        ("128.0.0.1", False),
        ("192.0.2.1", False),
    ],
)
def test_loopback_is_127_slash_8_ipv6_one_and_localhost(host: str, loopback: bool) -> None:
    """Only addresses reachable from this machine alone count as loopback."""
    assert ListenAddress(host, 1).is_loopback is loopback


@pytest.mark.parametrize(
    ("value", "level"),
    [
        (None, "INFO"),
        ("", "INFO"),
        ("debug", "DEBUG"),
        (" Warning ", "WARNING"),
        ("ERROR", "ERROR"),
    ],
)
def test_log_levels_are_names_in_any_case(value: str | None, level: str) -> None:
    """A level name in any case is accepted and upper-cased; unset means INFO."""
    assert parse_log_level(VAR, value) == level


def test_an_unknown_log_level_is_refused() -> None:
    """A word that is no logging level is a ConfigError naming the variable and the value."""
    with pytest.raises(ConfigError) as caught:
        parse_log_level(VAR, "chatty")
    assert caught.value.variable == VAR
    assert "chatty" in str(caught.value)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(None, 30), ("", 30), ("  ", 30), ("0", 0), (" 45 ", 45), ("60", 60)],
)
def test_seconds_within_bounds_are_accepted(value: str | None, seconds: int) -> None:
    """Whole seconds from minimum to maximum, both included; unset or blank means the default."""
    assert parse_seconds(VAR, value, 30, minimum=0, maximum=60) == seconds


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("-1", "must be >= 0"),
        ("61", "must be <= 60"),
        ("1.5", "whole seconds"),
        ("soon", "whole seconds"),
    ],
)
def test_seconds_outside_bounds_or_not_whole_are_refused(value: str, problem: str) -> None:
    """Below minimum, above maximum or not a whole number: a ConfigError naming the variable."""
    with pytest.raises(ConfigError) as caught:
        parse_seconds(VAR, value, 30, minimum=0, maximum=60)
    assert caught.value.variable == VAR
    assert problem in caught.value.problem


def test_seconds_have_no_upper_bound_unless_given() -> None:
    """Without a maximum any whole number at or above minimum is accepted."""
    assert parse_seconds(VAR, str(10**9), 1, minimum=1) == 10**9
    with pytest.raises(ConfigError, match=">= 1"):
        parse_seconds(VAR, "0", 1, minimum=1)


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("nan", "must be >= 0"),
        ("inf", "must be >= 0"),
        ("-0.5", "must be >= 0"),
        ("60.5", "must be <= 60"),
        ("soon", "expected seconds"),
    ],
)
def test_numbers_refuse_nan_infinity_and_out_of_range(value: str, problem: str) -> None:
    """parse_number (the edge's cache seconds, login rates): finite, within its bounds."""
    with pytest.raises(ConfigError) as caught:
        parse_number(VAR, value, 2.0, minimum=0, maximum=60, unit="seconds")
    assert caught.value.variable == VAR
    assert problem in caught.value.problem


def test_numbers_and_whole_numbers_within_bounds() -> None:
    """Unset or blank is the default; bounds are inclusive; whole numbers refuse fractions."""
    assert parse_number(VAR, None, 2.0, minimum=0) == 2.0
    assert parse_number(VAR, " 0.25 ", 2.0, minimum=0, maximum=60) == 0.25
    assert parse_whole(VAR, "10000", 10, minimum=1, maximum=10_000) == 10_000
    with pytest.raises(ConfigError, match="expected a whole number"):
        parse_whole(VAR, "2.5", 10, minimum=1)
    with pytest.raises(ConfigError, match="must be >= 1"):
        parse_whole(VAR, "0", 10, minimum=1)


def test_apps_parse_with_spaces_around_entries() -> None:
    """appid:secret pairs, comma-separated, spaces around them ignored."""
    assert parse_apps(" wx1:s1 , wx2 : s2 ") == {"wx1": "s1", "wx2": "s2"}


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ("topsecret", "entry 1"),
        ("wx1:topsecret,broken", "entry 2"),
        ("wx1:topsecret,:topsecret", "entry 2"),
        ("wx1:topsecret,wx2:", "entry 2"),
        ("wx1:topsecret,", "entry 2"),
        ("wx1:topsecret,wx1:topsecret", "wx1 appears twice"),
    ],
)
def test_bad_apps_are_refused_without_echoing_a_secret(raw: str, problem: str) -> None:
    """A malformed or repeated entry names the variable and the entry, never a secret."""
    with pytest.raises(ConfigError) as caught:
        parse_apps(raw, "--apps")
    assert caught.value.variable == "--apps"
    assert problem in str(caught.value)
    assert "topsecret" not in str(caught.value)
