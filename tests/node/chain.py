"""A CNI chain run the way a container runtime runs it, for tests: a network
namespace of the test's own, a conflist of the reference plugins (``bridge`` with
``host-local``, then ``loopback``, which passes it on) with ``ambit-cni``
installed (``node.cni_install``) and appended last (``node.cni_config``), run by
``cnitool`` (libcni: the runtime's own library); or the plugin run alone with the
spec's environment and stdin. ``TestAgent`` stands in for the node agent on its
unix socket, answering as told and recording each request."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from node.cni_config import PluginKubeconfig, PluginSettings, with_plugin
from node.cni_install import install_binary, plugin_source, write_plugin_kubeconfig
from tests.kube.client import KubeAdmin, Obj
from tests.kube.cluster import REPO

RESULTS_CACHE = Path("/var/lib/cni/results")  # libcni's cache of ADD results (cnitool's)
PROCESS_SECONDS = 60.0


def cni_bin_dir() -> Path:
    """Where ``make cni`` puts the binaries (``$AMBIT_CNI_BIN`` overrides)."""
    return Path(os.environ.get("AMBIT_CNI_BIN", REPO / ".cache" / "cni" / "bin"))


def node_python() -> str:
    """The node's python3 the plugin runs on: ``$AMBIT_NODE_PYTHON`` (a Python 3.8,
    say: the oldest the plugin supports), else the tests' own interpreter."""
    return os.environ.get("AMBIT_NODE_PYTHON") or os.path.realpath(sys.executable)


@dataclass(frozen=True)
class PluginAccess:
    server: str
    ca_pem: bytes
    token: str


async def grant_plugin_access(admin: KubeAdmin, ns: str) -> PluginAccess:
    """What the agent gives the plugin: a ServiceAccount (here in the test's
    namespace) that may get pods and namespaces, and a token for it."""
    name = f"ambit-cni-{ns}"
    await admin.create(
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "cni", "namespace": ns}}
    )
    rules = [{"apiGroups": [""], "resources": ["pods", "namespaces"], "verbs": ["get"]}]
    rbac = "rbac.authorization.k8s.io/v1"
    await admin.create(
        {"apiVersion": rbac, "kind": "ClusterRole", "metadata": {"name": name}, "rules": rules}
    )
    await admin.create(
        {
            "apiVersion": rbac,
            "kind": "ClusterRoleBinding",
            "metadata": {"name": name},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": name,
            },
            "subjects": [{"kind": "ServiceAccount", "name": "cni", "namespace": ns}],
        }
    )
    request = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {}}
    answer = await admin.post_subresource("v1", "ServiceAccount", "cni", "token", request, ns)
    cluster = admin.cluster
    return PluginAccess(cluster.server, cluster.ca_file.read_bytes(), answer["status"]["token"])


async def revoke_plugin_access(admin: KubeAdmin, ns: str) -> None:
    rbac = "rbac.authorization.k8s.io/v1"
    for kind in ("ClusterRoleBinding", "ClusterRole"):
        await admin.delete(rbac, kind, f"ambit-cni-{ns}")


def pod_args(pod: Obj) -> str:
    """``CNI_ARGS`` as containerd sets them for a pod's sandbox."""
    meta = pod["metadata"]
    return (
        f"IgnoreUnknown=1;K8S_POD_NAMESPACE={meta['namespace']};K8S_POD_NAME={meta['name']};"
        f"K8S_POD_INFRA_CONTAINER_ID=sandbox;K8S_POD_UID={meta['uid']}"
    )


@dataclass
class Ran:
    returncode: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


