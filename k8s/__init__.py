"""The control plane.

It will own ``sources`` (Kubernetes API, local manifest files), ``translate``
(objects to the mesh model, pure functions), ``server`` (the config stream to
proxies), ``waypoints`` (Gateway to Deployment/Service) and ``local`` (the
one-machine cluster). It never touches sockets of the data path.
"""
