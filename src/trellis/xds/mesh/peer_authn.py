"""Which PeerAuthentication mode applies to a workload's inbound port (Istio's precedence).

Levels, narrowest first:
- workload: a policy with a selector in the workload's namespace whose
  `matchLabels` the workload carries (a selector policy in the root namespace
  applies to no workload of another namespace, and is ignored as in Istio);
- namespace: a policy without a selector in the workload's namespace;
- mesh: a policy without a selector in the root namespace (`trellis-system`,
  or its alias `istio-system`).

When several policies qualify at one level, the oldest wins (creation time
when the store has it, else namespace and name order). A level whose mode is
`UNSET` inherits from the one above; with nothing set the mode is PERMISSIVE.
`portLevelMtls` of the winning workload policy overrides the mode for its
ports; an `UNSET` port inherits the workload's mode.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType

from trellis.api.meta import ResourceKey
from trellis.api.security import (
    MtlsMode,
    PeerAuthentication,
    is_root_namespace,
    selector_is_empty,
)

DEFAULT_MODE = MtlsMode.PERMISSIVE
_NEVER = datetime.max


def _age_key(policy: PeerAuthentication) -> tuple[datetime, str, str]:
    """Oldest first; policies without a (readable) creation time after those with one."""
    created = policy.metadata.creation_timestamp
    when = _NEVER
    if created:
        try:
            when = datetime.fromisoformat(created).replace(tzinfo=None)
        except ValueError:
            when = _NEVER
    return (when, policy.metadata.namespace, policy.metadata.name)


@dataclass(frozen=True, slots=True)
class EffectiveMtls:
    """The resolved mTLS modes of one workload; no mode is ever `UNSET`."""

    mode: MtlsMode = DEFAULT_MODE
    """The workload's mode, for ports without their own."""
    port_modes: Mapping[int, MtlsMode] = field(default_factory=lambda: MappingProxyType({}))
    """Workload port -> mode, for the ports the workload policy names."""
    mesh_policy: ResourceKey | None = None
    namespace_policy: ResourceKey | None = None
    workload_policy: ResourceKey | None = None
    """The policies that were chosen at each level (for `describe`/debugging)."""

    def for_port(self, port: int) -> MtlsMode:
        """The mode of inbound traffic to workload port `port`."""
        return self.port_modes.get(port, self.mode)


def _oldest(candidates: list[PeerAuthentication]) -> PeerAuthentication | None:
    return min(candidates, key=_age_key) if candidates else None


def effective_mtls(
    policies: Iterable[PeerAuthentication], namespace: str, labels: Mapping[str, str]
) -> EffectiveMtls:
    """Resolve every PeerAuthentication for the workload in `namespace` with `labels`."""
    mesh: list[PeerAuthentication] = []
    local: list[PeerAuthentication] = []
    selecting: list[PeerAuthentication] = []
    for policy in policies:
        policy_namespace = policy.metadata.namespace
        selector = policy.spec.selector
        if selector_is_empty(selector):
            if is_root_namespace(policy_namespace):
                mesh.append(policy)
            elif policy_namespace == namespace:
                local.append(policy)
        elif (
            policy_namespace == namespace
            and not is_root_namespace(policy_namespace)
            and selector is not None
            and selector.selects(labels)
        ):
            selecting.append(policy)
    chosen = [_oldest(mesh), _oldest(local), _oldest(selecting)]
    mode = DEFAULT_MODE
    for level in chosen:
        if level is not None and level.spec.mode is not MtlsMode.UNSET:
            mode = level.spec.mode
    workload = chosen[2]
    ports: dict[int, MtlsMode] = {}
    if workload is not None and workload.spec.port_level_mtls:
        for port, setting in workload.spec.port_level_mtls.items():
            ports[port] = mode if setting.mode is MtlsMode.UNSET else setting.mode
    mesh_policy, namespace_policy, workload_policy = (
        level.key if level is not None else None for level in chosen
    )
    return EffectiveMtls(
        mode=mode,
        port_modes=MappingProxyType(ports),
        mesh_policy=mesh_policy,
        namespace_policy=namespace_policy,
        workload_policy=workload_policy,
    )


def mtls_mode(
    policies: Iterable[PeerAuthentication], namespace: str, labels: Mapping[str, str], port: int
) -> MtlsMode:
    """The mode of inbound traffic to `port` of the workload in `namespace` with `labels`."""
    return effective_mtls(policies, namespace, labels).for_port(port)
