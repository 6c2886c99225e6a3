"""``ambit why FROM TO``: why the mesh lets a request through or refuses it, hop by hop.

It reads the control plane's current snapshot (local mode: ``/v1/snapshot`` of its
authenticated API on 15016, TLS to the control plane's identity with the token ``ambit
tap`` uses, from ``<state>/mesh/tap.json``, once the snapshot reflects the objects as
they are now, so a ``why`` right after ``ambit apply`` answers for the new config;
``--kubeconfig``: the cluster's objects, listed with the user's credentials by the
control plane's own source and translated by its translator) and runs the proxies' own
evaluators over it (:mod:`explain`); which label bound a Service or pod to its waypoint
comes from the cluster's objects.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from ambit.control_api import ControlApi, local_api
from k8s.local.config import files_of, objects_dir, state_dir_from
from k8s.local.errors import LocalClusterError
from mesh.constants import DEFAULT_TRUST_DOMAIN

if TYPE_CHECKING:
    from k8s.waypoint_words import Labels
    from mesh.model import MeshSnapshot


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "why",
        help="explain why a request is allowed or refused, hop by hop",
        description="FROM: a pod (ns/name), a service account (ns/sa/name) or an IP outside"
        " the mesh. TO: a Service (ns/name[:port]), a pod (ns/name, with --port) or IP:port."
        " Runs the proxies' own decisions on the control plane's current config and says,"
        " in the order the proxies take them: capture, the source ztunnel's plan, the"
        " waypoint's policies and routes rule by rule, the destination's checks, and what"
        " the client sees (status and Istio response flag).",
    )
    parser.add_argument("source", metavar="FROM")
    parser.add_argument("destination", metavar="TO")
    parser.add_argument("--port", type=int, help="the destination port (TO's own, else this)")
    parser.add_argument("--method", default="", help="HTTP method (default GET; POST to gRPC)")
    parser.add_argument("--path", default="/", help="HTTP path, query included (default /)")
    parser.add_argument(
        "-H", "--header", action="append", default=[], metavar="'NAME: VALUE'",
        help="a request header (repeatable); Host sets the authority",
    )  # fmt: skip
    parser.add_argument("--tcp", action="store_true", help="a plain TCP connection, not HTTP")
    parser.add_argument("-o", "--output", choices=["text", "json"], default="text")
    parser.add_argument("--state-dir", help="the local cluster's state (default /run/ambit)")
    parser.add_argument(
        "--kubeconfig", type=Path, metavar="PATH",
        help="ask about the cluster this kubeconfig names instead of the local cluster: its"
        " objects, read with these credentials, translated as the control plane does",
    )  # fmt: skip
    parser.add_argument("--context", help="with --kubeconfig: its context (default: current)")
    parser.add_argument(
        "--trust-domain", default=DEFAULT_TRUST_DOMAIN,
        help="with --kubeconfig: the mesh's trust domain (default %(default)s)",
    )  # fmt: skip
    parser.set_defaults(run=run)


def _headers(given: Sequence[str]) -> tuple[tuple[str, str], ...]:
    out = []
    for h in given:
        name, colon, value = h.partition(":")
        if not colon or not name.strip():
            raise ValueError(f"header {h!r}: write it as 'name: value'")
        out.append((name.strip(), value.strip()))
    return tuple(out)


def run(args: argparse.Namespace) -> int:
    from explain.query import Ask, QueryError, parse_from, parse_to
    from explain.render import render
    from explain.why import why
    from k8s.waypoint_words import waypoint_binding

    try:
        ask = Ask(args.method.upper(), args.path, _headers(args.header), args.tcp)
        if args.kubeconfig is not None:
            if args.log_level == "info":  # the API source's own lines are not the answer
                from mesh.telemetry import configure_logging

                configure_logging("warning")
            snapshot, labels = kube_view(args.kubeconfig, args.context, args.trust_domain)
        else:
            snapshot, labels = local_view(state_dir_from(args.state_dir))
        src = parse_from(snapshot, args.source)
        dst = parse_to(snapshot, args.destination, args.port)
    except (ValueError, LocalClusterError, OSError) as exc:
        print(f"ambit why: {exc}", file=sys.stderr)
        return 1
    del QueryError  # a ValueError: caught above
    explanation = why(snapshot, src, dst, ask, waypoint_binding(labels))
    if args.output == "json":
        print(json.dumps(explanation.to_json(), indent=2))
    else:
        print(render(explanation))
    return 0 if explanation.verdict.allowed else 3


class NotPublished(LocalClusterError):
    """The control plane has no snapshot yet (503)."""


def local_view(state_dir: Path) -> tuple[MeshSnapshot, Labels]:
    """The local control plane's snapshot, once it reflects the objects as they are now
    (``ambit apply`` returns before the control plane has read them), and the labels of
    the cluster's Namespaces and Services (which one bound a waypoint)."""

    from k8s.local.api import call

    snapshot = trio.run(current_snapshot, local_api(state_dir), objects_dir(state_dir))
    api = files_of(state_dir)[1]
    labels_of: dict[tuple[str, str, str], dict[str, str]] = {}
    for kind in ("Namespace", "Service"):
        found = trio.run(call, api, {"op": "objects", "kind": kind, "namespace": None,
                                     "name": None})  # fmt: skip
        for o in found:
            meta = o.get("metadata", {})
            key = (kind, meta.get("namespace", ""), meta.get("name", ""))
            labels_of[key] = dict(meta.get("labels") or {})
    return snapshot, lambda *key: labels_of.get(key, {})


