"""ambit-cni: the chained CNI plugin that tells ambit's node agent a pod exists
(docs/node.md, "The plugin"). It configures no network and passes ``prevResult`` on.

ADD reads the Pod and its Namespace from the API server (the JSON kubeconfig the
agent writes) and applies the dataplane-mode rule: a pod outside the mesh passes at
once, whatever the agent's state; a meshed pod passes once the agent answered
``enrolled`` or ``skipped`` on its unix socket, else ADD fails with code 11 ("try
again later") and the kubelet retries. DEL tells the agent, best effort, and always
succeeds. CHECK asks the agent about a meshed pod. STATUS and GC succeed.

Standard library only, no ambit import, Python 3.8 syntax: the agent copies this one
file to the node as ``ambit-cni`` (``#!/usr/bin/env python3``); it runs once per pod
sandbox, so it imports ``ssl`` and ``http.client`` only to ask the API server. Its
only output is its result or the spec's error JSON, on stdout (CNI spec 1.1).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import Any

    Obj = dict[str, Any]

PLUGIN_TYPE = "ambit-cni"
SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
LATEST_VERSION = "1.1.0"
LABEL_DATAPLANE_MODE = "ambit.io/dataplane-mode"  # mesh.constants, repeated: no ambit import
ISTIO_LABEL_DATAPLANE_MODE = "istio.io/dataplane-mode"
# Defaults of the fields of ambit-cni's entry in the conflist (docs/node.md).
DEFAULT_AGENT_SOCKET = "/var/run/ambit/cni.sock"
DEFAULT_KUBECONFIG = "/etc/cni/net.d/ZZZ-ambit-cni-kubeconfig"
DEFAULT_EXCLUDE_NAMESPACES, DEFAULT_TIMEOUT_SECONDS = ("kube-system",), 20.0
DEL_TIMEOUT_SECONDS = 2.0  # DEL never fails: it tells the agent if it answers soon
MAX_ANSWER_BYTES = 64 * 1024

# The spec's error codes (SPEC.md, section 5, "Error").
INCOMPATIBLE_VERSION, INVALID_ENVIRONMENT, IO_FAILURE, DECODING_FAILURE = 1, 4, 5, 6
INVALID_CONFIG, TRY_AGAIN_LATER = 7, 11
INTERNAL_ERROR = 999  # ours, as the Go skeleton's: a bug, with its traceback


class CniError(Exception):
    """A CNI error result: the spec's ``code``, a short ``msg`` and ``details``."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code, self.msg, self.details = code, msg, details

    def result(self, cni_version: str) -> Obj:
        return {
            "cniVersion": cni_version,
            "code": self.code,
            "msg": self.msg,
            "details": self.details,
        }


class TryAgain(CniError):
    """Code 11: the kubelet retries the sandbox later."""

    def __init__(self, msg: str, details: str = "") -> None:
        super().__init__(TRY_AGAIN_LATER, msg, details)


class InvalidConfig(CniError):
    """Code 7: the network config (or the kubeconfig it names) is not usable."""

    def __init__(self, msg: str, details: str = "") -> None:
        super().__init__(INVALID_CONFIG, msg, details)


class NetConf:
    """The plugin's entry of the conflist as the runtime hands it over on stdin."""

    def __init__(self, raw: Obj) -> None:
        self.cni_version = str(raw.get("cniVersion", ""))
        self.prev_result: Obj | None = raw.get("prevResult")
        self.agent_socket = _string(raw, "agentSocket", DEFAULT_AGENT_SOCKET)
        self.kubeconfig = _string(raw, "kubeconfig", DEFAULT_KUBECONFIG)
        timeout = raw.get("timeoutSeconds", DEFAULT_TIMEOUT_SECONDS)
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
            raise InvalidConfig("timeoutSeconds must be a number > 0", repr(timeout))
        self.timeout = float(timeout)
        exclude = raw.get("excludeNamespaces", list(DEFAULT_EXCLUDE_NAMESPACES))
        if not isinstance(exclude, list) or not all(isinstance(n, str) for n in exclude):
            raise InvalidConfig("excludeNamespaces must be a list of strings", repr(exclude))
        self.exclude_namespaces = frozenset(exclude)
        if self.prev_result is not None and not isinstance(self.prev_result, dict):
            raise InvalidConfig("prevResult must be an object")


