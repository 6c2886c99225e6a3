"""node.cni_plugin without a network: the dataplane-mode rule, CNI_ARGS, the pod's
addresses in prevResult, the spec's errors, and what the file may import (it runs on
the node's own python3, as one file)."""

from __future__ import annotations

import ast
import itertools
import sys
from collections.abc import Mapping
from functools import partial
from pathlib import Path

import pytest

from node import cni_plugin
from node.cni_plugin import CniError, in_mesh, parse_cni_args, pod_ips, run

AMBIT, ISTIO = "ambit.io/dataplane-mode", "istio.io/dataplane-mode"
# What the plugin may import: the standard library's modules it needs, nothing else.
ALLOWED_IMPORTS = {
    "__future__", "json", "os", "socket", "sys", "time", "ssl", "http.client", "base64",
    "traceback", "collections.abc", "typing",
}  # fmt: skip


def test_the_file_is_python_3_8() -> None:
    source = Path(cni_plugin.__file__).read_text()
    ast.parse(source, feature_version=(3, 8))


def test_it_imports_only_the_standard_library() -> None:
    tree = ast.parse(Path(cni_plugin.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module or "")
    assert imported <= ALLOWED_IMPORTS


@pytest.mark.parametrize(
    ("pod", "namespace", "meshed"),
    [
        ({}, {AMBIT: "ambient"}, True),
        ({}, {}, False),
        ({AMBIT: "none"}, {AMBIT: "ambient"}, False),
        ({AMBIT: "ambient"}, {}, True),
        ({ISTIO: "ambient"}, {}, True),
        ({}, {ISTIO: "ambient"}, True),
        ({AMBIT: "none", ISTIO: "ambient"}, {}, False),  # ambit's label wins
        ({ISTIO: "none"}, {AMBIT: "ambient"}, False),
        ({AMBIT: "sidecar"}, {AMBIT: "ambient"}, True),  # not a decision: the namespace's
        ({}, {AMBIT: "none", ISTIO: "ambient"}, False),
    ],
)
def test_the_dataplane_mode_rule(
    pod: Mapping[str, str], namespace: Mapping[str, str], meshed: bool
) -> None:
    assert in_mesh(pod, lambda: namespace) is meshed


def test_the_rule_and_its_labels_are_the_control_planes() -> None:
    """The plugin cannot import ambit: its copies of the rule and the keys must agree."""
    from k8s.translate_parts import meshed_by_labels
    from mesh.constants import ISTIO_LABEL_DATAPLANE_MODE, LABEL_DATAPLANE_MODE

    assert cni_plugin.LABEL_DATAPLANE_MODE == LABEL_DATAPLANE_MODE
    assert cni_plugin.ISTIO_LABEL_DATAPLANE_MODE == ISTIO_LABEL_DATAPLANE_MODE
    values = [None, "ambient", "none", "sidecar"]
    for pod_ambit, pod_istio, ns_ambit, ns_istio in itertools.product(values, repeat=4):
        pod = {k: v for k, v in ((AMBIT, pod_ambit), (ISTIO, pod_istio)) if v is not None}
        ns = {k: v for k, v in ((AMBIT, ns_ambit), (ISTIO, ns_istio)) if v is not None}
        assert in_mesh(pod, partial(dict, ns)) is meshed_by_labels(pod, ns), (pod, ns)


def test_the_namespace_is_asked_only_when_the_pod_does_not_decide() -> None:
    def never() -> Mapping[str, str]:
        raise AssertionError("asked")

    assert in_mesh({AMBIT: "ambient"}, never)
    assert not in_mesh({ISTIO: "none"}, never)


def test_cni_args() -> None:
    args = "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=cart-0;K8S_POD_UID=u-1;junk"
    assert parse_cni_args(args) == {
        "IgnoreUnknown": "1",
        "K8S_POD_NAMESPACE": "shop",
        "K8S_POD_NAME": "cart-0",
        "K8S_POD_UID": "u-1",
    }
    assert parse_cni_args("") == {}


def test_pod_ips_are_the_sandbox_side_ones() -> None:
    prev = {
        "cniVersion": "1.0.0",
        "interfaces": [
            {"name": "cni0", "mac": "aa"},
            {"name": "veth1", "mac": "bb"},
            {"name": "eth0", "mac": "cc", "sandbox": "/var/run/netns/x"},
        ],
        "ips": [
            {"address": "10.199.1.5/24", "gateway": "10.199.1.1", "interface": 2},
            {"address": "10.199.1.1/24", "interface": 0},
            {"address": "fd00::5/64", "interface": 2},
            {"address": "10.199.1.5/24", "interface": 2},
        ],
    }
    assert pod_ips(prev) == ["10.199.1.5", "fd00::5"]
    assert pod_ips({"ips": [{"address": "10.0.0.3/32"}]}) == ["10.0.0.3"]  # 0.3.x: no index
    assert pod_ips({}) == []


def test_version() -> None:
    env = {"CNI_COMMAND": "VERSION"}
    assert run(env, b'{"cniVersion": "0.4.0"}') == {
        "cniVersion": "0.4.0",
        "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"],
    }
    assert run(env, b"")["cniVersion"] == "1.1.0"  # type: ignore[index]


ADD = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": "/n", "CNI_IFNAME": "eth0"}
PREV = {"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.3/24"}]}


def conf(**fields: object) -> bytes:
    import json

    return json.dumps({"cniVersion": "1.0.0", "name": "n", "type": "ambit-cni", **fields}).encode()