@dataclass
class Chain:
    BINARIES = ("bridge", "host-local", "loopback", "cnitool")

    suffix: str
    directory: Path
    cni_bin: Path
    access: PluginAccess
    timeout_seconds: float = 5.0
    cni_version: str = "1.0.0"  # the conflist's; use_version changes it
    netns: str = field(init=False)
    network: str = field(init=False)
    bridge: str = field(init=False)
    subnet: str = field(init=False)

    def __post_init__(self) -> None:
        self.netns = f"amb-cni-{self.suffix}"
        self.network = f"ambit-cni-test-{self.suffix}"
        self.bridge = f"acni{self.suffix}"  # at most 15 characters
        self.subnet = f"10.199.{random.randrange(256)}.0/24"

    @property
    def netns_path(self) -> str:
        return f"/var/run/netns/{self.netns}"

    @property
    def conf_dir(self) -> Path:
        return self.directory / "net.d"

    @property
    def plugin_bin(self) -> Path:
        return self.directory / "bin"

    @property
    def agent_socket(self) -> Path:
        return self.directory / "cni.sock"

    def settings(self) -> PluginSettings:
        return PluginSettings(
            agent_socket=str(self.agent_socket),
            kubeconfig=str(self.directory / "kubeconfig"),
            timeout_seconds=self.timeout_seconds,
        )

    def conflist(self) -> Obj:
        bridge = {
            "type": "bridge",
            "bridge": self.bridge,
            "isGateway": False,
            "ipMasq": False,
            "ipam": {
                "type": "host-local",
                "subnet": self.subnet,
                "dataDir": str(self.directory / "ipam"),
            },
        }
        return {
            "cniVersion": self.cni_version,
            "name": self.network,
            "plugins": [bridge, {"type": "loopback"}],
        }

    async def create(self) -> None:
        await run_checked(["ip", "netns", "add", self.netns])
        self.write_files()

    def write_files(self) -> None:
        """The conflist, the plugin's binary and kubeconfig, and a ``python3``."""
        self.conf_dir.mkdir()
        self.write_conflist()
        install_binary(plugin_source(), self.plugin_bin)
        access = self.access
        kubeconfig = PluginKubeconfig(access.server, ca_pem=access.ca_pem, token=access.token)
        write_plugin_kubeconfig(self.directory / "kubeconfig", kubeconfig)
        # `#!/usr/bin/env python3` finds this interpreter first: the node's python3.
        (self.directory / "python").mkdir()
        (self.directory / "python" / "python3").symlink_to(node_python())

    def write_conflist(self) -> None:
        name, data = with_plugin(
            "10-test.conflist", json.dumps(self.conflist()).encode(), self.settings().entry()
        )
        (self.conf_dir / name).write_bytes(data)

    def use_version(self, cni_version: str) -> None:
        """The conflist of the spec version ``cni_version`` from now on."""
        self.cni_version = cni_version
        self.write_conflist()

    def environment(self, **extra: str) -> dict[str, str]:
        path = f"{self.directory / 'python'}:{os.environ.get('PATH', '/usr/bin:/bin')}"
        return {
            "PATH": path,
            "NETCONFPATH": str(self.conf_dir),
            "CNI_PATH": f"{self.cni_bin}:{self.plugin_bin}",
            **extra,
        }

    async def cnitool(self, command: str, pod: Obj | None) -> Ran:
        """``cnitool add|del|check NETWORK NETNS``: the chain as libcni runs it."""
        env = self.environment(CNI_ARGS=pod_args(pod) if pod else "IgnoreUnknown=1")
        argv = [str(self.cni_bin / "cnitool"), command, self.network, self.netns_path]
        return await run(argv, env)

    async def plugin(self, command: str, stdin: bytes, pod: Obj | None = None) -> Ran:
        """ambit-cni alone, with the spec's environment and ``stdin``."""
        env = self.environment(
            CNI_COMMAND=command,
            CNI_CONTAINERID=f"c-{self.suffix}",
            CNI_NETNS=self.netns_path,
            CNI_IFNAME="eth0",
            CNI_ARGS=pod_args(pod) if pod else "",
        )
        return await run([str(self.plugin_bin / "ambit-cni")], env, stdin)

    def plugin_conf(self, prev_result: Obj | None, **fields: Any) -> bytes:
        """The request config the runtime hands ambit-cni (SPEC.md, section 3)."""
        conf: Obj = {"cniVersion": "1.0.0", "name": self.network, **self.settings().entry()}
        if prev_result is not None:
            conf["prevResult"] = prev_result
        return json.dumps({**conf, **fields}).encode()

    async def destroy(self) -> None:
        await self.cnitool("del", None)  # the bridge releases the address, best effort
        await run(["ip", "link", "del", self.bridge], dict(os.environ))
        await run(["ip", "netns", "del", self.netns], dict(os.environ))
        self.forget_results()

    def forget_results(self) -> None:
        """libcni's cached results of this test's network (cnitool cannot move them)."""
        for cached in RESULTS_CACHE.glob(f"{self.network}-*"):
            cached.unlink(missing_ok=True)


async def run(argv: list[str], env: dict[str, str], stdin: bytes = b"") -> Ran:
    with trio.fail_after(PROCESS_SECONDS):
        done = await trio.run_process(
            argv, stdin=stdin, capture_stdout=True, capture_stderr=True, env=env, check=False
        )
    return Ran(done.returncode, done.stdout.decode(), done.stderr.decode())


async def run_checked(argv: list[str]) -> None:
    ran = await run(argv, dict(os.environ))
    if ran.returncode != 0:
        raise subprocess.CalledProcessError(ran.returncode, argv, ran.stdout, ran.stderr)


@dataclass
class TestAgent:
    """Answers each request with ``answer`` (or never, with ``hang``) and records it."""

    path: Path
    answer: Obj = field(default_factory=lambda: {"result": "enrolled"})
    hang: bool = False
    requests: list[Obj] = field(default_factory=list)

    __test__ = False  # not a pytest class

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
        await sock.bind(str(self.path))
        sock.listen(16)
        task_status.started()
        await trio.serve_listeners(self.handle, [trio.SocketListener(sock)])

    async def handle(self, stream: trio.SocketStream) -> None:
        data = b""
        async with stream:
            while b"\n" not in data:
                chunk = await stream.receive_some(65536)
                if not chunk:
                    return
                data += chunk
            self.requests.append(json.loads(data.split(b"\n", 1)[0]))
            if self.hang:
                await trio.sleep_forever()
            await stream.send_all(json.dumps(self.answer).encode() + b"\n")

    def commands(self) -> list[str]:
        return [r["command"] for r in self.requests]