def _string(raw: Obj, key: str, default: str) -> str:
    value = raw.get(key, default)
    if not isinstance(value, str) or not value:
        raise InvalidConfig(f"{key} must be a non-empty string", repr(value))
    return value


class Pod:
    """Who the sandbox is for, from ``CNI_ARGS`` (the kubelet's runtime sets them)."""

    def __init__(self, namespace: str, name: str, uid: str) -> None:
        self.namespace, self.name, self.uid = namespace, name, uid


def parse_cni_args(value: str) -> dict[str, str]:
    """``CNI_ARGS``: ``K=V`` pairs separated by ``;`` (a pair without ``=`` is ignored)."""
    pairs = {}
    for pair in value.split(";"):
        key, sep, val = pair.partition("=")
        if sep and key:
            pairs[key.strip()] = val.strip()
    return pairs


def pod_of(env: Mapping[str, str]) -> Pod | None:
    args = parse_cni_args(env.get("CNI_ARGS", ""))
    namespace, name = args.get("K8S_POD_NAMESPACE", ""), args.get("K8S_POD_NAME", "")
    if not namespace or not name:
        return None
    return Pod(namespace, name, args.get("K8S_POD_UID", ""))


def dataplane_mode(labels: Mapping[str, str]) -> str | None:
    """ambit's label, else Istio's, else None (k8s.translate_parts, repeated)."""
    if LABEL_DATAPLANE_MODE in labels:
        return labels[LABEL_DATAPLANE_MODE]
    return labels.get(ISTIO_LABEL_DATAPLANE_MODE)


def in_mesh(pod_labels: Mapping[str, str], ns_labels: Callable[[], Mapping[str, str]]) -> bool:
    """The one rule: the pod's ``ambient`` or ``none`` wins, else its namespace's
    ``ambient``. ``ns_labels`` is asked only when the pod's label does not decide."""
    mode = dataplane_mode(pod_labels)
    if mode in ("ambient", "none"):
        return mode == "ambient"
    return dataplane_mode(ns_labels()) == "ambient"


def pod_ips(prev_result: Obj) -> list[str]:
    """The addresses of ``prevResult`` on the pod's side (an IP whose interface is a
    host interface, without ``sandbox``, is left out), without prefix lengths."""
    interfaces = prev_result.get("interfaces") or []
    ips: list[str] = []
    for entry in prev_result.get("ips") or []:
        address = entry.get("address") if isinstance(entry, dict) else None
        if not isinstance(address, str):
            continue
        index = entry.get("interface")
        if isinstance(index, int) and 0 <= index < len(interfaces):
            interface = interfaces[index]
            if isinstance(interface, dict) and not interface.get("sandbox"):
                continue
        ip = address.split("/", 1)[0]
        if ip not in ips:
            ips.append(ip)
    return ips


class Deadline:
    def __init__(self, seconds: float) -> None:
        self.seconds, self.at = seconds, time.monotonic() + seconds

    def remaining(self) -> float:
        left = self.at - time.monotonic()
        if left <= 0:
            raise socket.timeout("deadline passed")
        return left


class Kubeconfig:
    """The parts of a kubeconfig the plugin uses: the current context's server, CA
    (``certificate-authority-data`` or ``certificate-authority``; else the system's)
    and bearer token (``token`` or ``tokenFile``). The agent writes it as JSON."""

    def __init__(self, path: str) -> None:
        self.path = path
        try:
            with open(path, "rb") as f:
                config = json.loads(f.read())
            cluster, user = _current(config)
            self.server = str(cluster["server"])
            self.ca_data = cluster.get("certificate-authority-data")
            self.ca_file = cluster.get("certificate-authority")
            self.token, self.token_file = user.get("token"), user.get("tokenFile")
        except OSError as error:  # the agent writes it: not yet, maybe
            raise TryAgain(f"cannot read the plugin's kubeconfig {path}", str(error)) from error
        except (ValueError, KeyError, TypeError, AttributeError, IndexError) as error:
            bad = f"kubeconfig {path} is not JSON with a server"
            raise InvalidConfig(bad, repr(error)) from error
        scheme, _, rest = self.server.partition("://")
        if scheme != "https" or not rest:
            raise InvalidConfig(f"kubeconfig {path}: the server is not https://", self.server)
        authority, slash, prefix = rest.partition("/")
        self.prefix = (slash + prefix).rstrip("/")
        host, port = authority, "443"
        if authority.startswith("["):  # [IPv6]:port
            host, _, after = authority[1:].partition("]")
            port = after[1:] if after.startswith(":") else port
        elif ":" in authority:
            host, _, port = authority.rpartition(":")
        self.host, self.port = host, int(port) if port.isdigit() else 443

    def bearer_token(self) -> str:
        if self.token:
            return str(self.token)
        if self.token_file:
            try:
                with open(self.token_file) as f:
                    return f.read().strip()
            except OSError as error:
                unread = f"cannot read the token file {self.token_file}"
                raise TryAgain(unread, str(error)) from error
        raise InvalidConfig(f"kubeconfig {self.path} has no token or tokenFile")


