"""The baselines' proxies: an stunnel pair (mutual TLS 1.3) and haproxy (HTTP).

- stunnel: a client stunnel in the plain client pod's netns (listening on its
  loopback) and a server stunnel in the plain server pod's netns, the L4 peer
  of two ztunnels: every client connection becomes its own mutual-TLS 1.3
  connection between the pair (certificates from a throwaway CA made here).
- haproxy: one HTTP proxy in the plain client pod's netns (``mode http``,
  keep-alive and connection reuse to the server), the L7 peer of the
  waypoint; one thread, like one ztunnel's event loop. Besides HTTP/1.1 it
  takes h2c (prior knowledge) and gRPC, and speaks HTTP/2 to the server for
  them, as the waypoint does.

Config text is made by pure functions; the processes are started through
:class:`bench.compare.system.Daemons` and stopped by PID.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from bench.compare.system import Daemons, in_netns, wait_listening
from bench.compare.topology import GRPC_PORT, H2C_PORT, HTTP_PORT, IPERF_PORT, Pod

STUNNEL_IPERF = 15201  # client side, on the client pod's loopback
STUNNEL_HTTP = 18080
STUNNEL_TLS_IPERF = 15202  # server side, TLS, on the server pod's address
STUNNEL_TLS_HTTP = 18443
HAPROXY_HTTP = 28080
HAPROXY_H2C = 28081
HAPROXY_GRPC = 28051


@dataclass(frozen=True)
class Certs:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_certs(directory: Path, server_ip: str) -> Certs:
    """A throwaway CA and two leaves (P-256): the server's with its IP SAN, the client's."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("bench CA"))
        .issuer_name(_name("bench CA"))
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

    def leaf(cn: str, usage: x509.ObjectIdentifier, san: x509.GeneralName) -> tuple[bytes, bytes]:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.SubjectAlternativeName([san]), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return cert.public_bytes(serialization.Encoding.PEM), key_pem

    directory.mkdir(parents=True, exist_ok=True)
    server = leaf(
        "server", ExtendedKeyUsageOID.SERVER_AUTH,
        x509.IPAddress(ipaddress.ip_address(server_ip)),
    )  # fmt: skip
    client = leaf("client", ExtendedKeyUsageOID.CLIENT_AUTH, x509.DNSName("client"))
    certs = Certs(
        directory / "ca.pem",
        directory / "server.pem",
        directory / "server.key",
        directory / "client.pem",
        directory / "client.key",
    )
    certs.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    certs.server_cert.write_bytes(server[0])
    certs.server_key.write_bytes(server[1])
    certs.client_cert.write_bytes(client[0])
    certs.client_key.write_bytes(client[1])
    for path in (certs.server_key, certs.client_key):
        path.chmod(0o600)
    return certs


def stunnel_client_conf(certs: Certs, server_ip: str) -> str:
    """Client side: plaintext on the client pod's loopback, mTLS 1.3 to the server stunnel."""
    common = _stunnel_common()
    tls = (
        f"client = yes\ncert = {certs.client_cert}\nkey = {certs.client_key}\n"
        f"CAfile = {certs.ca}\nverifyChain = yes\ncheckIP = {server_ip}\n"
        "sslVersionMin = TLSv1.3\n"
    )
    return (
        f"{common}[iperf]\naccept = 127.0.0.1:{STUNNEL_IPERF}\n"
        f"connect = {server_ip}:{STUNNEL_TLS_IPERF}\n{tls}"
        f"[http]\naccept = 127.0.0.1:{STUNNEL_HTTP}\n"
        f"connect = {server_ip}:{STUNNEL_TLS_HTTP}\n{tls}"
    )


def stunnel_server_conf(certs: Certs) -> str:
    """Server side: mTLS 1.3 in (client certificate required), plaintext to the local servers."""
    common = _stunnel_common()
    tls = (
        f"cert = {certs.server_cert}\nkey = {certs.server_key}\nCAfile = {certs.ca}\n"
        "verifyChain = yes\nrequireCert = yes\nsslVersionMin = TLSv1.3\n"
    )
    return (
        f"{common}[iperf]\naccept = 0.0.0.0:{STUNNEL_TLS_IPERF}\n"
        f"connect = 127.0.0.1:{IPERF_PORT}\n{tls}"
        f"[http]\naccept = 0.0.0.0:{STUNNEL_TLS_HTTP}\n"
        f"connect = 127.0.0.1:{HTTP_PORT}\n{tls}"
    )


def _stunnel_common() -> str:
    # Logs (one line per connection, stunnel's default level) go to stderr, a file. No syslog:
    # without a syslog daemon glibc writes each line to the console, 10 ms a connection.
    return (
        "foreground = yes\npid =\nsyslog = no\nsocket = l:TCP_NODELAY=1\nsocket = r:TCP_NODELAY=1\n"
    )


def haproxy_conf(server_ip: str) -> str:
    """One-thread HTTP proxy on the client pod's loopback, keep-alive and reuse to nginx."""
    return f"""\
global
  nbthread 1
  maxconn 9000
defaults
  mode http
  option http-keep-alive
  http-reuse always
  timeout connect 5s
  timeout client 600s
  timeout server 600s
  timeout http-keep-alive 600s
frontend bench
  bind 127.0.0.1:{HAPROXY_HTTP}
  default_backend nginx
backend nginx
  server server {server_ip}:{HTTP_PORT}
frontend bench-h2c
  bind 127.0.0.1:{HAPROXY_H2C} proto h2
  default_backend nginx-h2c
backend nginx-h2c
  server server {server_ip}:{H2C_PORT} proto h2
frontend bench-grpc
  bind 127.0.0.1:{HAPROXY_GRPC} proto h2
  default_backend grpc
backend grpc
  server server {server_ip}:{GRPC_PORT} proto h2
"""


@dataclass(frozen=True)
class PeerPids:
    stunnel: list[int]
    haproxy: list[int]


def start_peers(daemons: Daemons, workdir: Path, client: Pod, server: Pod) -> PeerPids:
    """The stunnel pair and haproxy between the plain pods; wait until they listen."""
    certs = make_certs(workdir / "certs", server.ip)
    server_conf = workdir / "stunnel-server.conf"
    server_conf.write_text(stunnel_server_conf(certs))
    client_conf = workdir / "stunnel-client.conf"
    client_conf.write_text(stunnel_client_conf(certs, server.ip))
    haproxy = workdir / "haproxy.cfg"
    haproxy.write_text(haproxy_conf(server.ip))
    s_pid = daemons.start("stunnel-server", in_netns(server.netns, ["stunnel4", str(server_conf)]))
    c_pid = daemons.start("stunnel-client", in_netns(client.netns, ["stunnel4", str(client_conf)]))
    h_pid = daemons.start("haproxy", in_netns(client.netns, ["haproxy", "-db", "-f", str(haproxy)]))
    for netns, port in (
        (server.netns, STUNNEL_TLS_IPERF),
        (server.netns, STUNNEL_TLS_HTTP),
        (client.netns, STUNNEL_IPERF),
        (client.netns, STUNNEL_HTTP),
        (client.netns, HAPROXY_HTTP),
        (client.netns, HAPROXY_H2C),
        (client.netns, HAPROXY_GRPC),
    ):
        wait_listening(netns, port)
    daemons.check_alive()
    return PeerPids(stunnel=[c_pid, s_pid], haproxy=[h_pid])
