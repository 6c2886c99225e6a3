"""The record of everything a local cluster created, kept on disk.

The daemon writes ``state.json`` in the state directory *before* it creates
a namespace, link, host rule, file or process, and forgets the thing only
after removing it, so ``ambit down`` can clean up after a daemon that died at
any point. Processes are recorded with their start time, so a recycled PID is
never mistaken for ours. Writes are atomic (temporary file and rename).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from k8s.local.errors import LocalClusterError

# starting -> ready | failed (pods not ready; the cluster stays up for inspection)
#          -> aborted (the network could not be built; everything was removed)
# any -> stopping (down)
Phase = Literal["starting", "ready", "failed", "aborted", "stopping"]
STATE_VERSION = 1


@dataclass(frozen=True)
class ProcessRecord:
    pid: int
    start_time: int
    what: str


@dataclass
class StateRecord:
    cluster_id: str
    pod_cidr: str
    service_cidr: str
    daemon: ProcessRecord | None = None
    phase: Phase = "starting"
    error: str | None = None
    netns: list[str] = field(default_factory=list)
    links: list[str] = field(default_factory=list)
    host_rules: list[list[str]] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    processes: list[ProcessRecord] = field(default_factory=list)
    version: int = STATE_VERSION

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StateRecord:
        daemon = data.get("daemon")
        return cls(
            cluster_id=data["cluster_id"],
            pod_cidr=data["pod_cidr"],
            service_cidr=data["service_cidr"],
            daemon=ProcessRecord(**daemon) if daemon else None,
            phase=data.get("phase", "starting"),
            error=data.get("error"),
            netns=list(data.get("netns", [])),
            links=list(data.get("links", [])),
            host_rules=[list(r) for r in data.get("host_rules", [])],
            paths=list(data.get("paths", [])),
            processes=[ProcessRecord(**p) for p in data.get("processes", [])],
            version=data.get("version", STATE_VERSION),
        )


def read_state(path: Path) -> StateRecord | None:
    """The record at ``path``; None if there is none."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise LocalClusterError(
            f"cannot read {path} ({exc}); if no cluster runs, remove the file"
        ) from None
    if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
        raise LocalClusterError(f"{path} was written by another ambit version; remove it by hand")
    return StateRecord.from_json(data)


class StateFile:
    """The daemon's handle on its record: every change is written through at once."""

    def __init__(self, path: Path, record: StateRecord) -> None:
        self.path = path
        self.record = record
        self.save()

    def save(self) -> None:
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        temporary.write_text(json.dumps(self.record.to_json(), indent=1))
        os.replace(temporary, self.path)

    def set_phase(self, phase: Phase, error: str | None = None) -> None:
        self.record.phase = phase
        self.record.error = error
        self.save()

    def add(self, kind: Literal["netns", "links", "paths"], value: str) -> None:
        items: list[str] = getattr(self.record, kind)
        if value not in items:
            items.append(value)
            self.save()

    def discard(self, kind: Literal["netns", "links", "paths"], value: str) -> None:
        items: list[str] = getattr(self.record, kind)
        if value in items:
            items.remove(value)
            self.save()

    def add_host_rule(self, rule: list[str]) -> None:
        if rule not in self.record.host_rules:
            self.record.host_rules.append(rule)
            self.save()

    def discard_host_rule(self, rule: list[str]) -> None:
        if rule in self.record.host_rules:
            self.record.host_rules.remove(rule)
            self.save()

    def add_process(self, process: ProcessRecord) -> None:
        self.record.processes.append(process)
        self.save()

    def discard_process(self, pid: int) -> None:
        self.record.processes = [p for p in self.record.processes if p.pid != pid]
        self.save()


def process_start_time(pid: int) -> int | None:
    """Start time (clock ticks since boot) of a live, non-zombie ``pid``; None otherwise."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def is_alive(process: ProcessRecord) -> bool:
    """True if ``process`` still runs and its PID was not recycled."""
    return process_start_time(process.pid) == process.start_time
