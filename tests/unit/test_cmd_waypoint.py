"""``ambit waypoint``: the Gateway it generates is a waypoint as translation reads it, the
flags of ``run`` (exactly those the deployer writes) become a WaypointConfig, and
enrolling a namespace keeps its labels and refuses to replace another waypoint, and
``status`` of a missing waypoint names the Services its labels still bind to it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trustme

from ambit.cli import build_parser
from ambit.cmd_waypoint import _enrolled, config_from_args
from ambit.waypoint_docs import bound_services, missing_waypoint
from k8s import manifests as m
from k8s.local.errors import LocalClusterError
from k8s.translate import translate
from k8s.translate_l7 import waypoint
from k8s.waypoint_deployer import DeployerSettings, waypoint_objects
from mesh.identity import SpiffeId
from mesh.tokens import current
from tests.k8s_builders import gateway
from waypoint.config import LABEL_GATEWAY_NAME, WaypointConfig


def main(argv: list[str]) -> int:
    """The command without ``ambit.cli.main``'s logging set-up (it would bind structlog to
    this test's captured stderr)."""
    args = build_parser().parse_args(argv)
    result: int = args.run(args)
    return result


def files(tmp_path: Path) -> DeployerSettings:
    token_dir = tmp_path / "serviceaccounts"
    (token_dir / "shop" / "edge").mkdir(parents=True)
    (token_dir / "shop" / "edge" / "token").write_text("s3cret\n")
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(trustme.CA().cert_pem.bytes())
    return DeployerSettings(control_plane="10.244.0.1:15010", ca="10.244.0.1", drain_seconds=1,
                            token_dir=token_dir, trust_bundle=bundle)  # fmt: skip


def test_the_deployers_command_parses_into_a_waypoint_config(tmp_path: Path) -> None:
    made = waypoint_objects(gateway("edge", "shop"), files(tmp_path))
    assert made is not None
    argv = list(made.pod.argv)
    assert argv[1:6] == ["-m", "ambit.cli", "--log-format", "json", "waypoint"]
    args = build_parser().parse_args(argv[3:])
    config = config_from_args(args)
    assert isinstance(config, WaypointConfig)
    assert (config.namespace, config.name) == ("shop", "edge")
    assert config.identity == SpiffeId("cluster.local", "shop", "edge")
    assert config.control_plane == ("10.244.0.1", 15010)
    assert config.ca == ("10.244.0.1", 15012), "the CA's port by default"
    assert current(config.token) == "s3cret"
    assert config.drain_seconds == 1.0
    assert config.listen_ip == "0.0.0.0"
    assert config.bundle.pem().count(b"BEGIN CERTIFICATE") == 1


def test_run_refuses_what_it_cannot_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files(tmp_path)
    base = ["waypoint", "run", "--namespace", "shop", "--name", "edge",
            "--control-plane", "cp", "--trust-bundle", str(tmp_path / "bundle.pem")]  # fmt: skip
    missing = tmp_path / "nothing"
    assert main([*base, "--ca", "cp", "--token-file", str(missing)]) == 1
    assert "nothing" in capsys.readouterr().err
    token = str(tmp_path / "serviceaccounts" / "shop" / "edge" / "token")
    assert main([*base, "--ca", "cp:99999", "--token-file", token]) == 1
    assert "1 to 65535" in capsys.readouterr().err


def test_generate_prints_a_waypoint_gateway(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["waypoint", "generate", "-n", "shop", "--name", "edge", "--for", "all"]) == 0
    (obj,) = m.loads(capsys.readouterr().out)
    assert isinstance(obj, m.Gateway)
    entry, problem = waypoint(obj)
    assert problem is None
    assert entry is not None
    assert (entry.namespace, entry.name, entry.for_traffic) == ("shop", "edge", "all")
    assert [(x.name, x.port, x.protocol) for x in obj.listeners] == [("mesh", 15008, "HBONE")]


def test_enrolling_a_namespace_keeps_its_labels_and_its_waypoint_unless_told() -> None:
    stored = {
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": "shop", "uid": "u", "labels": {"ambit.io/dataplane-mode": "ambient"}},
        "status": {"phase": "Active"},
    }  # fmt: skip
    doc = _enrolled("shop", "edge", [stored], overwrite=False)
    assert doc["metadata"] == {
        "name": "shop",
        "labels": {"ambit.io/dataplane-mode": "ambient", "ambit.io/use-waypoint": "edge"},
    }
    assert "status" not in doc
    with pytest.raises(LocalClusterError, match="--overwrite"):
        _enrolled("shop", "other", [doc], overwrite=False)
    assert (
        _enrolled("shop", "other", [doc], overwrite=True)["metadata"]["labels"][
            "ambit.io/use-waypoint"
        ]
        == "other"
    )
    new = _enrolled("fresh", "edge", [], overwrite=False)
    assert isinstance(m.parse_object(new), m.Namespace)


