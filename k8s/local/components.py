"""What local mode keeps of each supervised component (the control plane, each node's
ztunnel) across its restarts: the restart count, the crash-loop backoff, and the row
``ambit get components`` shows."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from k8s.local.processes import Running

# A component (the control plane, a node's ztunnel) that exits is started again after
# RESTART_INITIAL seconds, doubling for each exit that comes within STABLE_SECONDS of
# its start, up to RESTART_MAX (a kubelet's CrashLoopBackOff, shortened for one machine).
RESTART_INITIAL = 0.5
RESTART_MAX = 30.0
STABLE_SECONDS = 10.0


@dataclass
class _Component:
    """What ``ambit get components`` shows of a supervised process across its restarts."""

    name: str
    created: float = field(default_factory=time.time)  # wall clock, for AGE
    restarts: int = 0
    crashes: int = 0  # exits in a row, each within STABLE_SECONDS of its start
    running: Running | None = None

    def restart_due(self) -> float | None:
        """When (Trio's clock) it should start again, or None while it runs."""
        running = self.running
        if running is None or running.exited_at is None:
            return None
        delay: float = min(RESTART_INITIAL * 2.0**self.crashes, RESTART_MAX)
        return running.exited_at + delay

    def replaced(self) -> None:
        """Restarted as asked: a new process, as a rollout's new pod, so its age starts
        again; ``restarts`` counts only the exits nobody asked for (kubectl's RESTARTS)."""
        self.created = time.time()

    def row(self, *, down: bool) -> dict[str, Any]:
        """``name``, ``pid``, ``status``, ``restarts`` and ``age`` (seconds), as
        ``ambit get components -o json`` shows them."""
        running = self.running
        if running is None:
            status = "Pending"
        elif not running.exited.is_set():
            status = "Running"
        elif down:
            status = f"Exited({running.exit_code})"
        else:
            status = "CrashLoopBackOff" if self.crashes else "Restarting"
        return {
            "name": self.name,
            "pid": running.pid if running else None,
            "status": status,
            "restarts": self.restarts,
            "age": round(time.time() - self.created, 1),
        }


def _name(component: _Component) -> str:
    return component.name