async def current_snapshot(api: ControlApi, objects: Path, settle: float = 10.0) -> MeshSnapshot:
    """The control plane's snapshot once it says it reflects the files in ``objects`` as
    they are now (:func:`k8s.files_source.read_mark`), asked again every 0.1 s; after
    ``settle`` seconds, the one it serves, with a warning: it is behind (or
    :class:`NotPublished`, it has none yet)."""
    from k8s.files_source import FilesSource, read_mark

    files = FilesSource([objects])
    with trio.move_on_after(settle):
        while True:
            try:
                snapshot, read = await read_snapshot(api)
            except NotPublished:  # a control plane (re)starting: it lists, then publishes
                await trio.sleep(0.1)
                continue
            if read == read_mark(files.signature()):
                return snapshot
            await trio.sleep(0.1)
    print(f"ambit why: the control plane has not read the latest objects in {settle:g}s"
          " (see 'ambit logs controlplane'); this answer is from the config it serves now",
          file=sys.stderr)  # fmt: skip
    return (await read_snapshot(api))[0]


async def read_snapshot(api: ControlApi, seconds: float = 30.0) -> tuple[MeshSnapshot, str]:
    """The control plane's published snapshot, from its API (``/v1/snapshot``: TLS to the
    control plane's identity, the operator's token), and what it reflects in its source's
    words (``ambit-source-read``)."""
    from k8s.tap_server import SOURCE_READ_HEADER
    from mesh.config_stream import MAX_MESSAGE
    from mesh.model import MeshSnapshot
    from mesh.tap_client import TapClientError, get, refusal

    try:
        with trio.fail_after(seconds):
            answer = await get(api.address, identity=api.identity, bundle=api.bundle,
                               token=api.token, target="/v1/snapshot",
                               max_body=MAX_MESSAGE)  # fmt: skip
    except TapClientError as exc:
        raise LocalClusterError(str(exc)) from None
    except trio.TooSlowError:
        raise LocalClusterError(f"the control plane sent no snapshot in {seconds:g}s") from None
    if answer.status != 200:
        error = NotPublished if answer.status == 503 else LocalClusterError
        raise error(refusal(answer.body, answer.status, "the snapshot"))
    snapshot = MeshSnapshot.from_json(json.loads(answer.body))
    return snapshot, answer.headers.get(SOURCE_READ_HEADER, "")


def kube_view(
    kubeconfig: Path, context: str | None, trust_domain: str, seconds: float = 30.0
) -> tuple[MeshSnapshot, Labels]:
    """The cluster's objects, listed with the kubeconfig's credentials by the control
    plane's own source, translated by its translator."""

    from k8s.sources.driver import KubernetesSource
    from k8s.sources.kubernetes import KubeSourceConfig
    from k8s.store import ObjectStore
    from k8s.translate import translate
    from k8s.waypoint_words import labels_of

    store = ObjectStore()
    source = KubernetesSource(KubeSourceConfig(kubeconfig=kubeconfig, context=context))

    async def listed() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(source.run, store)
            with trio.move_on_after(seconds):
                seen = store.version
                while not store.complete:
                    seen = await store.wait_changed(seen)
            nursery.cancel_scope.cancel()

    trio.run(listed)
    if not store.complete:
        raise LocalClusterError(
            f"could not list {', '.join(store.unlisted())} in {seconds:g}s: is the API server"
            " up, and may these credentials list them? (ambit check says)"
        )
    objects = store.objects()
    snapshot = translate(objects, trust_domain=trust_domain, version=1).snapshot
    return snapshot, labels_of(objects)
