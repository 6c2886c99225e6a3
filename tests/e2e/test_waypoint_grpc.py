"""gRPC through a waypoint in local mode, grpcio on both ends, in pods on two nodes: the
Service port is named ``grpc``, so the waypoint speaks h2c to the app; unary and server
streaming calls succeed, an application status comes back as it was sent, and the
waypoint counts the calls with ``request_protocol="grpc"``."""

from __future__ import annotations

import json
import sys

import pytest

from tests.e2e.conftest import Cluster, eventually, run

pytestmark = pytest.mark.root

SERVER = """\
import grpc
from concurrent import futures
def unary(request, context):
    if request == b"fail":
        context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")
    return b"echo:" + request
def stream(request, context):
    for i in range(3):
        yield b"%s:%d" % (request, i)
handler = grpc.method_handlers_generic_handler("demo.Echo", {
    "Unary": grpc.unary_unary_rpc_method_handler(unary),
    "Stream": grpc.unary_stream_rpc_method_handler(stream)})
server = grpc.server(futures.ThreadPoolExecutor(4))
server.add_generic_rpc_handlers((handler,))
server.add_insecure_port("0.0.0.0:9000")
server.start()
server.wait_for_termination()
"""
CLIENT = """\
import grpc, json
channel = grpc.insecure_channel("echo:80")
out = {"unary": [channel.unary_unary("/demo.Echo/Unary")(b"hi%d" % i, timeout=5).decode()
                 for i in range(5)],
       "stream": [m.decode() for m in channel.unary_stream("/demo.Echo/Stream")(b"s", timeout=5)]}
try:
    channel.unary_unary("/demo.Echo/Unary")(b"fail", timeout=5)
except grpc.RpcError as e:
    out["error"] = [e.code().name, e.details()]
print(json.dumps(out))
"""


def manifest() -> str:
    python = json.dumps(sys.executable)
    return f"""\
apiVersion: v1
kind: Namespace
metadata: {{name: demo, labels: {{ambit.io/dataplane-mode: ambient}}}}
---
apiVersion: v1
kind: Pod
metadata: {{name: echo, namespace: demo, labels: {{app: echo}}}}
spec:
  nodeName: node-2
  containers:
  - name: echo
    command: [{python}, -c, {json.dumps(SERVER)}]
---
apiVersion: v1
kind: Pod
metadata: {{name: client, namespace: demo}}
spec:
  nodeName: node-1
  containers:
  - name: client
    command: [sleep, "600"]
---
apiVersion: v1
kind: Service
metadata: {{name: echo, namespace: demo}}
spec:
  selector: {{app: echo}}
  ports: [{{name: grpc, port: 80, targetPort: 9000}}]
"""


async def test_grpc_calls_cross_the_waypoint(cluster: Cluster) -> None:
    await cluster.up(cluster.manifest("grpc.yaml", manifest()))
    applied = await cluster.ambit("waypoint", "apply", "-n", "demo", "--enroll-namespace")
    assert applied.returncode == 0, applied.stderr.decode()

    async def answered() -> dict[str, object] | None:
        done = await cluster.exec("client", sys.executable, "-c", CLIENT)
        if done.returncode != 0:
            return None
        result: dict[str, object] = json.loads(done.stdout)
        return result

    results: list[dict[str, object]] = []

    async def through_waypoint() -> bool:
        result = await answered()
        if result is None:
            return False
        results.append(result)
        pods = await cluster.get("pods", "-n", "demo")
        waypoint = next(p for p in pods if p["name"].startswith("waypoint-"))
        metrics = await run(["curl", "-s", "-m", "3", f"http://{waypoint['ip']}:15020/metrics"])
        return 'request_protocol="grpc"' in metrics.stdout.decode()

    assert await eventually(through_waypoint, seconds=40, poll=1.0)
    result = results[-1]
    assert result["unary"] == [f"echo:hi{i}" for i in range(5)]
    assert result["stream"] == ["s:0", "s:1", "s:2"]
    assert result["error"] == ["NOT_FOUND", "no such thing"]