def _current(config: Obj) -> tuple[Obj, Obj]:
    """The current context's cluster and user (the first of each without one)."""
    contexts = {c["name"]: c["context"] for c in config.get("contexts") or []}
    context = contexts.get(config.get("current-context", ""), {})
    clusters = {c["name"]: c["cluster"] for c in config["clusters"]}
    users = {u["name"]: u["user"] for u in config.get("users") or []}
    cluster = clusters.get(context.get("cluster", ""), config["clusters"][0]["cluster"])
    first_user = config["users"][0]["user"] if config.get("users") else {}
    return cluster, users.get(context.get("user", ""), first_user)


class ApiServer:
    """GETs on one kept-alive HTTPS connection, each bounded by the deadline. HTTP/1.1
    by hand: ``http.client`` imports the ``email`` package, a third of the start."""

    def __init__(self, kubeconfig: Kubeconfig, deadline: Deadline) -> None:
        import ssl

        self.kubeconfig, self.deadline = kubeconfig, deadline
        try:
            if kubeconfig.ca_data:
                import base64

                pem = base64.b64decode(kubeconfig.ca_data).decode("ascii")
                self.context = ssl.create_default_context(cadata=pem)
            else:
                self.context = ssl.create_default_context(cafile=kubeconfig.ca_file)
        except (OSError, ValueError) as error:
            raise InvalidConfig(f"kubeconfig {kubeconfig.path}: unusable CA", str(error)) from error
        host = f"[{kubeconfig.host}]" if ":" in kubeconfig.host else kubeconfig.host
        self.head = (
            f"Host: {host}:{kubeconfig.port}\r\nAuthorization: Bearer {kubeconfig.bearer_token()}"
            f"\r\nAccept: application/json\r\nUser-Agent: {PLUGIN_TYPE}\r\n\r\n"
        )
        self.sock: ssl.SSLSocket | None = None

    def get(self, path: str) -> Obj:
        server = self.kubeconfig.server
        try:
            status, body = self.exchange(self.kubeconfig.prefix + path)
        except socket.timeout as error:
            late = f"the API server {server} did not answer within {self.deadline.seconds:g} s"
            raise TryAgain(late, f"GET {path}") from error
        except (OSError, ValueError, IndexError) as error:  # ssl's errors are OSErrors
            cannot = f"cannot ask the API server {server}"
            raise TryAgain(cannot, f"GET {path}: {error!r}") from error
        if status != 200:
            hint = " (may it get pods and namespaces?)" if status in (401, 403) else ""
            refused = f"the API server answered {status} to GET {path}{hint}"
            raise TryAgain(refused, body[:500].decode("utf-8", "replace"))
        try:
            obj: Obj = json.loads(body)
        except ValueError as error:
            raise TryAgain(f"the API server's answer to GET {path} is not JSON") from error
        return obj

    def exchange(self, target: str) -> tuple[int, bytes]:
        """One request and its response's status and body (Content-Length or chunked)."""
        if self.sock is None:
            address = (self.kubeconfig.host, self.kubeconfig.port)
            plain = socket.create_connection(address, timeout=self.deadline.remaining())
            # Else the request waits behind the handshake's last write for a delayed ACK.
            plain.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.sock = self.context.wrap_socket(plain, server_hostname=address[0])
            self.reader = self.sock.makefile("rb")
        self.sock.settimeout(self.deadline.remaining())
        self.sock.sendall(f"GET {target} HTTP/1.1\r\n{self.head}".encode())
        status = int(self.reader.readline(65536).split()[1])
        headers = {}
        for line in iter(lambda: self.reader.readline(65536), b""):
            if not line.strip():
                break
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip().lower()
        if headers.get("transfer-encoding") == "chunked":
            chunks = []
            while True:
                size = int(self.reader.readline(65536).split(b";")[0], 16)
                chunks.append(self.reader.read(size + 2)[:size])  # each ends with CRLF
                if size == 0:
                    return status, b"".join(chunks)
        length = headers.get("content-length")
        return status, self.reader.read(int(length)) if length is not None else self.reader.read()

    def close(self) -> None:
        if self.sock is not None:
            self.reader.close()
            self.sock.close()


