"""What local mode reads from manifest files: the documents of :mod:`k8s.manifests`,
plus the few checks only local mode needs (a Pod runs its ``command`` on this machine,
so it needs one; no ``hostNetwork``; Services are TCP or UDP).

:func:`read_manifests` returns every document with its object or its error, so
``ambit apply`` can apply the good objects and report each bad one;
:func:`load_objects` is the strict form ``ambit up`` uses (any error refuses all).
:class:`ApplyResult` is what applying them says, object by object.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from k8s import manifests
from k8s.local.errors import LocalClusterError
from k8s.manifests import Document

log = structlog.get_logger("ambit.local.objects")


@dataclass
class ApplyResult:
    """What ``ambit apply`` (or ``delete``) says: one line per object changed, one error
    per object refused, one warning per object of an Istio kind ambit ignores."""

    changes: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)

    def refused(self, doc: Document) -> None:
        """A document that holds no object: ignored (an Istio kind) or an error."""
        if doc.ignored is not None:
            self.ignored.append(doc.ignored)
        else:
            self.errors.append(doc.error or f"{doc.where}: cannot be used")


class ManifestProblem(LocalClusterError):
    """A manifest cannot be used; the message names the file, the object and the field,
    one line per problem."""


def read_manifests(paths: Sequence[str | Path]) -> list[Document]:
    """Every document of ``paths``, each with its object or the reason it is refused."""
    out = []
    for doc in manifests.read_files(*paths):
        problem = local_problem(doc.obj) if doc.obj is not None else None
        if problem is not None:
            doc = Document(doc.where, doc.raw, None, f"{_label(doc)}: {problem}")
        out.append(doc)
    return out


def read_manifest_text(text: str, source: str) -> list[Document]:
    """Every document of one YAML text (``ambit waypoint apply`` sends its manifests this
    way), checked as :func:`read_manifests` checks files."""
    try:
        documents = manifests.read_documents(text, source)
    except manifests.ManifestError as exc:
        raise ManifestProblem(str(exc)) from None
    out = []
    for doc in documents:
        problem = local_problem(doc.obj) if doc.obj is not None else None
        if problem is not None:
            doc = Document(doc.where, doc.raw, None, f"{_label(doc)}: {problem}")
        out.append(doc)
    return out


def load_objects(paths: Sequence[str | Path]) -> list[Document]:
    """Every document of ``paths``; raises :class:`ManifestProblem` naming every bad one."""
    documents = read_manifests(paths)
    errors = [d.error for d in documents if d.error is not None]
    if errors:
        raise ManifestProblem("\n".join(errors))
    return documents


def local_problem(obj: manifests.K8sObject) -> str | None:
    """Why local mode cannot run ``obj`` (a field path and a reason), or None."""
    if isinstance(obj, manifests.Pod):
        if obj.host_network:
            return "spec.hostNetwork: not supported in local mode; remove it"
        if not obj.containers[0].command:
            return (
                "spec.containers[0].command: required in local mode: images are ignored and"
                " the command runs on this machine (e.g. command: [python3, -m, http.server,"
                " '8080'])"
            )
        if len(obj.containers) > 1:
            log.warning("pod_extra_containers_ignored", pod=f"{obj.namespace}/{obj.name}")
    if isinstance(obj, manifests.Service):
        for index, port in enumerate(obj.ports):
            if port.protocol not in ("TCP", "UDP"):
                return (
                    f"spec.ports[{index}].protocol: {port.protocol} is not supported in local"
                    " mode; use TCP or UDP"
                )
    return None


def _label(doc: Document) -> str:
    assert doc.obj is not None
    kind, obj = type(doc.obj).__name__, doc.obj
    info = manifests.kind_info(kind)
    name = f"{obj.namespace}/{obj.name}" if info is None or info.namespaced else obj.name
    return f"{doc.where} ({kind} {name})"
