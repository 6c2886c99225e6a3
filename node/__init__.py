"""The node side, on Kubernetes and in local mode (docs/node.md): ``cni_plugin`` is the chained CNI
plugin ``ambit-cni`` (standard library only, no ambit import: it runs as its own
process for every pod sandbox, copied to the node as one file); ``cni_config``
installs it (the binary, its kubeconfig, its entry last in the node's CNI config)
and takes it out again, restoring the config byte for byte;
``agent`` (with ``sources`` and ``follow``, ``pods``, ``records``,
``procscan``, ``cni_server``, ``main``) is the node agent, and ``zds_client`` its end of
ztunnel's pods socket."""
