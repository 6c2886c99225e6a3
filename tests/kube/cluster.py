"""A Kubernetes control plane on loopback for tests: etcd, kube-apiserver (static
admin token in ``system:masters``, an RSA service-account signing key, RBAC) and
kube-controller-manager, each a child process in one temporary state directory.

``start_cluster`` starts the three, waits until each answers its health check,
and always stops them by PID (SIGTERM, then SIGKILL) and removes the state
directory, whatever happened. The children also get ``setpriv --pdeathsig KILL``
where ``setpriv`` exists, so a test run killed outright leaves no server behind,
and the next run removes the state directory such a run left.
Starting takes a few seconds; the controllers start later still, so tests wait
for what they need (a namespace's ``default`` ServiceAccount, an EndpointSlice).
"""

from __future__ import annotations

import datetime
import http.client
import ipaddress
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

REPO = Path(__file__).resolve().parents[2]
# kubectl is no part of the control plane: test_kubectl_install.py types the docs' commands.
BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kubectl")
ADMIN_USER = "ambit-test-admin"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
SERVICE_CIDR = "10.96.0.0/16"
START_SECONDS = 90.0  # each process's readiness; a loaded 2-core machine is slow
STOP_SECONDS = 15.0
STATE_PREFIX = "ambit-kube-"


class ClusterError(Exception):
    """A control-plane process did not start; the message ends with its log."""


def binary_dir() -> Path:
    """Where ``make kube`` puts the binaries (``$AMBIT_KUBE_BIN`` overrides)."""
    return Path(os.environ.get("AMBIT_KUBE_BIN", REPO / ".cache" / "kube" / "bin"))


def missing_binaries() -> str | None:
    """Why the cluster cannot start here, or None when every binary is built."""
    directory = binary_dir()
    missing = [b for b in BINARIES if not os.access(directory / b, os.X_OK)]
    if not missing:
        return None
    return (
        f"needs {', '.join(missing)} in {directory}: `make kube` builds them from the "
        "Kubernetes Go modules (Go 1.26 or later; minutes from empty Go caches)"
    )


def kubectl() -> Path:
    """The kubectl ``make kube`` built, of the cluster's release (v1.36.3)."""
    return binary_dir() / "kubectl"


