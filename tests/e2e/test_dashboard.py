"""``ambit dashboard`` in a real headless browser (Debian's Chromium through Selenium),
against a local cluster with traffic flowing: two callers of a Service behind a waypoint.
The page shows both edges with non-zero rates; after an AuthorizationPolicy DENY for one
caller, its edge turns denied within seconds; Tab reaches that edge and Enter opens its
details with ``ambit why``'s answer; every text has 4.5:1 contrast. Only the browser that
used the printed one-time link gets in. Screenshots are kept (the path is printed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import pytest
import trio

from tests.e2e.browser import Browser, artifacts_dir, require_browser
from tests.e2e.conftest import REPO, Cluster, eventually, run
from tests.e2e.test_why import MANIFEST as WHY_MANIFEST

pytestmark = pytest.mark.root

# test_why's cluster without its L4 policy: demo/client and demo/intruder call demo/server.
MANIFEST = WHY_MANIFEST.split("\n---\napiVersion: security.istio.io/v1")[0]
DENY = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-intruder, namespace: demo}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: waypoint}]
  action: DENY
  rules: [{from: [{source: {principals: [cluster.local/ns/demo/sa/intruder]}}]}]
"""
SERVER = "service:demo/server"
CLIENT_EDGE = f"workload:demo/client->{SERVER}:http"
INTRUDER_EDGE = f"workload:demo/intruder->{SERVER}:http"
LOOP = "for i in $(seq 600); do curl -s -m 2 -o /dev/null http://server/; sleep 0.25; done"


async def traffic(cluster: Cluster, pod: str) -> None:
    """A request every 0.25 s from ``pod``, for at most 600 requests."""
    await cluster.exec(pod, "sh", "-c", LOOP, seconds=400)


@asynccontextmanager
async def dashboard(cluster: Cluster) -> AsyncIterator[str]:
    """``ambit dashboard`` running; its printed URL."""
    env = {**os.environ, "AMBIT_STATE_DIR": str(cluster.state_dir), "PYTHONPATH": str(REPO)}
    argv = [sys.executable, "-m", "ambit.cli", "dashboard"]
    async with trio.open_nursery() as nursery:
        process = await nursery.start(partial(
            trio.run_process, argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            env=env, cwd=REPO, check=False,
        ))  # fmt: skip
        assert process.stdout is not None
        printed = b""
        with trio.fail_after(20):
            while b"\n" not in printed:
                chunk = await process.stdout.receive_some(4096)
                assert chunk, "ambit dashboard exited before printing its URL"
                printed += chunk
        line = printed.decode().splitlines()[0]
        assert line.startswith("ambit dashboard: open http://127.0.0.1:"), line
        yield line.rpartition(" ")[2]
        nursery.cancel_scope.cancel()  # SIGTERM, then SIGKILL after 5 s