@pytest.mark.parametrize(
    ("env", "stdin", "code", "words"),
    [
        (ADD, b"{", 6, "decode"),
        (ADD, b"[]", 6, "not a JSON object"),
        ({"CNI_COMMAND": "FROB"}, conf(), 4, "CNI_COMMAND"),
        ({}, conf(), 4, "CNI_COMMAND"),
        ({**ADD, "CNI_NETNS": ""}, conf(prevResult=PREV), 4, "CNI_NETNS"),
        (ADD, conf(cniVersion="0.2.0", prevResult=PREV), 1, "0.2.0"),
        (ADD, conf(), 7, "prevResult"),
        (ADD, conf(prevResult=PREV, timeoutSeconds="soon"), 7, "timeoutSeconds"),
        (ADD, conf(prevResult=PREV, excludeNamespaces="kube-system"), 7, "excludeNamespaces"),
        (ADD, conf(prevResult=PREV, agentSocket=""), 7, "agentSocket"),
    ],
)
def test_errors_carry_the_spec_code(
    env: dict[str, str], stdin: bytes, code: int, words: str
) -> None:
    with pytest.raises(CniError) as caught:
        run(env, stdin)
    assert caught.value.code == code
    assert words in caught.value.msg


def test_sandboxes_without_a_pod_or_in_excluded_namespaces_pass_untouched() -> None:
    # No API server and no agent is asked: the kubeconfig and socket do not exist.
    missing = {"kubeconfig": "/nonexistent/kubeconfig", "agentSocket": "/nonexistent/sock"}
    assert run(ADD, conf(prevResult=PREV, **missing)) == PREV
    system = {**ADD, "CNI_ARGS": "K8S_POD_NAMESPACE=kube-system;K8S_POD_NAME=coredns-0"}
    assert run(system, conf(prevResult=PREV, **missing)) == PREV
    pod = {**ADD, "CNI_ARGS": "K8S_POD_NAMESPACE=shop;K8S_POD_NAME=cart-0"}
    with pytest.raises(CniError) as caught:  # a pod: the API server must decide
        run(pod, conf(prevResult=PREV, **missing))
    assert caught.value.code == 11
    assert "kubeconfig" in caught.value.msg


def test_status_gc_and_del_without_an_agent_succeed() -> None:
    gone = conf(agentSocket="/nonexistent/sock")
    pod = "K8S_POD_NAMESPACE=shop;K8S_POD_NAME=cart-0"
    for command in ("STATUS", "GC", "DEL"):
        env = {"CNI_COMMAND": command, "CNI_CONTAINERID": "c", "CNI_IFNAME": "e", "CNI_ARGS": pod}
        assert run(env, gone) is None


def test_main_prints_the_error_json(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import io
    import json

    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b'{"cniVersion": "0.4.0"')))
    monkeypatch.setenv("CNI_COMMAND", "ADD")
    assert cni_plugin.main() == 1
    error = json.loads(capsys.readouterr().out)
    assert error["code"] == 6
    assert error["cniVersion"] == "1.1.0"  # the input's is unreadable
    assert set(error) == {"cniVersion", "code", "msg", "details"}


class FakeSocket:
    def __init__(self) -> None:
        self.sent = b""

    def settimeout(self, seconds: float) -> None:
        assert seconds > 0

    def sendall(self, data: bytes) -> None:
        self.sent += data


def api_answering(tmp_path: Path, response: bytes) -> tuple[cni_plugin.ApiServer, FakeSocket]:
    """An ApiServer whose kept-alive connection is already open and answers ``response``."""
    import io

    from node.cni_config import PluginKubeconfig

    path = tmp_path / "kubeconfig"
    path.write_bytes(PluginKubeconfig("https://[fd00::1]:6443/k8s", token="t0k").document())
    api = cni_plugin.ApiServer(cni_plugin.Kubeconfig(str(path)), cni_plugin.Deadline(5))
    sock = FakeSocket()
    api.sock, api.reader = sock, io.BufferedReader(io.BytesIO(response))  # type: ignore[assignment]
    return api, sock


def test_the_api_servers_answers_with_a_length_or_chunked(tmp_path: Path) -> None:
    body = b'{"metadata": {"labels": {"a": "b"}}}'
    plain = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\n" + body[:5] + b"\r\n" + b"%x\r\n" % (len(body) - 5) + body[5:] + b"\r\n0\r\n\r\n"
    )
    api, sock = api_answering(tmp_path, plain % (len(body), body) + chunked)
    assert api.get("/api/v1/namespaces/shop") == {"metadata": {"labels": {"a": "b"}}}
    assert api.get("/api/v1/namespaces/shop/pods/cart") == {"metadata": {"labels": {"a": "b"}}}
    first = sock.sent.split(b"\r\n\r\n")[0].decode()
    assert first.splitlines() == [
        "GET /k8s/api/v1/namespaces/shop HTTP/1.1",
        "Host: [fd00::1]:6443",
        "Authorization: Bearer t0k",
        "Accept: application/json",
        "User-Agent: ambit-cni",
    ]


def test_the_api_servers_refusal_is_retried_later(tmp_path: Path) -> None:
    refusal = b'{"kind": "Status", "reason": "Forbidden"}'
    response = b"HTTP/1.1 403 Forbidden\r\nContent-Length: %d\r\n\r\n%s" % (len(refusal), refusal)
    api, _ = api_answering(tmp_path, response)
    with pytest.raises(CniError) as caught:
        api.get("/api/v1/namespaces/shop/pods/cart")
    assert caught.value.code == 11
    assert "403" in caught.value.msg
    assert "may it get pods and namespaces?" in caught.value.msg
    assert "Forbidden" in caught.value.details
    api, _ = api_answering(tmp_path, b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n{")  # cut short
    with pytest.raises(CniError, match="not JSON"):
        api.get("/api/v1/namespaces/shop")
