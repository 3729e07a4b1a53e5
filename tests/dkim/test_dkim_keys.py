"""Key loading, the [dkim] configuration, and the signer inside ingest."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import structlog.testing
from dkim_support import signature_tags, signed_names, verify_each

from relay.config import Config, DkimConfig, DkimKeyConfig, load_config
from relay.dkim import (
    DkimSigner,
    SigningKey,
    build_signer,
    generate_private_key,
    key_path,
    load_keys,
    private_key_pem,
    write_private_key,
)
from relay.errors import ConfigError
from relay.ingest import Ingest, Trace
from relay.model import MessageMeta, NewMessage


def make_key(key_dir: Path, domain: str, selector: str, algorithm: str = "ed25519-sha256") -> Path:
    path = key_path(key_dir, domain, selector, algorithm)  # type: ignore[arg-type]
    write_private_key(path, generate_private_key(algorithm))  # type: ignore[arg-type]
    return path


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "relay.toml"
    path.write_text(text)
    return path


# --- key directory --------------------------------------------------------------------


def test_nested_layout(tmp_path: Path, rsa_key: SigningKey) -> None:
    rsa_path = key_path(tmp_path, "shop.test", "r1", "rsa-sha256")
    rsa_path.parent.mkdir(parents=True)
    rsa_path.write_bytes(private_key_pem(rsa_key.private_key))
    make_key(tmp_path, "shop.test", "e1")
    make_key(tmp_path, "Other.Test", "e1")
    (tmp_path / "shop.test" / "README.txt").write_text("not a key")
    keys = load_keys(DkimConfig(key_dir=str(tmp_path)), "relay.toml")
    assert sorted(keys) == ["other.test", "shop.test"]
    assert [(k.selector, k.algorithm) for k in keys["shop.test"]] == [
        ("r1", "rsa-sha256"),
        ("e1", "ed25519-sha256"),
    ]
    assert keys["shop.test"][0].path == str(rsa_path)


def test_flat_layout_as_a_kubernetes_secret_mounts_it(tmp_path: Path) -> None:
    """A Secret volume: files are symlinks into a hidden "..data" directory."""
    data = tmp_path / "..2024_01_01_00_00_00.000000000"
    data.mkdir()
    make = generate_private_key("ed25519-sha256")
    (data / "s1._domainkey.shop.test.ed25519.pem").write_bytes(private_key_pem(make))
    (tmp_path / "..data").symlink_to(data.name)
    (tmp_path / "s1._domainkey.shop.test.ed25519.pem").symlink_to(
        "..data/s1._domainkey.shop.test.ed25519.pem"
    )
    keys = load_keys(DkimConfig(key_dir=str(tmp_path)), "relay.toml")
    assert list(keys) == ["shop.test"]
    (key,) = keys["shop.test"]
    assert (key.selector, key.dns_name) == ("s1", "s1._domainkey.shop.test")


def test_two_keys_of_one_algorithm_are_refused(tmp_path: Path) -> None:
    make_key(tmp_path, "shop.test", "a")
    make_key(tmp_path, "shop.test", "b")
    with pytest.raises(ConfigError, match=r"relay\.toml: dkim\.key_dir: two ed25519-sha256 keys"):
        load_keys(DkimConfig(key_dir=str(tmp_path)), "relay.toml")


def test_unreadable_key_names_setting_and_file(tmp_path: Path) -> None:
    path = key_path(tmp_path, "shop.test", "s1", "rsa-sha256")
    path.parent.mkdir()
    path.write_text("-----BEGIN PRIVATE KEY-----\nnonsense\n-----END PRIVATE KEY-----\n")
    with pytest.raises(ConfigError) as info:
        load_keys(DkimConfig(key_dir=str(tmp_path)), "relay.toml")
    assert str(info.value).startswith(f"relay.toml: dkim.key_dir: {path}: expected")


def test_key_of_the_wrong_type_is_refused(tmp_path: Path) -> None:
    ed = make_key(tmp_path, "shop.test", "s1")
    wrong = ed.with_name("s1.rsa.pem")
    ed.rename(wrong)
    with pytest.raises(ConfigError, match="expected an RSA private key"):
        load_keys(DkimConfig(key_dir=str(tmp_path)), "relay.toml")


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_rfc8301_short_rsa_key_is_refused(tmp_path: Path) -> None:
    path = key_path(tmp_path, "shop.test", "s1", "rsa-sha256")
    path.parent.mkdir()
    subprocess.run(["openssl", "genrsa", "-out", str(path), "512"], check=True, capture_output=True)
    with pytest.raises(ConfigError, match=r"RFC 8301 3\.2 asks for 1024 to 4096 bits"):
        load_keys(DkimConfig(key_dir=str(tmp_path)), "relay.toml")


def test_explicit_entries_replace_the_directory_for_their_domain(tmp_path: Path) -> None:
    make_key(tmp_path / "keys", "shop.test", "dir")
    make_key(tmp_path / "keys", "other.test", "dir")
    explicit = make_key(tmp_path / "elsewhere", "shop.test", "cfg")
    cfg = DkimConfig(
        key_dir=str(tmp_path / "keys"),
        keys=(DkimKeyConfig("shop.test", "cfg", str(explicit), "ed25519-sha256"),),
    )
    keys = load_keys(cfg, "relay.toml")
    assert [k.selector for k in keys["shop.test"]] == ["cfg"]
    assert [k.selector for k in keys["other.test"]] == ["dir"]


def test_explicit_entry_of_the_wrong_algorithm_names_the_entry(tmp_path: Path) -> None:
    path = make_key(tmp_path, "shop.test", "s1")
    cfg = DkimConfig(keys=(DkimKeyConfig("shop.test", "s1", str(path), "rsa-sha256"),))
    with pytest.raises(ConfigError, match=r"dkim\.keys\[0\]\.key_file: .*s1\.ed25519\.pem"):
        load_keys(cfg, "relay.toml")


# --- the [dkim] section ---------------------------------------------------------------


def test_dkim_section_from_toml(tmp_path: Path) -> None:
    key = make_key(tmp_path / "keys", "shop.test", "s1")
    path = write_config(
        tmp_path,
        f"""
