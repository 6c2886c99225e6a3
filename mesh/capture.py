"""In-pod traffic capture: the iptables rules and policy route inside a pod's network
namespace that send its traffic to ztunnel, and the original destination of a caught
connection.

The rules belong to the node-level part that outlives ztunnel (the local cluster in
local mode; the node agent on Kubernetes), never to ztunnel itself: they are
installed before a pod is handed to ztunnel and removed only when the pod leaves
the mesh. So capture fails closed: while the pod's ztunnel is down its traffic is
redirected to ports nobody listens on and is refused, never sent around it.

The rules follow istio-cni's in-pod mode (nat table, inside the pod's netns):

- ``OUTPUT`` jumps first to ``AMBIT_OUTPUT``: packets of ztunnel's own sockets
  (``SO_MARK 0x539``) and loopback traffic pass; every other new TCP connection
  is redirected to ztunnel's outbound listener (15001). Being first, the rule
  sees Service VIPs before any kube-proxy-like DNAT.
- ``PREROUTING`` jumps to ``AMBIT_PREROUTING``: TCP to 15008 (HBONE) passes, any
  other new inbound TCP connection goes to the plaintext listener (15006).
- Keeping the client's source address: ztunnel's connections to the pod's own
  address are remembered (connmark); the app's replies on them get the mark back,
  and a policy route (table 133) delivers them to ztunnel's socket.

Installing is one ``iptables-restore --noflush`` batch (atomic, as istio-cni
does), after one ``iptables-save`` to see which jumps already exist.
"""

from __future__ import annotations

import json
import socket
import struct

import structlog
import trio

from mesh.commands import CommandFailed, run_command
from mesh.constants import (
    HBONE_PORT,
    INBOUND_PLAINTEXT_PORT,
    OUTBOUND_CAPTURE_PORT,
    PROXY_SOCKET_MARK,
)
from mesh.netns import netns_path

log = structlog.get_logger("mesh.capture")

SO_ORIGINAL_DST = 80
OUT_CHAIN = "AMBIT_OUTPUT"
IN_CHAIN = "AMBIT_PREROUTING"
MANGLE_CHAIN = "AMBIT_MANGLE"
# Replies of the app to a connection ztunnel opened with the client's source
# address carry this mark and are routed back to ztunnel (table 133).
SPOOF_MARK = 0x111
SPOOF_TABLE = "133"
SPOOF_RULE_PREF = "32764"

# (table, builtin chain, our chain): the jumps that hook our chains in, each first.
JUMPS = (("nat", "OUTPUT", OUT_CHAIN), ("nat", "PREROUTING", IN_CHAIN), ("mangle", "OUTPUT",
         MANGLE_CHAIN))  # fmt: skip


def chain_rules(mark: int = PROXY_SOCKET_MARK) -> dict[str, list[str]]:
    """Per table, the rules of our chains (``-A CHAIN ...`` lines of iptables-restore)."""
    mark_arg = f"{mark:#x}/0xffffffff"
    return {
        "nat": [
            f"-A {OUT_CHAIN} -m mark --mark {mark_arg} -j RETURN",
            f"-A {OUT_CHAIN} -o lo -j RETURN",
            f"-A {OUT_CHAIN} -p tcp -j REDIRECT --to-ports {OUTBOUND_CAPTURE_PORT}",
            f"-A {IN_CHAIN} -p tcp --dport {HBONE_PORT} -j RETURN",
            f"-A {IN_CHAIN} -i lo -j RETURN",
            f"-A {IN_CHAIN} -p tcp -j REDIRECT --to-ports {INBOUND_PLAINTEXT_PORT}",
        ],
        "mangle": [
            f"-A {MANGLE_CHAIN} -m mark --mark {mark_arg} -m addrtype --dst-type LOCAL"
            f" -j CONNMARK --set-xmark {SPOOF_MARK:#x}/0xfff",
            f"-A {MANGLE_CHAIN} -m mark ! --mark {mark_arg} -m connmark --mark"
            f" {SPOOF_MARK:#x}/0xfff -j CONNMARK --restore-mark --nfmask 0xfff --ctmask 0xfff",
        ],
    }


def install_batch(existing: str, mark: int = PROXY_SOCKET_MARK) -> str:
    """The iptables-restore input that (re)installs capture, given ``iptables-save`` output.

    Declaring a chain in ``--noflush`` mode creates it or empties it, so our chains
    end up holding exactly our rules; a jump is added only where it is missing."""
    present = _jumps_present(existing)
    rules = chain_rules(mark)
    lines: list[str] = []
    for table in ("nat", "mangle"):
        lines.append(f"*{table}")
        lines += [f":{chain} - [0:0]" for t, _, chain in JUMPS if t == table]
        lines += rules[table]
        lines += [
            f"-I {builtin} 1 -j {chain}"
            for t, builtin, chain in JUMPS
            if t == table and (t, builtin, chain) not in present
        ]
        lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def removal_batch(existing: str) -> str | None:
    """The iptables-restore input that removes capture; None when nothing is there."""
    present = _jumps_present(existing)
    chains = _chains_present(existing)
    lines: list[str] = []
    for table in ("nat", "mangle"):
        body = [f"-D {builtin} -j {chain}" for t, builtin, chain in JUMPS
                if t == table and (t, builtin, chain) in present]  # fmt: skip
        ours = [chain for t, _, chain in JUMPS if t == table and (t, chain) in chains]
        body += [f"-F {chain}" for chain in ours] + [f"-X {chain}" for chain in ours]
        if body:
            lines += [f"*{table}", *body, "COMMIT"]
    return "\n".join(lines) + "\n" if lines else None


