"""The Helm charts under ``charts/``: generated from ``ambit install`` (``k8s.charts``),
linted and rendered with Helm built from its Go module (``make helm``, which runs
``tests/helm/build.sh``)."""
