"""The per-namespace L7 proxy (waypoint).

It will own HBONE termination, the HTTP/1.1 (h11) and HTTP/2 (h2) codecs,
route matching, filters, retries and timeouts, L7 policy and request metrics.
It never opens listeners inside pods. Built so far, pure and tested, with no
proxy running them yet: its policy (:mod:`waypoint.request`, which policies
bind and what a request looks like to them; :mod:`waypoint.authz`,
AuthorizationPolicy; :mod:`waypoint.jwt`, RequestAuthentication;
:mod:`waypoint.jwks`, the key sets it fetches) and its local replies
(:mod:`waypoint.replies`). It imports only :mod:`mesh`.
"""
