"""``ambit ztunnel`` takes its pods from the socket the node agent hands them over,
on Kubernetes and in local mode alike (the pods file is gone)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ambit.cli import build_parser

COMMON = ["ztunnel", "--node", "n1", "--control-plane", "cp", "--ca", "ca",
          "--token-file", "t", "--trust-bundle", "b"]  # fmt: skip


def test_the_pods_socket_is_required_and_the_pods_file_is_gone(
    capsys: pytest.CaptureFixture[str],
) -> None:
    parser = build_parser()
    args = parser.parse_args([*COMMON, "--pods-socket", "/var/run/ambit/ztunnel.sock"])
    assert args.pods_socket == Path("/var/run/ambit/ztunnel.sock")
    for extra in ([], ["--pods-file", "p", "--pods-socket", "s"]):
        with pytest.raises(SystemExit):
            parser.parse_args([*COMMON, *extra])
    assert "--pods-socket" in capsys.readouterr().err