@dataclass(frozen=True)
class Cluster:
    """A running control plane: how to reach its API server as the admin."""

    server: str  # https://127.0.0.1:PORT
    host: str
    port: int
    token: str  # the static admin token, group system:masters
    ca_file: Path  # the CA of the API server's serving certificate
    kubeconfig: Path  # the admin token and that CA, for clients that read kubeconfig
    etcd_url: str  # http://127.0.0.1:PORT, etcd's client URL (and its v3 JSON gateway)
    state_dir: Path
    pids: tuple[int, ...]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _pem_key(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def write_pki(directory: Path) -> None:
    """ca.crt, a serving certificate for 127.0.0.1 (apiserver.crt/.key) and the
    service-account signing key pair (sa.key, sa.pub, RSA as Kubernetes expects)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ambit-test-kube-ca")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("10.96.0.1")),
        x509.DNSName("localhost"),
        x509.DNSName("kubernetes.default.svc"),
    ]
    serving = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([x509.OID_SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    files = {
        "ca.crt": ca.public_bytes(serialization.Encoding.PEM),
        "apiserver.crt": serving.public_bytes(serialization.Encoding.PEM),
        "apiserver.key": _pem_key(key),
        "sa.key": _pem_key(sa_key),
        "sa.pub": sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
    }
    for name, data in files.items():
        (directory / name).write_bytes(data)
        (directory / name).chmod(0o600)


def write_kubeconfig(path: Path, server: str, ca_file: Path, token: str) -> None:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "test", "cluster": {"server": server, "certificate-authority": str(ca_file)}}
        ],
        "users": [{"name": ADMIN_USER, "user": {"token": token}}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": ADMIN_USER}}],
        "current-context": "test",
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)


def _https_ok(port: int, path: str, context: ssl.SSLContext, token: str | None) -> bool:
    connection = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=2)
    try:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        connection.request("GET", path, headers=headers)
        return connection.getresponse().status == 200
    except OSError:
        return False
    finally:
        connection.close()


def _http_ok(port: int, path: str) -> bool:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        connection.request("GET", path)
        return connection.getresponse().status == 200
    except OSError:
        return False
    finally:
        connection.close()


class _Processes:
    """The children started so far, each with its log file; stopped in reverse."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.children: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.pdeathsig = shutil.which("setpriv")

    def start(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        if self.pdeathsig:  # the child dies with this process, even on SIGKILL
            argv = [self.pdeathsig, "--pdeathsig", "KILL", "--", *argv]
        with open(self.state_dir / f"{name}.log", "wb") as log:
            child = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        self.children.append((name, child))
        return child

    def wait_ready(self, name: str, ready: Callable[[], bool]) -> None:
        """Poll ``ready`` until it holds; fail if the process exits or the deadline
        passes, with the end of its log."""
        child = dict(self.children)[name]
        deadline = time.monotonic() + START_SECONDS
        while not ready():
            if child.poll() is not None:
                raise ClusterError(f"{name} exited with {child.returncode}\n{self.log_tail(name)}")
            if time.monotonic() > deadline:
                raise ClusterError(
                    f"{name} not ready after {START_SECONDS} s\n{self.log_tail(name)}"
                )
            time.sleep(0.1)

    def log_tail(self, name: str, lines: int = 30) -> str:
        try:
            text = (self.state_dir / f"{name}.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop_all(self) -> None:
        for _, child in reversed(self.children):
            with suppress(ProcessLookupError):
                child.send_signal(signal.SIGTERM)
            try:
                child.wait(STOP_SECONDS)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()


def remove_stale_state_dirs() -> None:
    """Remove the state directories of test runs that were killed outright (their
    children died with them, through ``--pdeathsig``; the directory did not)."""
    for directory in Path(tempfile.gettempdir()).glob(f"{STATE_PREFIX}*"):
        try:
            owner = int((directory / "owner.pid").read_text())
            os.kill(owner, 0)
        except ProcessLookupError:
            shutil.rmtree(directory, ignore_errors=True)
        except (OSError, ValueError):
            continue  # not ours to judge: no owner recorded yet, or not readable


@contextmanager
def start_cluster(*, apiserver_flags: Sequence[str] = ()) -> Iterator[Cluster]:
    """Start etcd, kube-apiserver (with ``apiserver_flags`` added) and
    kube-controller-manager on loopback; stop them and remove their state directory on
    exit. Raises ``ClusterError`` with the failing process's log when one does not come
    up."""
    reason = missing_binaries()
    if reason:
        raise ClusterError(reason)
    bin_dir = binary_dir()
    remove_stale_state_dirs()
    state_dir = Path(tempfile.mkdtemp(prefix=STATE_PREFIX))
    (state_dir / "owner.pid").write_text(str(os.getpid()))
    processes = _Processes(state_dir)
    try:
        yield _start(bin_dir, state_dir, processes, tuple(apiserver_flags))
    finally:
        processes.stop_all()
        shutil.rmtree(state_dir, ignore_errors=True)


def _start(
    bin_dir: Path, state: Path, processes: _Processes, apiserver_flags: tuple[str, ...]
) -> Cluster:
    write_pki(state)
    token = secrets.token_urlsafe(24)
    (state / "tokens.csv").write_text(f'{token},{ADMIN_USER},{ADMIN_USER},"system:masters"\n')
    etcd_port, peer_port, api_port, kcm_port = (free_port() for _ in range(4))
    server = f"https://127.0.0.1:{api_port}"
    kubeconfig = state / "admin.kubeconfig"
    write_kubeconfig(kubeconfig, server, state / "ca.crt", token)
    context = ssl.create_default_context(cafile=str(state / "ca.crt"))
    insecure = ssl._create_unverified_context()  # the controller manager's self-signed port

    etcd_url, peer_url = f"http://127.0.0.1:{etcd_port}", f"http://127.0.0.1:{peer_port}"
    processes.start(
        "etcd",
        [
            str(bin_dir / "etcd"),
            "--name=test",
            f"--data-dir={state / 'etcd'}",
            f"--listen-client-urls={etcd_url}",
            f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls={peer_url}",
            f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=test={peer_url}",
            "--unsafe-no-fsync",
            "--log-level=warn",
        ],
    )
    processes.wait_ready("etcd", lambda: _http_ok(etcd_port, "/health"))

    processes.start(
        "kube-apiserver",
        [
            str(bin_dir / "kube-apiserver"),
            f"--etcd-servers={etcd_url}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={api_port}",
            f"--cert-dir={state / 'apiserver-certs'}",
            f"--tls-cert-file={state / 'apiserver.crt'}",
            f"--tls-private-key-file={state / 'apiserver.key'}",
            f"--token-auth-file={state / 'tokens.csv'}",
            f"--service-account-key-file={state / 'sa.pub'}",
            f"--service-account-signing-key-file={state / 'sa.key'}",
            f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
            f"--api-audiences={SERVICE_ACCOUNT_ISSUER}",
            "--authorization-mode=Node,RBAC",
            # With 127.0.0.1 the default reconciler logs an error forever: loopback
            # is not a valid endpoint for the kubernetes Service.
            "--endpoint-reconciler-type=none",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--profiling=false",
            *apiserver_flags,
        ],
    )
    processes.wait_ready("kube-apiserver", lambda: _https_ok(api_port, "/readyz", context, token))

    processes.start(
        "kube-controller-manager",
        [
            str(bin_dir / "kube-controller-manager"),
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            "--bind-address=127.0.0.1",
            f"--secure-port={kcm_port}",
            f"--cert-dir={state / 'kcm-certs'}",
            f"--service-account-private-key-file={state / 'sa.key'}",
            f"--root-ca-file={state / 'ca.crt'}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            # Otherwise it creates /usr/libexec/kubernetes/kubelet-plugins/...
            f"--flex-volume-plugin-dir={state / 'flexvolume'}",
            "--leader-elect=false",
            "--profiling=false",
        ],
    )
    processes.wait_ready(
        "kube-controller-manager", lambda: _https_ok(kcm_port, "/healthz", insecure, None)
    )
    return Cluster(
        server=server,
        host="127.0.0.1",
        port=api_port,
        token=token,
        ca_file=state / "ca.crt",
        kubeconfig=kubeconfig,
        etcd_url=etcd_url,
        state_dir=state,
        pids=tuple(child.pid for _, child in processes.children),
    )
