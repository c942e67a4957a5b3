"""deploy/'s files say what the gateway does: real flags, matching names, reachable peers.

The systemd unit and the Kubernetes manifests are parsed (a small parser for the unit's
INI with systemd's line continuations, `yaml.safe_load_all` for the manifests), and the
gateway's command line in each is parsed by the gateway's own argument parser
(`mybus_actors.gateway_config.parser`), so a flag renamed or removed there fails here.
"""

from __future__ import annotations

import contextlib
import io
import shlex
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from mybus_actors.gateway_config import parser

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
UNIT = DEPLOY / "systemd" / "mybus-gateway.service"
PEERS_TOML = DEPLOY / "systemd" / "peers.toml"
MANIFESTS = sorted((DEPLOY / "kubernetes").glob("*.yaml"))


def gateway_args(argv: list[str]) -> Any:
    """``argv`` (without the program) parsed by the gateway's parser, or the test fails.

    Each flag must be spelled in full: argparse would take a prefix (``--peers`` for
    ``--peers-file``), which a new flag could make ambiguous later.
    """
    known = {opt for action in parser()._actions for opt in action.option_strings}
    for word in argv:
        if word.startswith("--"):
            flag = word.split("=", 1)[0]
            assert flag in known, f"mybus-gateway has no flag {flag} (in {argv})"
    errors = io.StringIO()
    with contextlib.redirect_stderr(errors):
        try:
            return parser().parse_args(argv)
        except SystemExit:
            pytest.fail(f"mybus-gateway does not accept {argv}: {errors.getvalue()}")


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """A systemd unit file: sections of keys, each key's values in order (keys repeat).

    Comments (# and ;) are skipped; a line ending in a backslash continues on the next.
    """
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line[0] in "#;"):
            continue
        if pending and line and line[0] in "#;":
            continue  # systemd allows comments between continued lines
        line = pending + line
        if line.endswith("\\"):
            pending = line[:-1].rstrip() + " "
            continue
        pending = ""
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"a key outside any section: {line!r}"
        key, sep, value = line.partition("=")
        assert sep, f"not a key=value line: {line!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    assert not pending, "the unit ends inside a continued line"
    return sections


# -- systemd -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def unit() -> dict[str, dict[str, list[str]]]:
    return parse_unit(UNIT.read_text())


def test_the_unit_runs_mybus_gateway_with_flags_it_accepts(
    unit: dict[str, dict[str, list[str]]],
) -> None:
    assert set(unit) >= {"Unit", "Service", "Install"}
    service = unit["Service"]
    (exec_start,) = service["ExecStart"]
    argv = shlex.split(exec_start)
    assert Path(argv[0]).name == "mybus-gateway", argv
    args = gateway_args(argv[1:])
    host, port = args.listen
    assert host == "0.0.0.0" and port == 4096
    assert args.secret_file is not None, "the secret comes from a file, not the command line"
    assert "%" not in str(args.secret_file)
    # The runtime directory is systemd's, kept across restarts (the senders' rings wait
    # there for the next gateway) and private to the user.
    (runtime,) = service["RuntimeDirectory"]
    assert args.runtime_dir == f"/run/{runtime}"
    assert service["RuntimeDirectoryMode"] == ["0700"]
    assert service["RuntimeDirectoryPreserve"] == ["yes"]
    assert "PrivateDevices" not in service, "a private /dev hides the node's /dev/shm"


def test_the_unit_restarts_a_failed_gateway_and_not_a_stopped_one(
    unit: dict[str, dict[str, list[str]]],
) -> None:
    service = unit["Service"]
    assert service["Restart"] == ["on-failure"]
    assert float(service["RestartSec"][0]) > 0
    assert service.get("User") and service["User"] != ["root"]
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


def test_the_peers_file_the_unit_names_parses() -> None:
    table = tomllib.loads(PEERS_TOML.read_text())["peers"]
    assert table
    for node, where in table.items():
        args = gateway_args(["--peer", f"{node}={where}"])
        assert args.peer[0][0] == node
    # The unit points at its installed copy.
    assert "--peers-file /etc/mybus/peers.toml" in " ".join(UNIT.read_text().split())


# -- Kubernetes ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def objects() -> dict[str, list[dict[str, Any]]]:
    assert MANIFESTS, "no manifests in deploy/kubernetes/"
    found: dict[str, list[dict[str, Any]]] = {}
    for path in MANIFESTS:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                found.setdefault(doc["kind"], []).append(doc)
    return found


