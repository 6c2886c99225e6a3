"""Manifests: YAML into typed objects, and an error naming file, document and field for
every kind of bad input."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from k8s.manifests import (
    AuthorizationPolicy,
    Container,
    ContainerPort,
    ManifestError,
    Namespace,
    PeerAuthentication,
    Pod,
    PolicyCondition,
    PolicyOperation,
    PolicyRule,
    PolicySource,
    Service,
    ServiceAccount,
    ServicePortSpec,
    load,
    loads,
    parse_object,
    read_documents,
)
from k8s.policy_manifests import PolicyTargetRef

DEMO = Path(__file__).resolve().parents[2] / "examples" / "demo.yaml"


def write(tmp_path: Path, text: str, name: str = "demo.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def one(text: str) -> object:
    (obj,) = loads(textwrap.dedent(text), "test.yaml")
    return obj


def test_demo_loads() -> None:
    objs = load(DEMO)
    assert [type(o).__name__ for o in objs] == [
        "Namespace",
        "ServiceAccount",
        "ServiceAccount",
        "Pod",
        "Pod",
        "Service",
    ]
    ns, _, _, server, client, svc = objs
    assert ns == Namespace(
        name="demo", namespace="", labels=(("ambit.io/dataplane-mode", "ambient"),)
    )
    assert isinstance(server, Pod)
    assert server.node_name == "node-2"
    assert server.service_account == "server"
    assert server.containers[0].command == ("python3", "-m", "http.server", "8080")
    assert server.named_ports == (("http", 8080),)
    assert server.pod_ip is None
    assert isinstance(client, Pod)
    assert client.containers[0].command == ("sleep", "infinity")
    assert client.node_name == "node-1"
    assert svc == Service(
        name="server",
        namespace="demo",
        selector=(("app", "server"),),
        ports=(ServicePortSpec(port=80, target_port=8080, name="http"),),
    )


def test_demo_policy_example_parses_when_uncommented() -> None:
    text = DEMO.read_text()
    commented = text[text.index("# ---") :]
    policy_yaml = "\n".join(line.removeprefix("# ") for line in commented.splitlines())
    (policy,) = loads(policy_yaml, "demo-policy.yaml")
    assert isinstance(policy, AuthorizationPolicy)
    assert policy.selector == (("app", "server"),)
    assert policy.rules[0].sources[0].principals == ("cluster.local/ns/demo/sa/client",)
    assert policy.rules[0].operations[0].ports == (8080,)


def test_pod_defaults_and_fields() -> None:
    pod = one(
        """
        apiVersion: v1
        kind: Pod
        metadata:
          name: web
          labels: {app: web}
          annotations: {note: hi}
        spec:
          containers:
            - name: web
              image: nginx
              args: ["--port", "8080"]
              env:
                - {name: MODE, value: fast}
                - {name: EMPTY}
                - name: POD_IP
                  valueFrom: {fieldRef: {fieldPath: status.podIP}}
              ports:
                - {containerPort: 8080, name: http}
                - {containerPort: 9090, protocol: UDP}
            - name: sidecar
              ports: [{containerPort: 15000, name: admin}]
        status:
          podIP: 10.1.2.3
          phase: Running
        """
    )
    assert pod == Pod(
        name="web",
        namespace="default",
        labels=(("app", "web"),),
        annotations=(("note", "hi"),),
        service_account="default",
        containers=(
            Container(
                name="web",
                image="nginx",
                args=("--port", "8080"),
                env=(("MODE", "fast"), ("EMPTY", "")),
                ports=(
                    ContainerPort(port=8080, name="http"),
                    ContainerPort(port=9090, protocol="UDP"),
                ),
            ),
            Container(name="sidecar", ports=(ContainerPort(port=15000, name="admin"),)),
        ),
        pod_ip="10.1.2.3",
        phase="Running",
    )
    assert pod.named_ports == (("http", 8080), ("admin", 15000))
    assert pod.with_ip("10.9.9.9").pod_ip == "10.9.9.9"


def test_service_ports_and_cluster_ip() -> None:
    svc = one(
        """
        apiVersion: v1
        kind: Service
        metadata: {name: web, namespace: shop}
        spec:
          clusterIP: 10.96.0.20
          selector: {app: web}
          ports:
            - {name: http, port: 80, targetPort: http}
            - {name: https, port: 443, targetPort: "8443", appProtocol: kubernetes.io/h2c}
            - {name: metrics, port: 9090, protocol: TCP, appProtocol: http}
        """
    )
    assert isinstance(svc, Service)
    assert svc.cluster_ip == "10.96.0.20"
    assert svc.ports == (
        ServicePortSpec(port=80, target_port="http", name="http"),
        ServicePortSpec(port=443, target_port=8443, name="https", app_protocol="kubernetes.io/h2c"),
        ServicePortSpec(port=9090, target_port=9090, name="metrics", app_protocol="http"),
    )
    assert svc.with_cluster_ip("10.96.0.1").cluster_ip == "10.96.0.1"


@pytest.mark.parametrize("cluster_ip", ["None", '""'])
def test_headless_service_has_no_cluster_ip(cluster_ip: str) -> None:
    svc = one(
        f"""
        apiVersion: v1
        kind: Service
        metadata: {{name: db}}
        spec:
          clusterIP: {cluster_ip}
          selector: {{app: db}}
          ports: [{{port: 5432}}]
        """
    )
    assert isinstance(svc, Service)
    assert svc.cluster_ip is None


def test_service_without_selector() -> None:
    svc = one("apiVersion: v1\nkind: Service\nmetadata: {name: ext}\nspec: {ports: [{port: 80}]}")
    assert isinstance(svc, Service)
    assert svc.selector is None


def test_service_account() -> None:
    sa = one("apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: web, namespace: shop}")
    assert sa == ServiceAccount(name="web", namespace="shop")


POLICY = """
apiVersion: {api}
kind: AuthorizationPolicy
metadata:
  name: web-policy
  namespace: shop
