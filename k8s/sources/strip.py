"""What of an API object is kept: the fields :mod:`k8s.manifests` reads, nothing else.

Objects from the API server carry much the mesh never reads (``managedFields``,
``kubectl.kubernetes.io/last-applied-configuration``, owner references, a pod's
volumes, probes, images and environment...). A control plane caches every pod of the
cluster, so the watch strips each object before caching it (:func:`stripper`); the
stripped dict is still a valid manifest that :func:`k8s.manifests.parse_object` reads
to the same typed object as the full one.

Kept, per kind:

- every kind: ``apiVersion`` and ``kind`` (a LIST's items have neither: they are set
  from the resource), ``metadata`` ``name``, ``namespace``, ``labels``, ``uid``,
  ``resourceVersion``, ``creationTimestamp``, ``generation`` (a status's
  ``observedGeneration``), and the annotations of ambit's and
  Istio's prefixes (:data:`KEPT_ANNOTATION_DOMAINS`);
- Pod: ``spec`` ``nodeName``, ``serviceAccountName`` (``serviceAccount``),
  ``hostNetwork``, each container's ``name`` and ``ports``; ``status`` ``phase``,
  ``podIP`` and the ``Ready`` condition;
- Service: ``spec`` ``selector``, ``ports`` and ``clusterIP``;
- EndpointSlice: ``addressType``, ``ports`` (``name``, ``port``, ``protocol``,
  ``appProtocol``) and per endpoint its first address, ``conditions`` ``ready``,
  ``serving`` and ``terminating``, ``targetRef`` (``kind``, ``namespace``, ``name``),
  ``nodeName`` and ``zone`` (its labels carry ``kubernetes.io/service-name``);
- Node: of the labels only ``topology.kubernetes.io/region`` and ``zone``; ``status``
  ``addresses`` of type ``InternalIP``;
- Namespace, ServiceAccount: metadata only;
- the policy and Gateway API kinds (read strictly, and small): ``spec`` whole, no
  ``status`` (ambit writes its own conditions);
- a CustomResourceDefinition (the watch of which kinds exist): ``spec`` ``group``,
  ``names.plural`` and each version's ``name`` and ``served``; the ``Established``
  condition.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final

from k8s.sources.watch import Raw

KEPT_ANNOTATION_DOMAINS: Final = ("ambit.io", "istio.io")
_META_FIELDS: Final = ("name", "namespace", "labels", "uid", "resourceVersion",
                       "creationTimestamp", "generation")  # fmt: skip


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def _pick(source: Mapping[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    return {k: source[k] for k in keys if k in source}


def _kept_annotation(key: str) -> bool:
    domain = key.rpartition("/")[0]
    return any(domain == d or domain.endswith("." + d) for d in KEPT_ANNOTATION_DOMAINS)


def strip_metadata(meta: Mapping[str, Any]) -> dict[str, Any]:
    out = _pick(meta, _META_FIELDS)
    annotations = {
        k: v for k, v in _mapping(meta.get("annotations")).items() if _kept_annotation(str(k))
    }
    if annotations:
        out["annotations"] = annotations
    return out


def _strip_pod(doc: Mapping[str, Any]) -> dict[str, Any]:
    spec = _mapping(doc.get("spec"))
    out_spec = _pick(spec, ("nodeName", "serviceAccountName", "serviceAccount", "hostNetwork"))
    if "containers" in spec:
        out_spec["containers"] = [
            _pick(_mapping(c), ("name", "ports")) if isinstance(c, Mapping) else c
            for c in _list(spec.get("containers"))
        ]
    status = _mapping(doc.get("status"))
    out_status = _pick(status, ("phase", "podIP"))
    ready = [
        _pick(c, ("type", "status"))
        for c in _list(status.get("conditions"))
        if isinstance(c, Mapping) and c.get("type") == "Ready"
    ]
    if ready:
        out_status["conditions"] = ready
    out: dict[str, Any] = {"spec": out_spec}
    if out_status:
        out["status"] = out_status
    return out


def _strip_service(doc: Mapping[str, Any]) -> dict[str, Any]:
    return {"spec": _pick(_mapping(doc.get("spec")), ("selector", "ports", "clusterIP"))}


def _strip_endpoint_slice(doc: Mapping[str, Any]) -> dict[str, Any]:
    out = _pick(doc, ("addressType",))
    if "ports" in doc:
        out["ports"] = [
            _pick(_mapping(p), ("name", "port", "protocol", "appProtocol"))
            for p in _list(doc.get("ports"))
        ]
    endpoints = []
    for item in _list(doc.get("endpoints")):
        e = _mapping(item)
        kept = _pick(e, ("nodeName", "zone"))
        kept["addresses"] = _list(e.get("addresses"))[:1]
        if "conditions" in e:
            kept["conditions"] = _pick(
                _mapping(e.get("conditions")), ("ready", "serving", "terminating")
            )
        if "targetRef" in e:
            kept["targetRef"] = _pick(_mapping(e.get("targetRef")), ("kind", "namespace", "name"))
        endpoints.append(kept)
    if "endpoints" in doc:
        out["endpoints"] = endpoints
    return out


_NODE_LABELS: Final = ("topology.kubernetes.io/region", "topology.kubernetes.io/zone")


def _strip_node(doc: Mapping[str, Any]) -> dict[str, Any]:
    addresses = [
        _pick(a, ("type", "address"))
        for a in _list(_mapping(doc.get("status")).get("addresses"))
        if isinstance(a, Mapping) and a.get("type") == "InternalIP"
    ]
    return {"status": {"addresses": addresses}} if addresses else {}


def _strip_crd(doc: Mapping[str, Any]) -> dict[str, Any]:
    spec = _mapping(doc.get("spec"))
    versions = [_pick(_mapping(v), ("name", "served")) for v in _list(spec.get("versions"))]
    conditions = [
        _pick(c, ("type", "status"))
        for c in _list(_mapping(doc.get("status")).get("conditions"))
        if isinstance(c, Mapping) and c.get("type") == "Established"
    ]
    return {
        "spec": {
            "group": spec.get("group"),
            "names": _pick(_mapping(spec.get("names")), ("plural", "kind")),
            "versions": versions,
        },
        "status": {"conditions": conditions},
    }


def _metadata_only(_doc: Mapping[str, Any]) -> dict[str, Any]:
    return {}


def _spec_whole(doc: Mapping[str, Any]) -> dict[str, Any]:
    return {"spec": doc["spec"]} if "spec" in doc else {}


_BODIES: Final[dict[str, Callable[[Mapping[str, Any]], dict[str, Any]]]] = {
    "Pod": _strip_pod,
    "Service": _strip_service,
    "EndpointSlice": _strip_endpoint_slice,
    "Node": _strip_node,
    "Namespace": _metadata_only,
    "ServiceAccount": _metadata_only,
    "CustomResourceDefinition": _strip_crd,
}


def strip(doc: Raw, *, kind: str, api_version: str) -> dict[str, Any]:
    """``doc`` with only what the mesh reads of a ``kind`` (see the module's list)."""
    body = _BODIES.get(kind, _spec_whole)(doc)
    metadata = strip_metadata(_mapping(doc.get("metadata")))
    if kind == "Node" and "labels" in metadata:  # a node's labels are many; two are read
        metadata["labels"] = _pick(_mapping(metadata["labels"]), _NODE_LABELS)
    return {"apiVersion": api_version, "kind": kind, "metadata": metadata, **body}


def stripper(kind: str, api_version: str) -> Callable[[Raw], Raw]:
    """The :class:`k8s.sources.watch.ResourceWatch` ``strip`` of one resource."""

    def strip_one(doc: Raw) -> Raw:
        return strip(doc, kind=kind, api_version=api_version)

    return strip_one