def labels_of(obj: Obj) -> dict[str, str]:
    return dict((obj.get("metadata") or {}).get("labels") or {})


def pod_is_meshed(api: ApiServer, pod: Pod) -> tuple[bool, str]:
    """Whether the pod is in the mesh, and its uid (the API server's when CNI_ARGS
    has none). The namespace is read only when the pod's label does not decide."""
    obj = api.get(f"/api/v1/namespaces/{pod.namespace}/pods/{pod.name}")
    uid = str((obj.get("metadata") or {}).get("uid", ""))
    if pod.uid and uid and uid != pod.uid:  # the sandbox's pod was deleted, a namesake made
        raise TryAgain(
            f"pod {pod.namespace}/{pod.name} on the API server has uid {uid}, not {pod.uid}"
        )

    def namespace_labels() -> dict[str, str]:
        return labels_of(api.get(f"/api/v1/namespaces/{pod.namespace}"))

    return in_mesh(labels_of(obj), namespace_labels), pod.uid or uid


def ask_agent(path: str, request: Obj, deadline: Deadline) -> Obj:
    """One JSON line to the agent's socket and its one JSON line back."""
    what, pod = f"the ambit node agent ({path})", request["pod"]
    asked = f"{request['command']} pod {pod['namespace']}/{pod['name']}"
    data = json.dumps(request, separators=(",", ":")).encode() + b"\n"
    answer = b""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(deadline.remaining())
            sock.connect(path)
            sock.sendall(data)
            while b"\n" not in answer and len(answer) <= MAX_ANSWER_BYTES:
                sock.settimeout(deadline.remaining())
                chunk = sock.recv(65536)
                if not chunk:
                    break
                answer += chunk
    except socket.timeout as error:
        raise TryAgain(f"{what} did not answer within {deadline.seconds:g} s", asked) from error
    except OSError as error:
        unreachable = f"{what} is not reachable: is it running on this node?"
        raise TryAgain(unreachable, f"{asked}: {error}") from error
    try:
        decoded = json.loads(answer.split(b"\n", 1)[0])
    except ValueError:
        decoded = None
    if not isinstance(decoded, dict):
        raise TryAgain(f"{what} answered with no JSON object", f"{asked}: {answer[:200]!r}")
    return decoded


def agent_request(command: str, env: Mapping[str, str], pod: Pod, ips: list[str]) -> Obj:
    return {
        "command": command,
        "containerId": env.get("CNI_CONTAINERID", ""),
        "netns": env.get("CNI_NETNS", ""),
        "ifname": env.get("CNI_IFNAME", ""),
        "pod": {"namespace": pod.namespace, "name": pod.name, "uid": pod.uid},
        "ips": ips,
    }


def require_enrolled(answer: Obj, pod: Pod, command: str) -> None:
    if answer.get("result") in ("enrolled", "skipped"):
        return
    who = f"pod {pod.namespace}/{pod.name}"
    if "error" in answer:
        raise TryAgain(f"the ambit node agent could not enroll {who}: {answer['error']}", command)
    no_result = f"the ambit node agent gave no result for {who}"
    raise TryAgain(no_result, f"{command}: {json.dumps(answer)[:300]}")


def _require_env(env: Mapping[str, str], names: tuple[str, ...]) -> None:
    missing = [name for name in names if not env.get(name)]
    if missing:
        raise CniError(INVALID_ENVIRONMENT, f"missing environment variables: {', '.join(missing)}")


def _meshed_pod(conf: NetConf, env: Mapping[str, str], deadline: Deadline) -> Pod | None:
    """The pod when it is in the mesh; None for sandboxes the plugin lets pass."""
    pod = pod_of(env)
    if pod is None or pod.namespace in conf.exclude_namespaces:
        return None
    api = ApiServer(Kubeconfig(conf.kubeconfig), deadline)
    try:
        meshed, pod.uid = pod_is_meshed(api, pod)
    finally:
        api.close()
    return pod if meshed else None


