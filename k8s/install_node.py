"""What ``ambit install --node`` renders: the node side on a cluster, as plain objects.

In the control plane's namespace (:data:`mesh.constants.SYSTEM_NAMESPACE`), two
DaemonSets of the one ambit image (docs/node.md):

- ``ztunnel``: ``ambit ztunnel`` in the pod network (not the host's), one per node; it
  takes pods from the node agent over ``/var/run/ambit/ztunnel.sock`` (a hostPath both
  mount), gets certificates from the CA with a projected token of its ServiceAccount
  (audience ``ambit-ca``, bound to its pod: the CA's node authorizer,
  :mod:`k8s.ca_nodes`, lets ``ambit-system/ztunnel`` ask for the identities of its
  node's pods) and trusts the roots of the ConfigMap ``ambit-ca-root-cert``. A new
  ztunnel starts beside the old one (``maxSurge: 1, maxUnavailable: 0``): hitless.
- ``ambit-node-agent``: ``ambit node-agent`` on the host network, with the host's PID
  namespace, the CNI directories and ``/var/run/netns``: it installs the CNI plugin,
  captures meshed pods and hands them to ztunnel; it reads pods and namespaces with its
  ServiceAccount and writes its status (:data:`STATUS_ANNOTATION`) on its own pod,
  through the pod's ``status`` subresource (it may patch no pod's spec), and a
  ValidatingAdmissionPolicy (:func:`own_pod_policy`) keeps it to its own pod's
  annotations.

Every privilege of either is declared once, with why (:data:`ZTUNNEL_PRIVILEGES`,
:data:`AGENT_PRIVILEGES`): docs/node.md lists them and a test checks that the rendered
DaemonSets ask for exactly those. :class:`NodeValues` holds what an operator sets, with
the ``ambit-node`` chart's keys.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from ca.kube import CA_AUDIENCE
from k8s import install
from k8s.install import (
    Obj,
    Permission,
    check_fields,
    object_meta,
    resources_block,
    value_field,
)
from k8s.waypoint_kube import READY_PATH, ROOT_CONFIG_MAP, ROOT_CONFIG_MAP_KEY, TOKEN_SECONDS
from mesh.constants import (
    CONFIG_STREAM_PORT,
    CONTROL_PLANE_PORT,
    CONTROL_PLANE_SERVICE_ACCOUNT,
    LABEL_DATAPLANE_MODE,
    METRICS_PORT,
    READINESS_PORT,
    SYSTEM_NAMESPACE,
    ZTUNNEL_SERVICE_ACCOUNT,
)

ZTUNNEL: Final = ZTUNNEL_SERVICE_ACCOUNT  # its DaemonSet, ServiceAccount and `app` label
AGENT: Final = "ambit-node-agent"
STATUS_ANNOTATION: Final = "ambit.io/node-status"  # on the agent's pod (docs/node.md)
SOCKET_DIR: Final = "/var/run/ambit"
ZTUNNEL_SOCKET: Final = f"{SOCKET_DIR}/ztunnel.sock"
AGENT_STATE_DIR: Final = f"{SOCKET_DIR}/node-agent"
NETNS_DIR: Final = "/var/run/netns"
AGENT_READY_PORT: Final = 15031
TOKEN_FILE: Final = "/var/run/secrets/ambit/tokens/token"
TRUST_BUNDLE: Final = "/var/run/secrets/ambit/ca/root-cert.pem"
DRAIN_SECONDS: Final = 25  # ztunnel's drain, below its grace period
ZTUNNEL_GRACE_SECONDS: Final = 30
AGENT_GRACE_SECONDS: Final = 30
CONTROL_PLANE_HOST: Final = f"{CONTROL_PLANE_SERVICE_ACCOUNT}.{SYSTEM_NAMESPACE}.svc"
_PATH: Final = {"pattern": r"^/[^\s,]*$", "maxLength": 4096}
_PATH_HINT: Final = "must be an absolute path"
_NAMESPACE: Final = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
_TOLERATION_KEYS: Final = {"key", "operator", "value", "effect", "tolerationSeconds"}


def _same(key: str) -> Any:
    """A field of :class:`install.Values`, with the same key, default and check."""
    field = install.KEYS[key]
    return dataclasses.field(default=field.default, metadata=field.metadata)


def _json(factory: Callable[[], object], key: str, schema: dict[str, Any],
          check: Callable[[Any], str], json: str) -> Any:  # fmt: skip
    """A field holding JSON (``json``: ``array`` or ``object``): ``schema`` is the chart's
    check, ``check`` the same in Python (what is wrong, or an empty string)."""
    metadata = {"key": key, "check": {**schema, "python": check}, "hint": "", "json": json}
    return dataclasses.field(default_factory=factory, metadata=metadata)


def _namespaces_wrong(value: Any) -> str:
    if not isinstance(value, list) or not all(isinstance(n, str) for n in value):
        return "must be a list of namespace names"
    bad = [n for n in value if not re.fullmatch(_NAMESPACE, n)]
    return f"not namespace names: {', '.join(bad)}" if bad else ""


def _tolerations_wrong(value: Any) -> str:
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        return "must be a list of tolerations (objects)"
    for toleration in value:
        unknown = set(toleration) - _TOLERATION_KEYS
        if unknown:
            return f"unknown toleration field {', '.join(sorted(unknown))}"
    return ""


def _selector_wrong(value: Any) -> str:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        return "must be an object of label keys to values (strings)"
    return ""


_TOLERATION_SCHEMA: Final = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "key": {"type": "string"},
        "operator": {"enum": ["Exists", "Equal"]},
        "value": {"type": "string"},
        "effect": {"enum": ["", "NoSchedule", "PreferNoSchedule", "NoExecute"]},
        "tolerationSeconds": {"type": "integer"},
    },
}


def _quantity(default: str, key: str) -> Any:
    spec = install.KEYS["resources.requests.cpu"].metadata
    return value_field(default, key, spec["check"], spec["hint"], json=spec["json"])


@dataclass(frozen=True)
class NodeValues:
    """What an operator sets for the node side, each field with its ``--set`` key."""

    trust_domain: str = _same("trustDomain")
    image: str = _same("image")
    image_pull_policy: str = _same("imagePullPolicy")
    log_level: str = _same("logLevel")
    control_plane: str = value_field(
        CONTROL_PLANE_HOST, "controlPlane",
        {"pattern": r"^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$"},
        "the control plane Service's host name (its ports 15010 and 15012 are dialled)",
    )  # fmt: skip
    cni_bin_dir: str = value_field("/opt/cni/bin", "cni.binDir", _PATH, _PATH_HINT)
    cni_conf_dir: str = value_field("/etc/cni/net.d", "cni.confDir", _PATH, _PATH_HINT)
    exclude_namespaces: list[str] = _json(  # noqa: RUF009 (a field with a default_factory)
        lambda: ["kube-system", SYSTEM_NAMESPACE], "excludeNamespaces",
        {"items": {"type": "string", "pattern": _NAMESPACE}}, _namespaces_wrong, "array",
    )  # fmt: skip
    ztunnel_cpu_request: str = _quantity("200m", "ztunnel.resources.requests.cpu")
    ztunnel_memory_request: str = _quantity("256Mi", "ztunnel.resources.requests.memory")
    ztunnel_cpu_limit: str = _quantity("", "ztunnel.resources.limits.cpu")
    ztunnel_memory_limit: str = _quantity("1Gi", "ztunnel.resources.limits.memory")
    agent_cpu_request: str = _quantity("50m", "nodeAgent.resources.requests.cpu")
    agent_memory_request: str = _quantity("128Mi", "nodeAgent.resources.requests.memory")
    agent_cpu_limit: str = _quantity("", "nodeAgent.resources.limits.cpu")
    agent_memory_limit: str = _quantity("512Mi", "nodeAgent.resources.limits.memory")
    # Every taint: a node without ztunnel and the agent cannot start meshed pods.
    tolerations: list[dict[str, Any]] = _json(  # noqa: RUF009 (a field with a default_factory)
        lambda: [{"operator": "Exists"}], "tolerations", {"items": _TOLERATION_SCHEMA},
        _tolerations_wrong, "array",
    )  # fmt: skip
    node_selector: dict[str, str] = _json(  # noqa: RUF009 (a field with a default_factory)
        lambda: {"kubernetes.io/os": "linux"}, "nodeSelector",
        {"additionalProperties": {"type": "string"}}, _selector_wrong, "object",
    )  # fmt: skip

    def __post_init__(self) -> None:
        check_fields(self)


KEYS: Final = install.keys_of(NodeValues)


def values_from(settings: list[str], base: NodeValues | None = None) -> NodeValues:
    """``--set key=value`` over ``base`` (JSON for the lists and objects)."""
    return install.set_values(settings, base or NodeValues())


@dataclass(frozen=True)
class Privilege:
    """One thing a DaemonSet's pod may do that an ordinary pod may not, and why."""

    what: str  # "capability NET_ADMIN", "hostPath /var/run/ambit", "hostNetwork"...
    why: str


