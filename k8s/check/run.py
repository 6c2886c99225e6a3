"""Which checks ``ambit check --pre`` and ``ambit check`` run, in order, and running
them: the client is made from the kubeconfig (or in-cluster credentials), the API server
must answer before anything else is asked, then every check runs in turn, each
reporting its own outcome (one failing does not stop the others)."""

from __future__ import annotations

from typing import Final

from k8s.check import certs, cluster, controlplane, nodes
from k8s.check.base import Check, CheckConfig, Context, Result, run_check
from k8s.sources.api import Requests

API: Final = "kubernetes-api"
CLIENT: Final = "can initialize the client"
QUERY: Final = "can query the Kubernetes API"
VERSION: Final = Check("kubernetes-version", "is running the minimum Kubernetes API version",
                       cluster.minimum_version)  # fmt: skip
GATEWAY: Final = Check("gateway-api", "Gateway API's CRDs are installed, of a version ambit reads",
                       cluster.gateway_api_crds)  # fmt: skip
ISTIO: Final = (
    Check("istio", "Istio is not installed on this cluster", cluster.istio_not_installed),
    Check("istio", "no namespace would be captured by both meshes",
          cluster.no_namespace_in_both_meshes),
    Check("istio", "no objects of Istio's kinds that ambit ignores",
          cluster.no_ignored_istio_objects),
)  # fmt: skip
PRE_CHECKS: Final = (
    VERSION,
    Check("pre-kubernetes-setup", "control plane namespace does not already exist",
          cluster.namespace_absent),
    Check("pre-kubernetes-setup", "can create non-namespaced resources",
          cluster.can_create_cluster_resources),
    Check("pre-kubernetes-setup", "can create namespaced resources",
          cluster.can_create_namespaced_resources),
    GATEWAY,
    *ISTIO,
)  # fmt: skip
NAMESPACE: Final = "control plane namespace exists"
_INSTALLED: Final = (
    ("ambit-controlplane", "control plane ServiceAccount has the permissions it needs",
     controlplane.rbac),
    ("ambit-controlplane", "control plane Deployment is available",
     controlplane.deployment_available),
    ("ambit-controlplane", "control plane pods are Ready", controlplane.pods_ready),
    ("ambit-controlplane", "control plane is this ambit's version", controlplane.same_version),
    ("ambit-controlplane", "control plane Service has ready endpoints on 15010, 15012, 15014",
     controlplane.service_endpoints),
    ("ambit-certificates", "the CA's certificates are valid and not near expiry", certs.ca_secret),
)  # fmt: skip
NODE_SIDE: Final = "the node side is installed (ztunnel and node agent DaemonSets)"
_NODE: Final = (
    ("ztunnel and the node agent are Ready on every node", nodes.readiness_check),
    ("the CNI plugin is in every node's chain", nodes.plugins_check),
    ("every meshed pod is enrolled by its node's agent", nodes.enrolment_check),
)
CHECKS: Final = (
    VERSION,
    Check("ambit-crds", "ambit's CRDs are installed and established",
          controlplane.crds_established),
    Check("ambit-controlplane", NAMESPACE, controlplane.namespace_exists),
    # Without the namespace, what lives in it is not asked about: one failure, one hint.
    *(Check(group, name, run, after=NAMESPACE) for group, name, run in _INSTALLED),
    Check("ambit-node", NODE_SIDE, nodes.installed_check, after=NAMESPACE),
    # Without the node side (a warning), its per-node checks are not run.
    *(Check("ambit-node", name, run, after=NODE_SIDE) for name, run in _NODE),
    GATEWAY,
    *ISTIO,
)  # fmt: skip


def checks_for(config: CheckConfig) -> tuple[Check, ...]:
    return PRE_CHECKS if config.pre else CHECKS


async def check_with(api: Requests, config: CheckConfig) -> list[Result]:
    """The checks of ``config`` with an open client: the API server answering first
    (nothing more is asked if it does not), then each in turn, but for those whose
    ``after`` check did not pass (failed, warned, or was not run)."""
    context = Context(api, config)
    query = await run_check(Check(API, QUERY, cluster.can_query), context)
    if query.status == "fail":
        return [query]
    results = [query]
    not_passed: set[str] = set()
    for check in checks_for(config):
        if check.after in not_passed:
            not_passed.add(check.name)
            continue
        results.append(await run_check(check, context))
        if results[-1].status != "ok":
            not_passed.add(check.name)
    return results


async def run_checks(config: CheckConfig) -> list[Result]:
    """Every check of ``config``, from making the client on."""
    from k8s.sources.kubernetes import KubeSourceConfig, KubeSourceError, open_kube_api

    source = KubeSourceConfig(kubeconfig=config.kubeconfig, context=config.context)
    results: list[Result] = []
    try:
        async with open_kube_api(source) as api:
            results = [Result(API, CLIENT), *await check_with(api, config)]
    except* KubeSourceError as group:  # raised through trio-asyncio's nursery
        hint = "give --kubeconfig PATH (and --context), or set KUBECONFIG"
        results = [Result(API, CLIENT, "fail", str(_first(group)), hint)]
    return results


def _first(group: BaseException) -> BaseException:
    """The first exception of a (nested) exception group."""
    for _ in range(100):
        if not isinstance(group, BaseExceptionGroup):
            break
        group = group.exceptions[0]
    return group
