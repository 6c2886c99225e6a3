"""The node agent's socket to ztunnel (``ztunnel.sock``, like Istio's ZDS): the
messages, sans-IO, and the two socket calls that carry a datagram with a file
descriptor. ``ztunnel.zds`` serves it, ``node.zds_client`` speaks it; the
protocol is written down in ``docs/node.md``.

A unix ``SOCK_SEQPACKET`` socket: every message is one datagram holding one
JSON object of at most :data:`MAX_MESSAGE` bytes; an ``add`` carries the pod's
network namespace beside it as exactly one file descriptor (``SCM_RIGHTS``),
every other message none. Each message from the agent is answered by one
:class:`Ack`, in order. Unknown keys are ignored (a newer agent may send more).
"""

from __future__ import annotations

import array
import ipaddress
import json
import re
import socket
from dataclasses import dataclass
from typing import Any

import trio

PROTOCOL_VERSION = 1
MAX_MESSAGE = 64 * 1024
# Room to receive (and close) a few file descriptors more than a message may carry.
MAX_FDS = 4
MAX_IPS = 8
# How a draining ztunnel's error begins: the agent waits for the new ztunnel instead.
DRAINING = "ztunnel is draining"
_FD_SIZE = array.array("i").itemsize
_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


class ZdsProtocolError(ValueError):
    """A message that breaks the protocol; ``uid`` is the pod's when it could be read."""

    def __init__(self, message: str, uid: str | None = None) -> None:
        super().__init__(message)
        self.uid = uid


@dataclass(frozen=True)
class PodInfo:
    """A pod as the agent hands it over: Kubernetes' ``uid``, where it lives, who it is."""

    uid: str
    namespace: str
    name: str
    service_account: str
    ips: tuple[str, ...]

    @property
    def key(self) -> str:
        """``<namespace>/<name>``: the mesh model's workload uid of this pod."""
        return f"{self.namespace}/{self.name}"

    def to_json(self) -> dict[str, Any]:
        return {
            "uid": self.uid,
            "namespace": self.namespace,
            "name": self.name,
            "serviceAccount": self.service_account,
            "ips": list(self.ips),
        }

    @classmethod
    def from_json(cls, doc: object) -> PodInfo:
        if not isinstance(doc, dict):
            raise ZdsProtocolError("'pod' must be an object")
        uid = doc.get("uid")
        if not isinstance(uid, str) or not 0 < len(uid) <= 128:
            raise ZdsProtocolError("'pod.uid' must be a string of 1 to 128 characters")
        for key, pattern, limit in (
            ("namespace", _LABEL, 63),
            ("name", _SUBDOMAIN, 253),
            ("serviceAccount", _SUBDOMAIN, 253),
        ):
            value = doc.get(key)
            if not isinstance(value, str) or len(value) > limit or not pattern.match(value):
                raise ZdsProtocolError(f"'pod.{key}' must be a Kubernetes name", uid)
        ips = doc.get("ips")
        if not isinstance(ips, list) or not 0 < len(ips) <= MAX_IPS:
            raise ZdsProtocolError(f"'pod.ips' must be a list of 1 to {MAX_IPS} addresses", uid)
        for ip in ips:
            try:
                if not isinstance(ip, str):
                    raise ValueError(ip)
                ipaddress.ip_address(ip)
            except ValueError:
                raise ZdsProtocolError(f"'pod.ips' holds {ip!r}, not an IP address", uid) from None
        return cls(uid, doc["namespace"], doc["name"], doc["serviceAccount"], tuple(ips))

    def ipv4(self) -> str | None:
        """The first IPv4 address (ambit's data path is IPv4 only), if any."""
        for ip in self.ips:
            if ipaddress.ip_address(ip).version == 4:
                return ip
        return None


@dataclass(frozen=True)
class Hello:
    version: int = PROTOCOL_VERSION


@dataclass(frozen=True)
class Add:
    pod: PodInfo


@dataclass(frozen=True)
class SnapshotSent:
    pass


@dataclass(frozen=True)
class Remove:
    uid: str


@dataclass(frozen=True)
class Ack:
    uid: str | None = None
    error: str | None = None