ZTUNNEL_CAPABILITIES: Final = ("NET_ADMIN", "SYS_ADMIN")
AGENT_CAPABILITIES: Final = ("NET_ADMIN", "SYS_ADMIN", "SYS_PTRACE")
ZTUNNEL_PRIVILEGES: Final = (
    Privilege("runAsUser 0", "the capabilities below are granted to root only; not privileged"),
    Privilege("capability NET_ADMIN", "its sockets in pods carry SO_MARK (the capture rules"
              " skip them) and IP_TRANSPARENT (it answers for the pod's original destination)"),
    Privilege("capability SYS_ADMIN", "setns into each pod's network namespace (a file"
              " descriptor from the node agent) to open the pod's 15001, 15006, 15008"),
    Privilege(f"hostPath {SOCKET_DIR}", "its socket for the node agent, ztunnel.sock"),
)  # fmt: skip
AGENT_PRIVILEGES: Final = (
    Privilege("runAsUser 0", "writes the host's CNI directories (owned by root) and holds the"
              " capabilities below; not privileged"),
    Privilege("hostNetwork", "its CNI socket and readiness (15031) work before and without the"
              " pod network, which the CNI chain it configures provides"),
    Privilege("hostPID", "finds the processes, hence the network namespaces, of pods that"
              " started before it (/proc/PID/ns/net)"),
    Privilege("capability NET_ADMIN", "iptables-restore of the capture rules inside each"
              " meshed pod's network namespace"),
    Privilege("capability SYS_ADMIN", "setns into each pod's network namespace"),
    Privilege("capability SYS_PTRACE", "opening /proc/PID/ns/net of a process of another user"
              " (the kernel's ptrace access check)"),
    Privilege("hostPath /opt/cni/bin", "installs the plugin, ambit-cni (value cni.binDir)"),
    Privilege("hostPath /etc/cni/net.d", "adds the plugin to the chain, removes it on"
              " uninstall, writes the plugin's kubeconfig (value cni.confDir)"),
    Privilege(f"hostPath {SOCKET_DIR}", "its socket for the plugin (cni.sock), ztunnel's"
              " socket, its state (node-agent/)"),
    Privilege(f"hostPath {NETNS_DIR}", "the pods' network namespaces, which the runtime"
              " mounts there (mountPropagation HostToContainer: those mounted after the agent"
              " started too)"),
)  # fmt: skip