spec:
  selector:
    matchLabels:
      app: web
  action: DENY
  rules:
    - from:
        - source:
            principals: ["cluster.local/ns/shop/sa/admin", "*/sa/robot"]
            notNamespaces: ["shop"]
        - source:
            ipBlocks: ["10.0.0.0/8", "192.168.1.7"]
            requestPrincipals: ["issuer/subject"]
      to:
        - operation:
            ports: ["8080", 9090]
            methods: ["POST"]
      when:
        - key: request.headers[x-debug]
          values: ["1"]
    - {}
"""


@pytest.mark.parametrize(
    "api", ["security.ambit.io/v1", "security.istio.io/v1", "security.istio.io/v1beta1"]
)
def test_authorization_policy(api: str) -> None:
    policy = one(POLICY.replace("{api}", api))
    assert policy == AuthorizationPolicy(
        name="web-policy",
        namespace="shop",
        action="DENY",
        selector=(("app", "web"),),
        rules=(
            PolicyRule(
                sources=(
                    PolicySource(
                        principals=("cluster.local/ns/shop/sa/admin", "*/sa/robot"),
                        not_namespaces=("shop",),
                    ),
                    PolicySource(
                        ip_blocks=("10.0.0.0/8", "192.168.1.7"),
                        request_principals=("issuer/subject",),
                    ),
                ),
                operations=(PolicyOperation(ports=(8080, 9090), methods=("POST",)),),
                when=(PolicyCondition(key="request.headers[x-debug]", values=("1",)),),
            ),
            PolicyRule(),
        ),
    )


def test_authorization_policy_defaults() -> None:
    policy = one(
        """
        apiVersion: security.istio.io/v1
        kind: AuthorizationPolicy
        metadata: {name: deny-all, namespace: shop}
        spec: {}
        """
    )
    assert policy == AuthorizationPolicy(name="deny-all", namespace="shop")
    assert isinstance(policy, AuthorizationPolicy)
    assert (policy.action, policy.selector, policy.rules) == ("ALLOW", None, ())


def test_authorization_policy_target_refs() -> None:
    policy = one(
        """
        apiVersion: security.istio.io/v1
        kind: AuthorizationPolicy
        metadata: {name: at-waypoint, namespace: shop}
        spec:
          targetRefs:
            - {group: gateway.networking.k8s.io, kind: Gateway, name: waypoint}
            - {group: core, kind: Service, name: web}
            - {kind: Service, name: db}
            - {group: "", kind: Service, name: cache, namespace: ""}
            - {group: networking.istio.io, kind: ServiceEntry, name: ext}
          action: DENY
          rules: [{to: [{operation: {methods: [DELETE]}}]}]
        """
    )
    assert isinstance(policy, AuthorizationPolicy)
    assert policy.selector is None
    assert policy.target_refs == (
        PolicyTargetRef(group="gateway.networking.k8s.io", kind="Gateway", name="waypoint"),
        PolicyTargetRef(kind="Service", name="web"),
        PolicyTargetRef(kind="Service", name="db"),
        PolicyTargetRef(kind="Service", name="cache"),
        PolicyTargetRef(group="networking.istio.io", kind="ServiceEntry", name="ext"),
    )


def test_authorization_policy_older_single_target_ref() -> None:
    policy = one(
        """
        apiVersion: security.istio.io/v1beta1
        kind: AuthorizationPolicy
        metadata: {name: p, namespace: shop}
        spec:
          targetRef: {group: gateway.networking.k8s.io, kind: Gateway, name: waypoint}
        """
    )
    assert isinstance(policy, AuthorizationPolicy)
    assert policy.target_refs == (
        PolicyTargetRef(group="gateway.networking.k8s.io", kind="Gateway", name="waypoint"),
    )


def test_gateway_class_target_in_the_root_namespace() -> None:
    policy = one(
        """
        apiVersion: security.istio.io/v1
        kind: AuthorizationPolicy
        metadata: {name: all-waypoints, namespace: ambit-system}
        spec:
          targetRefs: [{group: gateway.networking.k8s.io, kind: GatewayClass, name: waypoint}]
        """
    )
    assert isinstance(policy, AuthorizationPolicy)
    assert policy.target_refs[0].kind == "GatewayClass"


def test_audit_and_custom_policies_are_read() -> None:
    audit = one(
        """
        apiVersion: security.istio.io/v1
        kind: AuthorizationPolicy
        metadata: {name: audit-profile, namespace: shop}
        spec:
          selector: {matchLabels: {app: api}}
          action: AUDIT
          rules: [{to: [{operation: {methods: [GET], paths: ["/user/profile/*"]}}]}]
        """
    )
    assert isinstance(audit, AuthorizationPolicy)
    assert (audit.action, audit.selector, audit.provider) == ("AUDIT", (("app", "api"),), "")
    custom = one(
        """
        apiVersion: security.istio.io/v1
        kind: AuthorizationPolicy
        metadata: {name: ext-authz, namespace: shop}
        spec:
          action: CUSTOM
          provider: {name: my-authorizer}
          rules: [{to: [{operation: {paths: ["/admin/*"]}}]}]
        """
    )
    assert custom == AuthorizationPolicy(
        name="ext-authz",
        namespace="shop",
        action="CUSTOM",
        provider="my-authorizer",
        rules=(PolicyRule(operations=(PolicyOperation(paths=("/admin/*",)),)),),
    )


def test_peer_authentication() -> None:
    pa = one(
        """
        apiVersion: security.istio.io/v1beta1
        kind: PeerAuthentication
        metadata: {name: strict, namespace: ambit-system}
        spec:
          mtls: {mode: STRICT}
        """
    )
    assert pa == PeerAuthentication(name="strict", namespace="ambit-system", mode="STRICT")
    unset = one(
        """
        apiVersion: security.ambit.io/v1
        kind: PeerAuthentication
        metadata: {name: web}
        spec:
          selector: {matchLabels: {app: web}}
        """
    )
    assert unset == PeerAuthentication(name="web", selector=(("app", "web"),), mode="UNSET")


def test_empty_documents_are_skipped_but_counted(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        ---
        # nothing here
        ---
        apiVersion: v1
        kind: Namespace
        metadata: {name: a}
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: p}
        spec: {containers: [{name: c, ports: [{containerPort: http}]}]}
        """,
    )
    with pytest.raises(ManifestError) as info:
        load(path)
    assert str(info.value) == (
        f"{path}: document 3 (Pod default/p): spec.containers[0].ports[0].containerPort:"
        " must be an integer 1-65535, not 'http'"
    )


