"""Telemetry resources: which one a workload gets, and the access logs its listeners carry."""

from __future__ import annotations

from dataclasses import replace

import pytest
from mesh_support import load_case

from trellis.api.loader import load_documents
from trellis.api.problem import ResourceError
from trellis.api.telemetry import Telemetry, WorkloadMode
from trellis.core.config import HttpConnectionManager
from trellis.xds.compile_dynamic import listener_resource
from trellis.xds.mesh import LISTENER_TYPE, MeshAccessLog, Translator
from trellis.xds.mesh.errors import UnsupportedConfigError
from trellis.xds.mesh.telemetry import (
    access_log_providers,
    telemetry_levels,
    tracing_settings,
)
from trellis.xds.mesh.tracing import MeshTracing

LABELS = {"app": "reviews", "version": "v1"}


def _telemetry(text: str) -> Telemetry:
    (found,) = load_documents(text, "t.yaml")
    assert isinstance(found, Telemetry)
    return found


def _resource(name: str, namespace: str, spec: str) -> Telemetry:
    text = (
        "apiVersion: telemetry.istio.io/v1\nkind: Telemetry\n"
        f"metadata: {{name: {name}, namespace: {namespace}}}\nspec: {spec}\n"
    )
    return _telemetry(text)


MESH = _resource("mesh-default", "istio-system", "{accessLogging: [{providers: [{name: envoy}]}]}")
NAMESPACE_OFF = _resource("quiet", "default", "{accessLogging: [{disabled: true}]}")
WORKLOAD_SERVER = _resource(
    "reviews-logs",
    "default",
    "{selector: {matchLabels: {app: reviews}}, accessLogging: [{match: {mode: SERVER}}]}",
)
OTHER_WORKLOAD = _resource(
    "ratings-logs", "default", "{selector: {matchLabels: {app: ratings}}, accessLogging: [{}]}"
)


def test_levels_go_from_the_mesh_to_the_workload() -> None:
    everything = [WORKLOAD_SERVER, OTHER_WORKLOAD, NAMESPACE_OFF, MESH]
    levels = telemetry_levels(everything, "default", LABELS)
    assert [t.metadata.name for t in levels] == ["mesh-default", "quiet", "reviews-logs"]
    assert [t.metadata.name for t in telemetry_levels(everything, "shop", LABELS)] == [
        "mesh-default"
    ]


def test_the_most_specific_level_decides_per_side() -> None:
    levels = [MESH, NAMESPACE_OFF, WORKLOAD_SERVER]
    assert access_log_providers(levels, WorkloadMode.SERVER) == frozenset({"envoy"})
    assert access_log_providers(levels, WorkloadMode.CLIENT) == frozenset()
    assert access_log_providers([MESH], WorkloadMode.CLIENT) == frozenset({"envoy"})
    assert access_log_providers([], WorkloadMode.CLIENT) is None


def test_tracing_fields_are_inherited_one_by_one() -> None:
    mesh = _resource("t", "istio-system", "{tracing: [{randomSamplingPercentage: 1}]}")
    workload = _resource(
        "w",
        "default",
        "{selector: {matchLabels: {app: reviews}}, tracing: [{disableSpanReporting: true}]}",
    )
    settings = tracing_settings([mesh, workload], WorkloadMode.CLIENT)
    assert settings.random_sampling_percentage == 1
    assert settings.disable_span_reporting is True
    assert settings.providers is None


def _logs_by_listener(*telemetries: Telemetry, mesh_log: MeshAccessLog | None) -> dict[str, int]:
    case = load_case("authz")  # explicit capture: outbound, HTTP and TCP inbound listeners
    config = replace(case.config, telemetries=telemetries, access_log=mesh_log)
    resources = Translator(config).translate(case.proxy, case.options)
    found = {}
    for name, message in resources[LISTENER_TYPE].items():
        listener = listener_resource(message)
        found[name] = len(listener.chains[0].filter.access_logs)
    return found


def test_without_telemetry_the_mesh_log_applies_everywhere() -> None:
    assert set(_logs_by_listener(mesh_log=MeshAccessLog()).values()) == {1}
    assert set(_logs_by_listener(mesh_log=None).values()) == {0}


def test_telemetry_turns_logs_on_and_off_per_side() -> None:
    # On mesh-wide without --access-log-file: the envoy provider writes to /dev/stdout.
    assert set(_logs_by_listener(MESH, mesh_log=None).values()) == {1}
    # Off for the namespace, then back on for this workload's inbound side only.
    logs = _logs_by_listener(MESH, NAMESPACE_OFF, WORKLOAD_SERVER, mesh_log=MeshAccessLog())
    assert logs == {"outbound": 0, "inbound_18080": 1, "inbound_19090": 1}


def test_unknown_providers_are_refused_with_the_field() -> None:
    case = load_case("authz")
    stackdriver = _resource("sd", "default", "{accessLogging: [{providers: [{name: sd}]}]}")
    zipkin = _resource("zk", "default", "{tracing: [{providers: [{name: zipkin}]}]}")
    for telemetry, field in (
        (stackdriver, "spec.accessLogging[0].providers[0].name"),
        (zipkin, "spec.tracing[0].providers[0].name"),
    ):
        config = replace(case.config, telemetries=(telemetry,))
        with pytest.raises(UnsupportedConfigError) as caught:
            Translator(config).translate(case.proxy, case.options)
        assert field in str(caught.value)


def _sampling_by_listener(*telemetries: Telemetry, tracing: bool = True) -> dict[str, float | None]:
    case = load_case("authz")
    mesh = MeshTracing("127.0.0.1", 4317, sampling=1.0) if tracing else None
    config = replace(case.config, telemetries=telemetries, tracing=mesh)
    resources = Translator(config).translate(case.proxy, case.options)
    found: dict[str, float | None] = {}
    for name, message in resources[LISTENER_TYPE].items():
        hcm = listener_resource(message).chains[0].filter
        if isinstance(hcm, HttpConnectionManager):
            found[name] = hcm.tracing.random_sampling if hcm.tracing is not None else None
    return found


def test_telemetry_sets_the_sampling_per_side_on_top_of_the_mesh_default() -> None:
    assert _sampling_by_listener() == {"outbound": 1.0, "inbound_18080": 1.0}
    everything = _resource("all", "istio-system", "{tracing: [{randomSamplingPercentage: 100}]}")
    quiet_server = _resource(
        "quiet",
        "default",
        "{tracing: [{match: {mode: SERVER}, disableSpanReporting: true}]}",
    )
    assert _sampling_by_listener(everything, quiet_server) == {
        "outbound": 100.0,
        "inbound_18080": None,
    }
    # Without the mesh's collector nothing traces, whatever Telemetry says.
    assert _sampling_by_listener(everything, tracing=False) == {
        "outbound": None,
        "inbound_18080": None,
    }


@pytest.mark.parametrize(
    ("spec", "text"),
    [
        ("{metrics: [{}]}", "spec.metrics: field not supported by Trellis"),
        ("{accessLogging: [{filter: {expression: 'true'}}]}", "filter: field not supported"),
        ("{tracing: [{randomSamplingPercentage: 150}]}", "must be 0-100"),
        ("{accessLogging: [{match: {mode: BOTH}}]}", "CLIENT_AND_SERVER"),
        ("{targetRefs: []}", "targetRefs: field not supported"),
    ],
)
def test_bad_telemetry_names_the_field(spec: str, text: str) -> None:
    with pytest.raises(ResourceError) as caught:
        _resource("bad", "default", spec)
    assert text in str(caught.value)