def permissions() -> tuple[Permission, ...]:
    """Everything the node agent's ServiceAccount may do (ztunnel's: nothing)."""
    return (
        Permission("", ("pods", "namespaces"), install.READ,
                   why="the pods of its node and the dataplane-mode labels"),
        # Through the status subresource, which may change a pod's metadata and status but
        # never its spec: `patch pods` here would let a node's agent swap the control
        # plane's image, hence hold the CA's keys.
        Permission("", ("pods/status",), ("patch",), namespaced=True,
                   why=f"{STATUS_ANNOTATION} on its own pod, through /status (a rule cannot"
                   " name a DaemonSet's pods: any pod of this namespace)"),
    )  # fmt: skip


def rbac() -> list[Obj]:
    """The agent's ClusterRole and Role, each bound to its ServiceAccount."""
    subject = {"kind": "ServiceAccount", "name": AGENT, "namespace": SYSTEM_NAMESPACE}
    out: list[Obj] = []
    for kind, namespace in (("ClusterRole", None), ("Role", SYSTEM_NAMESPACE)):
        rules = [p.rule() for p in permissions() if p.namespaced == (namespace is not None)]
        meta = object_meta(AGENT, namespace, AGENT)
        out.append({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": kind,
                    "metadata": meta, "rules": rules})  # fmt: skip
        out.append({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": f"{kind}Binding",
            "metadata": copy.deepcopy(meta),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": AGENT},
            "subjects": [subject],
        })  # fmt: skip
    return out


def service_accounts() -> list[Obj]:
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount",
         "metadata": object_meta(name, SYSTEM_NAMESPACE, name)}
        for name in (ZTUNNEL, AGENT)
    ]  # fmt: skip


def _env(*names: str) -> list[Obj]:
    fields = {"NODE_NAME": "spec.nodeName", "POD_NAME": "metadata.name",
              "POD_NAMESPACE": "metadata.namespace"}  # fmt: skip
    return [{"name": n, "valueFrom": {"fieldRef": {"fieldPath": fields[n]}}} for n in names]


