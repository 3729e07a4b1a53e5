"""docs/config.md stays complete: every key of the configuration is documented, and
its example is a valid configuration."""

from __future__ import annotations

import dataclasses
import re
import typing
from collections.abc import Iterator
from pathlib import Path

import pytest

from relay.config import Config, load_config

DOCS = Path(__file__).resolve().parent.parent / "docs" / "config.md"


def tables(cls: type, prefix: str = "") -> Iterator[tuple[str, type]]:
    """(dotted TOML path, dataclass) of every table of the configuration."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name == "source":
            continue
        tp = hints[f.name]
        path = f"{prefix}.{f.name}" if prefix else f.name
        if typing.get_origin(tp) is tuple and dataclasses.is_dataclass(typing.get_args(tp)[0]):
            tp = typing.get_args(tp)[0]
        if dataclasses.is_dataclass(tp) and isinstance(tp, type):
            yield path, tp
            yield from tables(tp, path)


def doc_sections() -> dict[str, str]:
    """Text of each "### [path]" / "### [[path]]" section of the docs, by path."""
    sections: dict[str, str] = {}
    for chunk in re.split(r"^### ", DOCS.read_text(), flags=re.M)[1:]:
        heading, _, body = chunk.partition("\n")
        m = re.fullmatch(r"\[\[?([a-z_.]+)\]\]?", heading.strip())
        if m:
            sections[m.group(1)] = body.split("\n## ", 1)[0]
    return sections


@pytest.mark.parametrize(("path", "cls"), list(tables(Config)), ids=lambda v: str(v))
def test_every_key_is_documented(path: str, cls: type) -> None:
    sections = doc_sections()
    assert path in sections, f"docs/config.md has no '### [{path}]' section"
    missing = [
        f.name
        for f in dataclasses.fields(cls)
        if not re.search(rf"^\| `{f.name}` \|", sections[path], flags=re.M)
    ]
    assert not missing, f"docs/config.md [{path}] does not document {missing}"


def test_environment_overrides_are_documented() -> None:
    text = DOCS.read_text()
    assert "RELAY_<SECTION>_<KEY>" in text
    assert "relay config check" in text


def test_example_is_a_valid_configuration(tmp_path: Path) -> None:
    example = DOCS.read_text().split("## Example", 1)[1]
    toml = re.search(r"```toml\n(.*?)```", example, flags=re.S)
    assert toml is not None
    path = tmp_path / "relay.toml"
    path.write_text(toml.group(1))
    for name in ("tls.crt", "tls.key"):
        (tmp_path / name).write_text("")
    (tmp_path / "dkim").mkdir()
    # The example's paths are the container's; the environment points them here.
    cfg = load_config(
        path,
        env={
            "RELAY_TLS_CERT_FILE": str(tmp_path / "tls.crt"),
            "RELAY_TLS_KEY_FILE": str(tmp_path / "tls.key"),
            "RELAY_DKIM_KEY_DIR": str(tmp_path / "dkim"),
        },
    )
    assert cfg.submission.listen == ("0.0.0.0:587",)
    assert cfg.submission.listen_tls == ("0.0.0.0:465",)
