"""Finding the network namespace of a pod that started before the node agent (or
whose CNI ``ADD`` it never saw): a process of the pod is in a cgroup whose path names
the pod's uid (``pod<uid>``, with ``_`` for ``-`` under the systemd cgroup driver), and
``/proc/PID/ns/net`` is its namespace. Namespaces are compared by (inode, device)."""

from __future__ import annotations

import os
from pathlib import Path

from mesh.netns import NamespaceKey


def namespace_key(path: str | Path) -> NamespaceKey | None:
    """(inode, device) of a network namespace file; None if it is gone."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_dev)


def find_pod_netns(uid: str, proc: Path = Path("/proc")) -> str | None:
    """``/proc/PID/ns/net`` of a process of pod ``uid`` that is not in the host's network
    namespace (PID 1's); None when no such process is found."""
    if not uid:
        return None
    names = {uid, uid.replace("-", "_")}
    host = namespace_key(proc / "1" / "ns" / "net")
    try:
        entries = os.listdir(proc)
    except OSError:
        return None
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            cgroups = (proc / entry / "cgroup").read_text()
        except OSError:
            continue  # gone, or not ours to read
        if not any(f"pod{name}" in cgroups for name in names):
            continue
        netns = proc / entry / "ns" / "net"
        key = namespace_key(netns)
        if key is not None and key != host:
            return str(netns)
    return None
