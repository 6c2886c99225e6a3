"""Where the node agent learns of its node's pods and the namespaces' labels.

:class:`KubeSource` follows the API server (:func:`node.follow.follow`: a LIST, then a
WATCH). :class:`FileSource` is local mode's (``ambit node-agent --source files``): it
polls the objects files the local cluster writes (every object as an API server would
serve it, :class:`k8s.files_source.FilesSource` reads the same for the control plane)
and produces the same changes a watch does: a :class:`Put` for each pod of its node
(``spec.nodeName``) or namespace that is new or changed, a :class:`Delete` for each
that went, and :class:`Listed` after the first read that finds a file. It also answers
the agent's two GETs (a pod, a namespace) from a fresh read, as the API server would."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import structlog
import trio

from k8s.files_source import FilesSource
from k8s.sources.api import Api
from k8s.sources.watch import Change, Delete, Key, Listed, Put, ResourceWatch
from node.follow import follow

log = structlog.get_logger("node.sources")

OnChanges = Callable[[tuple[Change, ...]], None]
Raw = Mapping[str, Any]


class PodSource(Protocol):
    """What the agent follows: its node's pods and every namespace."""

    async def follow_pods(self, on_change: OnChanges) -> None:
        """Tell ``on_change`` of the node's pods until cancelled."""

    async def follow_namespaces(self, on_change: OnChanges) -> None:
        """Tell ``on_change`` of the namespaces until cancelled."""


class KubeSource:
    """The API server's watches."""

    def __init__(self, api: Api, node: str) -> None:
        self._api = api
        self._node = node

    async def follow_pods(self, on_change: OnChanges) -> None:
        path = f"/api/v1/pods?fieldSelector=spec.nodeName%3D{self._node}"
        await follow(self._api, path, _drop_machine(on_change), name="pods")

    async def follow_namespaces(self, on_change: OnChanges) -> None:
        await follow(self._api, "/api/v1/namespaces", _drop_machine(on_change), name="namespaces")


def _drop_machine(on_change: OnChanges) -> Callable[[ResourceWatch, tuple[Change, ...]], None]:
    return lambda _machine, changes: on_change(changes)


def _key(raw: Raw) -> Key:
    meta = raw.get("metadata") or {}
    return (str(meta.get("namespace") or ""), str(meta.get("name") or ""))


def diff(old: Mapping[Key, Raw], new: Mapping[Key, Raw]) -> tuple[Change, ...]:
    """The changes that turn ``old`` into ``new``: Puts for new or changed objects, Deletes
    for those that went (pure)."""
    changes: list[Change] = [Put(k, raw) for k, raw in new.items() if old.get(k) != raw]
    changes += [Delete(k, raw, synthesized=True) for k, raw in old.items() if k not in new]
    return tuple(changes)


def select(documents: Sequence[Raw], node: str) -> tuple[dict[Key, Raw], dict[Key, Raw]]:
    """The Pods of ``node`` and every Namespace among ``documents`` (pure)."""
    pods: dict[Key, Raw] = {}
    namespaces: dict[Key, Raw] = {}
    for raw in documents:
        if raw.get("kind") == "Pod" and (raw.get("spec") or {}).get("nodeName") == node:
            pods[_key(raw)] = raw
        elif raw.get("kind") == "Namespace":
            namespaces[_key(raw)] = raw
    return pods, namespaces


class FileSource:
    """The objects files of local mode, polled every ``poll`` seconds."""

    def __init__(self, paths: Sequence[Path], node: str, *, poll: float = 0.2) -> None:
        self._files = FilesSource(paths)
        self._node = node
        self._poll = poll
        # The files as last read, and their signature: the pods' and the namespaces'
        # followers share one read of each version.
        self._reading = trio.Lock()
        self._read_signature: Any = None
        self._documents: list[Raw] | None = None

    async def _documents_of(self, signature: Any) -> list[Raw] | None:
        async with self._reading:
            if signature != self._read_signature:
                self._documents = await trio.to_thread.run_sync(self._read)
                self._read_signature = signature
            return self._documents

    def _read(self) -> list[Raw] | None:
        """Every object of the files, or None while there is no file."""
        if not self._files.files():
            return None
        return [d.raw for d in self._files.read() if isinstance(d.raw, Mapping)]

    async def follow_pods(self, on_change: OnChanges) -> None:
        await self._follow(0, on_change)

    async def follow_namespaces(self, on_change: OnChanges) -> None:
        await self._follow(1, on_change)

    async def _follow(self, which: int, on_change: OnChanges) -> None:
        last: dict[Key, Raw] = {}
        signature: Any = None
        listed = False
        while True:
            now = self._files.signature()
            if now != signature:
                signature = now
                documents = await self._documents_of(now)
                if documents is not None:
                    current = select(documents, self._node)[which]
                    changes = diff(last, current)
                    last = current
                    if not listed:
                        listed = True
                        changes += (Listed(),)
                    if changes:
                        on_change(changes)
            await trio.sleep(self._poll)

    async def request(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None = None,
        *,
        query: Mapping[str, str] | None = None,
        content_type: str = "application/json",
    ) -> tuple[int, dict[str, Any]]:
        """``GET /api/v1/namespaces/NS`` and ``GET /api/v1/namespaces/NS/pods/NAME``, read
        from the files now (what the API server would answer); 404 for anything else."""
        parts = path.strip("/").split("/")
        wanted: tuple[str, str, str] | None = None
        if method == "GET" and parts[:3] == ["api", "v1", "namespaces"]:
            if len(parts) == 4:
                wanted = ("Namespace", "", parts[3])
            elif len(parts) == 6 and parts[4] == "pods":
                wanted = ("Pod", parts[3], parts[5])
        if wanted is None:
            return 404, {"message": f"{method} {path}: not served by the files source"}
        documents = await trio.to_thread.run_sync(self._read) or []
        for raw in documents:
            if (str(raw.get("kind")), *_key(raw)) == wanted:
                return 200, dict(raw)
        if wanted[0] == "Namespace" and any(_key(raw)[0] == wanted[2] for raw in documents):
            # Local mode makes a namespace by using it: one without labels.
            return 200, {"kind": "Namespace", "metadata": {"name": wanted[2]}}
        return 404, {"message": f"{wanted[0]} {wanted[1]}/{wanted[2]} not found"}
