"""The Gateway API's own standard CRDs, from the ``sigs.k8s.io/gateway-api`` Go
module pinned in ``tests/kube/go.mod`` (its ``config/crd/standard/*.yaml`` in
Go's module cache, which ``make kube`` fills): ambit ships no copies of them.
``install`` applies every document there (the CRDs and the release's
ValidatingAdmissionPolicy) and waits until each CRD is Established."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import yaml

from tests.kube import crds
from tests.kube.client import KubeAdmin, Obj

GO_MODULE = Path(__file__).resolve().parent


class GatewayApiMissing(Exception):
    """The module is not in Go's module cache and cannot be downloaded."""


def crd_dir() -> Path:
    """``config/crd/standard`` of the pinned module (``go mod download`` finds it in
    the module cache; it downloads only when the cache lacks it)."""
    go = shutil.which("go") or "/usr/local/go/bin/go"
    try:
        result = subprocess.run(
            [go, "mod", "download", "-json", "sigs.k8s.io/gateway-api"],
            cwd=GO_MODULE,
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "GOFLAGS": "-mod=readonly"},
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise GatewayApiMissing(f"cannot run {go}: {error}; `make kube` needs Go") from error
    info = json.loads(result.stdout or "{}")
    if result.returncode != 0 or "Dir" not in info:
        raise GatewayApiMissing(f"go mod download sigs.k8s.io/gateway-api: {result.stderr}")
    directory = Path(info["Dir"]) / "config" / "crd" / "standard"
    if not directory.is_dir():
        raise GatewayApiMissing(f"no {directory}")
    return directory


def documents(directory: Path) -> list[Obj]:
    found: list[Obj] = []
    for path in sorted(directory.glob("*.yaml")):
        found.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return found


def version(docs: list[Obj]) -> str:
    """The release the documents belong to (their bundle-version annotation)."""
    versions = {
        d["metadata"].get("annotations", {}).get("gateway.networking.k8s.io/bundle-version")
        for d in docs
    }
    versions.discard(None)
    if len(versions) != 1:
        raise GatewayApiMissing(f"expected one bundle version, found {sorted(map(str, versions))}")
    return str(versions.pop())


async def install(admin: KubeAdmin, directory: Path) -> list[str]:
    """Create every document (existing ones are left as they are); the CRDs' names,
    once each is Established."""
    return await crds.install(admin, documents(directory))
