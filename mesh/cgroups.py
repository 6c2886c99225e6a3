"""A pod's cgroup, as a kubelet makes one: local mode puts each pod's processes in
``<root>/<group>/pod<uid>`` so that the node agent finds a running pod's network
namespace the way it does on a Kubernetes node (:mod:`node.procscan`: a process whose
cgroup names the pod's uid). Only grouping is used: no controller is configured."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

# The v2 hierarchy (alone, or beside v1 as "unified"), else v1's pids controller.
ROOTS = (Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup/pids"), Path("/sys/fs/cgroup"))


def writable_root(roots: tuple[Path, ...] = ROOTS) -> Path | None:
    """The first hierarchy this process may make groups in; None when there is none."""
    for root in roots:
        if (root / "cgroup.procs").exists() and os.access(root, os.W_OK):
            return root
    return None


def for_pod(group: str, uid: str) -> Path | None:
    """``<root>/<group>/pod<uid>`` in the first writable hierarchy; None when there is
    none (or no uid)."""
    root = writable_root()
    return root / group / f"pod{uid}" if root is not None and uid else None


def join(cgroup: Path, pid: int) -> None:
    """Move process ``pid`` into ``cgroup`` (made if needed); ``OSError`` if it cannot."""
    cgroup.mkdir(parents=True, exist_ok=True)
    (cgroup / "cgroup.procs").write_text(str(pid))


def remove(cgroup: Path | None) -> None:
    """Remove ``cgroup`` and the groups under it once their processes are gone (a group
    with processes stays; its control files are not files to delete)."""
    if cgroup is not None:
        shutil.rmtree(cgroup, ignore_errors=True)
