"""What every check is made of: an :class:`Outcome` (ok, warn or fail, a message and a
hint an operator can act on), a :class:`Check` (its group, what it verifies, the
function that does), the :class:`Context` through which checks ask the API server, and
the :class:`Result` line a report shows.

A check never raises for the cluster's state: what it finds wrong is its outcome. An
API server that stops answering midway (:class:`ca.kube.ApiUnavailable`) or refuses a
request (:class:`k8s.unsupported.ListFailed`) makes that check fail with the reason;
:func:`run_check` does that, so each check is written for its own question only.
"""

from __future__ import annotations

import datetime
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

from ca.kube import ApiUnavailable
from k8s.sources.api import Requests
from k8s.unsupported import CRDS_PATH, ListFailed, list_all
from mesh.constants import SYSTEM_NAMESPACE

Json = dict[str, Any]
Status = Literal["ok", "warn", "fail"]
EXPIRY_WARNING: Final = datetime.timedelta(days=30)


@dataclass(frozen=True)
class Outcome:
    status: Status = "ok"
    message: str = ""  # what was found (for ok: a detail, not shown in text)
    hint: str = ""  # what to do about it


OK: Final = Outcome()


def warn(message: str, hint: str = "") -> Outcome:
    return Outcome("warn", message, hint)


def fail(message: str, hint: str = "") -> Outcome:
    return Outcome("fail", message, hint)


@dataclass(frozen=True)
class Result:
    """One line of the report: a check's group, what it verifies, and its outcome."""

    group: str
    name: str
    status: Status = "ok"
    message: str = ""
    hint: str = ""


@dataclass(frozen=True)
class CheckConfig:
    """What ``ambit check`` is asked: the cluster (a kubeconfig and context; None: the
    default, or in-cluster credentials), ambit's namespace, ``--pre``."""

    kubeconfig: Path | None = None
    context: str | None = None
    namespace: str = SYSTEM_NAMESPACE
    pre: bool = False
    expiry_warning: datetime.timedelta = EXPIRY_WARNING


@dataclass
class Context:
    """What a check may use: the API server, the configuration, the time (one instant for
    the whole run), and the cluster's CRDs, listed once."""

    api: Requests
    config: CheckConfig = field(default_factory=CheckConfig)
    now: datetime.datetime = field(default_factory=lambda: datetime.datetime.now(datetime.UTC))
    _crds: list[Json] | None = None
    cache: dict[str, Any] = field(default_factory=dict)  # what several checks read once

    @property
    def namespace(self) -> str:
        return self.config.namespace

    async def get(self, path: str, query: Mapping[str, str] | None = None) -> tuple[int, Json]:
        return await self.api.request("GET", path, query=query)

    async def create(self, path: str, body: Json) -> tuple[int, Json]:
        return await self.api.request("POST", path, body)

    async def list_items(self, path: str, query: Mapping[str, str] | None = None) -> list[Json]:
        return await list_all(self.api, path, query=query)

    async def crds(self) -> list[Json]:
        if self._crds is None:
            self._crds = await list_all(self.api, CRDS_PATH)
        return self._crds

    async def crd(self, name: str) -> Json | None:
        return next((c for c in await self.crds() if _name(c) == name), None)


def _name(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("name") or "")


def established(crd: Mapping[str, Any]) -> bool:
    conditions = (crd.get("status") or {}).get("conditions") or []
    return any(
        isinstance(c, Mapping) and c.get("type") == "Established" and c.get("status") == "True"
        for c in conditions
    )


def answered(status: int, body: Mapping[str, Any], what: str) -> Outcome:
    """The outcome of an answer that is neither what the check wanted nor a 404."""
    message = f"{what}: HTTP {status}: {body.get('message', '')}".rstrip(": ")
    if status in (401, 403):
        return fail(message, "may the credentials of this kubeconfig read it? (kubectl auth can-i)")
    return fail(message, "the API server may be overloaded or restarting; try again")


CheckFunction = Callable[[Context], Awaitable[Outcome]]


@dataclass(frozen=True)
class Check:
    group: str
    name: str
    run: CheckFunction
    after: str = ""  # a check's name: when that one did not pass (or ran not), nor does this


async def run_check(check: Check, context: Context) -> Result:
    """``check``'s result; a request that got no answer, or an error answer, fails it."""
    try:
        outcome = await check.run(context)
    except ApiUnavailable as error:
        outcome = fail(str(error), "is the API server still reachable?")
    except ListFailed as error:
        outcome = fail(str(error), error.hint)
    return Result(check.group, check.name, outcome.status, outcome.message, outcome.hint)
