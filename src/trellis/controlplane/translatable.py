"""Apply-time check that stored config can be carried out by Trellis proxies.

The models accept every Istio field Trellis understands; a few valid
combinations still have no proxy behaviour (for example a retry condition the
proxy lacks). Translating the config once per namespace finds them before they
are stored, instead of blocking a proxy's config later.
"""

from __future__ import annotations

from collections.abc import Sequence

from trellis.api.analyze import Finding, Severity
from trellis.api.networking import NetworkingResource
from trellis.xds.mesh import MeshConfig, MeshTls, ProxyIdentity, Translator, UnsupportedConfigError

_PROBE = "trellis-apply-check"
# The control plane always runs its CA, so sidecars get mesh mTLS: check as they
# are translated (DestinationRule ISTIO_MUTUAL is carried out). The root's bytes
# do not change what is refused.
_PROBE_TLS = MeshTls(root_ca_pem=b"")


def translation_findings(resources: Sequence[NetworkingResource]) -> list[Finding]:
    """A TRL0201 error for each resource whose translation a proxy could not carry out."""
    translator = Translator(MeshConfig.of(resources, _PROBE_TLS))
    findings: dict[tuple[tuple[str, str, str], str], Finding] = {}
    for namespace in sorted({resource.metadata.namespace for resource in resources}):
        proxy = ProxyIdentity(node_id=_PROBE, workload_name=_PROBE, namespace=namespace)
        try:
            translator.translate(proxy)
        except UnsupportedConfigError as exc:
            key = exc.resource_key or ("", namespace, "")
            findings[(key, exc.path)] = Finding(
                code="TRL0201",
                severity=Severity.ERROR,
                resource=key,
                path=exc.path,
                message=str(exc).split(": ", 2)[-1],
                hint="Trellis's proxy cannot carry this out; remove or change the field.",
            )
    return list(findings.values())
