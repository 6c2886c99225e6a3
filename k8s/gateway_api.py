"""Gateway API's CRDs as ambit sees them: the release it is tested with, and how to
install it (ambit ships no copies of another project's CRDs). ``ambit install
--gateway-api`` prints :data:`INSTALL_HELP`; ``ambit check`` gives it as the hint when
the CRDs are missing."""

from __future__ import annotations

from typing import Final

# The release tests/kube installs and ambit is tested against (tests/kube/go.mod pins it).
VERSION: Final = "v1.6.3"
BUNDLE_VERSION_ANNOTATION: Final = "gateway.networking.k8s.io/bundle-version"
INSTALL_COMMAND: Final = f"""\
kubectl get crd gateways.gateway.networking.k8s.io >/dev/null 2>&1 || \\
  kubectl apply --server-side -f \\
  https://github.com/kubernetes-sigs/gateway-api/releases/download/{VERSION}/standard-install.yaml"""
INSTALL_HELP: Final = f"""\
ambit reads Gateway API's Gateway, GatewayClass, HTTPRoute and GRPCRoute (waypoints and
their routes) but does not ship their CRDs. Install the standard channel's CRDs, if the
cluster has none yet:

{"".join("  " + line + chr(10) for line in INSTALL_COMMAND.splitlines())}
ambit is tested with {VERSION}. Without them, ambit runs without waypoints; it
starts watching the kinds when their CRDs appear.
"""
