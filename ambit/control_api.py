"""How the CLI reaches a control plane's authenticated API (HTTPS on 15016: ``ambit tap``,
``ambit why``'s snapshot, ``ambit dashboard``): in local mode with the settings and token
the cluster writes (``<state-dir>/mesh/tap.json``, 0600: root) and its trust bundle; on a
cluster (``--kubeconfig``) with the kubeconfig's bearer token, the mesh's trust bundle from
its ConfigMap, and the API's address (``--server``, e.g. through ``kubectl port-forward``).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from k8s.local.config import state_dir_from
from k8s.local.errors import LocalClusterError
from mesh.constants import DEFAULT_TRUST_DOMAIN, TAP_PORT

if TYPE_CHECKING:
    from mesh.identity import SpiffeId, TrustBundle


def add_arguments(parser: argparse.ArgumentParser, kubeconfig_help: str) -> None:
    """``--state-dir``, and ``--kubeconfig`` (``kubeconfig_help``: what that user needs),
    ``--context``, ``--server``, ``--trust-domain`` for a cluster."""
    parser.add_argument(
        "--state-dir",
        help="directory of the cluster's state (default $AMBIT_STATE_DIR or /run/ambit)",
    )
    parser.add_argument("--kubeconfig", type=Path, metavar="PATH", help=kubeconfig_help)
    parser.add_argument("--context", help="with --kubeconfig: its context (default: current)")
    parser.add_argument(
        "--server", metavar="HOST:PORT",
        help="with --kubeconfig: the control plane's API, e.g. after 'kubectl -n ambit-system"
        f" port-forward svc/ambit-controlplane {TAP_PORT}' (default localhost:{TAP_PORT})",
    )  # fmt: skip
    parser.add_argument(
        "--trust-domain", default=DEFAULT_TRUST_DOMAIN,
        help="with --kubeconfig: the mesh's trust domain (default %(default)s)",
    )  # fmt: skip


def from_arguments(args: argparse.Namespace) -> ControlApi:
    """The API :func:`add_arguments`' flags name; :class:`LocalClusterError` if unusable."""
    if args.kubeconfig is not None:
        server = args.server or f"localhost:{TAP_PORT}"
        return trio.run(kube_api, args.kubeconfig, args.context, server, args.trust_domain)
    return local_api(state_dir_from(args.state_dir))


@dataclass(frozen=True)
class ControlApi:
    """Where a control plane's authenticated API (15016: tap, snapshot, dashboard) is and
    how to prove the right to use it."""

    address: tuple[str, int]
    identity: SpiffeId
    bundle: TrustBundle
    token: str | None


def local_api(state_dir: Path) -> ControlApi:
    """The tap API settings local mode writes (``<state>/mesh/tap.json``, 0600) and the
    trust bundle; :class:`LocalClusterError` saying what is missing."""
    from mesh.identity import SpiffeId, TrustBundle

    mesh = state_dir / "mesh"
    try:
        client = json.loads((mesh / "tap.json").read_text())
        bundle = TrustBundle.from_pem((mesh / "bundle.pem").read_bytes())
        host, _, port = client["server"].rpartition(":")
        return ControlApi((host, int(port)), SpiffeId.parse(client["identity"]), bundle,
                        client.get("token"))  # fmt: skip
    except PermissionError:
        raise LocalClusterError(f"cannot read {mesh / 'tap.json'}: it needs root") from None
    except FileNotFoundError as exc:
        raise LocalClusterError(
            f"no local cluster's API settings at {exc.filename}; is it up ('ambit up')?"
        ) from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise LocalClusterError(f"cannot read the API settings in {mesh}: {exc}") from None


async def kube_api(
    kubeconfig: Path, context: str | None, server: str, trust_domain: str
) -> ControlApi:
    """The API of a cluster's control plane at ``server``, with the kubeconfig's bearer
    token and the mesh's trust bundle (its ConfigMap in the control plane's namespace)."""
    from k8s.sources.api import KubeSourceError
    from k8s.sources.kubernetes import KubeSourceConfig, open_kube_api
    from k8s.waypoint_kube import ROOT_CONFIG_MAP, ROOT_CONFIG_MAP_KEY
    from mesh.constants import SYSTEM_NAMESPACE
    from mesh.identity import TrustBundle, control_plane_identity

    host, _, port = server.rpartition(":")
    if not host or not port.isdigit():
        raise LocalClusterError(f"--server {server!r}: give HOST:PORT")
    pem, status = None, 0
    try:
        async with open_kube_api(KubeSourceConfig(kubeconfig=kubeconfig, context=context)) as api:
            token = api.bearer_token
            for namespace in (SYSTEM_NAMESPACE, "default"):  # it is in every namespace
                path = f"/api/v1/namespaces/{namespace}/configmaps/{ROOT_CONFIG_MAP}"
                status, found = await api.request("GET", path)
                pem = (found.get("data") or {}).get(ROOT_CONFIG_MAP_KEY) if status == 200 else None
                if pem:
                    break
    except (KubeSourceError, OSError) as exc:
        raise LocalClusterError(str(exc)) from None
    if token is None:
        raise LocalClusterError(
            "the kubeconfig's user has no bearer token (client certificates cannot be passed"
            " on): use a token, e.g. 'kubectl create token'"
        )
    if not pem:
        raise LocalClusterError(
            f"cannot read the mesh's trust bundle (ConfigMap {ROOT_CONFIG_MAP} in"
            f" {SYSTEM_NAMESPACE} or default: HTTP {status}): is ambit installed, and may you"
            " read it?"
        )
    identity: SpiffeId = control_plane_identity(trust_domain)
    return ControlApi((host.strip("[]"), int(port)), identity,
                    TrustBundle.from_pem(pem.encode()), token)  # fmt: skip
