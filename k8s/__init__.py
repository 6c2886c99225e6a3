"""The control plane.

``manifests`` (with ``manifest_reader``, ``core_manifests``,
``discovery_manifests``, ``policy_manifests``, ``gateway_manifests`` and
``route_manifests``: YAML or API dicts to typed objects), ``translate`` (objects to
the mesh model, sans-IO and incremental, over ``claims`` and ``indexes``;
``translate_l7`` says what waypoints, routes and RequestAuthentications mean;
``endpoints`` is the one rule for a Service's endpoints from its pods,
``translate_slices`` a selectorless Service's from its EndpointSlices and a
workload's locality from its Node; ``problems`` what is reported), ``store`` (the
objects, their status, the listing gate), ``files_source``, ``config_server`` (the config stream to
proxies), ``controlplane`` (translate, publish, the CA with node authorization),
``localmesh`` (the mesh's hooks into local mode) and ``local`` (the one-machine
cluster). Not built yet: a Kubernetes API source and the waypoint deployer. It
never touches sockets of the data path.
"""