def cmd_add_or_check(command: str, conf: NetConf, env: Mapping[str, str]) -> Obj | None:
    """ADD: ``prevResult`` once a meshed pod is enrolled; CHECK: nothing, then."""
    _require_env(env, ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"))
    if conf.prev_result is None and command == "ADD":
        raise InvalidConfig(f"{PLUGIN_TYPE} must be chained: no prevResult", "put it last")
    deadline = Deadline(conf.timeout)
    pod = _meshed_pod(conf, env, deadline)
    if pod is not None:
        request = agent_request(command, env, pod, pod_ips(conf.prev_result or {}))
        require_enrolled(ask_agent(conf.agent_socket, request, deadline), pod, command)
    return conf.prev_result if command == "ADD" else None


def cmd_del(conf: NetConf, env: Mapping[str, str]) -> None:
    pod = pod_of(env)
    if pod is None or pod.namespace in conf.exclude_namespaces:
        return
    ips = pod_ips(conf.prev_result or {})
    deadline = Deadline(min(conf.timeout, DEL_TIMEOUT_SECONDS))
    try:
        ask_agent(conf.agent_socket, agent_request("DEL", env, pod, ips), deadline)
    except CniError:
        return  # best effort: the agent also sees the pod go through its watch


def parse_stdin(data: bytes) -> Obj:
    try:
        raw = json.loads(data)
    except ValueError as error:
        decoding = "failed to decode the network config on stdin"
        raise CniError(DECODING_FAILURE, decoding, str(error)) from error
    if not isinstance(raw, dict):
        raise CniError(DECODING_FAILURE, "the network config on stdin is not a JSON object")
    return raw


def run(env: Mapping[str, str], stdin: bytes) -> Obj | None:
    """One invocation: the result to print (None: nothing), or ``CniError``."""
    command = env.get("CNI_COMMAND", "")
    if command == "VERSION":
        version = LATEST_VERSION
        if stdin.strip():
            version = str(parse_stdin(stdin).get("cniVersion") or LATEST_VERSION)
        return {"cniVersion": version, "supportedVersions": list(SUPPORTED_VERSIONS)}
    if command not in ("ADD", "DEL", "CHECK", "STATUS", "GC"):
        known = "ADD, DEL, CHECK, STATUS, GC or VERSION"
        raise CniError(INVALID_ENVIRONMENT, f"unknown CNI_COMMAND {command!r}", known)
    conf = NetConf(parse_stdin(stdin))
    if conf.cni_version not in SUPPORTED_VERSIONS:
        supported = f"{PLUGIN_TYPE} supports {', '.join(SUPPORTED_VERSIONS)}"
        incompatible = f"incompatible cniVersion {conf.cni_version!r}"
        raise CniError(INCOMPATIBLE_VERSION, incompatible, supported)
    if command in ("ADD", "CHECK"):
        return cmd_add_or_check(command, conf, env)
    if command == "DEL":
        cmd_del(conf, env)
    # STATUS: always ready (a missing agent must not make the node NotReady);
    # GC: nothing kept per attachment here.
    return None


def _version_of(stdin: bytes) -> str:
    """The cniVersion to answer an error with: the input's when it has a usable one."""
    try:
        version = json.loads(stdin).get("cniVersion")
    except (ValueError, AttributeError):
        return LATEST_VERSION
    return version if version in SUPPORTED_VERSIONS else LATEST_VERSION


def main() -> int:
    """The plugin's process: exit 0 with the result, or 1 with the spec's error JSON."""
    stdin, failure = b"", None
    try:
        stdin = sys.stdin.buffer.read()
        result = run(os.environ, stdin)
    except CniError as error:
        failure = error
    except OSError as error:
        failure = CniError(IO_FAILURE, "I/O failure", repr(error))
    except Exception as error:  # a bug: still the spec's error JSON, never a bare traceback
        import traceback

        details = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        failure = CniError(INTERNAL_ERROR, f"{PLUGIN_TYPE}: {error!r}", details)
    if failure is not None:
        result = failure.result(_version_of(stdin))
    if result is not None:
        sys.stdout.write(json.dumps(result) + "\n")
        sys.stdout.flush()
    return 0 if failure is None else 1


if __name__ == "__main__":
    sys.exit(main())
