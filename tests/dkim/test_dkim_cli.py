"""`relay dkim keygen`: the key it writes signs mail that its printed record verifies."""

from __future__ import annotations

import re
import stat
from pathlib import Path

import dkim
import pytest
from click.testing import CliRunner

from relay.cli import main
from relay.config import DkimConfig
from relay.dkim import DkimSigner, load_keys

MESSAGE = b"From: news@shop.test\r\nTo: a@example.test\r\nSubject: hi\r\n\r\nHello\r\n"


def published_value(zone_line: str) -> bytes:
    """The TXT value of a zone-file line: its quoted strings concatenated (RFC 6376 3.6.2.2)."""
    return "".join(re.findall(r'"([^"]*)"', zone_line)).encode()


@pytest.mark.parametrize(
    ("algorithm", "suffix", "k"), [("rsa", "rsa", b"k=rsa"), ("ed25519", "ed25519", b"k=ed25519")]
)
def test_keygen_writes_key_and_prints_a_record_that_verifies(
    tmp_path: Path, algorithm: str, suffix: str, k: bytes
) -> None:
    result = CliRunner().invoke(
        main,
        ["dkim", "keygen", "Shop.Test", "s2024", "--algorithm", algorithm, "--dir", str(tmp_path)],
    )
    assert result.exit_code == 0, result.output
    path = tmp_path / "shop.test" / f"s2024.{suffix}.pem"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert str(path) in result.stderr
    (line,) = result.stdout.splitlines()
    assert line.startswith("s2024._domainkey.shop.test. IN TXT (")
    value = published_value(line)
    assert value.startswith(b"v=DKIM1; " + k + b"; p=")
    if algorithm == "rsa":
        assert len(re.findall(r'"[^"]*"', line)) == 2  # 2048-bit: over 255 octets, two strings

    keys = load_keys(DkimConfig(key_dir=str(tmp_path)), "test")
    signed = DkimSigner(keys, headers=("From", "Subject"))(MESSAGE, "")
    records = {b"s2024._domainkey.shop.test.": value}
    assert dkim.verify(signed, dnsfunc=lambda name, timeout=5: records.get(name))


def test_keygen_never_overwrites(tmp_path: Path) -> None:
    args = ["dkim", "keygen", "shop.test", "s1", "--algorithm", "ed25519", "--dir", str(tmp_path)]
    assert CliRunner().invoke(main, args).exit_code == 0
    before = (tmp_path / "shop.test" / "s1.ed25519.pem").read_bytes()
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1
    assert "exists" in result.output
    assert (tmp_path / "shop.test" / "s1.ed25519.pem").read_bytes() == before


@pytest.mark.parametrize(
    "args",
    [
        ["not a domain", "s1"],
        ["shop.test", "bad_selector"],
        ["shop.test", "s1", "--bits", "512"],
        ["shop.test", "s1", "--algorithm", "dsa"],
    ],
)
def test_keygen_refuses_bad_arguments(tmp_path: Path, args: list[str]) -> None:
    result = CliRunner().invoke(main, ["dkim", "keygen", *args, "--dir", str(tmp_path)])
    assert result.exit_code == 2
    assert not any(tmp_path.iterdir())
