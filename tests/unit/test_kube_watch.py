"""The LIST-then-WATCH state machine of one resource, sans-IO: each test feeds it what an
API server would answer and checks what it asks for next and what the store is told."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from k8s.sources.watch import (
    Change,
    Delete,
    Listed,
    ListRequest,
    Phase,
    Put,
    ResourceWatch,
    Step,
    Unlisted,
    WatchProtocolError,
    WatchRequest,
)


def pod(name: str, rv: int, *, uid: str = "", ip: str = "10.0.0.1") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": "shop",
            "uid": uid or f"uid-{name}",
            "resourceVersion": str(rv),
        },
        "status": {"podIP": ip},
    }


def status(code: int) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code}


def bookmark(rv: int) -> dict[str, Any]:
    return {"kind": "Pod", "apiVersion": "v1", "metadata": {"resourceVersion": str(rv)}}


def summary(changes: Sequence[Change]) -> list[str]:
    """``put web@5``, ``delete web (synthesized)``, ``listed``: what a test compares."""
    out = []
    for c in changes:
        if isinstance(c, Put):
            out.append(f"put {c.key[1]}@{c.raw['metadata']['resourceVersion']}")
        elif isinstance(c, Delete):
            out.append(f"delete {c.key[1]}" + (" (synthesized)" if c.synthesized else ""))
        elif isinstance(c, Listed):
            out.append("listed")
        elif isinstance(c, Unlisted):
            out.append("unlisted")
    return out


def listed_watch(*objects: dict[str, Any], rv: int = 10) -> ResourceWatch:
    """A machine that has listed ``objects`` at ``rv`` and is watching."""
    w = ResourceWatch()
    w.start()
    w.list_page(objects, str(rv), None)
    return w


def test_first_list_is_paged_then_puts_everything_and_says_listed_once() -> None:
    w = ResourceWatch(limit=2)
    assert w.start() == Step((), ListRequest(None, 2))
    step = w.list_page([pod("a", 3), pod("b", 4)], "", "token-1")
    assert step == Step((), ListRequest("token-1", 2))
    assert w.request == ListRequest("token-1", 2)  # a failed page is retried, not restarted
    step = w.list_page([pod("c", 5)], "9", None)
    assert summary(step.changes) == ["put a@3", "put b@4", "put c@5", "listed"]
    assert step.request == WatchRequest("9")
    assert w.phase is Phase.WATCHING
    assert w.listed


def test_empty_list_is_listed_and_watches_from_its_resource_version() -> None:
    w = ResourceWatch()
    w.start()
    step = w.list_page([], "42", None)
    assert summary(step.changes) == ["listed"]
    assert step.request == WatchRequest("42")


@pytest.mark.parametrize(
    ("events", "expected", "rv"),
    [
        pytest.param([("ADDED", pod("b", 11))], ["put b@11"], "11", id="added"),
        pytest.param([("MODIFIED", pod("a", 11, ip="10.0.0.2"))], ["put a@11"], "11",
                     id="modified"),
        pytest.param([("DELETED", pod("a", 11))], ["delete a"], "11", id="deleted"),
        pytest.param([("BOOKMARK", bookmark(20))], [], "20", id="bookmark-advances"),
        pytest.param([("MODIFIED", pod("a", 5))], [], "10", id="stale-modified-ignored"),
        pytest.param([("ADDED", pod("a", 5))], [], "10", id="duplicate-added-ignored"),
        pytest.param([("MODIFIED", pod("a", 12)), ("MODIFIED", pod("a", 11))], ["put a@12"],
                     "12", id="out-of-order"),
        pytest.param([("MODIFIED", pod("a", 12)), ("MODIFIED", pod("a", 12))], ["put a@12"],
                     "12", id="duplicate"),
        pytest.param([("DELETED", pod("a", 11)), ("DELETED", pod("a", 11))], ["delete a"],
                     "11", id="duplicate-delete"),
        pytest.param([("DELETED", pod("zz", 11))], [], "11", id="delete-unknown"),
        pytest.param([("DELETED", pod("a", 11)), ("ADDED", pod("a", 12, uid="new"))],
                     ["delete a", "put a@12"], "12", id="recreated"),
        pytest.param([("ADDED", pod("a", 12, uid="new")), ("DELETED", pod("a", 11))],
                     ["put a@12"], "12", id="late-delete-of-old-incarnation"),
        pytest.param([("BOOKMARK", bookmark(20)), ("BOOKMARK", bookmark(15))], [], "20",
                     id="bookmark-never-goes-back"),
    ],
)  # fmt: skip
def test_watch_events(
    events: list[tuple[str, dict[str, Any]]], expected: list[str], rv: str
) -> None:
    w = listed_watch(pod("a", 10))
    changes: list[Change] = []
    for type_, obj in events:
        step = w.event(type_, obj)
        assert isinstance(step.request, WatchRequest)
        assert not step.backoff
        changes += step.changes
    assert summary(changes) == expected
    assert w.resource_version == rv
    assert w.request == WatchRequest(rv)


def test_a_watch_the_server_ends_resumes_from_the_last_resource_version_without_a_relist() -> None:
    w = listed_watch(pod("a", 10))
    w.event("MODIFIED", pod("a", 14))
    w.event("BOOKMARK", bookmark(17))
    assert w.watch_ended() == Step((), WatchRequest("17"))
    assert w.relists == 0
    step = w.event("ADDED", pod("b", 18))  # the resumed watch goes on
    assert summary(step.changes) == ["put b@18"]


def _gone_by_status(w: ResourceWatch) -> Step:
    return w.gone()


def _gone_by_error_event(w: ResourceWatch) -> Step:
    return w.event("ERROR", status(410))


@pytest.mark.parametrize("gone", [_gone_by_status, _gone_by_error_event],
                         ids=["http-410", "error-event-410"])  # fmt: skip
def test_410_relists_and_the_diff_synthesizes_the_deletes_it_missed(gone: Any) -> None:
    w = listed_watch(pod("a", 10), pod("b", 10), pod("c", 10))
    step = gone(w)
    assert step == Step((), ListRequest(None, w.limit))
    # While the watch was away: b was deleted, c changed, d was created; a is as it was.
    step = w.list_page([pod("a", 10), pod("c", 30), pod("d", 31)], "40", None)
    assert summary(step.changes) == ["delete b (synthesized)", "put c@30", "put d@31"]
    assert step.request == WatchRequest("40")
    assert w.relists == 1
    assert sorted(k[1] for k in w.cache) == ["a", "c", "d"]


def test_a_name_recreated_while_away_is_put_again_even_at_the_same_resource_version() -> None:
    w = listed_watch(pod("a", 10))
    w.gone()
    step = w.list_page([pod("a", 10, uid="other")], "50", None)
    assert summary(step.changes) == ["put a@10"]


def test_410_on_a_list_page_restarts_the_list_and_forgets_its_pages() -> None:
    w = ResourceWatch(limit=1)
    w.start()
    w.list_page([pod("a", 3)], "", "token")
    assert w.gone() == Step((), ListRequest(None, 1))
    step = w.list_page([pod("b", 6)], "7", None)  # a was deleted meanwhile
    assert summary(step.changes) == ["put b@6", "listed"]


def test_other_error_events_resume_the_watch_after_a_backoff() -> None:
    w = listed_watch(pod("a", 10))
    w.event("BOOKMARK", bookmark(12))
    step = w.event("ERROR", status(500))
    assert step == Step((), WatchRequest("12"), backoff=True)
    assert w.relists == 0


def test_absent_crd_is_listed_as_empty_then_started_when_it_appears() -> None:
    w = ResourceWatch()
    step = w.absent()
    assert summary(step.changes) == ["listed"]
    assert step.request is None
    assert w.request is None

    step = w.present()
    assert summary(step.changes) == ["unlisted"]
    assert step.request == ListRequest(None, w.limit)
    step = w.list_page([pod("a", 3)], "4", None)
    assert summary(step.changes) == ["put a@3", "listed"]


def test_present_before_any_list_does_not_unlist() -> None:
    w = ResourceWatch()
    step = w.present()
    assert step == Step((), ListRequest(None, w.limit))


def test_a_removed_crd_deletes_what_was_cached_and_stays_listed() -> None:
    w = listed_watch(pod("a", 10), pod("b", 10))
    step = w.absent()
    assert summary(step.changes) == ["delete a (synthesized)", "delete b (synthesized)"]
    assert w.listed
    assert w.cache == {}
    step = w.present()  # and back again
    assert summary(step.changes) == ["unlisted"]


def test_strip_is_applied_before_caching() -> None:
    def strip(raw: Any) -> Any:
        return {"metadata": raw["metadata"], "kept": True}

    w = ResourceWatch(strip=strip)
    w.start()
    step = w.list_page([pod("a", 1)], "2", None)
    put = step.changes[0]
    assert isinstance(put, Put)
    assert put.raw["kept"] is True
    assert "status" not in put.raw
    step = w.event("ADDED", pod("b", 3))
    assert "status" not in w.cache[("shop", "b")]


@pytest.mark.parametrize(
    ("setup", "call"),
    [
        pytest.param("idle", lambda w: w.event("ADDED", pod("a", 1)), id="event-before-list"),
        pytest.param("idle", lambda w: w.watch_ended(), id="watch-ended-before-list"),
        pytest.param("watching", lambda w: w.list_page([], "1", None), id="page-while-watching"),
        pytest.param("watching", lambda w: w.start(), id="start-twice"),
        pytest.param("watching", lambda w: w.event("WHAT", pod("a", 1)), id="unknown-event"),
    ],
)  # fmt: skip
def test_inputs_out_of_place_are_protocol_errors(setup: str, call: Any) -> None:
    w = ResourceWatch() if setup == "idle" else listed_watch()
    with pytest.raises(WatchProtocolError):
        call(w)


def test_non_numeric_resource_versions_are_taken_as_given() -> None:
    w = listed_watch(pod("a", 10))
    changed = pod("a", 0)
    changed["metadata"]["resourceVersion"] = "opaque"
    step = w.event("MODIFIED", changed)
    assert len(step.changes) == 1
    assert w.resource_version == "opaque"
