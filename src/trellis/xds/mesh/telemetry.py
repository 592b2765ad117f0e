"""Which Telemetry settings a workload gets: mesh, then namespace, then workload level.

As in Istio, the Telemetry resources that apply to a workload are, from the
least to the most specific: the one without a selector in the mesh's root
namespace, the one without a selector in the workload's namespace, and the
one in its namespace whose selector matches its labels (of several at one
level, the first by name). A more specific level overrides what it sets:

- access logging, per side (CLIENT: the outbound listener, SERVER: the inbound
  ones) and per provider: an entry names providers (none: the default,
  `envoy`) and turns them on, or off with `disabled: true`;
- tracing, field by field (`randomSamplingPercentage`,
  `disableSpanReporting`, `providers`), missing values filled in from the
  levels above.

Trellis has one access log provider, Istio's built-in `envoy`: the mesh's
access log (the control plane's `--access-log-file`, else `/dev/stdout` as
JSON), and one tracing provider, `otel`: the collector of the control
plane's `--tracing-otlp-address` (without it nothing traces, whatever the
Telemetry resources say).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from trellis.api.policy_selector import is_root_namespace, selector_is_empty
from trellis.api.telemetry import Telemetry, WorkloadMode

ENVOY_PROVIDER = "envoy"
"""Istio's built-in access log provider (Envoy's file logger)."""
ACCESS_LOG_PROVIDERS = frozenset({ENVOY_PROVIDER})
TRACING_PROVIDER = "otel"
"""The mesh's tracing provider: the OTLP collector of `--tracing-otlp-address`."""
TRACING_PROVIDERS = frozenset({TRACING_PROVIDER})


def telemetry_levels(
    telemetries: Iterable[Telemetry], namespace: str, labels: Mapping[str, str]
) -> list[Telemetry]:
    """The Telemetry resources that apply to a workload, least specific first;
    `telemetries` in namespace and name order (the first by name wins a level)."""
    mesh: Telemetry | None = None
    space: Telemetry | None = None
    workload: Telemetry | None = None
    for item in telemetries:  # sorted by namespace and name (`MeshConfig.of`)
        selector = item.spec.selector
        here = item.metadata.namespace
        if selector_is_empty(selector):
            if here == namespace and space is None:
                space = item
            elif is_root_namespace(here) and mesh is None:
                mesh = item
        elif here == namespace and workload is None:
            assert selector is not None
            if selector.selects(labels):
                workload = item
    return [item for item in (mesh, space, workload) if item is not None]


def access_log_providers(levels: Sequence[Telemetry], side: WorkloadMode) -> frozenset[str] | None:
    """The access log providers on for `side` (CLIENT or SERVER); None when no level says
    anything about access logging there (the mesh default applies)."""
    enabled: dict[str, bool] = {}
    decided = False
    for item in levels:
        for entry in item.spec.access_logging or ():
            if not entry.mode.covers(side):
                continue
            decided = True
            for name in [p.name for p in entry.providers] or [ENVOY_PROVIDER]:
                enabled[name] = not entry.disabled
    if not decided:
        return None
    return frozenset(name for name, on in enabled.items() if on)


@dataclass(frozen=True, slots=True)
class TracingSettings:
    """What the Telemetry levels say about tracing on one side (None: not said)."""

    providers: tuple[str, ...] | None = None
    random_sampling_percentage: float | None = None
    disable_span_reporting: bool | None = None


def tracing_settings(levels: Sequence[Telemetry], side: WorkloadMode) -> TracingSettings:
    """Tracing for `side`, each field from the most specific level that sets it."""
    providers: tuple[str, ...] | None = None
    percentage: float | None = None
    disabled: bool | None = None
    for item in levels:
        for entry in item.spec.tracing or ():
            if not entry.mode.covers(side):
                continue
            if entry.providers:
                providers = tuple(p.name for p in entry.providers)
            if entry.random_sampling_percentage is not None:
                percentage = entry.random_sampling_percentage
            if entry.disable_span_reporting is not None:
                disabled = entry.disable_span_reporting
    return TracingSettings(providers, percentage, disabled)
