"""The Kubernetes manifests (k8s/): valid for a current Kubernetes, and consistent with
the relay configuration their ConfigMap holds (ports, probes, paths, drain time)."""

from __future__ import annotations

import functools
import shutil
import subprocess
import tomllib
from pathlib import Path, PurePosixPath
from typing import Any

import httpx
import kubernetes_validate
import pytest
import trio
import yaml
from click.testing import CliRunner

from relay.app import run_shard
from relay.cli import main
from relay.config import Config, accounts_dir, load_config, parse_hostport, parse_size
from relay.dkim import build_signer

K8S = Path(__file__).resolve().parent.parent / "k8s"
# Newest Kubernetes whose schemas the installed kubernetes-validate bundles (offline).
KUBERNETES_VERSION = kubernetes_validate.latest_version()
# relay.supervisor kills a shard still running this long after server.shutdown_grace.
SUPERVISOR_HARD_STOP = 5
# Time to close the spool and exit after that, and the most the grace period may
# exceed what relay needs (a longer one only delays rollouts).
EXIT_MARGIN = 5
MAX_SLACK = 30


@functools.cache
def manifests() -> list[tuple[str, dict[str, Any]]]:
    """(file name, resource) of every manifest except the kustomization."""
    out = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            out.extend((path.name, doc) for doc in yaml.safe_load_all(path.read_text()) if doc)
    return out


