"""etcd's maintenance for tests, through its v3 JSON gateway on the client URL (the
test build has no ``etcdctl``): the current revision, and compaction, which makes
every older resourceVersion unwatchable (a watch from one is answered 410 Gone)."""

from __future__ import annotations

import base64
import http.client
import json
from typing import Any
from urllib.parse import urlsplit

import trio

from tests.kube.cluster import Cluster

REQUEST_SECONDS = 10.0


def _post(cluster: Cluster, path: str, body: dict[str, Any]) -> dict[str, Any]:
    url = urlsplit(cluster.etcd_url)
    connection = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port,
                                            timeout=REQUEST_SECONDS)  # fmt: skip
    try:
        connection.request("POST", path, body=json.dumps(body).encode(),
                           headers={"Content-Type": "application/json"})  # fmt: skip
        response = connection.getresponse()
        raw = response.read()
    finally:
        connection.close()
    if response.status != 200:
        raise RuntimeError(f"etcd {path}: {response.status} {raw[:300]!r}")
    answer: dict[str, Any] = json.loads(raw)
    return answer


def _revision_sync(cluster: Cluster) -> int:
    key = base64.b64encode(b"/registry/namespaces/default").decode()
    header = _post(cluster, "/v3/kv/range", {"key": key, "count_only": True})["header"]
    return int(header["revision"])


async def revision(cluster: Cluster) -> int:
    """etcd's current revision (the newest resourceVersion of the whole cluster)."""
    return await trio.to_thread.run_sync(_revision_sync, cluster, abandon_on_cancel=True)


async def compact(cluster: Cluster, to: int) -> None:
    """Compact etcd's history up to revision ``to``, physically (done when this returns)."""
    body = {"revision": str(to), "physical": True}
    await trio.to_thread.run_sync(
        lambda: _post(cluster, "/v3/kv/compaction", body), abandon_on_cancel=True
    )
