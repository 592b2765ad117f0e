"""PeerAuthentication precedence: workload > namespace > mesh, oldest wins, UNSET inherits."""

from __future__ import annotations

import pytest

from trellis.api.loader import load_documents
from trellis.api.security import MtlsMode, PeerAuthentication
from trellis.xds.mesh.peer_authn import effective_mtls, mtls_mode

SHOP = {"app": "shop", "version": "v1"}


def pa(
    name: str,
    namespace: str,
    mode: str | None = None,
    selector: dict[str, str] | None = None,
    ports: dict[int, str] | None = None,
    created: str | None = None,
) -> PeerAuthentication:
    spec: dict[str, object] = {}
    if mode is not None:
        spec["mtls"] = {"mode": mode}
    if selector is not None:
        spec["selector"] = {"matchLabels": selector}
    if ports is not None:
        spec["portLevelMtls"] = {str(port): {"mode": value} for port, value in ports.items()}
    metadata: dict[str, object] = {"name": name, "namespace": namespace}
    if created is not None:
        metadata["creationTimestamp"] = created
    return PeerAuthentication.model_validate(
        {
            "apiVersion": "security.istio.io/v1beta1",
            "kind": "PeerAuthentication",
            "metadata": metadata,
            "spec": spec,
        }
    )


def test_nothing_means_permissive() -> None:
    result = effective_mtls([], "shop", SHOP)
    assert result.mode is MtlsMode.PERMISSIVE
    assert result.for_port(8080) is MtlsMode.PERMISSIVE
    assert (result.mesh_policy, result.namespace_policy, result.workload_policy) == (None,) * 3


@pytest.mark.parametrize("root", ["trellis-system", "istio-system"])
def test_mesh_policy_in_either_root_namespace(root: str) -> None:
    assert mtls_mode([pa("default", root, "STRICT")], "shop", SHOP, 8080) is MtlsMode.STRICT


def test_narrower_levels_win_and_unset_inherits() -> None:
    mesh = pa("default", "istio-system", "STRICT")
    namespace = pa("ns", "shop", "DISABLE")
    workload = pa("w", "shop", "PERMISSIVE", selector={"app": "shop"})
    assert mtls_mode([mesh, namespace], "shop", SHOP, 80) is MtlsMode.DISABLE
    assert mtls_mode([mesh, namespace, workload], "shop", SHOP, 80) is MtlsMode.PERMISSIVE
    unset_workload = pa("w", "shop", None, selector={"app": "shop"})
    assert mtls_mode([mesh, namespace, unset_workload], "shop", SHOP, 80) is MtlsMode.DISABLE
    unset_namespace = pa("ns", "shop", "UNSET")
    assert mtls_mode([mesh, unset_namespace, unset_workload], "shop", SHOP, 80) is MtlsMode.STRICT
    result = effective_mtls([mesh, namespace, workload], "shop", SHOP)
    assert result.mesh_policy == ("PeerAuthentication", "istio-system", "default")
    assert result.namespace_policy == ("PeerAuthentication", "shop", "ns")
    assert result.workload_policy == ("PeerAuthentication", "shop", "w")


def test_policies_of_other_namespaces_and_selectors_do_not_apply() -> None:
    others = [
        pa("ns", "cart", "DISABLE"),
        pa("w", "shop", "DISABLE", selector={"app": "cart"}),
        pa("w2", "cart", "DISABLE", selector={"app": "shop"}),
        # A selector policy in the root namespace is no mesh policy (Istio ignores it).
        pa("root-selector", "istio-system", "DISABLE", selector={"app": "shop"}),
    ]
    assert mtls_mode(others, "shop", SHOP, 80) is MtlsMode.PERMISSIVE


def test_port_level_overrides_and_unset_port_inherits() -> None:
    namespace = pa("ns", "shop", "STRICT")
    workload = pa(
        "w", "shop", "UNSET", selector={"app": "shop"}, ports={8080: "DISABLE", 9090: "UNSET"}
    )
    result = effective_mtls([namespace, workload], "shop", SHOP)
    assert result.mode is MtlsMode.STRICT
    assert result.for_port(8080) is MtlsMode.DISABLE
    assert result.for_port(9090) is MtlsMode.STRICT
    assert result.for_port(7070) is MtlsMode.STRICT


def test_oldest_wins_by_creation_time_else_by_name() -> None:
    newer = pa("a", "shop", "DISABLE", created="2024-05-02T00:00:00Z")
    older = pa("b", "shop", "STRICT", created="2024-05-01T00:00:00Z")
    assert mtls_mode([newer, older], "shop", SHOP, 80) is MtlsMode.STRICT
    assert mtls_mode([older, newer], "shop", SHOP, 80) is MtlsMode.STRICT
    by_name = [pa("b", "shop", "STRICT"), pa("a", "shop", "DISABLE")]
    assert mtls_mode(by_name, "shop", SHOP, 80) is MtlsMode.DISABLE
    workloads = [
        pa("z", "shop", "DISABLE", selector={"app": "shop"}, created="2024-01-01T00:00:00Z"),
        pa("y", "shop", "STRICT", selector={"version": "v1"}, created="2024-02-01T00:00:00Z"),
    ]
    assert mtls_mode(workloads, "shop", SHOP, 80) is MtlsMode.DISABLE


def test_workload_in_the_root_namespace() -> None:
    policies = [pa("default", "trellis-system", "STRICT")]
    assert mtls_mode(policies, "trellis-system", {"app": "x"}, 80) is MtlsMode.STRICT


def test_validation_follows_istio() -> None:
    with pytest.raises(ValueError, match="portLevelMtls needs a selector"):
        pa("ns", "shop", "STRICT", ports={8080: "DISABLE"})
    with pytest.raises(ValueError, match="at least one port"):
        PeerAuthentication.model_validate(
            {
                "apiVersion": "security.istio.io/v1",
                "kind": "PeerAuthentication",
                "metadata": {"name": "w"},
                "spec": {"selector": {"matchLabels": {"a": "b"}}, "portLevelMtls": {}},
            }
        )
    (loaded,) = load_documents(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n"
        "metadata: {name: w, namespace: shop}\n"
        "spec: {selector: {matchLabels: {app: shop}}, portLevelMtls: {8080: {mode: STRICT}}}\n",
        "pa.yaml",
    )
    assert isinstance(loaded, PeerAuthentication)
    assert loaded.spec.port_level_mtls is not None
    assert loaded.spec.port_level_mtls[8080].mode is MtlsMode.STRICT
