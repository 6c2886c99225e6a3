"""Settings of one local cluster and the names it gives to what it creates.

Everything a cluster creates on the host carries its four-hex ``cluster_id``:
the bridge ``amb-<id>``, namespaces ``amb-<id>-...`` and host-side veths
``v<id><6 hex>``, so clusters side by side never collide and leftovers are
easy to find. Interface names stay within Linux's 15 characters.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from k8s.local.errors import LocalClusterError
from mesh.constants import DEFAULT_TRUST_DOMAIN

DEFAULT_STATE_DIR: Final = Path("/run/ambit")
STATE_DIR_ENV: Final = "AMBIT_STATE_DIR"
DEFAULT_POD_CIDR: Final = "10.244.0.0/16"
DEFAULT_SERVICE_CIDR: Final = "10.96.0.0/16"
DEFAULT_NODES: Final = ("node-1", "node-2")

# Addresses inside the pod CIDR: the host (bridge) is the first one, nodes
# start at NODE_OFFSET, pods at POD_OFFSET.
NODE_OFFSET: Final = 10
POD_OFFSET: Final = 64
MAX_NODES: Final = POD_OFFSET - NODE_OFFSET

NETNS_DIR: Final = Path("/run/netns")
ETC_NETNS_DIR: Final = Path("/etc/netns")
_MAX_NETNS_NAME: Final = 60


def state_dir_from(value: str | Path | None) -> Path:
    """The state directory: ``--state-dir``, else ``$AMBIT_STATE_DIR``, else ``/run/ambit``."""
    if value:
        return Path(value).absolute()
    env = os.environ.get(STATE_DIR_ENV)
    return Path(env).absolute() if env else DEFAULT_STATE_DIR


def new_cluster_id() -> str:
    return secrets.token_hex(2)


def parse_cidr(value: str, what: str) -> ipaddress.IPv4Network:
    try:
        network = ipaddress.IPv4Network(value, strict=True)
    except ValueError as exc:
        raise LocalClusterError(
            f"{what} {value!r} is not an IPv4 network ({exc}); use e.g. 10.244.0.0/16"
        ) from None
    if network.prefixlen > 24:
        raise LocalClusterError(f"{what} {value} is too small; use a /24 or larger")
    return network


@dataclass(frozen=True)
class ClusterConfig:
    state_dir: Path
    cluster_id: str
    pod_cidr: ipaddress.IPv4Network
    service_cidr: ipaddress.IPv4Network
    trust_domain: str = DEFAULT_TRUST_DOMAIN

    def __post_init__(self) -> None:
        if self.pod_cidr.overlaps(self.service_cidr):
            raise LocalClusterError(
                f"pod CIDR {self.pod_cidr} overlaps service CIDR {self.service_cidr};"
                " choose disjoint ranges with --pod-cidr / --service-cidr"
            )

    # Names on the host.
    @property
    def prefix(self) -> str:
        return f"amb-{self.cluster_id}"

    @property
    def bridge(self) -> str:
        return self.prefix

    @property
    def veth_prefix(self) -> str:
        return f"v{self.cluster_id}"

    def node_netns(self, node: str) -> str:
        return _bounded(f"{self.prefix}-{_safe(node)}")

    def pod_netns(self, namespace: str, name: str) -> str:
        return _bounded(f"{self.prefix}-{_safe(namespace)}-{_safe(name)}")

    def veth_name(self, key: str, attempt: int = 0) -> str:
        """Host-side veth name for ``key``; ``attempt`` > 0 on a hash collision."""
        digest = hashlib.sha256(f"{key}#{attempt}".encode()).hexdigest()[:6]
        return f"{self.veth_prefix}{digest}"

    # Addresses.
    @property
    def host_ip(self) -> ipaddress.IPv4Address:
        return self.pod_cidr[1]

    def node_ip(self, index: int) -> ipaddress.IPv4Address:
        if index >= MAX_NODES:
            raise LocalClusterError(f"local mode supports at most {MAX_NODES} nodes")
        return self.pod_cidr[NODE_OFFSET + index]

    @property
    def pod_capacity(self) -> int:
        return self.pod_cidr.num_addresses - POD_OFFSET - 1

    @property
    def service_capacity(self) -> int:
        return self.service_cidr.num_addresses - 2

    def pod_ip(self, index: int) -> ipaddress.IPv4Address:
        return self.pod_cidr[POD_OFFSET + index % self.pod_capacity]

    def service_ip(self, index: int) -> ipaddress.IPv4Address:
        return self.service_cidr[1 + index % self.service_capacity]

    def identity(self, namespace: str, service_account: str) -> str:
        return f"spiffe://{self.trust_domain}/ns/{namespace}/sa/{service_account}"

    # Files in the state directory.
    @property
    def state_file(self) -> Path:
        return self.state_dir / "state.json"

    @property
    def socket_path(self) -> Path:
        return self.state_dir / "api.sock"

    @property
    def daemon_log(self) -> Path:
        return self.state_dir / "logs" / "daemon.log"

    @property
    def controlplane_log(self) -> Path:
        return self.state_dir / "logs" / "controlplane.log"

    def pod_log(self, namespace: str, name: str) -> Path:
        return pod_log(self.state_dir, namespace, name)

    def ztunnel_ready_file(self, node: str) -> Path:
        """Written by a node's ztunnel when it is first ready (``--ready-file``)."""
        return self.state_dir / "mesh" / "ready" / f"{_safe(node)}.json"

    def component_ready_file(self, component: str) -> Path:
        """Written by a supervised pod's process (a waypoint) when it is first ready
        (``$AMBIT_READY_FILE``), so a restart can hand over to it."""
        kind, _, rest = component.partition("/")  # waypoint/NS/NAME: each part checked
        parts = [_safe(p) for p in (kind, *rest.split("/"))]
        return self.state_dir / "mesh" / "ready" / f"{'.'.join(parts)}.component.json"

    def ztunnel_log(self, node: str) -> Path:
        return ztunnel_log(self.state_dir, node)

    def node_agent_log(self, node: str) -> Path:
        return node_agent_log(self.state_dir, node)


def files_of(state_dir: Path) -> tuple[Path, Path, Path]:
    """State file, API socket and daemon log of a state directory (no config needed)."""
    return state_dir / "state.json", state_dir / "api.sock", state_dir / "logs" / "daemon.log"


def objects_dir(state_dir: Path) -> Path:
    """Where local mode publishes every object for the control plane and the agents
    (``cluster.json``)."""
    return state_dir / "mesh" / "objects"


def pod_log(state_dir: Path, namespace: str, name: str) -> Path:
    return state_dir / "logs" / "pods" / f"{_safe(namespace)}_{_safe(name)}.log"


def ztunnel_log(state_dir: Path, node: str) -> Path:
    return state_dir / "logs" / "ztunnel" / f"{_safe(node)}.log"


def node_agent_log(state_dir: Path, node: str) -> Path:
    return state_dir / "logs" / "node-agent" / f"{_safe(node)}.log"


def _safe(part: str) -> str:
    """A name that becomes part of a file or network namespace name. Manifests are
    validated long before (:mod:`k8s.manifest_reader`); this is the last guard that no
    name can ever reach outside the state directory or make an odd namespace."""
    if not _SAFE_PART.match(part) or ".." in part:
        raise LocalClusterError(f"{part!r} cannot be used in a file or namespace name")
    return part


_SAFE_PART = re.compile(r"^[a-z0-9][a-z0-9.-]*$")


def _bounded(name: str) -> str:
    if len(name) <= _MAX_NETNS_NAME:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[: _MAX_NETNS_NAME - 9]}-{digest}"
