"""Local mode's stand-in for the API server, as the CNI plugin sees it.

On a Kubernetes node, ``ambit-cni`` reads a pod and its namespace from the API server
(``GET /api/v1/namespaces/NS/pods/NAME``, ``GET /api/v1/namespaces/NS``) with the token
and CA of the kubeconfig the node agent writes for it. Local mode has no API server, so
the local cluster serves those two reads itself, from the objects it publishes (what the
control plane and the agents follow), so that the plugin runs unchanged on a laptop:

- HTTPS on ``127.0.0.1`` (an ephemeral port), with a certificate for that address from a
  CA made for this server alone (``<state>/mesh/localapi/ca.crt``);
- a bearer token (random at each start), refused with ``401`` otherwise;
- read-only: ``GET`` and ``HEAD`` of Pods and Namespaces. A namespace that only exists
  through its pods (no Namespace object) is served with no labels, as ``kubectl create``
  would have made it. Anything else is ``404`` with a ``Status`` as the API server's;
- its kubeconfig (``<state>/mesh/localapi/kubeconfig``, mode 0600) is what the local
  node agents pass to the plugin (``ambit node-agent --kubeconfig``).
"""

from __future__ import annotations

import datetime as dt
import hmac
import secrets
import ssl
from collections.abc import Iterable, Iterator, Mapping
from functools import partial
from pathlib import Path
from typing import Any

import structlog
import trio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ca.certificates import new_ca, server_leaf
from mesh.admin import Route, serve_http
from mesh.files import write_atomically
from mesh.http import Request, Response, json_response
from node.cni_config import PluginKubeconfig

log = structlog.get_logger("k8s.localapi")

HOST = "127.0.0.1"
LIFETIME = dt.timedelta(days=365)  # made again at each start of the local cluster
Obj = Mapping[str, Any]


def paths_of(documents: Iterable[Obj]) -> dict[str, Obj]:
    """Each Pod and Namespace by its API path; a namespace that has pods but no object
    gets an object with no labels (pure)."""
    served: dict[str, Obj] = {}
    pod_namespaces: set[str] = set()
    for doc in documents:
        meta = doc.get("metadata") or {}
        name, namespace = meta.get("name"), meta.get("namespace")
        if doc.get("kind") == "Namespace" and name:
            served[f"/api/v1/namespaces/{name}"] = doc
        elif doc.get("kind") == "Pod" and name and namespace:
            served[f"/api/v1/namespaces/{namespace}/pods/{name}"] = doc
            pod_namespaces.add(str(namespace))
    for namespace in pod_namespaces:
        implied = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}
        served.setdefault(f"/api/v1/namespaces/{namespace}", implied)
    return served


def status(code: int, reason: str, message: str) -> Response:
    """A ``Status`` object, as the API server answers a failure."""
    body = {"apiVersion": "v1", "kind": "Status", "status": "Failure",
            "message": message, "reason": reason, "code": code}  # fmt: skip
    return json_response(body, code)


class LocalApi:
    """The objects to serve (``update``), and the server (``serve``)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.token = secrets.token_urlsafe(32)
        self._served: dict[str, Obj] = {}
        self.port: int | None = None

    @property
    def kubeconfig_file(self) -> Path:
        return self.directory / "kubeconfig"

    @property
    def ca_file(self) -> Path:
        return self.directory / "ca.crt"

    def update(self, documents: Iterable[Obj]) -> None:
        self._served = paths_of(documents)

    def answer(self, request: Request) -> Response:
        given = request.header("authorization") or ""
        if not hmac.compare_digest(given.encode(), f"Bearer {self.token}".encode()):
            log.warning("local_api_unauthorized", peer=request.src, path=request.path)
            return status(401, "Unauthorized", "Unauthorized")
        doc = self._served.get(request.path)
        if doc is None:
            return status(404, "NotFound", f"{request.path} not found")
        return json_response(doc)

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled; ``task_status.started`` once the kubeconfig is written."""
        context, ca_pem = await trio.to_thread.run_sync(self._tls)
        async with trio.open_nursery() as nursery:
            _, port = await nursery.start(
                partial(serve_http, _Routes(self), host=HOST, port=0, ssl_context=context)
            )
            self.port = port
            kubeconfig = PluginKubeconfig(f"https://{HOST}:{port}", ca_pem=ca_pem, token=self.token)
            write_atomically(self.kubeconfig_file, kubeconfig.document(), 0o600)
            log.info("local_api_serving", address=f"{HOST}:{port}",
                     kubeconfig=str(self.kubeconfig_file))  # fmt: skip
            task_status.started(port)

    def _tls(self) -> tuple[ssl.SSLContext, bytes]:
        """A CA for this server alone and its certificate for 127.0.0.1."""
        authority = new_ca("ambit local API server CA", "local", LIFETIME)
        key = ec.generate_private_key(ec.SECP256R1())
        leaf = server_leaf([HOST], key.public_key(), authority, lifetime=LIFETIME)
        ca_pem = authority.cert.public_bytes(serialization.Encoding.PEM)
        self.directory.mkdir(parents=True, exist_ok=True)
        write_atomically(self.ca_file, ca_pem, 0o644)
        chain = self.directory / "server.pem"
        key_pem = key.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())  # fmt: skip
        write_atomically(chain, key_pem + leaf.public_bytes(serialization.Encoding.PEM), 0o600)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(chain)
        return context, ca_pem


class _Routes(Mapping[str, Route]):
    """Every path under ``/api/`` goes to :meth:`LocalApi.answer` (which answers ``404``
    for what it does not hold, after the token): the admin server routes exact paths."""

    TEMPLATES = ("/api/v1/namespaces/{namespace}", "/api/v1/namespaces/{namespace}/pods/{name}")

    def __init__(self, api: LocalApi) -> None:
        self._api = api

    def __getitem__(self, path: str) -> Route:
        if not path.startswith("/api/"):
            raise KeyError(path)
        return self._api.answer

    def __iter__(self) -> Iterator[str]:
        return iter(self.TEMPLATES)

    def __len__(self) -> int:
        return len(self.TEMPLATES)
