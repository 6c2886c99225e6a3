"""``ambit ztunnel`` takes its pods from exactly one place: the pods file (local mode)
or the socket the node agent hands them over (Kubernetes)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ambit.cli import build_parser
from tests.pki import Pki
from ztunnel.main import ZtunnelConfig

COMMON = ["ztunnel", "--node", "n1", "--control-plane", "cp", "--ca", "ca",
          "--token-file", "t", "--trust-bundle", "b"]  # fmt: skip


def test_the_pods_socket_is_the_alternative_to_the_pods_file(
    capsys: pytest.CaptureFixture[str],
) -> None:
    parser = build_parser()
    args = parser.parse_args([*COMMON, "--pods-socket", "/var/run/ambit/ztunnel.sock"])
    assert (args.pods_socket, args.pods_file) == (Path("/var/run/ambit/ztunnel.sock"), None)
    args = parser.parse_args([*COMMON, "--pods-file", "pods.json"])
    assert (args.pods_socket, args.pods_file) == (None, Path("pods.json"))
    for extra in ([], ["--pods-file", "p", "--pods-socket", "s"]):
        with pytest.raises(SystemExit):
            parser.parse_args([*COMMON, *extra])
    assert "--pods-socket" in capsys.readouterr().err


def test_the_config_holds_exactly_one_source_of_pods(root: Pki) -> None:
    def config(pods_file: Path | None, pods_socket: Path | None) -> ZtunnelConfig:
        return ZtunnelConfig("n1", ("cp", 1), ("ca", 2), "token", root.bundle, pods_file,
                             pods_socket=pods_socket)  # fmt: skip

    assert config(None, Path("s")).pods_socket == Path("s")
    assert config(Path("f"), None).pods_file == Path("f")
    for both_or_none in ((None, None), (Path("f"), Path("s"))):
        with pytest.raises(ValueError, match="exactly one"):
            config(*both_or_none)
