# The ambit image: one image, every component a command of `ambit` (controlplane,
# ztunnel, waypoint run, ca, install...). Built by `make image`, which tags it
# ambit:VERSION, the name `ambit install` and the Helm charts use by default.
#
# The install is install/install-ambit.sh and nothing else (the same script
# tests/integration/test_install_script.py runs): a venv in /opt/ambit with the
# runtime dependencies requirements.lock pins, no pip or setuptools inside.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
# The build stage's pip runs as root into a venv it owns: nothing to warn about.
ENV PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
# .dockerignore keeps the context to what the install reads.
COPY . .
RUN install/install-ambit.sh /opt/ambit

# The same base as the build stage: the venv's python is a link to its /usr/local/bin/python3.11.
FROM ${PYTHON_IMAGE}
ARG PYTHON_IMAGE
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="ambit" \
      org.opencontainers.image.description="An ambient (sidecarless) service mesh for Kubernetes, written in Python on Trio: one image, every component a command" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}"
# No Debian package is added. Of the components in this image, none runs a system
# command on a cluster: the control plane, the CA and the waypoint speak sockets and the
# API server only, and the ztunnel enters pod network namespaces by setns(2) and never
# runs iptables (the capture rules belong to the node). iptables and iproute2 will come
# with the component that installs those rules (the node agent / CNI plugin), not before.
#
# UID and GID 1337 (Istio's proxy user), what k8s/install.py's Deployment runs as
# (runAsUser: 1337): the control plane and the waypoint. A component that needs more
# (the node side) says so in its own securityContext.
RUN groupadd --system --gid 1337 ambit \
    && useradd --system --uid 1337 --gid 1337 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin ambit
COPY --from=build /opt/ambit /opt/ambit
# Bytecode was compiled at install time; the root filesystem is read-only on a cluster.
ENV PATH=/opt/ambit/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 1337:1337
ENTRYPOINT ["ambit"]
CMD ["--help"]
