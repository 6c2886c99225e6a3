"""What the node agent must remember across its own restarts, in its state directory:
for each pod it was told of at CNI ``ADD``, the pod's network namespace path and
addresses (the API server does not know the path). Written atomically on each change."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import structlog

log = structlog.get_logger("node.records")


@dataclass(frozen=True)
class PodRecord:
    uid: str
    namespace: str
    name: str
    netns: str
    ips: tuple[str, ...] = ()
    container_id: str = ""


class Records:
    """``pods.json`` in the state directory: pod uid -> :class:`PodRecord`."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "pods.json"
        self._pods: dict[str, PodRecord] = {}

    def load(self) -> None:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.warning("node_records_unreadable", path=str(self.path), reason=str(exc))
            return
        for uid, entry in data.items() if isinstance(data, dict) else ():
            try:
                self._pods[uid] = PodRecord(
                    uid=uid, namespace=str(entry["namespace"]), name=str(entry["name"]),
                    netns=str(entry["netns"]), ips=tuple(str(i) for i in entry.get("ips", ())),
                    container_id=str(entry.get("container_id", "")),
                )  # fmt: skip
            except (KeyError, TypeError, AttributeError):
                log.warning("node_record_invalid", uid=uid)

    def get(self, uid: str) -> PodRecord | None:
        return self._pods.get(uid)

    def all(self) -> list[PodRecord]:
        return list(self._pods.values())

    def put(self, record: PodRecord) -> None:
        if self._pods.get(record.uid) != record:
            self._pods[record.uid] = record
            self._save()

    def drop(self, uid: str) -> None:
        if self._pods.pop(uid, None) is not None:
            self._save()

    def _save(self) -> None:
        data = {}
        for uid, record in sorted(self._pods.items()):
            entry = asdict(record)
            del entry["uid"]
            entry["ips"] = list(record.ips)
            data[uid] = entry
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, self.path)