def resource(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [
        r for _, r in manifests() if r["kind"] == kind and name in (None, r["metadata"]["name"])
    ]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def pod_spec() -> dict[str, Any]:
    spec: dict[str, Any] = resource("StatefulSet")["spec"]["template"]["spec"]
    return spec


def relay_container() -> dict[str, Any]:
    (container,) = [c for c in pod_spec()["containers"] if c["name"] == "relay"]
    return container


def mounts(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """mountPath -> volumeMount."""
    return {m["mountPath"]: m for m in container.get("volumeMounts", [])}


def volume(name: str) -> dict[str, Any]:
    (found,) = [v for v in pod_spec()["volumes"] if v["name"] == name]
    return found


def config_toml() -> str:
    text: str = resource("ConfigMap", "relay-config")["data"]["relay.toml"]
    return text


def quantity(text: str) -> int:
    """Bytes in a Kubernetes quantity such as "20Gi" or "500M"."""
    for suffix, factor in (("Ki", 1 << 10), ("Mi", 1 << 20), ("Gi", 1 << 30), ("Ti", 1 << 40)):
        if text.endswith(suffix):
            return int(text[: -len(suffix)]) * factor
    return parse_size(text + "B" if text[-1:].isalpha() else text)


@pytest.fixture
def cfg(tmp_path: Path) -> Config:
    """The ConfigMap's configuration as relay loads it, without the mounted files (the
    TLS and DKIM paths exist only in the pod; the environment blanks them here)."""
    path = tmp_path / "relay.toml"
    path.write_text(config_toml())
    unmounted = {"RELAY_TLS_CERT_FILE": "", "RELAY_TLS_KEY_FILE": "", "RELAY_DKIM_KEY_DIR": ""}
    return load_config(path, env=unmounted)


def test_kubernetes_version_is_current() -> None:
    major, minor = (int(x) for x in KUBERNETES_VERSION.split(".")[:2])
    assert (major, minor) >= (1, 30)


@pytest.mark.parametrize(
    ("name", "doc"), [pytest.param(n, d, id=f"{n}:{d['kind']}") for n, d in manifests()]
)
def test_manifest_validates(name: str, doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files
    images = {i["name"] for i in kustomization["images"]}
    used = {c["image"] for c in pod_spec()["containers"] + pod_spec()["initContainers"]}
    assert used <= images


def test_no_secret_in_the_repository() -> None:
    """Secrets are created by the operator (k8s/README.md), never committed."""
    assert not [r for _, r in manifests() if r["kind"] == "Secret"]
    readme = (K8S / "README.md").read_text()
    for v in pod_spec()["volumes"]:
        if "secret" in v:
            assert v["secret"]["secretName"] in readme


# --- the configuration in the ConfigMap -----------------------------------------------


def test_configmap_is_a_valid_relay_configuration(tmp_path: Path) -> None:
    path = tmp_path / "relay.toml"
    path.write_text(config_toml())
    (tmp_path / "tls.crt").write_text("")
    (tmp_path / "tls.key").write_text("")
    (tmp_path / "dkim").mkdir()
    cfg = load_config(
        path,
        env={
            "RELAY_TLS_CERT_FILE": str(tmp_path / "tls.crt"),
            "RELAY_TLS_KEY_FILE": str(tmp_path / "tls.key"),
            "RELAY_DKIM_KEY_DIR": str(tmp_path / "dkim"),
        },
    )
    assert build_signer(cfg) is not None  # DKIM is on (it signs once keys are mounted)


def test_paths_in_the_configuration_are_mounted(cfg: Config) -> None:
    container = relay_container()
    by_path = mounts(container)
    doc = tomllib.loads(config_toml())  # the paths as written, before any override
    # The data directory is the pod's own volume.
    assert by_path[cfg.server.data_dir]["name"] in {
        t["metadata"]["name"] for t in resource("StatefulSet")["spec"]["volumeClaimTemplates"]
    }
    # The TLS files come from the kubernetes.io/tls Secret (keys tls.crt and tls.key).
    tls_mount = next(p for p, m in by_path.items() if m["name"] == "tls")
    for key in ("cert_file", "key_file"):
        file = doc["tls"][key]
        assert PurePosixPath(file).parent == PurePosixPath(tls_mount)
        assert PurePosixPath(file).name in ("tls.crt", "tls.key")
    # DKIM keys: the Secret mounted as a directory (flat layout).
    assert by_path[doc["dkim"]["key_dir"]]["name"] == "dkim"
    # The image's entrypoint reads the configuration where the ConfigMap is mounted.
    assert by_path["/etc/relay/relay.toml"]["subPath"] == "relay.toml"
    assert volume(by_path["/etc/relay/relay.toml"]["name"])["configMap"]["name"] == "relay-config"


def test_listeners_are_reachable_and_match_the_ports(cfg: Config) -> None:
    ports = {p["name"]: p["containerPort"] for p in relay_container()["ports"]}
    expected = {
        "submission": cfg.submission.listen,
        "submissions": cfg.submission.listen_tls,
        "api": cfg.api.listen,
    }
    for name, addresses in expected.items():
        assert addresses, f"{name}: no listener configured"
        for address in addresses:
            host, port = parse_hostport(address)
            assert host in ("0.0.0.0", "::"), f"{address}: not reachable from outside the pod"
            assert port == ports[name]
    assert ports["submission"] == 587 and ports["submissions"] == 465
    assert ports["api"] == 8025


def test_services_reach_the_container_ports() -> None:
    names = {p["name"] for p in relay_container()["ports"]}
    labels = resource("StatefulSet")["spec"]["template"]["metadata"]["labels"]
    smtp = resource("Service", "relay-smtp")["spec"]
    assert {p["port"] for p in smtp["ports"]} == {587, 465}
    assert smtp["type"] == "LoadBalancer"
    assert resource("Service", "relay-api")["spec"]["ports"][0]["port"] == 8025
    for name in ("relay-smtp", "relay-api", "relay-shards"):
        spec = resource("Service", name)["spec"]
        assert spec["selector"].items() <= labels.items()
        for port in spec["ports"]:
            assert port["targetPort"] in names
    assert resource("StatefulSet")["spec"]["serviceName"] == "relay-shards"


def test_probes_use_the_api_health_endpoints(cfg: Config) -> None:
    container = relay_container()
    api_port = {p["name"]: p["containerPort"] for p in container["ports"]}
    _, listen_port = parse_hostport(cfg.api.listen[0])
    assert cfg.api.enabled
    for probe, path in (
        ("livenessProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
        ("startupProbe", "/healthz"),
    ):
        get = container[probe]["httpGet"]
        assert get["path"] == path
        assert api_port[get["port"]] == listen_port


def test_grace_period_covers_the_drain(cfg: Config) -> None:
    """SIGTERM: relay drains for server.shutdown_grace, the supervisor allows 5 s more;
    the preStop pause comes before the SIGTERM and counts against the period."""
    spec = pod_spec()
    pre_stop = relay_container()["lifecycle"]["preStop"]["sleep"]["seconds"]
    needed = pre_stop + cfg.server.shutdown_grace + SUPERVISOR_HARD_STOP + EXIT_MARGIN
    assert needed <= spec["terminationGracePeriodSeconds"] <= needed + MAX_SLACK


def test_volume_holds_every_shard_spool(cfg: Config) -> None:
    (template,) = resource("StatefulSet")["spec"]["volumeClaimTemplates"]
    storage = quantity(template["spec"]["resources"]["requests"]["storage"])
    assert cfg.server.workers >= 1  # an explicit count: the node's core count is not ours
    assert cfg.server.workers * cfg.spool.map_size <= storage
    cpu = relay_container()["resources"]["limits"]["cpu"]
    assert cfg.server.workers == int(cpu), "one shard per CPU the pod may use"


def test_scaling_down_keeps_the_volumes() -> None:
    policy = resource("StatefulSet")["spec"]["persistentVolumeClaimRetentionPolicy"]
    assert policy == {"whenDeleted": "Retain", "whenScaled": "Retain"}


def test_pod_disruption_budget_covers_the_pods() -> None:
    pdb = resource("PodDisruptionBudget")["spec"]
    labels = resource("StatefulSet")["spec"]["template"]["metadata"]["labels"]
    assert pdb["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["maxUnavailable"] == 1


def test_containers_run_unprivileged_with_resources() -> None:
    spec = pod_spec()
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] != 0
    for container in spec["containers"] + spec["initContainers"]:
        security = container["securityContext"]
        assert security["allowPrivilegeEscalation"] is False
        assert security["readOnlyRootFilesystem"] is True
        assert security["capabilities"]["drop"] == ["ALL"]
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= container["resources"][kind].keys()


# --- the accounts seed ----------------------------------------------------------------


@pytest.mark.skipif(shutil.which("sh") is None, reason="needs a POSIX shell")
def test_seed_init_container_installs_the_accounts_database(tmp_path: Path, cfg: Config) -> None:
    (init,) = pod_spec()["initContainers"]
    script = init["command"][-1]
    by_name = {m["name"]: m["mountPath"] for m in init["volumeMounts"]}
    assert accounts_dir(cfg) == Path(by_name["data"]) / "accounts"
    # A seed made as k8s/README.md says: relay user add --data-dir seed ...
    seed_data = tmp_path / "seed"
    added = CliRunner().invoke(
        main,
        [
            "user",
            "add",
            "app",
            "--domain",
            "shop.test",
            "--password-stdin",
            "--data-dir",
            str(seed_data),
        ],
        input="correct horse battery\n",
    )
    assert added.exit_code == 0, added.output
    secret = tmp_path / "secret"
    secret.mkdir()
    shutil.copy(seed_data / "accounts" / "data.mdb", secret / "data.mdb")
    # The pod's volume already has an accounts database of its own.
    pod = tmp_path / "pod"
    assert (
        CliRunner()
        .invoke(
            main,
            [
                "user",
                "add",
                "stale",
                "--domain",
                "x.test",
                "--password-stdin",
                "--data-dir",
                str(pod),
            ],
            input="another password\n",
        )
        .exit_code
        == 0
    )
    local = script.replace(by_name["accounts-seed"], str(secret)).replace(by_name["data"], str(pod))
    subprocess.run(["sh", "-c", local], check=True, capture_output=True, timeout=30)
    listed = CliRunner().invoke(main, ["user", "list", "--data-dir", str(pod)])
    assert listed.exit_code == 0, listed.output
    assert [line.split("\t")[0] for line in listed.output.splitlines()] == ["app"]
    # Without the (optional) Secret the script leaves the volume alone.
    empty = tmp_path / "empty"
    empty.mkdir()
    untouched = script.replace(by_name["accounts-seed"], str(empty)).replace(
        by_name["data"], str(pod)
    )
    subprocess.run(["sh", "-c", untouched], check=True, capture_output=True, timeout=30)
    assert (pod / "accounts" / "data.mdb").read_bytes() == (secret / "data.mdb").read_bytes()


def test_one_pod_can_be_taken_out_of_submission() -> None:
    """docs/scaling.md: relabelling a pod relay-submission=off removes it from the
    submission Services while the StatefulSet (and the headless Service) keep it."""
    sts = resource("StatefulSet")["spec"]
    assert sts["template"]["metadata"]["labels"]["relay-submission"] == "on"
    assert "relay-submission" not in sts["selector"]["matchLabels"]
    for name in ("relay-smtp", "relay-api"):
        assert resource("Service", name)["spec"]["selector"]["relay-submission"] == "on"
    assert "relay-submission" not in resource("Service", "relay-shards")["spec"]["selector"]
    assert (
        "relay-submission" not in resource("PodDisruptionBudget")["spec"]["selector"]["matchLabels"]
    )


async def test_probe_paths_answer_on_a_running_shard(tmp_path: Path) -> None:
    """The probes' paths exist: a shard started from the ConfigMap's configuration
    (listeners moved to loopback, data to a temporary directory) answers them."""
    path = tmp_path / "relay.toml"
    path.write_text(config_toml())
    local = {
        "RELAY_SERVER_DATA_DIR": str(tmp_path / "data"),
        "RELAY_SUBMISSION_LISTEN": "127.0.0.1:0",
        "RELAY_SUBMISSION_LISTEN_TLS": "127.0.0.1:0",
        "RELAY_API_LISTEN": "127.0.0.1:0",
        "RELAY_TLS_CERT_FILE": "",
        "RELAY_TLS_KEY_FILE": "",
        "RELAY_DKIM_KEY_DIR": "",
        "RELAY_DELIVERY_NAMESERVERS": "127.0.0.1",
    }
    cfg = load_config(path, env=local)
    container = relay_container()
    probes = [container[p]["httpGet"]["path"] for p in ("livenessProbe", "readinessProbe")]
    async with trio.open_nursery() as nursery:
        shard = await nursery.start(functools.partial(run_shard, cfg, handle_signals=False))
        try:
            assert shard.api is not None
            host, port = shard.api.addresses[0]
            async with httpx.AsyncClient(base_url=f"http://{host}:{port}", timeout=30) as c:
                for probe in probes:
                    with trio.fail_after(30):  # readiness may wait for a first spool probe
                        while (await c.get(probe)).status_code != 200:
                            await trio.sleep(0.05)
        finally:
            shard.stop()
