"""The per-namespace L7 proxy (waypoint).

Built so far, all pure (no sockets, no Trio): the route table. ``routes`` compiles the
HTTPRoutes and GRPCRoutes attached to Services into ordered matches per Service port
and decides per request (``decisions``); ``matching`` holds the compiled matches and
their precedence, ``filters`` and ``cors`` the filters as functions, ``request`` the
request value they read. Still to come: HBONE termination, the HTTP/1.1 and HTTP/2
codecs, retries, L7 policy and request metrics. It never opens listeners inside pods.
"""
