"""The per-node L4 proxy (ztunnel).

It will own: ``inbound`` (15008 HBONE server, 15006 plaintext capture),
``outbound`` (15001 capture, resolve, HBONE or passthrough), ``redirect``
(network-namespace entry, iptables rules, SO_ORIGINAL_DST), ``authz`` (L4
policy), ``certs`` (per-identity certificates) and ``admin``. It never parses
HTTP beyond the CONNECT of HBONE.
"""
