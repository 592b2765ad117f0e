"""Valid Istio config that no Trellis proxy would carry out: refused, never dropped.

The models accept these fields because they are Istio's and will be honoured
later; until then translating config that sets them is an error naming the field
(the REST API refuses such an apply with TRL0201), so a user never believes in
behaviour that is not there — above all mTLS that is not happening.
"""

from __future__ import annotations

from trellis.api.networking import DestinationRule, TLSMode, VirtualService
from trellis.api.telemetry import Telemetry
from trellis.xds.mesh.errors import UnsupportedConfigError, unsupported
from trellis.xds.mesh.model import MeshConfig
from trellis.xds.mesh.telemetry import (
    ACCESS_LOG_PROVIDERS,
    ENVOY_PROVIDER,
    TRACING_PROVIDER,
    TRACING_PROVIDERS,
)
from trellis.xds.re2 import Re2SyntaxError, compile_re2


def first_uncarried(config: MeshConfig, *, mtls: bool = False) -> UnsupportedConfigError | None:
    """The first setting in `config` that Trellis proxies cannot carry out, if any.

    `mtls`: the proxies get mesh mTLS (sidecars of a mesh with a CA), so a
    DestinationRule may ask for ISTIO_MUTUAL.
    """
    for service in config.virtual_services:
        problem = _virtual_service(service)
        if problem is not None:
            return problem
    for rule in config.destination_rules:
        problem = _destination_rule(rule, mtls)
        if problem is not None:
            return problem
    for telemetry in config.telemetries:
        problem = _telemetry(telemetry)
        if problem is not None:
            return problem
    return None


def _telemetry(telemetry: Telemetry) -> UnsupportedConfigError | None:
    for i, tracing in enumerate(telemetry.spec.tracing or ()):
        for j, provider in enumerate(tracing.providers):
            if provider.name not in TRACING_PROVIDERS:
                return unsupported(
                    telemetry,
                    f"spec.tracing[{i}].providers[{j}].name",
                    f"unknown tracing provider {provider.name!r}; Trellis has "
                    f"{TRACING_PROVIDER!r} (the control plane's --tracing-otlp-address)",
                )
    for i, entry in enumerate(telemetry.spec.access_logging or ()):
        for j, provider in enumerate(entry.providers):
            if provider.name not in ACCESS_LOG_PROVIDERS:
                return unsupported(
                    telemetry,
                    f"spec.accessLogging[{i}].providers[{j}].name",
                    f"unknown access log provider {provider.name!r}; Trellis has Istio's "
                    f"built-in {ENVOY_PROVIDER!r} (the mesh access log)",
                )
    return None


def _virtual_service(service: VirtualService) -> UnsupportedConfigError | None:
    if service.spec.tcp:
        return unsupported(service, "spec.tcp", "TCP routes are not carried out by Trellis yet")
    for i, rule in enumerate(service.spec.http):
        for j, match in enumerate(rule.match):
            here = f"spec.http[{i}].match[{j}]"
            checks = [("uri", match.uri), ("authority", match.authority)]
            checks += [(f"headers.{name}", value) for name, value in match.headers.items()]
            for field, value in checks:
                if value is None or value.regex is None:
                    continue
                try:
                    compile_re2(value.regex)
                except Re2SyntaxError as exc:
                    return unsupported(service, f"{here}.{field}.regex", str(exc))
    return None


def _destination_rule(rule: DestinationRule, mtls: bool) -> UnsupportedConfigError | None:
    policies = [("spec.trafficPolicy", rule.spec.traffic_policy)]
    policies += [
        (f"spec.subsets[{i}].trafficPolicy", subset.traffic_policy)
        for i, subset in enumerate(rule.spec.subsets)
    ]
    for path, policy in policies:
        if policy is None:
            continue
        settings = [(f"{path}.tls", policy.tls)]
        settings += [
            (f"{path}.portLevelSettings[{i}].tls", port.tls)
            for i, port in enumerate(policy.port_level_settings)
        ]
        for where, tls in settings:
            if tls is not None and tls.mode is not TLSMode.DISABLE and not mtls:
                return unsupported(
                    rule,
                    f"{where}.mode",
                    f"{tls.mode.value}: these proxies get no mesh mTLS (no certificate "
                    "authority root was given to the translation, or the client is a "
                    "proxyless gRPC application); traffic would be plaintext",
                )
    return None