def _security(capabilities: tuple[str, ...]) -> Obj:
    return {
        "privileged": False,
        # Kubernetes counts a container with SYS_ADMIN as allowed to escalate anyway.
        "allowPrivilegeEscalation": True,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": False,
        "runAsUser": 0,
        "runAsGroup": 0,
        "capabilities": {"drop": ["ALL"], "add": list(capabilities)},
    }


def _host_path(name: str, path: str) -> Obj:
    return {"name": name, "hostPath": {"path": path, "type": "DirectoryOrCreate"}}


def _daemonset(name: str, values: NodeValues, pod_spec: Obj, update: Obj) -> Obj:
    labels = {**install.object_labels(name), LABEL_DATAPLANE_MODE: "none"}
    return {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": object_meta(name, SYSTEM_NAMESPACE, name),
        "spec": {
            "selector": {"matchLabels": {"app": name}},
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": update},
            "template": {
                "metadata": {"labels": labels, **pod_spec.pop("_metadata", {})},
                "spec": {
                    "serviceAccountName": name,
                    "priorityClassName": "system-node-critical",
                    **pod_spec,
                    "nodeSelector": copy.deepcopy(values.node_selector),
                    "tolerations": copy.deepcopy(values.tolerations),
                },
            },
        },
    }


def _joined(names: list[str] | str) -> str:
    """The namespaces as one flag (a chart's marker is one string already)."""
    return names if isinstance(names, str) else ",".join(names)