def test_several_files_load_in_order(tmp_path: Path) -> None:
    a = write(tmp_path, "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n", "a.yaml")
    b = write(tmp_path, "apiVersion: v1\nkind: Namespace\nmetadata: {name: b}\n", "b.yaml")
    assert [o.name for o in load(a, b)] == ["a", "b"]


def test_same_object_twice_is_an_error(tmp_path: Path) -> None:
    a = write(tmp_path, "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: x}\n", "a.yaml")
    b = write(
        tmp_path, "---\n---\napiVersion: v1\nkind: ServiceAccount\nmetadata: {name: x}\n", "b.yaml"
    )
    with pytest.raises(ManifestError) as info:
        load(a, b)
    message = str(info.value)
    assert message.startswith(f"{b}: document 2 (ServiceAccount default/x): defined twice")
    assert f"{a}: document 1" in message


def test_a_cluster_scoped_object_twice_is_named_without_a_namespace(tmp_path: Path) -> None:
    text = (
        "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {name: c}\n"
        "spec: {controllerName: example.com/gateway}\n"
    )
    path = write(tmp_path, text + "---\n" + text)
    with pytest.raises(ManifestError, match=r"document 2 \(GatewayClass c\): defined twice"):
        load(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match=r"nope\.yaml: cannot read"):
        load(tmp_path / "nope.yaml")


