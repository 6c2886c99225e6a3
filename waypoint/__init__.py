"""The per-namespace L7 proxy (waypoint): ``ambit waypoint run``.

- the process (:mod:`waypoint.main`, :mod:`waypoint.config`) and its data path:
  :mod:`waypoint.proxy` (a CONNECT: which Service or pod, which protocol),
  :mod:`waypoint.http_session` (HTTP/1.1 over :mod:`waypoint.http1`, httptools),
  :mod:`waypoint.h2_session` (HTTP/2 and gRPC on the shared engine),
  :mod:`waypoint.upstream` (endpoints: least request, connections over HBONE),
  :mod:`waypoint.protocol` (declared or sniffed), :mod:`waypoint.telemetry`;
- what a request must pass, pure: :mod:`waypoint.gate` over :mod:`waypoint.request`
  (which policies bind), :mod:`waypoint.authz` (AuthorizationPolicy),
  :mod:`waypoint.jwt` and :mod:`waypoint.jwks` (RequestAuthentication);
- where it goes, pure: :mod:`waypoint.routes` compiles HTTPRoutes and GRPCRoutes per
  Service port and decides per request (:mod:`waypoint.decisions`), with
  :mod:`waypoint.matching`, :mod:`waypoint.filters`, :mod:`waypoint.cors` over the
  request value of :mod:`waypoint.http_request`;
- :mod:`waypoint.replies`: the answers it gives itself, Envoy's and gRPC's shapes.

It never opens listeners inside pods, and imports only :mod:`mesh`.
"""
