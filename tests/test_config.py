"""Configuration: typed, validated, errors that name the key and the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from relay.config import Config, load_config, parse_duration, parse_hostport, parse_size
from relay.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "relay.toml"
    path.write_text(text)
    return path


def test_defaults_are_valid_and_loopback_only() -> None:
    cfg = load_config(env={})
    assert cfg == Config(source="<defaults>")
    for addr in cfg.submission.listen + cfg.submission.listen_tls:
        assert addr.startswith("127.")


def test_file_values_and_units(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
[server]
hostname = "mx.example.test"
[spool]
max_age = "2d"
map_size = "1GiB"
[submission]
max_message_size = "10MB"
listen = ["127.0.0.1:2587"]
[[route]]
domain = "*"
host = "127.0.0.1"
port = 2526
tls = "disabled"
""",
    )
    cfg = load_config(path, env={})
    assert cfg.server.hostname == "mx.example.test"
    assert cfg.spool.max_age == 2 * 86400
    assert cfg.spool.map_size == 1 << 30
    assert cfg.submission.max_message_size == 10_000_000
    assert cfg.routes[0].port == 2526 and cfg.routes[0].tls == "disabled"
    assert cfg.source == str(path)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("[submision]\nx = 1\n", "unknown key 'submision'"),
        (
            "[submission]\nmax_recipients = 'many'\n",
            "submission.max_recipients: expected an integer",
        ),
        ("[submission]\nmax_recipients = -1\n", "not negative"),
        ("[submission]\nrequire_tls = 'yes'\n", "submission.require_tls: expected true or false"),
        ("[spool]\nmax_age = 'soon'\n", "spool.max_age: expected a duration"),
        ("[[route]]\ntls = 'bogus'\n", "routes[0].tls: expected one of"),
        ("[submission]\nlisten = ['nohost']\n", "submission.listen"),
        ("[submission]\nmax_command_line = 100\n", "RFC 5321 4.5.3.1.4"),
        ("[tls]\ncert_file = 'a.pem'\n", "cert_file and key_file go together"),
        ("[delivery]\nnameservers = ['dns.example']\n", "not an IP address"),
        ("[relay_port]\ntrusted_networks = ['10.0.0.0/33']\n", "not a CIDR network"),
        ("not toml [", "not valid TOML"),
    ],
)
def test_errors_name_key_and_file(tmp_path: Path, text: str, fragment: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert fragment in str(info.value)
    assert str(path) in str(info.value)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such configuration file"):
        load_config(tmp_path / "absent.toml", env={})


def test_environment_overrides_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[submission]\nmax_recipients = 50\n")
    env = {
        "RELAY_SUBMISSION_MAX_RECIPIENTS": "7",
        "RELAY_DELIVERY_NAMESERVERS": "127.0.0.1, 127.0.0.2",
        "RELAY_SUBMISSION_REQUIRE_TLS": "false",
        "RELAY_NO_EXTENSIONS": "1",
    }
    cfg = load_config(path, env=env)
    assert cfg.submission.max_recipients == 7
    assert cfg.delivery.nameservers == ("127.0.0.1", "127.0.0.2")
    assert cfg.submission.require_tls is False


def test_bad_environment_value_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"submission\.max_recipients"):
        load_config(env={"RELAY_SUBMISSION_MAX_RECIPIENTS": "lots"})


def test_unit_parsers() -> None:
    assert parse_duration("90s") == 90
    assert parse_duration("5m") == 300
    assert parse_duration(1.5) == 1.5
    assert parse_size("512KiB") == 512 * 1024
    assert parse_hostport("[::1]:25") == ("::1", 25)
    with pytest.raises(ValueError):
        parse_hostport("127.0.0.1:99999")
    with pytest.raises(ValueError):
        parse_hostport("127.0.0.1:0", allow_zero=False)
    assert parse_hostport("127.0.0.1:0") == ("127.0.0.1", 0)