def test_binary_file(tmp_path: Path) -> None:
    path = tmp_path / "demo.yaml"
    path.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ManifestError, match="not UTF-8 text"):
        load(path)


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "apiVersion: v1\nkind: Pod\nmetadata:\n  name: [unclosed\n")
    with pytest.raises(ManifestError) as info:
        load(path)
    assert str(info.value).startswith(f"{path}: line ")
    assert "not valid YAML" in str(info.value)


def test_parse_object_for_api_dicts() -> None:
    doc = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x", "labels": {"a": "b"}}}
    assert parse_object(doc, "watch") == Namespace(name="x", namespace="", labels=(("a", "b"),))
    with pytest.raises(ManifestError, match=r"^watch \(Namespace x\): metadata.labels.a: must be"):
        parse_object({**doc, "metadata": {"name": "x", "labels": {"a": 1}}}, "watch")


POD = """
apiVersion: v1
kind: Pod
metadata: {{name: web, namespace: shop{meta}}}
spec:
  nodeName: node-1
  containers:
    - name: web
      command: ["python3", "-m", "http.server", "8080"]
{container}
{spec}
"""
SERVICE = """
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: shop}}
spec:
  selector: {{app: web}}
  ports:
{ports}
"""
AUTHZ = """
apiVersion: security.ambit.io/v1
kind: AuthorizationPolicy
metadata: {{name: p, namespace: shop}}
spec:
{spec}
"""


def pod(meta: str = "", container: str = "", spec: str = "") -> str:
    return POD.format(meta=meta, container=container, spec=spec)


def authz(spec: str) -> str:
    return AUTHZ.format(spec=textwrap.indent(textwrap.dedent(spec), "  "))