def status_of(url: str, headers: dict[str, str] | None = None) -> int:
    """The status a client without the browser's cookie gets."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def edge_state(browser: Browser, edge_id: str) -> dict[str, str] | None:
    found: dict[str, str] | None = browser.js(
        'const g = document.querySelector(`#graph [data-id="${arguments[0]}"]`);'
        " return g ? {denied: g.dataset.denied, rate: g.dataset.rate,"
        " label: g.getAttribute('aria-label'), tabindex: g.getAttribute('tabindex')} : null;",
        edge_id,
    )
    return found


async def in_browser(browser: Browser, seconds: float, check: object, message: str) -> None:
    await trio.to_thread.run_sync(partial(browser.wait, seconds, check, message))


async def test_the_dashboard_shows_live_traffic_and_why(cluster: Cluster, tmp_path: Path) -> None:
    require_browser()
    shots = artifacts_dir(tmp_path, "test_dashboard")
    print(f"\nscreenshots in {shots}")
    await cluster.up(cluster.manifest("dashboard.yaml", MANIFEST))
    applied = await cluster.ambit("waypoint", "apply", "-n", "demo", "--enroll-namespace")
    assert applied.returncode == 0, applied.stderr.decode()

    async def through_waypoint() -> bool:
        done = await cluster.ambit("why", "demo/client", "demo/server", "-o", "json")
        return any(s["outcome"] == "via waypoint" for s in json.loads(done.stdout)["steps"])

    assert await eventually(through_waypoint, seconds=60, poll=1.0)
    browser = await trio.to_thread.run_sync(Browser)
    try:
        async with trio.open_nursery() as nursery, dashboard(cluster) as url:
            nursery.start_soon(traffic, cluster, "client")
            nursery.start_soon(traffic, cluster, "intruder")
            await check_page(cluster, browser, url, shots)
            nursery.cancel_scope.cancel()
    finally:
        await trio.to_thread.run_sync(browser.close)


async def check_page(cluster: Cluster, browser: Browser, url: str, shots: Path) -> None:
    base = url.partition("/login")[0]
    settings = json.loads((cluster.state_dir / "mesh" / "tap.json").read_text())
    curl = ["curl", "-sk", "-m", "5", "-o", "/dev/null", "-w", "%{http_code}"]
    for path in ("/v1/dashboard", "/v1/why", "/dashboard/"):  # the control plane's side
        assert (await run([*curl, f"https://{settings['server']}{path}"])).stdout == b"401"
    assert status_of(f"{base}/v1/dashboard") == 401  # no cookie
    await trio.to_thread.run_sync(browser.driver.get, url)
    assert status_of(url) == 403  # the link works once
    assert status_of(f"{base}/v1/dashboard", {"host": "evil.example:80"}) == 401

    def both_flowing(_: object) -> bool:
        states = [edge_state(browser, e) for e in (CLIENT_EDGE, INTRUDER_EDGE)]
        return all(s is not None and float(s["rate"]) > 0 for s in states)

    await in_browser(browser, 60, both_flowing, "both callers' edges with a rate")
    for edge in (CLIENT_EDGE, INTRUDER_EDGE):
        shown = edge_state(browser, edge)
        assert shown is not None
        print(f"{edge}: {shown['label']}")
        assert shown["denied"] == "false"
        for words in ("req/s", "mTLS", "p99"):
            assert words in shown["label"]
    await trio.to_thread.run_sync(browser.screenshot, shots / "1-traffic.png")

    await cluster.ambit("apply", "-f", str(cluster.manifest("deny.yaml", DENY)))
    applied_at = trio.current_time()

    def denied(_: object) -> bool:
        shown = edge_state(browser, INTRUDER_EDGE)
        return shown is not None and shown["denied"] == "true"

    await in_browser(browser, 30, denied, "the intruder's edge shown as denied")
    took = trio.current_time() - applied_at
    print(f"the edge showed denied {took:.1f} s after the policy was applied")
    assert took < 20  # a scrape every 5 s, a poll every 2 s, the policy's push
    client = edge_state(browser, CLIENT_EDGE)
    assert client is not None
    assert client["denied"] == "false"
    await trio.to_thread.run_sync(browser.screenshot, shots / "2-denied.png")

    presses = await trio.to_thread.run_sync(browser.tab_to, INTRUDER_EDGE)
    print(f"Tab x{presses} reached the denied edge")
    await trio.to_thread.run_sync(browser.press, "\ue007")  # Enter

    def why_shown(_: object) -> bool:
        text = browser.js("const p = document.getElementById('why-text'); return p && p.innerText;")
        return bool(text) and "no-intruder" in text

    await in_browser(browser, 20, why_shown, "the edge's why in its details")
    verdict = browser.js("return document.getElementById('why-verdict').textContent")
    print(f"why: {verdict}")
    assert verdict.startswith("REFUSED: 403")
    assert browser.active_id() == INTRUDER_EDGE  # the focus stays on the graph
    await trio.to_thread.run_sync(browser.screenshot, shots / "3-why.png")

    await trio.to_thread.run_sync(browser.tab_to, SERVER)
    await trio.to_thread.run_sync(browser.press, "\ue007")
    details = browser.js("return document.getElementById('details-body').innerText")
    assert "Service demo/server" in details
    bound = "DENY AuthorizationPolicy demo/no-intruder, enforced by waypoint demo/waypoint"
    assert bound in details
    assert browser.js("return document.querySelectorAll('#details-body svg.plot').length") >= 3
    await trio.to_thread.run_sync(browser.screenshot, shots / "4-service.png")

    unlabelled = browser.js(
        "return [...document.querySelectorAll('#graph g.node, #graph g.edge')]"
        ".filter(g => g.getAttribute('tabindex') !== '0' || !g.getAttribute('aria-label'))"
        ".map(g => g.dataset.id)"
    )
    assert unlabelled == []
    bad, checked = await trio.to_thread.run_sync(browser.contrast)
    print(f"contrast: {checked} texts checked")
    assert checked > 20
    assert bad == []
    offline = browser.js(
        "return performance.getEntriesByType('resource').map(r => r.name)"
        ".filter(n => !n.startsWith(location.origin))"
    )
    assert offline == []  # every asset from ambit itself
