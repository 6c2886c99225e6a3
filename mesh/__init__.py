"""What every ambit process shares: identity, TLS, HBONE, telemetry.

Nothing here imports from ``ambit``, ``ztunnel``, ``waypoint``, ``ca`` or ``k8s``.
"""
