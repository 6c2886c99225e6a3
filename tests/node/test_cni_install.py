"""node.cni_install on a real CNI config directory: ambit-cni appended and taken out
again with the file restored byte for byte, a .conf made a conflist and back, the
binary installed, and ``keep_installed`` waiting for the primary CNI and putting
ambit-cni back after the primary CNI rewrites its file. No root needed."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import trio

from node.cni_config import KUBECONFIG_NAME, PluginKubeconfig, PluginSettings, shebanged
from node.cni_install import (
    STATE_ORIGINAL,
    STATE_RECORD,
    InstallConfig,
    Installed,
    install_binary,
    install_config,
    keep_installed,
    plugin_source,
    uninstall,
    uninstall_config,
)

SETTINGS = PluginSettings()
# As a primary CNI writes it: its own spacing and key order, which must come back.
CALICO = b"""{
  "name": "k8s-pod-network",
  "cniVersion": "0.3.1",
  "plugins": [
    {"type": "calico", "log_level": "info", "ipam": {"type": "calico-ipam"}},
    {"type": "portmap", "snat": true, "capabilities": {"portMappings": true}}
  ]
}
"""
FLANNEL_CONF = (
    b'{"name":"cbr0","cniVersion":"0.3.1","type":"flannel","delegate":{"isDefaultGateway":true}}'
)


def plugins(path: Path) -> list[str]:
    return [p["type"] for p in json.loads(path.read_bytes())["plugins"]]


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    conf_dir, state_dir = tmp_path / "net.d", tmp_path / "state"
    conf_dir.mkdir()
    return conf_dir, state_dir


def test_install_then_uninstall_restores_the_file_byte_for_byte(dirs: tuple[Path, Path]) -> None:
    conf_dir, state_dir = dirs
    primary = conf_dir / "10-calico.conflist"
    primary.write_bytes(CALICO)
    primary.chmod(0o600)
    (conf_dir / "99-other.conflist").write_bytes(CALICO)
    (conf_dir / KUBECONFIG_NAME).write_text("{}")

    assert install_config(conf_dir, state_dir, SETTINGS) is Installed.INSTALLED
    assert plugins(primary) == ["calico", "portmap", "ambit-cni"]
    assert json.loads(primary.read_bytes())["plugins"][-1] == SETTINGS.entry()
    assert primary.stat().st_mode & 0o777 == 0o600
    assert (conf_dir / "99-other.conflist").read_bytes() == CALICO  # not the primary
    assert install_config(conf_dir, state_dir, SETTINGS) is Installed.CURRENT
    assert (state_dir / STATE_ORIGINAL).read_bytes() == CALICO

    assert uninstall_config(conf_dir, state_dir)
    assert primary.read_bytes() == CALICO
    assert sorted(os.listdir(conf_dir)) == [
        "10-calico.conflist",
        "99-other.conflist",
        KUBECONFIG_NAME,
    ]
    assert not (state_dir / STATE_RECORD).exists()
    assert not uninstall_config(conf_dir, state_dir)  # nothing left to undo


def test_a_conf_becomes_a_conflist_and_comes_back(dirs: tuple[Path, Path]) -> None:
    conf_dir, state_dir = dirs
    (conf_dir / "10-flannel.conf").write_bytes(FLANNEL_CONF)
    assert install_config(conf_dir, state_dir, SETTINGS) is Installed.INSTALLED
    assert os.listdir(conf_dir) == ["10-flannel.conflist"]
    conflist = json.loads((conf_dir / "10-flannel.conflist").read_bytes())
    assert conflist["name"] == "cbr0"
    assert conflist["cniVersion"] == "0.3.1"
    assert conflist["plugins"] == [json.loads(FLANNEL_CONF), SETTINGS.entry()]

    assert uninstall_config(conf_dir, state_dir)
    assert os.listdir(conf_dir) == ["10-flannel.conf"]
    assert (conf_dir / "10-flannel.conf").read_bytes() == FLANNEL_CONF


def test_new_settings_keep_the_file_as_first_found(dirs: tuple[Path, Path]) -> None:
    conf_dir, state_dir = dirs
    (conf_dir / "10-calico.conflist").write_bytes(CALICO)
    install_config(conf_dir, state_dir, SETTINGS)
    later = PluginSettings(timeout_seconds=7)
    assert install_config(conf_dir, state_dir, later) is Installed.INSTALLED
    assert (
        json.loads((conf_dir / "10-calico.conflist").read_bytes())["plugins"][-1] == later.entry()
    )
    assert uninstall_config(conf_dir, state_dir)
    assert (conf_dir / "10-calico.conflist").read_bytes() == CALICO


def test_a_rewrite_by_the_primary_cni_is_the_new_original(dirs: tuple[Path, Path]) -> None:
    conf_dir, state_dir = dirs
    primary = conf_dir / "10-calico.conflist"
    primary.write_bytes(CALICO)
    install_config(conf_dir, state_dir, SETTINGS)
    rewritten = CALICO.replace(b'"info"', b'"debug"')
    primary.write_bytes(rewritten)
    assert install_config(conf_dir, state_dir, SETTINGS) is Installed.INSTALLED
    assert plugins(primary)[-1] == "ambit-cni"
    assert uninstall_config(conf_dir, state_dir)
    assert primary.read_bytes() == rewritten


def test_without_a_record_uninstall_takes_the_entry_out(dirs: tuple[Path, Path]) -> None:
    conf_dir, state_dir = dirs
    primary = conf_dir / "10-calico.conflist"
    primary.write_bytes(CALICO)
    install_config(conf_dir, state_dir, SETTINGS)
    for name in (STATE_RECORD, STATE_ORIGINAL):
        (state_dir / name).unlink()  # a node reboot emptied /var/run
    assert uninstall_config(conf_dir, state_dir)
    assert json.loads(primary.read_bytes()) == json.loads(CALICO)


def test_no_primary_config_is_waiting(dirs: tuple[Path, Path]) -> None:
    conf_dir, state_dir = dirs
    (conf_dir / KUBECONFIG_NAME).write_text("{}")
    (conf_dir / "05-broken.conflist").write_text("{")
    assert install_config(conf_dir, state_dir, SETTINGS) is Installed.WAITING
    assert install_config(conf_dir / "missing", state_dir, SETTINGS) is Installed.WAITING
    assert (conf_dir / "05-broken.conflist").read_text() == "{"


def test_a_first_file_mid_write_is_waited_for(dirs: tuple[Path, Path]) -> None:
    conf_dir, state_dir = dirs
    writing = conf_dir / "10-calico.conflist"
    writing.write_bytes(CALICO[:40])  # the primary CNI writes it in place
    (conf_dir / "99-loopback.conf").write_bytes(b'{"cniVersion": "0.3.1", "type": "loopback"}')
    assert install_config(conf_dir, state_dir, SETTINGS) is Installed.WAITING
    old = writing.stat().st_mtime - 60  # still unreadable a minute later: the runtime skips it
    os.utime(writing, (old, old))
    assert install_config(conf_dir, state_dir, SETTINGS) is Installed.INSTALLED
    assert plugins(conf_dir / "99-loopback.conflist") == ["loopback", "ambit-cni"]


def test_the_binary_is_the_plugin_with_a_python3_shebang(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    assert install_binary(plugin_source(), bin_dir)
    binary = bin_dir / "ambit-cni"
    assert binary.read_bytes() == shebanged(plugin_source().read_bytes())
    assert binary.read_bytes().startswith(b"#!/usr/bin/env python3\n")
    assert binary.stat().st_mode & 0o777 == 0o755
    assert not install_binary(plugin_source(), bin_dir)
    binary.chmod(0o644)
    assert install_binary(plugin_source(), bin_dir)
    assert os.listdir(bin_dir) == ["ambit-cni"]  # no temporary file left behind


async def test_keep_installed_waits_for_the_primary_cni_and_reinstalls(
    dirs: tuple[Path, Path], tmp_path: Path
) -> None:
    conf_dir, state_dir = dirs
    bin_dir = tmp_path / "bin"
    kubeconfig = PluginKubeconfig("https://127.0.0.1:6443", token="t")
    kubeconfig_path = conf_dir / KUBECONFIG_NAME  # beside the conflist, as the node sees it
    settings = PluginSettings(kubeconfig=f"/etc/cni/net.d/{KUBECONFIG_NAME}")
    config = InstallConfig(conf_dir, bin_dir, state_dir, settings, kubeconfig, poll_seconds=0.02)
    primary = conf_dir / "10-calico.conflist"

    def holds(condition: str) -> bool:
        if condition == "installed":
            return primary.exists() and plugins(primary)[-1:] == ["ambit-cni"]
        return (bin_dir / "ambit-cni" if condition == "binary" else kubeconfig_path).exists()

    async def until(condition: str) -> None:  # polls the files, as keep_installed does
        while True:
            if holds(condition):
                return
            await trio.sleep(0.01)

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            started = trio.Event()

            async def run() -> None:
                await nursery.start(keep_installed, config)
                started.set()

            nursery.start_soon(run)
            await until("binary")  # the binary first, while there is no config yet
            await trio.sleep(0.1)
            assert not started.is_set()
            primary.write_bytes(CALICO)  # the primary CNI starts
            await started.wait()
            assert plugins(primary) == ["calico", "portmap", "ambit-cni"]

            rewritten = CALICO.replace(b'"info"', b'"warning"')
            primary.write_bytes(rewritten)  # the primary CNI writes its file again
            await until("installed")
            (bin_dir / "ambit-cni").unlink()
            kubeconfig_path.unlink()
            await until("binary")
            await until("kubeconfig")
            primary.unlink()
            primary.write_bytes(CALICO)
            await until("installed")
            nursery.cancel_scope.cancel()

    uninstall(config)
    assert primary.read_bytes() == CALICO
    assert os.listdir(conf_dir) == ["10-calico.conflist"]
    assert os.listdir(bin_dir) == []
    assert not kubeconfig_path.exists()