Request = Hello | Add | SnapshotSent | Remove


def _object(data: bytes) -> dict[str, Any]:
    if len(data) > MAX_MESSAGE:
        raise ZdsProtocolError(f"a message is at most {MAX_MESSAGE} bytes")
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ZdsProtocolError(f"not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ZdsProtocolError("a message is a JSON object")
    return doc


def parse_request(data: bytes, fds: int) -> Request:
    """The agent's message in ``data``, received with ``fds`` file descriptors; raise
    :class:`ZdsProtocolError` saying what is wrong."""
    doc = _object(data)
    kind = doc.get("type")
    request: Request
    if kind == "hello":
        version = doc.get("version")
        if not isinstance(version, int) or isinstance(version, bool):
            raise ZdsProtocolError("'version' must be an integer")
        request = Hello(version)
    elif kind == "add":
        request = Add(PodInfo.from_json(doc.get("pod")))
    elif kind == "snapshot_sent":
        request = SnapshotSent()
    elif kind == "remove":
        uid = doc.get("uid")
        if not isinstance(uid, str) or not uid:
            raise ZdsProtocolError("'uid' must be a non-empty string")
        request = Remove(uid)
    else:
        raise ZdsProtocolError(f"unknown message type {kind!r}")
    wanted = 1 if isinstance(request, Add) else 0
    if fds != wanted:
        uid = request.pod.uid if isinstance(request, Add) else None
        raise ZdsProtocolError(
            f"'{kind}' carries {wanted} file descriptor{'s' if wanted != 1 else ''}, not {fds}"
            + (" (the pod's network namespace)" if wanted else ""),
            uid,
        )
    return request


def parse_ack(data: bytes) -> Ack:
    doc = _object(data)
    if doc.get("type") != "ack":
        raise ZdsProtocolError(f"expected an ack, got {doc.get('type')!r}")
    uid, error = doc.get("uid"), doc.get("error")
    if not isinstance(uid, str | None) or not isinstance(error, str | None):
        raise ZdsProtocolError("an ack's 'uid' and 'error' are strings")
    return Ack(uid, error)


def encode(message: Request | Ack) -> bytes:
    doc: dict[str, Any]
    match message:
        case Hello(version):
            doc = {"type": "hello", "version": version}
        case Add(pod):
            doc = {"type": "add", "pod": pod.to_json()}
        case SnapshotSent():
            doc = {"type": "snapshot_sent"}
        case Remove(uid):
            doc = {"type": "remove", "uid": uid}
        case Ack(uid, error):
            doc = {"type": "ack"}
            if uid is not None:
                doc["uid"] = uid
            if error is not None:
                doc["error"] = error
    return json.dumps(doc, separators=(",", ":")).encode()


# ---- the socket calls -------------------------------------------------------------


@dataclass(frozen=True)
class Datagram:
    """One received message: its bytes, the file descriptors that came with it (now the
    receiver's to close), and whether either was cut short (too long, too many fds)."""

    data: bytes
    fds: tuple[int, ...]
    truncated: bool


async def receive_datagram(sock: trio.socket.SocketType) -> Datagram | None:
    """The next datagram, or None at end of stream (the peer closed)."""
    data, ancdata, flags, _ = await sock.recvmsg(
        MAX_MESSAGE + 1, socket.CMSG_SPACE(MAX_FDS * _FD_SIZE), socket.MSG_CMSG_CLOEXEC
    )
    fds = array.array("i")
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - len(payload) % _FD_SIZE])
    if not data and not fds:
        return None
    truncated = bool(flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC)) or len(data) > MAX_MESSAGE
    return Datagram(data, tuple(fds), truncated)


async def send_datagram(sock: trio.socket.SocketType, data: bytes, fd: int | None = None) -> None:
    """Send one message, with ``fd`` beside it (the caller keeps its own copy)."""
    if len(data) > MAX_MESSAGE:
        raise ZdsProtocolError(f"a message is at most {MAX_MESSAGE} bytes")
    ancdata = []
    if fd is not None:
        ancdata.append((socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]).tobytes()))
    await sock.sendmsg([data], ancdata)
