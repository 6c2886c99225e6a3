"""Sources of objects for the control plane's store, from the Kubernetes API.

- :mod:`k8s.sources.watch`: the LIST-then-WATCH protocol of one resource, sans-IO;
- :mod:`k8s.sources.strip`: what of an API object is kept;
- :mod:`k8s.sources.resources`: the API resources that feed the store's kinds, and
  which of them the cluster's CRDs serve;
- :mod:`k8s.sources.feed`: watch changes into :class:`k8s.store.ObjectStore`, where raw
  dicts become typed objects;
- :mod:`k8s.sources.api`: the seam between the Trio loop and its requests (the ``Api``
  and ``Watch`` protocols, their errors) and the per-resource statistics;
- :mod:`k8s.sources.driver`: the Trio loop, a task per resource (``KubernetesSource``);
- :mod:`k8s.sources.kubernetes`: the requests (kubernetes-asyncio under trio-asyncio, the
  only module importing either), shared with the CA.

The files source (:mod:`k8s.files_source`) feeds the same store.
"""
