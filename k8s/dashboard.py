"""``ambit dashboard``'s pages, served by the control plane on its authenticated API
(:mod:`k8s.tap_server`, HTTPS on 15016, the same bearer token and the same authorization
as ``/v1/snapshot``: they show the mesh's config and traffic).

- ``/dashboard/`` (``index.html``), ``/dashboard/app.js``, ``/dashboard/app.css``: the page,
  plain files of ``k8s/dashboard_assets/`` (no framework, nothing from elsewhere);
- ``/v1/dashboard?window=SECONDS``: what the page draws (:func:`k8s.dashboard_model.page_model`:
  the snapshot, the observer's graph over the window, default 60 s, and each node's golden
  metrics over the last :data:`SPANS` spans of :data:`STEP` seconds), computed once per
  observer round and snapshot (compact JSON: it is asked every 2 s by every open page);
- ``/v1/why?from=F&to=T[&port=N][&method=M][&path=P][&tcp=1]``: ``ambit why F T`` on the
  published snapshot (:mod:`explain`, imported on the first question: this module is the
  one of the control plane that imports it), as JSON with its text.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict
from functools import cache
from importlib import resources
from typing import Any, Final

import trio

from k8s.dashboard_model import page_model
from k8s.observer import MAX_WINDOW, Observer
from k8s.tap_server import Page
from mesh import http
from mesh.http import Response, json_response
from mesh.model import MeshSnapshot
from mesh.traffic_series import Plots

MODEL_PATH: Final = "/v1/dashboard"
WHY_PATH: Final = "/v1/why"
STEP: Final = 10.0  # seconds per point of a plot
SPANS: Final = 30  # points: 5 minutes
ASSETS: Final = {  # path -> (file, content type)
    "/dashboard/": ("index.html", "text/html; charset=utf-8"),
    "/dashboard/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/dashboard/app.css": ("app.css", "text/css; charset=utf-8"),
}


@cache
def asset(name: str) -> bytes:
    return (resources.files("k8s") / "dashboard_assets" / name).read_bytes()


def _error(status: int, message: str) -> Response:
    return json_response({"error": message, "status": status}, status)


def dashboard_pages(
    observer: Observer,
    snapshot: Callable[[], MeshSnapshot | None],
    objects: Callable[[], Iterable[Any]],
) -> dict[str, Page]:
    """The pages by path, for :func:`k8s.tap_server.serve_tap`'s ``pages``: ``snapshot()``
    is the published one, ``objects()`` the store's (the labels that bound waypoints)."""

    def file_page(name: str, content_type: str) -> Page:
        async def page(_query: dict[str, str]) -> Response:
            await trio.lowlevel.checkpoint()
            return Response(200, asset(name), content_type)

        return page

    plots = Plots(STEP, SPANS)
    made: dict[tuple[int, float, int | None], Response] = {}  # the last answers
    lock = trio.Lock()  # one computation at a time (Plots remembers spans)

    async def model(query: dict[str, str]) -> Response:
        try:
            window = float(query.get("window", "60"))
        except ValueError:
            return _error(400, "window is a number of seconds")
        if not 0 < window <= MAX_WINDOW:
            return _error(400, f"window is in (0, {MAX_WINDOW:g}]")
        async with lock:
            published = snapshot()
            # The same until the observer's next round or the next snapshot: every open
            # page asks every 2 s, the proxies are read every 5.
            key = (observer.rounds, window, published.version if published else None)
            if key not in made:
                graph = observer.graph(window)
                # The plots' spans in a worker thread (a first page computes 30 of them),
                # over a copy of the history: the observer adds to it meanwhile.
                frozen = observer.history.copy()
                plotted = await trio.to_thread.run_sync(plots.series, frozen)
                doc = page_model(published, graph, plotted)
                doc["step_seconds"] = STEP
                doc["observing"] = observer.config.interval > 0
                if len(made) >= 4:
                    made.clear()
                made[key] = http.json_response(doc)
            return made[key]

    async def why_page(query: dict[str, str]) -> Response:
        await trio.lowlevel.checkpoint()
        published = snapshot()
        if published is None:
            return _error(503, "no snapshot published yet: the control plane is still listing")
        return explain_json(published, objects(), query)

    pages: dict[str, Page] = {path: file_page(*found) for path, found in ASSETS.items()}
    pages[MODEL_PATH] = model
    pages[WHY_PATH] = why_page
    return pages


def explain_json(snapshot: MeshSnapshot, objects: Iterable[Any], query: dict[str, str]) -> Response:
    """``ambit why`` for the query's question: 200 with ``text`` (what ``ambit why``
    prints), ``verdict`` and ``explanation`` (``-o json``), or 400 saying what is wrong."""
    from explain.query import Ask, parse_from, parse_to
    from explain.render import render
    from explain.why import why
    from k8s.waypoint_words import labels_of, waypoint_binding

    try:
        port = int(query["port"]) if query.get("port") else None
        ask = Ask(query.get("method", "GET").upper(), query.get("path", "/"), (),
                  query.get("tcp", "") in ("1", "true"))  # fmt: skip
        src = parse_from(snapshot, query.get("from", ""))
        dst = parse_to(snapshot, query.get("to", ""), port)
    except ValueError as exc:
        return _error(400, str(exc))
    explanation = why(snapshot, src, dst, ask, waypoint_binding(labels_of(objects)))
    return json_response({
        "question": {k: query[k] for k in ("from", "to", "port", "method", "path", "tcp")
                     if query.get(k)},
        "text": render(explanation),
        "verdict": asdict(explanation.verdict),
        "explanation": explanation.to_json(),
    })  # fmt: skip
