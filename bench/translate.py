"""The control plane's translation, no sockets: ``python -m bench.translate``.

Synthetic clusters of growing size (``--pods``, default 500, 1,000, 2,000 and 5,000
pods in 50 namespaces, one Service per 5 pods, one AuthorizationPolicy per 25 pods,
half of the namespaces in the mesh) are translated three ways:

- **full**: :func:`k8s.translate.translate` of every object, median of ``--repeat``,
  each from cold caches (the model's remembered addresses, identities and label sets,
  the parsed creation times), as a control plane's first translation;
- **one-pod change**: :meth:`k8s.translate.Translator.apply` of one changed pod on a
  translator holding the cluster (the pod moves between two Services by its ``app``
  label, or gets a new IP, alternately), the new snapshot included; median of
  ``--changes``;
- **delta**: :func:`mesh.model.diff` of the snapshots before and after that change,
  what the config server does once per change, its entries and its JSON bytes, beside
  the bytes of the whole snapshot (what a proxy gets when it resynchronises).

Results go to ``bench/results/<YYYY-MM-DD-HHMM>-translate[-quick]/`` (``--out``):
``results.json`` and ``translate.png`` (matplotlib, installed with pip when missing;
without it the plot is skipped, and said so).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from k8s import claims
from k8s import manifests as m
from k8s.translate import Translator, translate
from mesh import model_checks
from mesh.constants import LABEL_DATAPLANE_MODE
from mesh.model import MeshSnapshot, diff

NAMESPACES = 50
PODS_PER_SERVICE = 5
PODS_PER_POLICY = 25
CREATED = "2026-12-01T10:00:00Z"
RESULTS = Path(__file__).resolve().parent / "results"
R = TypeVar("R")


def pod_ip(i: int) -> str:
    return f"10.{16 + i // 65536}.{i // 256 % 256}.{i % 256}"


def make_pod(i: int, *, app: int | None = None, ip: str | None = None) -> m.Pod:
    """Pod ``i``: namespace ``ns-<i % 50>``; pods ``i``, ``i + 50``... of a namespace come in
    groups of five with one ``app`` label, which one Service selects."""
    namespace, index = i % NAMESPACES, i // NAMESPACES
    group = index // PODS_PER_SERVICE if app is None else app
    labels = {"app": f"app-{group}", "version": "v1", "pod-template-hash": f"h{group:05d}"}
    return m.Pod(
        name=f"pod-{i}",
        namespace=f"ns-{namespace}",
        labels=tuple(sorted(labels.items())),
        node_name=f"node-{i % 10}",
        service_account=f"sa-{group}",
        containers=(m.Container(name="app", ports=(m.ContainerPort(port=8080, name="http"),)),),
        pod_ip=ip or pod_ip(i),
        phase="Running",
        creation_timestamp=CREATED,
    )


def cluster(pods: int) -> list[m.K8sObject]:
    services, policies = pods // PODS_PER_SERVICE, pods // PODS_PER_POLICY
    objects: list[m.K8sObject] = [
        m.Namespace(
            name=f"ns-{n}",
            labels=((LABEL_DATAPLANE_MODE, "ambient"),) if n % 2 == 0 else (),
            creation_timestamp=CREATED,
        )
        for n in range(NAMESPACES)
    ]
    objects += [make_pod(i) for i in range(pods)]
    objects += [
        m.Service(
            name=f"svc-{j}",
            namespace=f"ns-{j % NAMESPACES}",
            selector=(("app", f"app-{j // NAMESPACES}"),),
            ports=(m.ServicePortSpec(port=80, target_port="http" if j % 2 else 8080, name="http"),),
            cluster_ip=f"10.96.{j // 256}.{j % 256}",
            creation_timestamp=CREATED,
        )
        for j in range(services)
    ]
    objects += [
        m.AuthorizationPolicy(
            name=f"policy-{p}",
            namespace=f"ns-{p % NAMESPACES}",
            selector=(("app", f"app-{p // NAMESPACES}"),),
            rules=(
                m.PolicyRule(
                    sources=(m.PolicySource(principals=(f"cluster.local/ns/ns-0/sa/sa-{p}",)),),
                    operations=(m.PolicyOperation(ports=(8080,)),),
                ),
            ),
            creation_timestamp=CREATED,
        )
        for p in range(policies)
    ]
    objects.append(m.PeerAuthentication(name="default", namespace="ambit-system", mode="STRICT"))
    return objects


def timed(fn: Callable[..., R], *args: Any) -> tuple[float, R]:
    """Milliseconds ``fn(*args)`` took, and what it returned."""
    start = time.perf_counter()
    result = fn(*args)
    return (time.perf_counter() - start) * 1e3, result


def clear_caches() -> None:
    """What translation remembers across calls, forgotten: the next one runs cold. The
    previous run's garbage is collected first, so no run pays for the one before it (a
    control plane translates everything once, at start)."""
    model_checks._is_ip.cache_clear()
    model_checks._spiffe_id.cache_clear()
    model_checks._sorted_pairs.cache_clear()
    claims._seconds.cache_clear()
    gc.collect()


def measure(pods: int, repeat: int, changes: int, seed: int) -> dict[str, Any]:
    objects = cluster(pods)
    full_ms = []
    snapshot: MeshSnapshot | None = None
    for _ in range(repeat):
        clear_caches()
        ms, translation = timed(lambda: translate(objects, version=1))
        full_ms.append(ms)
        snapshot = translation.snapshot
    assert snapshot is not None
    groups = pods // NAMESPACES // PODS_PER_SERVICE  # app groups per namespace
    translator = Translator()
    translator.apply(objects)
    rng = random.Random(seed)
    change_ms, diff_ms, entries, delta_bytes = [], [], [], []
    for n in range(changes):
        i = rng.randrange(pods)
        if n % 2 == 0 and groups > 1:  # to another group's Service: two Services, the workload
            app = (i // NAMESPACES // PODS_PER_SERVICE + 1 + rng.randrange(groups - 1)) % groups
            changed = make_pod(i, app=app)
        else:  # re-created with a new IP: the workload and its Service's endpoint
            changed = make_pod(i, ip=pod_ip(pods + n))
        before = translator.translation
        assert before is not None
        ms, after = timed(translator.apply, [changed])
        change_ms.append(ms)
        ms, delta = timed(diff, before.snapshot, after.snapshot)
        diff_ms.append(ms)
        entries.append(len(delta.upserts) + len(delta.removes))
        delta_bytes.append(len(json.dumps(delta.to_json(), separators=(",", ":"))))
    return {
        "pods": pods,
        "services": pods // PODS_PER_SERVICE,
        "policies": pods // PODS_PER_POLICY,
        "namespaces": NAMESPACES,
        "workloads": len(snapshot.workloads),
        "endpoints": sum(len(s.endpoints) for s in snapshot.services),
        "full_ms": statistics.median(full_ms),
        "full_ms_min_max": [min(full_ms), max(full_ms)],
        "one_pod_change_ms": statistics.median(change_ms),
        "one_pod_change_ms_p90": statistics.quantiles(change_ms, n=10)[-1],
        "diff_ms": statistics.median(diff_ms),
        "delta_entries": statistics.median(entries),
        "delta_entries_max": max(entries),
        "delta_bytes": statistics.median(delta_bytes),
        "snapshot_bytes": len(json.dumps(snapshot.to_json(), separators=(",", ":"))),
    }


def plot(doc: dict[str, Any], out_dir: Path) -> str | None:
    """``translate.png``: times and delta size against the cluster's size; None without
    matplotlib."""
    from bench.compare.system import ensure_python_package

    if not ensure_python_package("matplotlib", "matplotlib", []):
        print("matplotlib is not available and could not be installed: no plot", flush=True)
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = doc["results"]
    pods = [r["pods"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    left.plot(pods, [r["full_ms"] for r in rows], "o-", label="full translation")
    left.plot(pods, [r["one_pod_change_ms"] for r in rows], "o-", label="one-pod change")
    left.plot(pods, [r["diff_ms"] for r in rows], "o--", label="diff of the two snapshots")
    left.set_yscale("log")
    left.set_xlabel("pods (services = pods/5, policies = pods/25, 50 namespaces)")
    left.set_ylabel("ms (median)")
    left.legend()
    left.grid(True, which="both", alpha=0.3)
    right.plot(pods, [r["delta_bytes"] for r in rows], "o-", label="delta of a one-pod change")
    right.plot(pods, [r["snapshot_bytes"] for r in rows], "o-", label="whole snapshot")
    right.set_yscale("log")
    right.set_xlabel("pods")
    right.set_ylabel("JSON bytes")
    right.legend()
    right.grid(True, which="both", alpha=0.3)
    fig.suptitle(f"translation, {doc['started']} (commit {doc['commit']})")
    fig.tight_layout()
    fig.savefig(out_dir / "translate.png", dpi=100)
    plt.close(fig)
    return "translate.png"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pods", type=int, nargs="+", default=[500, 1000, 2000, 5000])
    parser.add_argument("--repeat", type=int, default=5, help="full translations per size")
    parser.add_argument("--changes", type=int, default=200, help="one-pod changes per size")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="1,000 pods, fewer runs")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.quick:
        args.pods, args.repeat, args.changes = [1000], 2, 40
    started = datetime.datetime.now()
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    doc: dict[str, Any] = {
        "started": started.strftime("%Y-%m-%d %H:%M"),
        "commit": commit,
        "python": sys.version.split()[0],
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "loadavg_before": os.getloadavg()[0],
        "settings": {"repeat": args.repeat, "changes": args.changes, "seed": args.seed},
        "results": [],
    }
    print(f"{'pods':>6} {'full ms':>8} {'change ms':>9} {'diff ms':>8} {'entries':>7}"
          f" {'delta B':>8} {'snapshot B':>10}")  # fmt: skip
    for pods in args.pods:
        row = measure(pods, args.repeat, args.changes, args.seed)
        doc["results"].append(row)
        print(
            f"{row['pods']:>6} {row['full_ms']:>8.1f} {row['one_pod_change_ms']:>9.2f}"
            f" {row['diff_ms']:>8.2f} {row['delta_entries']:>7.0f} {row['delta_bytes']:>8.0f}"
            f" {row['snapshot_bytes']:>10}",
            flush=True,
        )
    doc["loadavg_after"] = os.getloadavg()[0]  # the machine is shared: how busy it was
    suffix = "-translate-quick" if args.quick else "-translate"
    out_dir = args.out / (started.strftime("%Y-%m-%d-%H%M") + suffix)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(doc, indent=1) + "\n")
    picture = plot(doc, out_dir)
    print(f"results: {out_dir}" + (f" ({picture})" if picture else ""))


if __name__ == "__main__":
    main()
