"""Finding a running pod's network namespace from its processes, as the node agent does
for a pod that started before it: a process whose cgroup path names the pod's uid, in a
network namespace that is not the host's."""

from __future__ import annotations

import os
import secrets
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from node.procscan import find_pod_netns, namespace_key

pytestmark = pytest.mark.root

CGROUP_ROOTS = (Path("/sys/fs/cgroup/pids"), Path("/sys/fs/cgroup"))


def _cgroup_root() -> Path:
    for root in CGROUP_ROOTS:
        if (root / "cgroup.procs").exists():
            return root
    pytest.skip("no writable cgroup hierarchy (pids controller or cgroup v2) here")


@pytest.fixture
def pod_process() -> Iterator[tuple[str, str, int]]:
    """(pod uid, netns name, pid): a sleeping process in its own netns, in a cgroup named
    ``pod<uid>`` as the kubelet names them (systemd driver: ``_`` for ``-``)."""
    if os.geteuid() != 0:
        pytest.skip("needs root: network namespaces and cgroups")
    uid = str(uuid.uuid4())
    netns = f"ambtest-scan-{secrets.token_hex(3)}"
    group = _cgroup_root() / f"ambtest-{secrets.token_hex(3)}" / f"pod{uid.replace('-', '_')}"
    subprocess.run(["ip", "netns", "add", netns], check=True, timeout=10)
    process: subprocess.Popen[bytes] | None = None
    try:
        group.mkdir(parents=True)
        process = subprocess.Popen(["ip", "netns", "exec", netns, "sleep", "60"])
        (group / "cgroup.procs").write_text(str(process.pid))
        yield uid, netns, process.pid
    finally:
        if process is not None:
            process.kill()
            process.wait(timeout=10)
        for directory in (group, group.parent):
            if directory.exists():
                directory.rmdir()
        subprocess.run(["ip", "netns", "del", netns], timeout=10)


def test_a_pods_process_names_its_namespace(pod_process: tuple[str, str, int]) -> None:
    uid, netns, pid = pod_process
    found = find_pod_netns(uid)
    assert found == f"/proc/{pid}/ns/net"
    assert namespace_key(found) == namespace_key(f"/run/netns/{netns}")


def test_no_process_no_namespace(pod_process: tuple[str, str, int]) -> None:
    assert find_pod_netns(str(uuid.uuid4())) is None
    assert find_pod_netns("") is None


def test_a_host_network_process_is_not_a_pod_namespace(tmp_path: Path) -> None:
    """A process of the pod in the host's namespace (host network) is never taken."""
    own = os.getpid()
    proc = tmp_path / "proc"
    for pid in ("1", str(own)):
        (proc / pid / "ns").mkdir(parents=True)
        (proc / pid / "ns" / "net").symlink_to("/proc/1/ns/net")
    (proc / str(own) / "cgroup").write_text("0::/kubepods/podabc\n")
    assert find_pod_netns("abc", proc) is None
