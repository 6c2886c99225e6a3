"""Hostile and malformed manifests are refused as the API server would refuse them, before
any name can become a path, a network namespace or a process argument: each gives one
error naming the file, the object and the field."""

from __future__ import annotations

import json

import pytest

from k8s.manifests import ManifestError, Pod, loads


def pod_doc(*, name: str = "web", namespace: str = "shop", **spec: object) -> dict[str, object]:
    container: dict[str, object] = {"name": "app", "command": ["sleep", "1"]}
    container.update(spec.pop("container", {}))  # type: ignore[call-overload]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, **spec.pop("metadata", {})},  # type: ignore[dict-item]
        "spec": {"containers": [container], **spec},
    }


def service_doc(name: str = "web", **spec: object) -> dict[str, object]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "shop"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}], **spec},
    }


# (document, the field the error names, a fragment of the reason). JSON is YAML, and
# writing the documents as JSON keeps odd characters exact.
HOSTILE = [
    (pod_doc(nodeName="../../etc"), "spec.nodeName", "not a valid name"),
    (pod_doc(nodeName="node-1/../x"), "spec.nodeName", "not a valid name"),
    (pod_doc(nodeName="a..b"), "spec.nodeName", "not a valid name"),
    (pod_doc(name="web server"), "metadata.name", "not a valid name"),
    (pod_doc(name="web\nx"), "metadata.name", "not a valid name"),
    (pod_doc(name=".."), "metadata.name", "not a valid name"),
    (pod_doc(name="a" * 254), "metadata.name", "at most 253"),
    (pod_doc(namespace="a.b"), "metadata.namespace", "not a valid name"),
    (pod_doc(namespace="n" * 64), "metadata.namespace", "at most 63"),
    (pod_doc(container={"command": ["sleep\x00", "1"]}), "spec.containers[0].command[0]", "NUL"),
    (pod_doc(container={"args": ["x" * 70_000]}), "spec.containers[0].args[0]", "at most 65536"),
    (
        pod_doc(container={"env": [{"name": "A=B", "value": "x"}]}),
        "spec.containers[0].env[0].name",
        "not a valid environment variable name",
    ),
    (
        pod_doc(container={"env": [{"name": "X", "value": "a\x00b"}]}),
        "spec.containers[0].env[0].value",
        "NUL",
    ),
    (
        pod_doc(container={"env": [{"name": "1X", "value": "x"}]}),
        "spec.containers[0].env[0].name",
        "not starting with a digit",
    ),
    (pod_doc(container={"name": "App"}), "spec.containers[0].name", "not a valid name"),
    (
        pod_doc(container={"ports": [{"containerPort": 80, "name": "a-very-long-port-name"}]}),
        "spec.containers[0].ports[0].name",
        "not a valid port name",
    ),
    (
        pod_doc(metadata={"labels": {"app": "x" * (2 << 20)}}),
        "metadata.labels.app",
        "characters long",
    ),
    (
        pod_doc(metadata={"labels": {"bad key": "x"}}),
        "metadata.labels.'bad key'",
        "not a valid key",
    ),
    (
        pod_doc(metadata={"labels": {"Not_A/Domain/app": "x"}}),
        "metadata.labels.'Not_A/Domain/app'",
        "not a DNS subdomain",
    ),
    (
        pod_doc(metadata={"annotations": {f"a{i}": "x" * 60_000 for i in range(5)}}),
        "metadata.annotations",
        "at most 262144",
    ),
    (service_doc(name="1web"), "metadata.name", "starting with a letter"),
    (
        service_doc(ports=[{"port": 80}, {"port": 81}]),
        "spec.ports[0].name",
        "required when a Service has more than one port",
    ),
    (
        service_doc(ports=[{"port": 80, "name": "a"}, {"port": 80, "name": "b"}]),
        "spec.ports[1]",
        "also spec.ports[0]",
    ),
    (
        service_doc(ports=[{"port": 80, "targetPort": "Http_Port"}]),
        "spec.ports[0].targetPort",
        "not a valid port name",
    ),
]


@pytest.mark.parametrize(("doc", "field", "reason"), HOSTILE, ids=[h[1] for h in HOSTILE])
def test_hostile_objects_are_refused_naming_object_and_field(
    doc: dict[str, object], field: str, reason: str
) -> None:
    with pytest.raises(ManifestError) as info:
        loads(json.dumps(doc), "hostile.yaml")
    message = str(info.value)
    assert message.startswith("hostile.yaml: document 1 ("), message
    assert f": {field}" in message, message
    assert reason in message, message
    assert "\n" not in message, "one line, whatever the input held"
    assert len(message) < 600, "a huge value is cut, not echoed whole"


def test_deeply_nested_yaml_is_one_error_not_a_crash() -> None:
    text = "a: " + "[" * 3000 + "]" * 3000 + "\n"
    with pytest.raises(ManifestError, match=r"^deep.yaml: .*nested too deeply"):
        loads(text, "deep.yaml")


def test_valid_names_and_labels_pass() -> None:
    doc = pod_doc(
        name="web-1.v2",
        nodeName="node-2",
        metadata={
            "labels": {"app.kubernetes.io/name": "web", "tier": "", "v": "A_b.1"},
            "annotations": {"example.com/note": "any text\nat all"},
        },
        container={
            "env": [{"name": "my.var_NAME-1", "value": "x=y"}],
            "ports": [{"containerPort": 8080, "name": "http-alt"}],
        },
    )
    (obj,) = loads(json.dumps(doc), "ok.yaml")
    assert isinstance(obj, Pod)
    assert obj.node_name == "node-2"
    assert dict(obj.labels) == {"app.kubernetes.io/name": "web", "tier": "", "v": "A_b.1"}
    assert obj.containers[0].env == (("my.var_NAME-1", "x=y"),)


def test_server_assigned_metadata_is_kept_and_not_content() -> None:
    doc = pod_doc(
        metadata={
            "uid": "9a1b",
            "resourceVersion": "42",
            "creationTimestamp": "2026-12-01T10:00:00Z",
        }
    )
    (with_meta,) = loads(json.dumps(doc), "a.yaml")
    (plain,) = loads(json.dumps(pod_doc()), "b.yaml")
    assert isinstance(with_meta, Pod)
    assert (with_meta.uid, with_meta.resource_version, with_meta.creation_timestamp) == (
        "9a1b",
        "42",
        "2026-12-01T10:00:00Z",
    )
    assert with_meta != plain
    assert with_meta.content_equal(plain)
    # An unquoted timestamp is a YAML timestamp; it is kept in RFC 3339 form.
    (obj,) = loads(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: x\n"
        "  creationTimestamp: 2026-12-01T10:00:00Z\n",
        "t.yaml",
    )
    assert obj.creation_timestamp == "2026-12-01T10:00:00Z"
