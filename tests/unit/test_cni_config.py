"""node.cni_config: which file the runtime uses, ambit-cni appended last (a .conf
made a conflist), taken out again, and the plugin's kubeconfig, all sans-IO."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from node import cni_plugin
from node.cni_config import (
    KUBECONFIG_NAME,
    PLUGIN_TYPE,
    SETTLE_SECONDS,
    SHEBANG,
    CniConfigError,
    PluginKubeconfig,
    PluginSettings,
    candidate_names,
    first_network,
    is_installed,
    parse_network,
    shebanged,
    with_plugin,
    without_plugin,
)

ENTRY = PluginSettings().entry()
BRIDGE = {"type": "bridge", "bridge": "cni0", "ipam": {"type": "host-local"}}
CONFLIST = {"cniVersion": "1.0.0", "name": "k8s", "plugins": [BRIDGE, {"type": "portmap"}]}


def raw(obj: object) -> bytes:
    return json.dumps(obj).encode()


def test_entry_is_the_documented_one() -> None:
    assert ENTRY == {
        "type": "ambit-cni",
        "agentSocket": "/var/run/ambit/cni.sock",
        "kubeconfig": "/etc/cni/net.d/ZZZ-ambit-cni-kubeconfig",
        "excludeNamespaces": ["kube-system", "ambit-system"],
        "timeoutSeconds": 20,
    }
    assert PluginSettings(timeout_seconds=2.5).entry()["timeoutSeconds"] == 2.5


def test_the_runtime_reads_config_files_by_name_and_not_our_kubeconfig() -> None:
    names = ["99-z.conflist", KUBECONFIG_NAME, "10-b.json", "05-a.conf", "README", "x.conf.bak"]
    assert candidate_names(names) == ["05-a.conf", "10-b.json", "99-z.conflist"]


def test_the_first_file_that_holds_a_network_is_the_primary() -> None:
    old = SETTLE_SECONDS + 1
    files = [
        ("00-broken.conflist", b"{not json", old),
        ("01-empty.conflist", raw({"name": "x", "plugins": []}), old),
        ("02-list.json", raw([1, 2]), old),
        ("10-net.conf", raw({"cniVersion": "0.4.0", "name": "net", "type": "bridge"}), 0.0),
        ("20-other.conflist", raw(CONFLIST), old),
    ]
    assert first_network(files) == files[3][:2]
    assert first_network(files[:3]) is None


def test_a_file_being_written_is_waited_for_not_skipped() -> None:
    files = [("10-calico.conflist", b"", 0.1), ("99-loopback.conf", raw({"type": "loopback"}), 9.0)]
    assert first_network(files) is None  # 10-calico may be the primary a moment later
    assert first_network([(files[0][0], b"", SETTLE_SECONDS), files[1]]) == files[1][:2]


def test_appended_last_to_a_conflist_and_idempotent() -> None:
    name, data = with_plugin("10-k8s.conflist", raw(CONFLIST), ENTRY)
    network = json.loads(data)
    assert name == "10-k8s.conflist"
    assert network["plugins"] == [BRIDGE, {"type": "portmap"}, ENTRY]
    assert {k: v for k, v in network.items() if k != "plugins"} == {
        "cniVersion": "1.0.0",
        "name": "k8s",
    }
    assert is_installed(network, ENTRY)
    assert with_plugin(name, data, ENTRY) == (name, data)


def test_an_older_entry_is_replaced_and_moved_last() -> None:
    old = {**ENTRY, "timeoutSeconds": 5}
    stale = {**CONFLIST, "plugins": [BRIDGE, old, {"type": "portmap"}]}
    assert not is_installed(stale, ENTRY)
    _, data = with_plugin("10-k8s.conflist", raw(stale), ENTRY)
    assert json.loads(data)["plugins"] == [BRIDGE, {"type": "portmap"}, ENTRY]
    twice = {**CONFLIST, "plugins": [BRIDGE, ENTRY, ENTRY]}
    assert not is_installed(twice, ENTRY)


@pytest.mark.parametrize("name", ["10-calico.conf", "10-calico.json"])
def test_a_single_conf_becomes_a_conflist(name: str) -> None:
    conf = {"cniVersion": "0.3.1", "name": "calico", "type": "calico", "mtu": 1440}
    new_name, data = with_plugin(name, raw(conf), ENTRY)
    assert new_name == "10-calico.conflist"
    assert json.loads(data) == {"cniVersion": "0.3.1", "name": "calico", "plugins": [conf, ENTRY]}


def test_a_file_without_a_network_is_refused() -> None:
    with pytest.raises(CniConfigError, match=r"10-x\.conflist"):
        with_plugin("10-x.conflist", b"[]", ENTRY)
    assert parse_network(b'{"name": "x"}') is None


def test_without_plugin_takes_every_ambit_entry_out() -> None:
    _, data = with_plugin("10-k8s.conflist", raw(CONFLIST), ENTRY)
    stripped = without_plugin(data)
    assert stripped is not None
    assert json.loads(stripped) == CONFLIST
    assert without_plugin(raw(CONFLIST)) is None  # nothing of ours: leave it alone


def test_the_binary_gets_a_python3_shebang() -> None:
    assert shebanged(b"#!/opt/venv/bin/python\nprint(1)\n") == SHEBANG + b"print(1)\n"
    assert shebanged(b'"""doc"""\n') == SHEBANG + b'"""doc"""\n'
    assert SHEBANG == b"#!/usr/bin/env python3\n"
    assert PLUGIN_TYPE == cni_plugin.PLUGIN_TYPE


def test_the_kubeconfig_document_is_what_the_plugin_reads(tmp_path: Path) -> None:
    path = tmp_path / KUBECONFIG_NAME
    pem = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    path.write_bytes(PluginKubeconfig("https://10.96.0.1:6443", ca_pem=pem, token="t0k").document())
    read = cni_plugin.Kubeconfig(str(path))
    assert (read.host, read.port, read.prefix, read.bearer_token()) == (
        "10.96.0.1",
        6443,
        "",
        "t0k",
    )
    assert read.ca_data is not None
    assert read.ca_file is None

    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    config = PluginKubeconfig(
        "https://[fd00::1]/prefix/", ca_file="/ca.crt", token_file=str(token_file)
    )
    path.write_bytes(config.document())
    read = cni_plugin.Kubeconfig(str(path))
    assert (read.host, read.port, read.prefix, read.ca_file) == (
        "fd00::1",
        443,
        "/prefix",
        "/ca.crt",
    )
    assert read.bearer_token() == "from-file"


def test_the_kubeconfig_needs_one_credential() -> None:
    with pytest.raises(ValueError, match="token"):
        PluginKubeconfig("https://a").document()
    with pytest.raises(ValueError, match="token"):
        PluginKubeconfig("https://a", token="t", token_file="/f").document()
