"""A source of objects from manifest files, watched: ``ambit controlplane --source files``.

Each time any of the watched files changes (size or modification time, polled every
``poll`` seconds; a directory means every ``*.yaml``, ``*.yml`` and ``*.json`` in it),
all of them are read again and the result is one complete list of every kind: the
store's kinds become exactly what the files hold (:meth:`ObjectStore.replace_kind`),
so the listing gate opens after the first read that finds a file (until one exists,
nothing is listed: an empty directory is not an empty mesh). A document that cannot be used is
left out, logged once (``manifest_refused``, naming the file, the object and the
field) and kept in :attr:`FilesSource.errors` for the status file; one of Istio's kinds
ambit does not implement is left out with a ``manifest_ignored`` warning saying what to use
instead. A file that vanishes or cannot be read keeps the last good view of it: a
half-written file never empties the mesh (writers should write a temporary file and
rename it).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import structlog
import trio

from k8s import manifests
from k8s.store import ObjectStore

log = structlog.get_logger("k8s.files_source")

SUFFIXES = (".yaml", ".yml", ".json")
Signature = tuple[tuple[str, int, int], ...]


def read_mark(signature: Signature) -> str:
    """A short digest of the files of ``signature`` (name, size, modification time), the
    same whichever path names them: the control plane publishes the one it last read
    (``ambit why`` in local mode waits until it is the files' current one)."""
    named = [(Path(path).name, size, mtime) for path, size, mtime in signature]
    return hashlib.sha256(json.dumps(named).encode()).hexdigest()[:16]


class FilesSource:
    def __init__(self, paths: Sequence[str | Path]) -> None:
        self.paths = [Path(p) for p in paths]
        self.errors: list[str] = []
        self._logged: set[str] = set()
        self._last: dict[str, list[manifests.Document]] = {}
        self._waiting_logged = False

    def files(self) -> list[Path]:
        out: list[Path] = []
        for path in self.paths:
            if path.is_dir():
                out += sorted(p for p in path.iterdir() if p.suffix in SUFFIXES and p.is_file())
            else:
                out.append(path)
        return out

    def signature(self) -> Signature:
        sig = []
        for path in self.files():
            try:
                st = os.stat(path)
            except OSError:
                continue
            sig.append((str(path), st.st_size, st.st_mtime_ns))
        return tuple(sig)

    def read(self) -> list[manifests.Document]:
        """Every document of every file; a file that cannot be read now keeps its last
        good documents."""
        documents: list[manifests.Document] = []
        for path in self.files():
            docs = manifests.read_files(path)
            unreadable = len(docs) == 1 and docs[0].raw is None and docs[0].obj is None
            if unreadable and str(path) in self._last:
                log.warning("manifest_file_unreadable", path=str(path), reason=docs[0].error)
                docs = self._last[str(path)]
            else:
                self._last[str(path)] = docs
            documents += docs
        return documents

    def apply(
        self, documents: list[manifests.Document], store: ObjectStore, read: Signature = ()
    ) -> None:
        """Make the store hold exactly the objects of ``documents``, read from the files
        of ``read`` (in Trio's thread: the store's change notification is a Trio event)."""
        if not self._last and not store.complete:
            if not self._waiting_logged:  # nothing to list yet: the gate stays closed
                log.info("manifest_files_absent", paths=[str(p) for p in self.paths])
                self._waiting_logged = True
            return
        self.errors = [d.error for d in documents if d.error is not None]
        for error in self.errors:
            if error not in self._logged:
                log.warning("manifest_refused", error=error)
        ignored = [d.ignored for d in documents if d.ignored is not None]
        for note in ignored:
            if note not in self._logged:
                log.warning("manifest_ignored", reason=note)
        self._logged = {*self.errors, *ignored}
        by_kind: dict[str, list[manifests.K8sObject]] = {k: [] for k in store.kinds}
        seen: set[tuple[str, str, str]] = set()
        for doc in documents:
            obj = doc.obj
            if obj is None:
                continue
            kind = type(obj).__name__
            key = (kind, obj.namespace, obj.name)
            if kind not in by_kind or key in seen:  # the same object in two files: first wins
                continue
            seen.add(key)
            by_kind[kind].append(obj)
        store.source_read = read_mark(read)
        for kind, objects in by_kind.items():
            store.replace_kind(kind, objects)

    async def run(
        self,
        store: ObjectStore,
        *,
        poll: float = 0.2,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Load once (then ``task_status.started()``), and again on every change."""
        last = self.signature()
        self.apply(await trio.to_thread.run_sync(self.read), store, last)
        task_status.started()
        while True:
            await trio.sleep(poll)
            now = self.signature()
            if now != last:
                last = now
                self.apply(await trio.to_thread.run_sync(self.read), store, now)
