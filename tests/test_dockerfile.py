"""The Dockerfile, read with the official parser (no Docker engine runs here): two
stages, a non-root runtime with only the wheels installed, no secrets."""

from __future__ import annotations

import re
from pathlib import Path

import dockerfile
import yaml

ROOT = Path(__file__).resolve().parent.parent
COMMANDS = dockerfile.parse_file(str(ROOT / "Dockerfile"))


def stages() -> list[list[dockerfile.Command]]:
    """The instructions of each stage, FROM first."""
    out: list[list[dockerfile.Command]] = []
    for command in COMMANDS:
        if command.cmd == "FROM":
            out.append([])
        if out:
            out[-1].append(command)
    return out


def test_two_stages_builder_then_runtime() -> None:
    builder, runtime = stages()
    assert builder[0].value[-2:] == ("AS", "builder")
    assert any("build-essential" in c.value[0] for c in builder if c.cmd == "RUN")
    assert any(c.cmd == "RUN" and "pip wheel" in c.value[0] for c in builder)
    assert "slim" in runtime[0].value[0]


def test_runtime_installs_only_the_wheels() -> None:
    _, runtime = stages()
    assert not [c for c in runtime if c.cmd in ("COPY", "ADD")]  # no source tree, no files
    (install,) = [c for c in runtime if c.cmd == "RUN" and "pip install" in c.value[0]]
    assert "--no-index" in install.value[0]
    assert any(f.startswith("--mount=type=bind,from=builder") for f in install.flags)
    assert "import relay._fastparse" in install.value[0]  # the compiled module must load


def test_runs_as_a_non_root_user() -> None:
    _, runtime = stages()
    users = [c.value[0] for c in runtime if c.cmd == "USER"]
    assert users, "no USER in the runtime stage"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0  # numeric, so runAsNonRoot can check it
    statefulset = yaml.safe_load((ROOT / "k8s" / "statefulset.yaml").read_text())
    assert int(uid) == statefulset["spec"]["template"]["spec"]["securityContext"]["runAsUser"]


def test_ports_and_entrypoint() -> None:
    _, runtime = stages()
    exposed = {p for c in runtime if c.cmd == "EXPOSE" for p in c.value}
    assert exposed == {"587", "465", "8025"}
    (entrypoint,) = [c for c in runtime if c.cmd == "ENTRYPOINT"]
    assert entrypoint.json  # exec form: relay is PID 1 and receives SIGTERM itself
    assert entrypoint.value == ("relay", "serve", "--config", "/etc/relay/relay.toml")


def test_no_secrets_in_the_image() -> None:
    secretish = re.compile(r"(password|passwd|secret|token|api_key|private)", re.I)
    for command in COMMANDS:
        if command.cmd in ("ENV", "ARG", "LABEL"):
            assert not secretish.search(" ".join(command.value)), command.original
        if command.cmd in ("COPY", "ADD"):
            sources = command.value[:-1]
            assert not any(re.search(r"\.(pem|key|crt|p12)$|dkim", s) for s in sources)
            assert not any("://" in s for s in sources)  # nothing fetched at build time


def test_dockerignore_keeps_secrets_and_local_state_out() -> None:
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".git", ".venv", "relay-data", "**/*.pem", "**/*.key", "dkim-keys"} <= ignored
