"""How long ambit-cni's ADD takes: ``python -m bench.cni_add [-n 20]``.

The plugin's process from start to exit, as the container runtime runs it (the
installed file, ``#!/usr/bin/env python3``, with the spec's environment and a
``prevResult`` on stdin), for a meshed pod (the API server asked for the Pod, and
the Namespace when the Pod's label does not decide; the stand-in agent answering at
once), a pod outside the mesh, and a sandbox in an excluded namespace (no request
at all: the interpreter's start and the plugin's imports). Each with the python3 of
the node (``/usr/bin/python3``) plain, ``-S`` (no ``site``), ``-I`` (isolated) and
both. The API server is tests/kube's (``make kube``); the median of ``-n`` runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import trio

from node.cni_config import PluginKubeconfig, PluginSettings
from node.cni_install import install_binary, plugin_source, write_plugin_kubeconfig
from tests.kube.client import KubeAdmin, Obj
from tests.kube.cluster import start_cluster
from tests.kube.kubelet import namespace, pod, wait_default_service_account
from tests.node.chain import TestAgent, grant_plugin_access, pod_args

PREV = {
    "cniVersion": "1.0.0",
    "interfaces": [{"name": "eth0", "sandbox": "/var/run/netns/x"}],
    "ips": [{"address": "10.199.0.5/24", "interface": 0}],
}
FLAGS = {"plain": [], "-S": ["-S"], "-I": ["-I"], "-I -S": ["-I", "-S"]}


def environment(obj: Obj) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "CNI_COMMAND": "ADD",
        "CNI_CONTAINERID": "bench",
        "CNI_NETNS": "/var/run/netns/x",
        "CNI_IFNAME": "eth0",
        "CNI_ARGS": pod_args(obj),
    }


def top_imports(report: str, count: int) -> list[str]:
    """The ``count`` top-level imports of an ``-X importtime`` report that took longest."""
    rows = []
    for line in report.splitlines():
        parts = line.split("|")
        if len(parts) == 3 and parts[1].strip().isdigit() and not parts[2].startswith("  "):
            rows.append((int(parts[1]), parts[2].strip()))
    total = sum(cumulative for cumulative, _ in rows)
    ranked = sorted(rows, reverse=True)[:count]
    return [f"{cumulative:8} {name}" for cumulative, name in ranked] + [f"{total:8} (all)"]


def stderr_of(argv: list[str], env: dict[str, str], stdin: bytes) -> str:
    done = subprocess.run(argv, input=stdin, env=env, capture_output=True, check=True)
    return done.stderr.decode()


def time_runs(argv: list[str], env: dict[str, str], stdin: bytes, runs: int) -> float:
    """The median milliseconds of ``runs`` runs, each checked to succeed."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        done = subprocess.run(argv, input=stdin, env=env, capture_output=True, check=False)
        times.append((time.perf_counter() - start) * 1000)
        if done.returncode != 0 or (stdin and json.loads(done.stdout) != PREV):
            raise SystemExit(f"ADD failed: {done.stdout!r} {done.stderr!r}")
    return statistics.median(times)


async def measure(admin: KubeAdmin, python: str, runs: int, directory: Path) -> None:
    ns = "bench-cni"
    await admin.create(namespace(ns, {"ambit.io/dataplane-mode": "ambient"}))
    await wait_default_service_account(admin, ns)
    pods = {
        "meshed": await admin.create(pod(ns, "cart")),
        "outside": await admin.create(pod(ns, "web", labels={"ambit.io/dataplane-mode": "none"})),
        "excluded": {"metadata": {"namespace": "kube-system", "name": "coredns", "uid": "u"}},
    }
    access = await grant_plugin_access(admin, ns)
    kubeconfig = directory / "kubeconfig"
    write_plugin_kubeconfig(
        kubeconfig, PluginKubeconfig(access.server, ca_pem=access.ca_pem, token=access.token)
    )
    install_binary(plugin_source(), directory)
    agent = TestAgent(directory / "cni.sock")
    settings = PluginSettings(agent_socket=str(agent.path), kubeconfig=str(kubeconfig))
    stdin = json.dumps(
        {"cniVersion": "1.0.0", "name": "bench", **settings.entry(), "prevResult": PREV}
    ).encode()
    async with trio.open_nursery() as nursery:
        await nursery.start(agent.serve)
        print(f"ambit-cni ADD, median of {runs} runs, ms ({python})")
        print(f"{'flags':8} " + " ".join(f"{case:>9}" for case in pods))
        for label, flags in FLAGS.items():
            cells = []
            for obj in pods.values():
                argv = [python, *flags, str(directory / "ambit-cni")]
                median = await trio.to_thread.run_sync(
                    time_runs, argv, environment(obj), stdin, runs
                )
                cells.append(f"{median:9.1f}")
            print(f"{label:8} " + " ".join(cells))
        alone = await trio.to_thread.run_sync(time_runs, [python, "-c", "pass"], {}, b"", runs)
        print(f"the interpreter alone ({python} -c pass): {alone:.1f}")
        print(f"agent requests: {len(agent.requests)} (meshed runs only)")
        env = {**environment(pods["meshed"]), "PYTHONPROFILEIMPORTTIME": "1"}
        argv = [python, str(directory / "ambit-cni")]
        report = await trio.to_thread.run_sync(stderr_of, argv, env, stdin)
        print(f"the meshed ADD's imports, microseconds ({python} -X importtime):")
        print("\n".join(top_imports(report, 12)))
        nursery.cancel_scope.cancel()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--runs", type=int, default=20)
    parser.add_argument("--python", default="/usr/bin/python3", help="the node's python3")
    args = parser.parse_args()
    directory = Path(tempfile.mkdtemp(prefix="ambcni-bench-"))
    try:
        with start_cluster() as cluster:
            trio.run(measure, KubeAdmin(cluster), args.python, args.runs, directory)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
