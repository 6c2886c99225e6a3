"""What ``ambit why`` is asked about, read against a snapshot: the source (:class:`From`)
and the destination (:class:`To`), and the request (:class:`Ask`).

FROM: a pod ``ns/name``, a service account ``ns/sa/name`` (a meshed caller with that
identity), or an address outside the mesh. TO: a Service ``ns/name[:port]``, a pod
``ns/name`` (with a port), or ``IP:port``.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from mesh.constants import DEFAULT_TRUST_DOMAIN
from mesh.identity import SpiffeId
from mesh.model import MeshSnapshot, Service, Workload


class QueryError(ValueError):
    """FROM or TO names nothing the snapshot has, or is not one of the forms."""


@dataclass(frozen=True)
class From:
    """The caller: a pod (``workload``), or a service account (``identity`` only), or an
    address outside the mesh (neither)."""

    text: str
    ip: str
    workload: Workload | None = None
    identity: SpiffeId | None = None

    @property
    def meshed(self) -> bool:
        """Its connections are captured by a ztunnel and leave over HBONE."""
        if self.workload is not None:
            return self.workload.meshed
        return self.identity is not None


@dataclass(frozen=True)
class To:
    """The destination as dialled: ``ip:port`` (a Service's VIP, or a pod's address)."""

    text: str
    ip: str
    port: int
    service: Service | None = None
    workload: Workload | None = None


@dataclass(frozen=True)
class Ask:
    """The request, for HTTP destinations; ``tcp``: treat the connection as plain TCP."""

    method: str = "GET"
    path: str = "/"
    headers: tuple[tuple[str, str], ...] = ()
    tcp: bool = False


def _pod(snapshot: MeshSnapshot, namespace: str, name: str) -> Workload | None:
    return snapshot.workload(f"{namespace}/{name}")


def _address(text: str) -> str | None:
    try:
        return str(ipaddress.ip_address(text.strip("[]")))
    except ValueError:
        return None


def parse_from(snapshot: MeshSnapshot, text: str) -> From:
    if text.startswith(("pod/", "po/")):  # ambit tap's spelling
        text = text.partition("/")[2]
    ip = _address(text)
    if ip is not None:
        w = snapshot.workload_by_ip(ip)
        return From(text, ip, w, w.identity if w is not None and w.meshed else None)
    parts = text.split("/")
    if len(parts) == 2:
        w = _pod(snapshot, *parts)
        if w is None:
            raise QueryError(f"no pod {text} (with an IP) in the mesh's config")
        return From(text, w.ip, w, w.identity if w.meshed else None)
    if len(parts) == 3 and parts[1] == "sa":
        namespace, _, account = parts
        pods = [
            w
            for w in snapshot.workloads
            if (w.namespace, w.service_account) == (namespace, account) and w.meshed
        ]
        trust_domain = pods[0].trust_domain if pods else _trust_domain(snapshot)
        identity = SpiffeId(trust_domain, namespace, account)
        # A pod of that account lends its address (policies with ipBlocks need one).
        return From(text, pods[0].ip if pods else "0.0.0.0", pods[0] if pods else None, identity)
    raise QueryError(
        f"FROM {text!r}: give a pod (ns/name), a service account (ns/sa/name) or an IP address"
    )


def _trust_domain(snapshot: MeshSnapshot) -> str:
    return next((w.trust_domain for w in snapshot.workloads), DEFAULT_TRUST_DOMAIN)


def parse_to(snapshot: MeshSnapshot, text: str, port: int | None) -> To:
    kind, slash, rest = text.partition("/")
    only = {"svc": "service", "service": "service", "pod": "pod", "po": "pod"}.get(kind)
    if only is not None and slash:  # ambit tap's spelling: svc/NS/NAME, pod/NS/NAME
        found = parse_to(snapshot, rest, port)
        if (only == "service") != (found.service is not None):
            raise QueryError(f"TO {text!r}: no {only} {rest.partition(':')[0]}")
        return found
    host, sep, port_text = text.rpartition(":")
    if not sep or ("/" not in text and _address(host) is None):
        host, port_text = text, ""
    if port_text:
        if not port_text.isdigit():
            raise QueryError(f"TO {text!r}: the port must be a number")
        port = int(port_text)
    ip = _address(host)
    if ip is not None:
        if port is None:
            raise QueryError(f"TO {text!r}: give the port (IP:port or --port)")
        service = snapshot.service_by_vip(ip)
        return To(text, ip, port, service, None if service else snapshot.workload_by_ip(ip))
    namespace, slash, name = host.partition("/")
    if not slash or "/" in name:
        raise QueryError(
            f"TO {text!r}: give a Service (ns/name[:port]), a pod (ns/name --port N) or IP:port"
        )
    service = snapshot.service(host)
    if service is not None:
        if port is None:
            if len(service.ports) != 1:
                ports = ", ".join(str(p.port) for p in service.ports) or "none"
                raise QueryError(f"service {host} has ports {ports}: pick one with --port")
            port = service.ports[0].port
        return To(text, service.vip, port, service)
    w = _pod(snapshot, namespace, name)
    if w is None:
        raise QueryError(f"no Service or pod {host} in the mesh's config")
    if port is None:
        raise QueryError(f"TO {text!r} is a pod: give the port (--port N)")
    return To(text, w.ip, port, None, w)