[dkim]
key_dir = "{tmp_path / "keys"}"
headers = ["From", "Subject"]
oversign = ["From", "Subject"]

[[dkim.keys]]
domain = "mail.shop.test"
selector = "s2"
key_file = "{key}"
algorithm = "ed25519-sha256"
""",
    )
    cfg = load_config(path, env={})
    assert cfg.dkim.headers == ("From", "Subject")
    assert cfg.dkim.keys[0].domain == "mail.shop.test"
    signer = build_signer(cfg)
    assert signer is not None
    assert signer.domains == ["mail.shop.test", "shop.test"]


def test_environment_sets_the_key_directory(tmp_path: Path) -> None:
    make_key(tmp_path, "shop.test", "s1")
    cfg = load_config(env={"RELAY_DKIM_KEY_DIR": str(tmp_path)})
    assert cfg.dkim.key_dir == str(tmp_path)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ('[dkim]\nkey_dir = "/nonexistent/keys"\n', "dkim.key_dir: no such directory"),
        ('[dkim]\nheaders = ["Subject", "To"]\n', "dkim.headers: must include From"),
        ('[dkim]\nheaders = ["From", "Bad Name"]\n', "dkim.headers[1]: 'Bad Name' is not"),
        ('[dkim]\noversign = ["Received"]\n', "dkim.oversign[0]: Received is added in transit"),
        (
            '[[dkim.keys]]\ndomain = "shop.test"\nselector = "bad_selector"\nkey_file = "k"\n',
            "dkim.keys[0].selector: expected dot-separated labels",
        ),
        (
            '[[dkim.keys]]\ndomain = "not a domain"\nselector = "s"\nkey_file = "k"\n',
            "dkim.keys[0].domain: expected a domain name",
        ),
        (
            '[[dkim.keys]]\ndomain = "shop.test"\nselector = "s"\nkey_file = "/nonexistent.pem"\n',
            "dkim.keys[0].key_file: no such file",
        ),
        (
            '[[dkim.keys]]\ndomain = "shop.test"\nselector = "s"\nalgorithm = "rsa-sha1"\n',
            "dkim.keys[0].algorithm: expected one of 'rsa-sha256', 'ed25519-sha256'",
        ),
        ("[dkim]\nkeyfile = 'x'\n", "unknown key 'dkim.keyfile'"),
    ],
)
def test_dkim_errors_name_key_and_file(tmp_path: Path, text: str, fragment: str) -> None:
    path = write_config(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert fragment in str(info.value)
    assert str(path) in str(info.value)


def test_duplicate_entries_are_refused(tmp_path: Path) -> None:
    a = make_key(tmp_path, "shop.test", "a")
    b = make_key(tmp_path, "shop.test", "b")
    entries = "".join(
        f'[[dkim.keys]]\ndomain = "shop.test"\nselector = "{p.name[0]}"\n'
        f'key_file = "{p}"\nalgorithm = "ed25519-sha256"\n'
        for p in (a, b)
    )
    with pytest.raises(ConfigError, match=r"dkim\.keys\[1\]: a second ed25519-sha256 key"):
        load_config(write_config(tmp_path, entries), env={})


def test_no_dkim_configuration_means_no_signer() -> None:
    assert build_signer(Config()) is None


def test_empty_key_directory_still_gives_a_signer_for_reload(tmp_path: Path) -> None:
    cfg = Config(dkim=DkimConfig(key_dir=str(tmp_path)))
    signer = build_signer(cfg)
    assert signer is not None and signer.domains == []
    make_key(tmp_path, "shop.test", "s1")
    signer.reload()
    assert signer.domains == ["shop.test"]


def test_failed_reload_keeps_the_keys_in_use(tmp_path: Path) -> None:
    make_key(tmp_path, "shop.test", "s1")
    signer = build_signer(Config(dkim=DkimConfig(key_dir=str(tmp_path))))
    assert signer is not None
    (tmp_path / "shop.test" / "s2.ed25519.pem").write_text("garbage")
    with pytest.raises(ConfigError):
        signer.reload()
    assert [k.selector for k in signer.keys_for("shop.test")] == ["s1"]


# --- inside ingest --------------------------------------------------------------------


class UnusedStore:
    async def store(self, msg: NewMessage, *, timeout: float = 30.0) -> MessageMeta:
        raise AssertionError("prepare() stores nothing")


def test_ingest_signs_after_adding_message_id_and_date(
    rsa_key: SigningKey, ed_key: SigningKey
) -> None:
    signer = DkimSigner(
        {"shop.test": (rsa_key, ed_key)}, headers=("From", "To", "Date", "Message-ID")
    )
    ingest = Ingest(UnusedStore(), hostname="relay.test", signer=signer)
    prepared = ingest.prepare(
        b"From: news@shop.test\r\nTo: a@example.test\r\n\r\nHello\r\n",
        message_id="0001",
        sender="bounces@shop.test",
        recipients=["a@example.test"],
        trace=Trace(helo="client.test", client_ip="127.0.0.1", protocol="ESMTPSA"),
    )
    assert prepared.startswith(b"DKIM-Signature: v=1; a=rsa-sha256;")
    assert verify_each(prepared, rsa_key, ed_key) == [True, True]
    names = signed_names(signature_tags(prepared)[0])
    assert b"message-id" in names and b"date" in names  # added by ingest, then signed
    assert b"received" not in names


def test_misnamed_key_files_are_ignored_with_a_warning(tmp_path: Path) -> None:
    make_key(tmp_path, "shop.test", "s1")
    (tmp_path / "shop.test" / "s1.pem").write_bytes(b"no algorithm in the name")
    (tmp_path / "shop.test.rsa.pem").write_bytes(b"flat, but no _domainkey")
    (tmp_path / "lost+found").mkdir()  # what a fresh ext4 volume has
    with structlog.testing.capture_logs() as logs:
        keys = load_keys(DkimConfig(key_dir=str(tmp_path)), "relay.toml")
    assert list(keys) == ["shop.test"]
    ignored = sorted(Path(e["path"]).name for e in logs if e["event"] == "dkim_key_file_ignored")
    assert ignored == ["s1.pem", "shop.test.rsa.pem"]


def test_directory_that_is_not_a_domain_is_refused(tmp_path: Path) -> None:
    make_key(tmp_path, "shop.test", "s1")
    (tmp_path / "shop.test").rename(tmp_path / "shop_test")
    with pytest.raises(ConfigError, match=r"dkim\.key_dir: .*shop_test.*is not a domain name"):
        load_keys(DkimConfig(key_dir=str(tmp_path)), "relay.toml")