def test_delete_wants_names_or_all(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["waypoint", "delete", "-n", "shop"]) == 1
    assert "--all" in capsys.readouterr().err


def test_one_label_key_for_the_gateway_name() -> None:
    from mesh.constants import LABEL_GATEWAY_NAME as MESH_LABEL

    assert MESH_LABEL == LABEL_GATEWAY_NAME


def _doc(kind: str, name: str, namespace: str = "", **labels: str) -> dict[str, Any]:
    """A Namespace or Service as the API server (or local mode) returns it."""
    meta: dict[str, Any] = {"name": name, "labels": labels}
    if kind == "Namespace":
        return {"apiVersion": "v1", "kind": kind, "metadata": meta}
    address = 10 + sum(map(ord, namespace + name)) % 240  # one cluster IP each, here
    return {"apiVersion": "v1", "kind": kind, "metadata": {**meta, "namespace": namespace},
            "spec": {"clusterIP": f"10.96.0.{address}", "ports": [{"port": 80}]}}  # fmt: skip


def test_status_of_a_missing_waypoint_names_the_services_its_labels_bind() -> None:
    """Who ``status`` says is still bound to a waypoint that does not exist: the Services
    the translator reports ``WaypointNotFound`` on for it, whichever label binds them."""
    use, use_ns = "ambit.io/use-waypoint", "ambit.io/use-waypoint-namespace"
    istio = {"istio.io/use-waypoint": "gone", "istio.io/use-waypoint-namespace": "shop"}
    namespaces = [
        _doc("Namespace", "shop", **{use: "gone"}),
        _doc("Namespace", "other"),
        _doc("Namespace", "third", **istio),
    ]
    services = [
        _doc("Service", "web", "shop"),  # its namespace's label
        _doc("Service", "opted", "shop", **{use: "none"}),
        _doc("Service", "edge", "shop", **{use: "edge"}),  # another waypoint
        _doc("Service", "api", "other", **{use: "gone", use_ns: "shop"}),
        _doc("Service", "plain", "other"),
        _doc("Service", "x", "third"),  # its namespace's Istio labels
        _doc("Service", "y", "third", **{use: "gone"}),  # ambit's label first: third/gone
    ]
    found = bound_services("shop/gone", namespaces, services)
    assert found == ["other/api", "shop/web", "third/x"]

    translated = translate([m.parse_object(d) for d in namespaces + services], version=1)
    refused = sorted(
        f"{ref[1]}/{ref[2]}" for ref, problems in translated.problems.items()
        if ref[0] == "Service" for p in problems
        if p.reason == "WaypointNotFound" and "uses waypoint shop/gone," in p.message
    )  # fmt: skip
    assert found == refused

    assert missing_waypoint("shop", "gone", found[:1]).splitlines() == [
        "no waypoint gone in namespace shop",
        "  Service other/api still uses it: its traffic is refused until the waypoint exists"
        " or the label is removed",
    ]
    assert missing_waypoint("shop", "gone", []) == "no waypoint gone in namespace shop"


def test_local_status_of_a_missing_waypoint_says_who_is_refused(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Local mode reads the same labels from the local cluster's objects (here, a stand-in
    for its daemon) and says it in the same words as ``--kubeconfig``."""
    stored = {
        "Namespace": [_doc("Namespace", "shop", **{"ambit.io/use-waypoint": "waypoint"})],
        "Service": [_doc("Service", "web", "shop"), _doc("Service", "db", "shop",
                                                         **{"ambit.io/use-waypoint": "none"})],
        "Gateway": [],
    }  # fmt: skip

    def call(_state_dir: Path, request: dict[str, Any]) -> Any:
        if request["op"] == "objects":
            return stored[request["kind"]]
        return {"pods": [], "services": []}

    monkeypatch.setattr("ambit.cmd_waypoint._call", call)
    assert main(["waypoint", "status", "-n", "shop", "--state-dir", str(tmp_path)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        "ambit waypoint status: no waypoint waypoint in namespace shop",
        "  Service shop/web still uses it: its traffic is refused until the waypoint exists"
        " or the label is removed",
    ]
