"""``ambit waypoint``: the Gateway it generates is a waypoint as translation reads it, the
flags of ``run`` (exactly those the deployer writes) become a WaypointConfig, and
enrolling a namespace keeps its labels and refuses to replace another waypoint."""

from __future__ import annotations

from pathlib import Path

import pytest
import trustme

from ambit.cli import build_parser
from ambit.cmd_waypoint import _enrolled, config_from_args
from k8s import manifests as m
from k8s.local.errors import LocalClusterError
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
