"""What the root-certificate publisher writes, decided without an API server."""

from __future__ import annotations

from typing import Any

from trellis.kube.root_cert import ROOT_CERT_CONFIG_MAP, plan_root_certs, root_cert_config_map

ROOT = "-----BEGIN CERTIFICATE-----\nnew\n-----END CERTIFICATE-----\n"
OLD = "-----BEGIN CERTIFICATE-----\nold\n-----END CERTIFICATE-----\n"


def namespace(name: str, phase: str = "Active") -> dict[str, Any]:
    return {"metadata": {"name": name}, "status": {"phase": phase}}


def existing(ns: str, pem: str, **extra: str) -> dict[str, Any]:
    config_map = root_cert_config_map(ns, pem)
    config_map["metadata"]["resourceVersion"] = "7"
    config_map["data"].update(extra)
    return config_map


def test_missing_config_maps_are_created_outside_kubernetes_own_namespaces() -> None:
    namespaces = [namespace(n) for n in ("shop", "default", "kube-system", "kube-public")]
    plan = plan_root_certs(namespaces, [], ROOT)
    assert [c["metadata"]["namespace"] for c in plan.create] == ["default", "shop"]
    assert plan.update == ()
    created = plan.create[0]
    assert created["metadata"]["name"] == ROOT_CERT_CONFIG_MAP
    assert created["data"] == {"root-cert.pem": ROOT}


def test_only_a_wrong_root_is_rewritten_keeping_the_version_and_other_keys() -> None:
    plan = plan_root_certs(
        [namespace("shop"), namespace("web")],
        [existing("shop", ROOT), existing("web", OLD, note="kept")],
        ROOT,
    )
    assert plan.create == ()
    (update,) = plan.update
    assert update["metadata"]["namespace"] == "web"
    assert update["metadata"]["resourceVersion"] == "7"
    assert update["data"] == {"root-cert.pem": ROOT, "note": "kept"}


def test_nothing_to_do_when_every_namespace_holds_the_root() -> None:
    plan = plan_root_certs([namespace("shop")], [existing("shop", ROOT)], ROOT)
    assert not plan


def test_terminating_namespaces_and_other_config_maps_are_left_alone() -> None:
    other = existing("shop", OLD)
    other["metadata"]["name"] = "something-else"
    plan = plan_root_certs([namespace("shop"), namespace("leaving", "Terminating")], [other], ROOT)
    assert [c["metadata"]["namespace"] for c in plan.create] == ["shop"]
    assert plan.update == ()