def _one(objects: dict[str, list[dict[str, Any]]], kind: str) -> dict[str, Any]:
    (obj,) = objects.get(kind, [])
    return obj


def _gateway_container(sts: dict[str, Any]) -> dict[str, Any]:
    containers = sts["spec"]["template"]["spec"]["containers"]
    (gateway,) = [c for c in containers if c.get("command", [])[:1] == ["mybus-gateway"]]
    return gateway


def test_the_service_is_headless_and_the_statefulset_is_behind_it(
    objects: dict[str, list[dict[str, Any]]],
) -> None:
    svc, sts = _one(objects, "Service"), _one(objects, "StatefulSet")
    assert svc["spec"]["clusterIP"] == "None"
    assert sts["spec"]["serviceName"] == svc["metadata"]["name"]
    assert svc["metadata"]["namespace"] == sts["metadata"]["namespace"]
    labels = sts["spec"]["template"]["metadata"]["labels"]
    for selector in (svc["spec"]["selector"], sts["spec"]["selector"]["matchLabels"]):
        assert selector and selector.items() <= labels.items(), (selector, labels)


def test_the_gateway_listens_where_the_pod_and_the_service_say(
    objects: dict[str, list[dict[str, Any]]],
) -> None:
    svc, sts = _one(objects, "Service"), _one(objects, "StatefulSet")
    gateway = _gateway_container(sts)
    args = gateway_args(gateway.get("args", []))
    host, port = args.listen
    assert host == "0.0.0.0", "peers in other pods must reach it"
    (container_port,) = gateway["ports"]
    assert container_port["containerPort"] == port
    (svc_port,) = svc["spec"]["ports"]
    assert svc_port["port"] == port
    assert svc_port["targetPort"] in (port, container_port["name"])


def test_the_peers_are_the_pods_stable_dns_names(
    objects: dict[str, list[dict[str, Any]]],
) -> None:
    svc, sts = _one(objects, "Service"), _one(objects, "StatefulSet")
    name, service = sts["metadata"]["name"], svc["metadata"]["name"]
    namespace = sts["metadata"]["namespace"]
    replicas = sts["spec"]["replicas"]
    args = gateway_args(_gateway_container(sts).get("args", []))
    _, port = args.listen
    peers = dict(args.peer)
    assert set(peers) == {f"{name}-{i}" for i in range(replicas)}, peers
    for i in range(replicas):
        host, peer_port = peers[f"{name}-{i}"]
        assert host == f"{name}-{i}.{service}.{namespace}.svc.cluster.local"
        assert peer_port == port


def test_each_node_is_named_after_its_pod_and_shares_its_runtime_directory(
    objects: dict[str, list[dict[str, Any]]],
) -> None:
    sts = _one(objects, "StatefulSet")
    pod = sts["spec"]["template"]["spec"]
    assert pod["shareProcessNamespace"] is True, "the registry checks liveness by pid"
    uid = pod["securityContext"]["runAsUser"]
    assert uid and all("runAsUser" not in c.get("securityContext", {}) for c in pod["containers"])
    (shm,) = [v for v in pod["volumes"] if v.get("emptyDir", {}).get("medium") == "Memory"]
    for container in pod["containers"]:
        env = {e["name"]: e for e in container.get("env", [])}
        node = env["MYBUS_NODE"]["valueFrom"]["fieldRef"]["fieldPath"]
        assert node == "metadata.name", container["name"]
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        assert mounts.get("/dev/shm") == shm["name"], container["name"]
        assert "MYBUS_RUNTIME_DIR" not in env or env["MYBUS_RUNTIME_DIR"]["value"].startswith(
            "/dev/shm/"
        )


def test_the_gateway_secret_comes_from_the_secret_object(
    objects: dict[str, list[dict[str, Any]]],
) -> None:
    secret, sts = _one(objects, "Secret"), _one(objects, "StatefulSet")
    env = {e["name"]: e for e in _gateway_container(sts)["env"]}
    ref = env["MYBUS_SECRET"]["valueFrom"]["secretKeyRef"]
    assert ref["name"] == secret["metadata"]["name"]
    assert ref["key"] in secret.get("stringData", {}) | secret.get("data", {})
    assert secret["metadata"]["namespace"] == sts["metadata"]["namespace"]
    # The placeholder must not be usable: the gateway refuses a secret this short.
    from mybus_actors import wire

    placeholder = secret.get("stringData", {}).get(ref["key"], "")
    assert len(placeholder.strip()) < wire.MIN_SECRET, "ship a placeholder, not a secret"