def ztunnel_daemonset(values: NodeValues) -> Obj:
    control_plane = values.control_plane
    command = [
        "ambit", "--log-level", values.log_level, "--log-format", "json",
        "ztunnel", "--node", "$(NODE_NAME)",
        "--control-plane", f"{control_plane}:{CONFIG_STREAM_PORT}",
        "--ca", f"{control_plane}:{CONTROL_PLANE_PORT}",
        "--token-file", TOKEN_FILE, "--trust-bundle", TRUST_BUNDLE,
        "--pods-socket", ZTUNNEL_SOCKET, "--listen-ip", "0.0.0.0",
        "--trust-domain", values.trust_domain, "--drain-seconds", str(DRAIN_SECONDS),
    ]  # fmt: skip
    token = {"audience": CA_AUDIENCE, "expirationSeconds": TOKEN_SECONDS, "path": "token"}
    bundle = {"key": ROOT_CONFIG_MAP_KEY, "path": "root-cert.pem"}
    container = {
        "name": ZTUNNEL,
        "image": values.image,
        "imagePullPolicy": values.image_pull_policy,
        "command": command,
        "env": _env("NODE_NAME", "POD_NAME", "POD_NAMESPACE"),
        "ports": [  # the admin port (15000) listens on loopback only
            {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"},
            {"name": "status-port", "containerPort": READINESS_PORT, "protocol": "TCP"},
        ],
        "readinessProbe": {
            "httpGet": {"path": READY_PATH, "port": READINESS_PORT},
            "periodSeconds": 5,
            "failureThreshold": 4,
        },
        "resources": resources_block(
            values.ztunnel_cpu_request,
            values.ztunnel_memory_request,
            values.ztunnel_cpu_limit,
            values.ztunnel_memory_limit,
        ),
        "securityContext": _security(ZTUNNEL_CAPABILITIES),
        "volumeMounts": [
            {"name": "ambit-token", "mountPath": "/var/run/secrets/ambit/tokens", "readOnly": True},
            {"name": "ambit-ca-root", "mountPath": "/var/run/secrets/ambit/ca", "readOnly": True},
            {"name": "ambit-run", "mountPath": SOCKET_DIR},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    }
    scrape = {"prometheus.io/scrape": "true", "prometheus.io/port": str(METRICS_PORT),
              "prometheus.io/path": "/metrics"}  # fmt: skip
    pod_spec = {
        "_metadata": {"annotations": scrape},
        "automountServiceAccountToken": False,  # it never calls the API server
        "terminationGracePeriodSeconds": ZTUNNEL_GRACE_SECONDS,
        "containers": [container],
        "volumes": [
            {"name": "ambit-token", "projected": {"sources": [{"serviceAccountToken": token}]}},
            {"name": "ambit-ca-root", "configMap": {"name": ROOT_CONFIG_MAP, "items": [bundle]}},
            _host_path("ambit-run", SOCKET_DIR),
            {"name": "tmp", "emptyDir": {"medium": "Memory"}},
        ],
    }
    return _daemonset(ZTUNNEL, values, pod_spec, {"maxSurge": 1, "maxUnavailable": 0})


def agent_daemonset(values: NodeValues) -> Obj:
    command = [
        "ambit", "--log-level", values.log_level, "--log-format", "json",
        "node-agent", "--node", "$(NODE_NAME)",
        "--cni-bin-dir", "/host/opt/cni/bin", "--cni-conf-dir", "/host/etc/cni/net.d",
        "--host-cni-conf-dir", values.cni_conf_dir,
        "--socket-dir", SOCKET_DIR, "--state-dir", AGENT_STATE_DIR,
        "--exclude-namespaces", _joined(values.exclude_namespaces),
    ]  # fmt: skip
    container = {
        "name": "node-agent",
        "image": values.image,
        "imagePullPolicy": values.image_pull_policy,
        "command": command,
        "env": [
            *_env("NODE_NAME", "POD_NAME", "POD_NAMESPACE"),
            # iptables' lock, off the read-only root filesystem
            {"name": "XTABLES_LOCKFILE", "value": "/tmp/xtables.lock"},
        ],
        "readinessProbe": {
            "httpGet": {"path": READY_PATH, "port": AGENT_READY_PORT},
            "periodSeconds": 5,
            "failureThreshold": 4,
        },
        "resources": resources_block(
            values.agent_cpu_request,
            values.agent_memory_request,
            values.agent_cpu_limit,
            values.agent_memory_limit,
        ),
        "securityContext": _security(AGENT_CAPABILITIES),
        "volumeMounts": [
            {"name": "cni-bin", "mountPath": "/host/opt/cni/bin"},
            {"name": "cni-conf", "mountPath": "/host/etc/cni/net.d"},
            {"name": "ambit-run", "mountPath": SOCKET_DIR},
            {"name": "netns", "mountPath": NETNS_DIR, "mountPropagation": "HostToContainer"},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    }
    pod_spec = {
        "hostNetwork": True,
        "dnsPolicy": "ClusterFirstWithHostNet",
        "hostPID": True,
        "terminationGracePeriodSeconds": AGENT_GRACE_SECONDS,
        "containers": [container],
        "volumes": [
            _host_path("cni-bin", values.cni_bin_dir),
            _host_path("cni-conf", values.cni_conf_dir),
            _host_path("ambit-run", SOCKET_DIR),
            _host_path("netns", NETNS_DIR),
            {"name": "tmp", "emptyDir": {"medium": "Memory"}},
        ],
    }
    return _daemonset(AGENT, values, pod_spec, {"maxUnavailable": 1})


OWN_POD_POLICY: Final = f"{AGENT}-own-pod"
_AGENT_USER: Final = f"system:serviceaccount:{SYSTEM_NAMESPACE}:{AGENT}"
_POD_NAME: Final = "authentication.kubernetes.io/pod-name"  # a pod-bound token's user's


def own_pod_policy() -> list[Obj]:
    """What RBAC cannot say: the agent may patch its own pod's status (its token is bound
    to its pod), and change no label and no status there, only annotations."""
    labels = "(has({0}.metadata.labels) ? {0}.metadata.labels : {{}})"
    validations = [
        {"expression": f"'{_POD_NAME}' in request.userInfo.extra &&"
                       f" object.metadata.name in request.userInfo.extra['{_POD_NAME}']",
         "message": "the node agent may write to its own pod only"},
        {"expression": f"{labels.format('object')} == {labels.format('oldObject')}"
                       " && object.status == oldObject.status",
         "message": "the node agent may change its pod's annotations only"},
    ]  # fmt: skip
    rules = [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["UPDATE"],
              "resources": ["pods/status"]}]  # fmt: skip
    api = "admissionregistration.k8s.io/v1"
    return [
        {"apiVersion": api, "kind": "ValidatingAdmissionPolicy",
         "metadata": object_meta(OWN_POD_POLICY, component=AGENT),
         "spec": {"failurePolicy": "Fail", "matchConstraints": {"resourceRules": rules},
                  "matchConditions": [{"name": "node-agent", "expression":
                                       f"request.userInfo.username == '{_AGENT_USER}'"}],
                  "validations": validations}},
        {"apiVersion": api, "kind": "ValidatingAdmissionPolicyBinding",
         "metadata": object_meta(OWN_POD_POLICY, component=AGENT),
         "spec": {"policyName": OWN_POD_POLICY, "validationActions": ["Deny"]}},
    ]  # fmt: skip


def manifests(values: NodeValues | None = None) -> list[Obj]:
    """Everything ``ambit install --node`` prints, in the order it is applied (into the
    Namespace ``ambit install`` makes)."""
    values = values or NodeValues()
    return [*service_accounts(), *rbac(), *own_pod_policy(), ztunnel_daemonset(values),
            agent_daemonset(values)]  # fmt: skip