def _tables(save: str) -> dict[str, list[str]]:
    tables: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in save.splitlines():
        if line.startswith("*"):
            current = tables.setdefault(line[1:].strip(), [])
        elif current is not None:
            current.append(line.strip())
    return tables


def _jumps_present(save: str) -> set[tuple[str, str, str]]:
    tables = _tables(save)
    return {
        (table, builtin, chain)
        for table, builtin, chain in JUMPS
        if f"-A {builtin} -j {chain}" in tables.get(table, ())
    }


def _chains_present(save: str) -> set[tuple[str, str]]:
    tables = _tables(save)
    return {
        (table, chain)
        for table, _, chain in JUMPS
        if any(line.startswith(f":{chain} ") for line in tables.get(table, ()))
    }


def _inside(netns: str, *argv: str) -> list[str]:
    return ["nsenter", f"--net={netns_path(netns)}", *argv]


async def install_capture(netns: str, mark: int = PROXY_SOCKET_MARK) -> None:
    """Install capture in ``netns`` (a name or a path): idempotent, atomic for iptables."""
    existing = await _saved(netns)
    await run_command(_inside(netns, "iptables-restore", "--noflush", "-w", "5"),
                      install_batch(existing, mark).encode())  # fmt: skip
    await run_command(_inside(netns, "ip", "route", "replace", "local", "0.0.0.0/0", "dev", "lo",
                              "table", SPOOF_TABLE))  # fmt: skip
    if not await _spoof_rule_present(netns):
        await run_command(_inside(netns, "ip", "rule", "add", "fwmark", f"{SPOOF_MARK:#x}/0xfff",
                                  "pref", SPOOF_RULE_PREF, "lookup", SPOOF_TABLE))  # fmt: skip
    # When a ztunnel hands the pod over to its successor (both listen with SO_REUSEPORT)
    # and closes its listeners, connections queued in its backlog move to the successor
    # instead of being reset (Linux 5.14+).
    await enable_backlog_migration(netns)
    log.info("capture_installed", netns=netns)


async def enable_backlog_migration(netns: str) -> None:
    """``net.ipv4.tcp_migrate_req=1`` in ``netns``. Best effort: without it (a kernel
    before 5.14) a hand-over may reset the few connections queued at that moment."""
    try:
        await run_command(_inside(netns, "sh", "-c", "echo 1 > /proc/sys/net/ipv4/tcp_migrate_req"))
    except CommandFailed as exc:
        log.warning("backlog_migration_unavailable", netns=netns, reason=str(exc))


async def remove_capture(netns: str) -> None:
    """Remove capture from ``netns``; a namespace without it is left as it is."""
    existing = await _saved(netns)
    batch = removal_batch(existing)
    if batch is not None:
        await run_command(_inside(netns, "iptables-restore", "--noflush", "-w", "5"),
                          batch.encode())  # fmt: skip
    if await _spoof_rule_present(netns):
        await run_command(_inside(netns, "ip", "rule", "del", "pref", SPOOF_RULE_PREF))
    await run_command(_inside(netns, "ip", "route", "flush", "table", SPOOF_TABLE),
                      ok_if_gone=True)  # fmt: skip
    log.info("capture_removed", netns=netns)


async def _saved(netns: str) -> str:
    """The namespace's nat and mangle rules, as ``iptables-save`` writes them (one run)."""
    return await run_command(_inside(netns, "iptables-save"))


async def _spoof_rule_present(netns: str) -> bool:
    rules = json.loads(await run_command(_inside(netns, "ip", "-j", "rule", "show")) or "[]")
    return any(str(rule.get("priority")) == SPOOF_RULE_PREF for rule in rules)


def original_dst(sock: socket.socket | trio.socket.SocketType) -> tuple[str, int]:
    """Where a REDIRECTed connection was going (``SO_ORIGINAL_DST``)."""
    raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    port, packed = struct.unpack_from("!2xH4s", raw)
    return socket.inet_ntoa(packed), int(port)


def caught(stream: trio.SocketStream) -> tuple[tuple[str, int], tuple[str, int]] | None:
    """(client address, original destination) of a REDIRECTed connection; None if the
    client is already gone."""
    try:
        dst = original_dst(stream.socket)
        peer = stream.socket.getpeername()
    except OSError:
        return None
    return (peer[0], peer[1]), dst