# (document text, what the error names after "demo.yaml: document 2 ", a fragment of the reason)
BAD = [
    (
        SERVICE.format(ports="    - {port: http}"),
        "(Service shop/web): spec.ports[0].port",
        "must be an integer 1-65535",
    ),
    (
        SERVICE.format(ports="    - {port: 70000}"),
        "(Service shop/web): spec.ports[0].port",
        "1-65535",
    ),
    (
        SERVICE.format(ports="    - {port: 80, targetPort: 0}"),
        "(Service shop/web): spec.ports[0].targetPort",
        "1-65535",
    ),
    (
        SERVICE.format(ports="    - {port: 80, protocol: HTTP}"),
        "(Service shop/web): spec.ports[0].protocol",
        "TCP, UDP or SCTP",
    ),
    (
        SERVICE.format(ports="    - {port: 80, appProtocol: 2}"),
        "(Service shop/web): spec.ports[0].appProtocol",
        "must be a string",
    ),
    (SERVICE.format(ports="    port: 80"), "(Service shop/web): spec.ports", "must be a list"),
    (
        SERVICE.format(ports="    - {port: 80}\n  clusterIP: 10.96.0.999"),
        "(Service shop/web): spec.clusterIP",
        "not an IP address",
    ),
    (
        pod(meta=", labels: {version: 2}"),
        "(Pod shop/web): metadata.labels.version",
        "must be a string",
    ),
    (
        pod(spec="  serviceAccountName: 7"),
        "(Pod shop/web): spec.serviceAccountName",
        "must be a string",
    ),
    (pod(spec="  hostNetwork: yes-please"), "(Pod shop/web): spec.hostNetwork", "true or false"),
    (
        pod(container="      args: [--port, 8080]"),
        "(Pod shop/web): spec.containers[0].args[1]",
        "quote it",
    ),
    (
        pod(container="      env: [{value: x}]"),
        "(Pod shop/web): spec.containers[0].env[0].name",
        "required",
    ),
    (
        pod(container="      ports: [{name: http}]"),
        "(Pod shop/web): spec.containers[0].ports[0].containerPort",
        "1-65535",
    ),
    (pod(spec="status: {podIP: 10.0.0}"), "(Pod shop/web): status.podIP", "not an IP address"),
    (
        "apiVersion: v1\nkind: Pod\nmetadata: {name: web}\nspec: {}\n",
        "(Pod default/web): spec.containers",
        "at least one container",
    ),
    (
        "apiVersion: v1\nkind: Pod\nmetadata: {name: web}\nspec: {containers: [{image: x}]}\n",
        "(Pod default/web): spec.containers[0].name",
        "required",
    ),
    (
        "apiVersion: v1\nkind: Pod\nmetadata: {namespace: shop}\nspec: {}\n",
        "(Pod): metadata.name",
        "required",
    ),
    ("apiVersion: v1\nkind: Pod\nmetadata: web\n", "(Pod): metadata", "must be a mapping"),
    (
        "apiVersion: apps/v1\nkind: Pod\nmetadata: {name: web}\n",
        "(Pod default/web): apiVersion",
        "use v1",
    ),
    (
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\n",
        "kind",
        "'Deployment' is not supported; supported kinds: Namespace, ServiceAccount, Pod,"
        " Service, EndpointSlice, Node, AuthorizationPolicy, PeerAuthentication",
    ),
    ("apiVersion: v1\nmetadata: {name: web}\n", "kind", "missing; supported kinds: Namespace"),
    ("- just\n- a list\n", "", "must be a mapping with apiVersion and kind"),
    (
        "apiVersion: networking.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p}\n",
        "(AuthorizationPolicy default/p): apiVersion",
        "security.ambit.io/v1 or security.istio.io/v1",
    ),
    (
        authz("action: LOG"),
        "(AuthorizationPolicy shop/p): spec.action",
        "'LOG': must be ALLOW, DENY, AUDIT or CUSTOM",
    ),
    (
        authz("provider: {name: ext}"),
        "(AuthorizationPolicy shop/p): spec.provider",
        "only used with action CUSTOM, not ALLOW",
    ),
    (
        authz("action: CUSTOM\nrules: [{}]"),
        "(AuthorizationPolicy shop/p): spec.provider.name",
        "needs the name of an external authorizer",
    ),
    (
        authz("action: CUSTOM\nprovider: {}\nrules: [{}]"),
        "(AuthorizationPolicy shop/p): spec.provider.name",
        "required",
    ),
    (
        authz("action: CUSTOM\nprovider: {name: ext, port: 1}\nrules: [{}]"),
        "(AuthorizationPolicy shop/p): spec.provider.port",
        "unknown field; known fields: name",
    ),
    (
        authz("action: CUSTOM\nprovider: {name: ext}"),
        "(AuthorizationPolicy shop/p): spec.rules",
        "without rules never applies",
    ),
    (
        authz("targetRefs: [{kind: Gateway, name: w}]"),
        "(AuthorizationPolicy shop/p): spec.targetRefs[0].group",
        "a Gateway's group is 'gateway.networking.k8s.io', not ''",
    ),
    (
        authz("targetRefs: [{group: apps, kind: Service, name: w}]"),
        "(AuthorizationPolicy shop/p): spec.targetRefs[0].group",
        "a Service's group is '' (or 'core'), not 'apps'",
    ),
    (
        authz("targetRefs: [{group: apps, kind: Deployment, name: w}]"),
        "(AuthorizationPolicy shop/p): spec.targetRefs[0].kind",
        "'Deployment' cannot be a target; use one of Gateway, GatewayClass, Service",
    ),
    (
        authz("targetRefs: [{kind: Service}]"),
        "(AuthorizationPolicy shop/p): spec.targetRefs[0].name",
        "required",
    ),
    (
        authz("targetRefs: [{name: web}]"),
        "(AuthorizationPolicy shop/p): spec.targetRefs[0].kind",
        "required",
    ),
    (
        authz("targetRefs: [{kind: Service, name: web, namespace: shop}]"),
        "(AuthorizationPolicy shop/p): spec.targetRefs[0].namespace",
        "must be left out",
    ),
    (
        authz("targetRefs: [{kind: Service, name: web, port: 80}]"),
        "(AuthorizationPolicy shop/p): spec.targetRefs[0].port",
        "unknown field; known fields: group, kind, name, namespace",
    ),
    (
        authz(
            "targetRefs: [{group: gateway.networking.k8s.io, kind: GatewayClass, name: waypoint}]"
        ),
        "(AuthorizationPolicy shop/p): spec.targetRefs[0]",
        "a GatewayClass is a target only for policies in ambit-system",
    ),
    (
        authz("targetRefs: {kind: Service, name: web}"),
        "(AuthorizationPolicy shop/p): spec.targetRefs",
        "must be a list",
    ),
    (
        authz("targetRefs: [" + ", ".join(["{kind: Service, name: web}"] * 17) + "]"),
        "(AuthorizationPolicy shop/p): spec.targetRefs",
        "at most 16 entries, not 17",
    ),
    (
        authz("selector: {matchLabels: {app: web}}\ntargetRefs: [{kind: Service, name: web}]"),
        "(AuthorizationPolicy shop/p): spec.targetRefs",
        "set selector or targetRefs, not both",
    ),
    (
        authz("selector: {}\ntargetRef: {kind: Service, name: web}"),
        "(AuthorizationPolicy shop/p): spec.targetRef",
        "set selector or targetRef, not both",
    ),
    (
        authz("targetRef: {kind: Service, name: a}\ntargetRefs: [{kind: Service, name: b}]"),
        "(AuthorizationPolicy shop/p): spec.targetRef",
        "set targetRefs or the older targetRef, not both",
    ),
    (authz("selectr: {}"), "(AuthorizationPolicy shop/p): spec.selectr", "unknown field"),
    (
        authz("selector: {app: web}"),
        "(AuthorizationPolicy shop/p): spec.selector.app",
        "unknown field; known fields: matchLabels",
    ),
    (authz("rules: {from: []}"), "(AuthorizationPolicy shop/p): spec.rules", "must be a list"),
    (
        authz("rules: [{form: []}]"),
        "(AuthorizationPolicy shop/p): spec.rules[0].form",
        "unknown field; known fields: from, to, when",
    ),
    (
        authz("rules: [{from: [{source: {principal: [x]}}]}]"),
        "(AuthorizationPolicy shop/p): spec.rules[0].from[0].source.principal",
        "known fields: principals, notPrincipals",
    ),
    (
        authz("rules: [{from: [{source: {}}]}]"),
        "(AuthorizationPolicy shop/p): spec.rules[0].from[0].source",
        "must set at least one of",
    ),
    (
        authz("rules: [{from: [{}]}]"),
        "(AuthorizationPolicy shop/p): spec.rules[0].from[0].source",
        "must set at least one of",
    ),
    (
        authz("rules: [{from: [{source: {principals: cluster.local/ns/a/sa/b}}]}]"),
        "(AuthorizationPolicy shop/p): spec.rules[0].from[0].source.principals",
        "must be a list",
    ),
    (
        authz("rules: [{from: [{source: {principals: [spiffe://cluster.local/ns/a/sa/b]}}]}]"),
        "(AuthorizationPolicy shop/p): spec.rules[0].from[0].source.principals[0]",
        "without 'spiffe://'",
    ),
    (
        authz("rules: [{from: [{source: {principals: ['cluster.local/*/sa/b']}}]}]"),
        "(AuthorizationPolicy shop/p): spec.rules[0].from[0].source.principals[0]",
        "one '*' at its start or end",
    ),
    (
        authz("rules: [{from: [{source: {notNamespaces: ['*a*']}}]}]"),
        "(AuthorizationPolicy shop/p): spec.rules[0].from[0].source.notNamespaces[0]",
        "one '*'",
    ),
    (
        authz("rules: [{from: [{source: {namespaces: ['']}}]}]"),
        "(AuthorizationPolicy shop/p): spec.rules[0].from[0].source.namespaces[0]",
        "is exact",
    ),
    (
        authz("rules: [{from: [{source: {ipBlocks: [10.0.0.0/40]}}]}]"),
        "(AuthorizationPolicy shop/p): spec.rules[0].from[0].source.ipBlocks[0]",
        "not an IP address or CIDR",
    ),
    (
        authz("rules: [{to: [{operation: {ports: [http]}}]}]"),
        "(AuthorizationPolicy shop/p): spec.rules[0].to[0].operation.ports[0]",
        "1-65535",
    ),
    (
        authz("rules: [{to: [{operation: {notPorts: ['0']}}]}]"),
        "(AuthorizationPolicy shop/p): spec.rules[0].to[0].operation.notPorts[0]",
        "1-65535",
    ),
    (
        authz("rules: [{to: [{operation: {method: [GET]}}]}]"),
        "(AuthorizationPolicy shop/p): spec.rules[0].to[0].operation.method",
        "known fields: ports, notPorts",
    ),
    (
        authz("rules: [{to: [{op: {}}]}]"),
        "(AuthorizationPolicy shop/p): spec.rules[0].to[0].op",
        "known fields: operation",
    ),
    (
        authz("rules: [{when: [{values: [x]}]}]"),
        "(AuthorizationPolicy shop/p): spec.rules[0].when[0].key",
        "required",
    ),
    (
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: x}\n"
        "spec: {mtls: {mode: STRICTER}}\n",
        "(PeerAuthentication default/x): spec.mtls.mode",
        "STRICT, PERMISSIVE, DISABLE or UNSET",
    ),
    (
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: x}\n"
        "spec: {portLevelMtls: {}}\n",
        "(PeerAuthentication default/x): spec.portLevelMtls",
        "not supported",
    ),
    (
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: x}\n"
        "spec: {mtls: {mode: ON}}\n",
        "(PeerAuthentication default/x): spec.mtls.mode",
        "must be a string, not a boolean True (quote it)",
    ),
    (
        "apiVersion: v1\nkind: Pod\nmetadata: {name: Web}\n",
        "(Pod default/Web): metadata.name",
        "'Web' is not a valid name",
    ),
    (
        "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: a, namespace: my_ns}\n",
        "(ServiceAccount my_ns/a): metadata.namespace",
        "not a valid name",
    ),
    (
        pod(spec="  serviceAccountName: Admin"),
        "(Pod shop/web): spec.serviceAccountName",
        "not a valid name",
    ),
    (
        authz("rules: [{from: [{source: {requestPrincipals: ['a*b']}}]}]"),
        "(AuthorizationPolicy shop/p): spec.rules[0].from[0].source.requestPrincipals[0]",
        "a request principal is exact",
    ),
    (
        authz("rules: [{when: [{key: source.ip}]}]"),
        "(AuthorizationPolicy shop/p): spec.rules[0].when[0]",
        "set values, notValues or both for key 'source.ip'",
    ),
    (
        authz("rules: [{when: [{key: '', values: [x]}]}]"),
        "(AuthorizationPolicy shop/p): spec.rules[0].when[0].key",
        "must not be empty",
    ),
    (
        authz("rules: [{from: [{source: {remoteIpBlocks: [10.0.0.0/33]}}]}]"),
        "(AuthorizationPolicy shop/p): spec.rules[0].from[0].source.remoteIpBlocks[0]",
        "not an IP address or CIDR",
    ),
    (
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: x, labels: [a]}\n",
        "(Namespace x): metadata.labels",
        "must be a mapping",
    ),
]


