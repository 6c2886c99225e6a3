"""The local cluster's network, made with ``ip`` and ``iptables``.

One bridge per cluster holds the host's address (first of the pod CIDR);
every node and pod is a network namespace with a veth on it, its address,
``lo`` up and a route for the service CIDR through the host address. There is
no default route anywhere and forwarding is never enabled, so traffic to
unknown addresses fails instead of leaving the machine. Every creation is
recorded in the state file first; every removal tolerates "already gone".
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import shutil
import signal
from collections.abc import Sequence
from pathlib import Path

import structlog

from k8s.local.config import ETC_NETNS_DIR, ClusterConfig
from k8s.local.errors import AddressInUseError, CommandFailed, PrerequisiteError
from k8s.local.state import StateFile
from mesh import commands
from mesh.commands import run_command

log = structlog.get_logger("ambit.local.network")


def check_prerequisites() -> None:
    """Root, ``ip``, ``iptables`` and ``iptables-restore``; raises with the fix."""
    if os.geteuid() != 0:
        raise PrerequisiteError(
            "local mode needs root (it creates network namespaces and iptables rules):"
            " run 'sudo ambit up ...'"
        )
    missing = [tool for tool in ("ip", "iptables", "iptables-restore") if not shutil.which(tool)]
    if missing:
        raise PrerequisiteError(
            f"{', '.join(missing)} not found on PATH: install iproute2 and iptables"
            " (e.g. 'apt-get install iproute2 iptables')"
        )


async def run(argv: Sequence[str], stdin: bytes = b"", *, ok_if_gone: bool = False) -> str:
    """:func:`mesh.commands.run_command`, its failure as local mode's :class:`CommandFailed`."""
    try:
        return await run_command(argv, stdin, ok_if_gone=ok_if_gone)
    except commands.CommandFailed as exc:
        raise CommandFailed(str(exc)) from None


async def check_addresses(config: ClusterConfig) -> None:
    """Refuse CIDRs that overlap an address or route already on this host."""
    taken: list[tuple[ipaddress.IPv4Network, str]] = []
    for entry in json.loads(await run(["ip", "-j", "-4", "route", "show"]) or "[]"):
        dst = entry.get("dst", "")
        if dst and dst != "default":
            taken.append(
                (ipaddress.IPv4Network(dst, strict=False), f"route {dst} dev {entry.get('dev')}")
            )
    for link in json.loads(await run(["ip", "-j", "-4", "addr", "show"]) or "[]"):
        for addr in link.get("addr_info", []):
            network = ipaddress.IPv4Network(f"{addr['local']}/{addr['prefixlen']}", strict=False)
            taken.append((network, f"address {addr['local']} on {link.get('ifname')}"))
    for what, cidr, flag in (
        ("pod", config.pod_cidr, "--pod-cidr"),
        ("service", config.service_cidr, "--service-cidr"),
    ):
        for network, owner in taken:
            if network.overlaps(cidr) and network.prefixlen > 0:
                raise AddressInUseError(
                    f"addresses in use: the {what} CIDR {cidr} overlaps {owner};"
                    f" is another cluster running? Choose another range with {flag}"
                )


async def create_bridge(config: ClusterConfig, state: StateFile) -> None:
    bridge = config.bridge
    state.add("links", bridge)
    await run(["ip", "link", "add", bridge, "type", "bridge"])
    await _batch(
        None,
        [
            f"addr add {config.host_ip}/{config.pod_cidr.prefixlen} dev {bridge}",
            f"link set {bridge} up",
        ],
    )
    # With br_netfilter loaded, frames between two ports of the bridge cross the
    # host's FORWARD chain; let them through even when its policy is DROP.
    rule = ["filter", "FORWARD", "-i", bridge, "-o", bridge, "-j", "ACCEPT"]
    state.add_host_rule(rule)
    await run(["iptables", "-t", rule[0], "-I", *rule[1:]])


async def create_endpoint(
    config: ClusterConfig, state: StateFile, netns: str, veth: str, ip: str
) -> None:
    """A namespace with ``eth0`` (``ip``) on the bridge, ``lo`` up, the service route."""
    state.add("netns", netns)
    await run(["ip", "netns", "add", netns])
    state.add("links", veth)
    await run(["ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", netns])
    await run(["ip", "link", "set", veth, "master", config.bridge, "up"])
    await _batch(
        netns,
        [
            f"addr add {ip}/{config.pod_cidr.prefixlen} dev eth0",
            "link set eth0 up",
            "link set lo up",
            f"route add {config.service_cidr} via {config.host_ip} dev eth0",
        ],
    )


async def delete_endpoint(state: StateFile, netns: str, veth: str | None) -> None:
    """Kill what still runs inside ``netns`` (ours by construction), then remove it all."""
    await delete_netns(netns)
    state.discard("netns", netns)
    if veth:
        await run(["ip", "link", "del", veth], ok_if_gone=True)
        state.discard("links", veth)
    etc = ETC_NETNS_DIR / netns
    shutil.rmtree(etc, ignore_errors=True)
    state.discard("paths", str(etc))


async def delete_netns(netns: str) -> None:
    pids = await run(["ip", "netns", "pids", netns], ok_if_gone=True)
    for pid in pids.split():
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), signal.SIGKILL)
    await run(["ip", "netns", "del", netns], ok_if_gone=True)


async def delete_host_rule(rule: Sequence[str]) -> None:
    table, chain, *spec = rule
    await run(["iptables", "-t", table, "-D", chain, *spec], ok_if_gone=True)


def listening_tcp_ports() -> set[int]:
    """TCP ports in LISTEN state in the calling thread's network namespace
    (call it through :meth:`mesh.netns.NetworkNamespace.run`)."""
    ports: set[int] = set()
    for name in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/thread-self/net/{name}").read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 3 and fields[3] == "0A":
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


async def apply_rules(netns: str, rules: str) -> None:
    """Feed ``rules`` to ``iptables-restore --noflush`` inside ``netns``."""
    await run(["ip", "netns", "exec", netns, "iptables-restore", "--noflush"], rules.encode())


def write_netns_file(state: StateFile, netns: str, name: str, text: str) -> None:
    """``/etc/netns/<netns>/<name>``, rewritten in place: ``ip netns exec`` bind-mounts the
    file itself, so a running pod only sees changes made to the same inode."""
    directory = ETC_NETNS_DIR / netns
    if not ETC_NETNS_DIR.exists():
        state.add("paths", str(ETC_NETNS_DIR))  # removed at the end only if empty
    state.add("paths", str(directory))
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    with path.open("r+" if path.exists() else "w") as handle:
        handle.write(text)
        handle.truncate()


async def delete_link(name: str) -> None:
    await run(["ip", "link", "del", name], ok_if_gone=True)


def remove_path(path: str) -> None:
    target = Path(path)
    if target == ETC_NETNS_DIR:  # shared with other clusters and tools
        with contextlib.suppress(OSError):
            target.rmdir()
    elif target.is_dir() and not target.is_symlink():
        shutil.rmtree(target, ignore_errors=True)
    else:
        target.unlink(missing_ok=True)


async def _batch(netns: str | None, commands: list[str]) -> None:
    where = ["-n", netns] if netns else []
    await run(["ip", *where, "-batch", "-"], "\n".join(commands).encode() + b"\n")
