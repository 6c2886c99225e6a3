"""``ambit check`` and ``ambit check --pre``: is the cluster ready for ambit, and is ambit
installed and healthy on it (like ``linkerd check``).

- :mod:`k8s.check.base`: a check's :class:`~k8s.check.base.Outcome` (ok, warn, fail,
  with a message and a hint), the :class:`~k8s.check.base.Context` checks ask the API
  server through, and the :class:`~k8s.check.base.Result` lines;
- :mod:`k8s.check.cluster`: the API server, its version, what the user may create, Gateway
  API's CRDs, Istio on the same cluster and Istio's kinds ambit ignores;
- :mod:`k8s.check.controlplane`: ambit's CRDs, the control plane's RBAC, Deployment, pods
  and Service, the node side;
- :mod:`k8s.check.certs`: the CA's Secret and its certificates' dates;
- :mod:`k8s.check.run`: which checks ``--pre`` and a plain check run, in order;
- :mod:`k8s.check.report`: the results as text (grouped, linkerd's marks) or JSON, and the
  exit code.
"""
