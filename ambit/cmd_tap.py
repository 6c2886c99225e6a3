"""``ambit tap TARGET``: live requests and connections of a pod, Service or namespace.

Argument handling and output only: the stream is :func:`mesh.tap_client.tap`, from the
control plane's tap API (:mod:`k8s.tap_server`), which gets the events from the proxies
over their config streams. In local mode the address, the control plane's identity and
the bearer token are in ``<state-dir>/mesh/tap.json`` (0600: root), the trust bundle in
``<state-dir>/mesh/bundle.pem``.
"""

from __future__ import annotations

import argparse
import json
import sys
from functools import partial
from typing import TYPE_CHECKING, Any, TypeAlias

import trio

from ambit import control_api
from k8s.local.errors import LocalClusterError

if TYPE_CHECKING:
    pass

Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def register(subparsers: Subparsers) -> None:
    parser = subparsers.add_parser(
        "tap",
        help="stream live requests and connections of a pod, Service or namespace",
        description=(
            "Stream live events from the proxies that carry the traffic: one line per HTTP"
            " request at a waypoint, one per TCP connection at a ztunnel, until interrupted"
            " or --max. TARGET and --to are pod/NS/NAME (that pod as source or destination),"
            " svc/NS/NAME (requests to that Service) or ns/NAME (anything in that namespace)."
        ),
    )
    parser.add_argument("target", metavar="TARGET", help="pod/NS/NAME, svc/NS/NAME or ns/NAME")
    parser.add_argument("--to", metavar="TARGET", help="only traffic from TARGET to this one")
    parser.add_argument("--method", metavar="M", help="only HTTP requests of this method")
    parser.add_argument("--path", metavar="P", help="only HTTP requests whose path starts so")
    parser.add_argument("--status", metavar="N", type=int, help="only responses of this status")
    parser.add_argument("--max", metavar="N", type=int, help="stop after N events")
    parser.add_argument("-o", "--output", choices=["text", "json"], default="text")
    control_api.add_arguments(
        parser,
        "tap a Kubernetes cluster as this kubeconfig's user (its bearer token; the API server"
        " must let it watch pods/tap, services/tap or namespaces/tap of ambit.io)",
    )
    parser.set_defaults(run=run)


def _fail(message: str) -> int:
    print(f"ambit tap: {message}", file=sys.stderr)
    return 1


def run(args: argparse.Namespace) -> int:
    from mesh.tap import TapFilter, TapFilterError
    from mesh.tap_client import TapClientError, tap

    try:
        tap_filter = TapFilter.build(
            args.target, to=args.to, method=args.method, path=args.path, status=args.status
        )
    except TapFilterError as exc:
        return _fail(str(exc))
    if args.max is not None and args.max < 1:
        return _fail("--max is at least 1")
    try:
        api = control_api.from_arguments(args)
    except LocalClusterError as exc:
        return _fail(str(exc))
    query = {k: str(v) for k, v in tap_filter.to_json().items()}
    printer = _Printer(args.output == "json", args.max)
    try:
        trio.run(
            partial(tap, api.address, identity=api.identity, bundle=api.bundle,
                    token=api.token, query=query, on_line=printer.line)
        )  # fmt: skip
    except TapClientError as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        return 0
    if printer.max is not None and printer.events < printer.max:
        return _fail("the control plane ended the tap")
    return 0


class _Printer:
    def __init__(self, as_json: bool, max_events: int | None) -> None:
        self.as_json = as_json
        self.max = max_events
        self.events = 0

    def line(self, obj: dict[str, Any]) -> bool:
        kind = obj.get("type")
        if kind == "started":
            proxies = obj.get("proxies") or []
            print(f"tapping {obj.get('filter', {}).get('target')} through {len(proxies)}"
                  f" proxies ({', '.join(proxies) or 'none yet'}); Ctrl-C to stop",
                  file=sys.stderr)  # fmt: skip
            return True
        if kind == "dropped":
            text = f"... {obj.get('count')} events dropped (a proxy or this reader was too slow)"
            print(json.dumps(obj) if self.as_json else text, flush=True)
            return True
        if kind != "event":
            return True
        print(json.dumps(obj) if self.as_json else format_event(obj), flush=True)
        self.events += 1
        return self.max is None or self.events < self.max


def format_event(e: dict[str, Any]) -> str:
    """One event as a line for people."""
    when = str(e.get("time", ""))[11:23]
    src = e.get("src_identity") or e.get("src_workload") or e.get("src_addr") or "?"
    dst = e.get("dst_workload") or e.get("dst_service") or e.get("dst_addr") or "?"
    if e.get("dst_service") and e.get("dst_workload"):
        dst += f" (svc {e['dst_service']})"
    sizes = f"{e.get('bytes_received', 0)}B/{e.get('bytes_sent', 0)}B"
    took = f"{e.get('duration_ms', 0):.1f}ms"
    if e.get("kind") == "http":
        what = f"{e.get('method')} {e.get('authority')} {e.get('path')} {e.get('status')}"
        if e.get("grpc_status"):
            what += f" grpc={e['grpc_status']}"
        return f"{when} http {e.get('proxy')} {src} -> {dst} {what} {e.get('flags')} {took} {sizes}"
    reason = f" {e['reason']}" if e.get("reason") else ""
    return (
        f"{when} tcp {e.get('proxy')} {e.get('direction')} {src} {e.get('src_addr')} -> {dst}"
        f" {e.get('dst_addr')} {e.get('flags')} {took} {sizes}{reason}"
    )