@pytest.mark.parametrize(("doc", "where", "reason"), BAD, ids=[f"{i}" for i in range(len(BAD))])
def test_errors_name_file_document_and_field(
    tmp_path: Path, doc: str, where: str, reason: str
) -> None:
    ok = "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n"
    path = write(tmp_path, ok + "---\n" + textwrap.dedent(doc))
    with pytest.raises(ManifestError) as info:
        load(path)
    message = str(info.value)
    prefix = (
        f"{path}: document 2 {where}".rstrip() if where.startswith("(") else f"{path}: document 2"
    )
    assert message.startswith(prefix), message
    if where and not where.startswith("("):
        assert f": {where}: " in message, message
    assert reason in message, message


ISTIO_NETWORKING = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web, namespace: shop}
spec: {hosts: [web], http: [{route: [{destination: {host: web, subset: v1}}]}]}
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: {name: default, namespace: shop}
spec: {egress: [{hosts: ["./*"]}]}
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: mesh-default, namespace: istio-system}
spec: {accessLogging: [{providers: [{name: envoy}]}]}
---
apiVersion: example.com/v1
kind: VirtualService
metadata: {name: other, namespace: shop}
"""


def test_istio_kinds_ambit_does_not_implement_are_ignored_with_what_to_use_instead() -> None:
    """Istio's manifests apply unchanged: each of its kinds ambit does not implement is
    ignored by name with what to use instead (not an error); the same kind name in a
    group that is not Istio's is still an error."""
    docs = read_documents(ISTIO_NETWORKING, "istio.yaml")
    assert [d.error is None for d in docs] == [True, True, True, False]
    virtual, sidecar, telemetry, other = docs
    assert virtual.obj is None
    assert virtual.ignored is not None
    assert virtual.ignored.startswith("istio.yaml: document 1 (VirtualService shop/web): Istio's")
    assert "HTTPRoute or GRPCRoute" in virtual.ignored
    assert "subsets are a Service per version" in virtual.ignored
    assert sidecar.ignored is not None
    assert "ambient mode has no sidecars" in sidecar.ignored
    assert telemetry.ignored is not None
    assert "always on" in telemetry.ignored
    assert other.ignored is None
    assert other.error is not None
    assert "'VirtualService' is not supported" in other.error
