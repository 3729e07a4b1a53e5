"""`relay config check FILE`: validates without starting; errors name key and file."""

from __future__ import annotations

from pathlib import Path

import trustme
from click.testing import CliRunner, Result

from relay.cli import main
from relay.dkim import generate_private_key, key_path, write_private_key


def check(path: Path, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(main, ["config", "check", str(path)], env=env)


def test_valid_file_prints_a_summary(tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("mta.example.test")
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "both.pem"))
    keys = tmp_path / "dkim"
    write_private_key(
        key_path(keys, "shop.test", "s1", "ed25519-sha256"), generate_private_key("ed25519-sha256")
    )
    path = tmp_path / "relay.toml"
    path.write_text(
        f"""
[server]
hostname = "mta.example.test"
data_dir = "{tmp_path / "data"}"
[submission]
listen = ["0.0.0.0:587"]
listen_tls = ["0.0.0.0:465"]
[tls]
cert_file = "{tmp_path / "both.pem"}"
key_file = "{tmp_path / "both.pem"}"
[dkim]
key_dir = "{keys}"
"""
    )
    result = check(path)
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"{path}: valid\n")
    assert "submission: listen 0.0.0.0:587; listen_tls 0.0.0.0:465" in result.output
    assert "dkim: 1 key(s) for 1 domain(s)" in result.output
    assert not (tmp_path / "data").exists()  # nothing was started or created


def test_defaults_only_file_is_valid(tmp_path: Path) -> None:
    path = tmp_path / "empty.toml"
    path.write_text("")
    result = check(path)
    assert result.exit_code == 0, result.output
    assert "dkim: off" in result.output


def test_error_names_the_key_and_the_file(tmp_path: Path) -> None:
    path = tmp_path / "relay.toml"
    path.write_text("[submission]\nmax_recipients = 'many'\n")
    result = check(path)
    assert result.exit_code == 1
    assert f"{path}: submission.max_recipients: expected an integer" in result.output


def test_environment_overrides_are_checked_too(tmp_path: Path) -> None:
    path = tmp_path / "relay.toml"
    path.write_text("")
    result = check(path, env={"RELAY_DELIVERY_MAX_SESSIONS_PER_SITE": "0"})
    assert result.exit_code == 1
    assert "delivery.max_sessions_per_site: must be at least 1" in result.output


def test_unusable_certificate_is_found(tmp_path: Path) -> None:
    (tmp_path / "cert.pem").write_text("not a certificate")
    path = tmp_path / "relay.toml"
    path.write_text(
        f'[tls]\ncert_file = "{tmp_path / "cert.pem"}"\nkey_file = "{tmp_path / "cert.pem"}"\n'
    )
    result = check(path)
    assert result.exit_code == 1
    assert f"{path}: tls.cert_file: cannot load TLS certificate" in result.output


def test_unusable_dkim_key_is_found(tmp_path: Path) -> None:
    bad = key_path(tmp_path / "dkim", "shop.test", "s1", "rsa-sha256")
    bad.parent.mkdir(parents=True)
    bad.write_text("garbage")
    path = tmp_path / "relay.toml"
    path.write_text(f'[dkim]\nkey_dir = "{tmp_path / "dkim"}"\n')
    result = check(path)
    assert result.exit_code == 1
    assert f"{path}: dkim.key_dir: {bad}: expected an unencrypted PEM private key" in result.output


def test_missing_file(tmp_path: Path) -> None:
    result = check(tmp_path / "absent.toml")
    assert result.exit_code == 1
    assert "no such configuration file" in result.output
