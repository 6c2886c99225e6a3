"""The per-namespace L7 proxy (waypoint).

It will own HBONE termination, the HTTP/1.1 (h11) and HTTP/2 (h2) codecs,
route matching, filters, retries and timeouts, L7 policy and request metrics.
It never opens listeners inside pods.
"""
