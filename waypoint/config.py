"""What a waypoint process is told at start: who it is, where the control plane is, how
long it may drain. Parsed once (``ambit waypoint run``), then read-only.

A waypoint runs as its Gateway: its identity is
``spiffe://<trust domain>/ns/<namespace>/sa/<name>`` and it proves it to the CA with the
bearer token of that service account (in Kubernetes a projected service-account token;
in local mode one the local cluster writes for the waypoint's pod).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mesh import constants
from mesh.constants import (
    ADMIN_PORT,
    DEFAULT_TRUST_DOMAIN,
    HBONE_PORT,
    METRICS_PORT,
    READINESS_PORT,
)
from mesh.credential import HasPem
from mesh.identity import SpiffeId
from mesh.tokens import Token

# The label a waypoint's pods and Service carry: the Gateway they serve (Gateway API's).
LABEL_GATEWAY_NAME = constants.LABEL_GATEWAY_NAME


@dataclass(frozen=True)
class WaypointConfig:
    namespace: str  # the Gateway's namespace: the waypoint's view on the config stream
    name: str  # the Gateway's name: also its service account
    control_plane: tuple[str, int]
    ca: tuple[str, int]
    token: Token  # the service account's bearer token, for the CA
    bundle: HasPem  # the roots it trusts at start (then the CA's answers')
    trust_domain: str = DEFAULT_TRUST_DOMAIN
    listen_ip: str = "0.0.0.0"  # HBONE 15008, metrics 15020 and readiness 15021
    hbone_port: int = HBONE_PORT
    admin_port: int = ADMIN_PORT  # loopback only: /config_dump
    metrics_port: int = METRICS_PORT
    readiness_port: int = READINESS_PORT
    # After SIGTERM: how long requests and streams in flight may finish.
    drain_seconds: float = 25.0
    # Written ({"pid": ..., "ready": true}) the first time this waypoint is ready: a
    # restart starts the new one beside the old (SO_REUSEPORT) and waits for it.
    ready_file: Path | None = None

    @property
    def identity(self) -> SpiffeId:
        return SpiffeId(self.trust_domain, self.namespace, self.name)
