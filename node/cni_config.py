"""The node's CNI network config as ambit edits it, sans-IO: which file the
container runtime uses (the first ``*.conf``/``*.conflist``/``*.json`` by name that
holds a network), that file with ambit-cni appended as its last plugin (a ``.conf``
becomes a ``.conflist``, as istio-cni does), and without it again; the plugin's
kubeconfig document. ``node.cni_install`` does the reading and writing.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from mesh.constants import SYSTEM_NAMESPACE

PLUGIN_TYPE = "ambit-cni"  # node.cni_plugin.PLUGIN_TYPE, and the binary's name
CONF_EXTENSIONS = (".conf", ".conflist", ".json")  # libcni's, in containerd and CRI-O
KUBECONFIG_NAME = "ZZZ-ambit-cni-kubeconfig"
SHEBANG = b"#!/usr/bin/env python3\n"
SETTLE_SECONDS = 2.0  # how long a config file that does not parse may be mid-write

Obj = dict[str, Any]


class CniConfigError(Exception):
    """A network config ambit cannot edit; the message names the file."""


@dataclass(frozen=True)
class PluginSettings:
    """ambit-cni's entry in the conflist (docs/node.md, "The plugin")."""

    agent_socket: str = "/var/run/ambit/cni.sock"
    kubeconfig: str = f"/etc/cni/net.d/{KUBECONFIG_NAME}"
    exclude_namespaces: tuple[str, ...] = ("kube-system", SYSTEM_NAMESPACE)
    timeout_seconds: float = 20.0

    def entry(self) -> Obj:
        timeout = self.timeout_seconds
        return {
            "type": PLUGIN_TYPE,
            "agentSocket": self.agent_socket,
            "kubeconfig": self.kubeconfig,
            "excludeNamespaces": list(self.exclude_namespaces),
            "timeoutSeconds": int(timeout) if float(timeout).is_integer() else timeout,
        }


def is_candidate(name: str) -> bool:
    """Whether the runtime would read a file of this name as network config."""
    return name.endswith(CONF_EXTENSIONS) and name != KUBECONFIG_NAME


def parse_network(data: bytes) -> Obj | None:
    """The config a file holds when the runtime would load it: a conflist (a
    non-empty ``plugins`` list) or a single plugin's conf (a ``type``); else None."""
    try:
        network = json.loads(data)
    except ValueError:
        return None
    if not isinstance(network, dict):
        return None
    if "plugins" in network:
        plugins = network["plugins"]
        ok = isinstance(plugins, list) and plugins and all(isinstance(p, dict) for p in plugins)
        return network if ok else None
    return network if isinstance(network.get("type"), str) else None


def candidate_names(names: Iterable[str]) -> list[str]:
    """The files the runtime would try, in its order (by name)."""
    return sorted(n for n in names if is_candidate(n))


def plugins_of(network: Obj) -> list[Obj] | None:
    """A conflist's plugins; None for a single plugin's conf."""
    plugins = network.get("plugins")
    return plugins if isinstance(plugins, list) else None


def has_plugin(network: Obj) -> bool:
    return any(p.get("type") == PLUGIN_TYPE for p in plugins_of(network) or [])


def is_installed(network: Obj, entry: Obj) -> bool:
    """Whether ``entry`` is the conflist's last plugin, exactly, and its only ambit-cni."""
    plugins = plugins_of(network) or []
    ours = [p for p in plugins if p.get("type") == PLUGIN_TYPE]
    return bool(plugins) and plugins[-1] == entry and len(ours) == 1


def render(network: Obj) -> bytes:
    return (json.dumps(network, indent=2) + "\n").encode()


def with_plugin(name: str, data: bytes, entry: Obj) -> tuple[str, bytes]:
    """The file (name, bytes) with ``entry`` as its last plugin and no other ambit-cni
    entry. A single plugin's conf becomes a conflist of that plugin and ``entry``
    (``10-net.conf`` or a conf's ``10-net.json`` → ``10-net.conflist``)."""
    network = parse_network(data)
    if network is None:
        raise CniConfigError(f"{name} holds no CNI network config")
    plugins = plugins_of(network)
    if plugins is None:
        stem = name.rsplit(".", 1)[0]
        network = {
            "cniVersion": network.get("cniVersion", "0.3.1"),
            "name": network.get("name", "k8s-pod-network"),
            "plugins": [network],
        }
        name, plugins = f"{stem}.conflist", network["plugins"]
    kept = [p for p in plugins if p.get("type") != PLUGIN_TYPE]
    return name, render({**network, "plugins": [*kept, entry]})


def without_plugin(data: bytes) -> bytes | None:
    """The conflist without ambit-cni's entries, when it has any (else None). Used
    only when the file as found is not known: the bytes are then the JSON re-rendered."""
    network = parse_network(data)
    if network is None or not has_plugin(network):
        return None
    plugins = plugins_of(network) or []
    return render({**network, "plugins": [p for p in plugins if p.get("type") != PLUGIN_TYPE]})


def shebanged(source: bytes) -> bytes:
    """The plugin's source as the node runs it: its first line ``#!/usr/bin/env
    python3`` (replacing a shebang it has)."""
    if source.startswith(b"#!"):
        source = source.split(b"\n", 1)[1] if b"\n" in source else b""
    return SHEBANG + source


@dataclass(frozen=True)
class PluginKubeconfig:
    """What the plugin needs to read Pods and Namespaces: the API server, its CA
    (PEM bytes, or a file on the node), and a bearer token or a file holding one."""

    server: str
    ca_pem: bytes | None = None
    ca_file: str | None = None
    token: str | None = None
    token_file: str | None = None

    def document(self) -> bytes:
        """A kubeconfig in JSON (valid YAML: kubectl reads it too; the plugin parses
        it with ``json``)."""
        if (self.token is None) == (self.token_file is None):
            raise ValueError("give exactly one of token and token_file")
        if self.ca_pem is not None and self.ca_file is not None:
            raise ValueError("give at most one of ca_pem and ca_file")
        cluster: Obj = {"server": self.server}
        if self.ca_pem is not None:
            import base64

            cluster["certificate-authority-data"] = base64.b64encode(self.ca_pem).decode()
        elif self.ca_file is not None:
            cluster["certificate-authority"] = self.ca_file
        user = {"token": self.token} if self.token is not None else {"tokenFile": self.token_file}
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "local", "cluster": cluster}],
            "users": [{"name": PLUGIN_TYPE, "user": user}],
            "contexts": [
                {"name": PLUGIN_TYPE, "context": {"cluster": "local", "user": PLUGIN_TYPE}}
            ],
            "current-context": PLUGIN_TYPE,
        }
        return render(config)


def first_network(files: Sequence[tuple[str, bytes, float]]) -> tuple[str, bytes] | None:
    """Of (name, bytes, age in seconds) triples in the runtime's order, the first
    that holds a network. None also while a file before it that holds none is younger
    than ``SETTLE_SECONDS``: a primary CNI that writes its file in place leaves it
    unreadable for a moment, and the next file is then not the one to edit."""
    for name, data, age in files:
        if parse_network(data) is not None:
            return name, data
        if age < SETTLE_SECONDS:
            return None
    return None
