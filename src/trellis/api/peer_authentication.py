"""PeerAuthentication (`security.istio.io`): whether a workload's inbound traffic must be mTLS.

Field names and rules follow istio/api `security/v1beta1/peer_authentication.proto`
and Istio's validation. Which policy applies to a workload and port, with
Istio's precedence, is decided in `trellis.xds.mesh.peer_authn`.
"""

from __future__ import annotations

import enum
from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, model_validator

from trellis.api.meta import ApiModel, Resource, enum_value
from trellis.api.policy_selector import SECURITY_VERSIONS, PolicySelector, selector_is_empty
from trellis.api.virtual_service import PortNumber


class MtlsMode(enum.StrEnum):
    """Istio `PeerAuthentication.MutualTLS.Mode`."""

    UNSET = "UNSET"
    """Inherit from the parent level (port -> workload -> namespace -> mesh);
    PERMISSIVE at the top."""
    DISABLE = "DISABLE"
    """Plaintext only."""
    PERMISSIVE = "PERMISSIVE"
    """mTLS and plaintext on the same port."""
    STRICT = "STRICT"
    """mTLS only."""


class MutualTLS(ApiModel):
    """`mtls` (and each `portLevelMtls` value)."""

    mode: Annotated[MtlsMode, BeforeValidator(enum_value(MtlsMode, frozenset()))] = MtlsMode.UNSET


class PeerAuthenticationSpec(ApiModel):
    """`PeerAuthentication` spec."""

    selector: PolicySelector | None = None
    """Workloads of the policy's namespace it applies to; none: the whole namespace
    (in the root namespace: the whole mesh)."""
    mtls: MutualTLS | None = None
    port_level_mtls: dict[PortNumber, MutualTLS] | None = None
    """Workload port -> mode; only on a policy with a selector."""

    @model_validator(mode="after")
    def _ports(self) -> PeerAuthenticationSpec:
        if self.port_level_mtls is not None:
            if not self.port_level_mtls:
                raise ValueError("portLevelMtls, when set, must have at least one port")
            if selector_is_empty(self.selector):
                raise ValueError(
                    "portLevelMtls needs a selector: a mesh- or namespace-wide "
                    "PeerAuthentication cannot set port-level mTLS"
                )
        return self

    @property
    def mode(self) -> MtlsMode:
        """The policy's own mode (`UNSET` when `mtls` is not given)."""
        return self.mtls.mode if self.mtls is not None else MtlsMode.UNSET


class PeerAuthentication(Resource):
    """`security.istio.io/v1` PeerAuthentication."""

    api_versions = SECURITY_VERSIONS

    kind: Literal["PeerAuthentication"]
    spec: PeerAuthenticationSpec = Field(default_factory=PeerAuthenticationSpec)
