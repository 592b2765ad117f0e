"""The `networking.istio.io` kinds Trellis implements, in one place.

Import models from here. Attributes are snake_case; YAML/JSON keys are Istio's
camelCase names (both accepted on input). Lists are tuples, durations are
float seconds, enums are `StrEnum`s. Every model is frozen and rejects unknown
keys; Istio fields Trellis does not implement are rejected by name.
"""

from __future__ import annotations

from trellis.api.destination_rule import (
    ClientTLSSettings,
    ConnectionPoolSettings,
    DestinationRule,
    DestinationRuleSpec,
    HTTPSettings,
    LoadBalancerSettings,
    OutlierDetection,
    PortTrafficPolicy,
    SimpleLB,
    Subset,
    TCPSettings,
    TLSMode,
    TrafficPolicy,
)
from trellis.api.meta import ObjectMeta, Resource, ResourceKey
from trellis.api.security import AuthorizationPolicy, PeerAuthentication
from trellis.api.service_entry import (
    HTTP_PROTOCOLS,
    TCP_PROTOCOLS,
    Location,
    Resolution,
    ServiceEntry,
    ServiceEntrySpec,
    ServicePort,
    WorkloadEntry,
    WorkloadEntrySpec,
    WorkloadSelector,
)
from trellis.api.telemetry import Telemetry
from trellis.api.virtual_service import (
    MESH_GATEWAY,
    Destination,
    HeaderOperations,
    Headers,
    HTTPBody,
    HTTPDirectResponse,
    HTTPMatchRequest,
    HTTPRedirect,
    HTTPRetry,
    HTTPRewrite,
    HTTPRoute,
    HTTPRouteDestination,
    L4MatchAttributes,
    PortSelector,
    RouteDestination,
    StringMatch,
    TCPRoute,
    VirtualService,
    VirtualServiceSpec,
)

NetworkingResource = (
    ServiceEntry
    | WorkloadEntry
    | VirtualService
    | DestinationRule
    | PeerAuthentication
    | AuthorizationPolicy
    | Telemetry
)
"""Any resource of a kind Trellis implements: the networking kinds defined here,
the security kinds of `trellis.api.security` and `trellis.api.telemetry`'s."""

KINDS: tuple[type[Resource], ...] = (ServiceEntry, WorkloadEntry, VirtualService, DestinationRule)

__all__ = [
    "HTTP_PROTOCOLS",
    "KINDS",
    "MESH_GATEWAY",
    "TCP_PROTOCOLS",
    "ClientTLSSettings",
    "ConnectionPoolSettings",
    "Destination",
    "DestinationRule",
    "DestinationRuleSpec",
    "HTTPBody",
    "HTTPDirectResponse",
    "HTTPMatchRequest",
    "HTTPRedirect",
    "HTTPRetry",
    "HTTPRewrite",
    "HTTPRoute",
    "HTTPRouteDestination",
    "HTTPSettings",
    "HeaderOperations",
    "Headers",
    "L4MatchAttributes",
    "LoadBalancerSettings",
    "Location",
    "NetworkingResource",
    "ObjectMeta",
    "OutlierDetection",
    "PortSelector",
    "PortTrafficPolicy",
    "Resolution",
    "Resource",
    "ResourceKey",
    "RouteDestination",
    "ServiceEntry",
    "ServiceEntrySpec",
    "ServicePort",
    "SimpleLB",
    "StringMatch",
    "Subset",
    "TCPRoute",
    "TCPSettings",
    "TLSMode",
    "TrafficPolicy",
    "VirtualService",
    "VirtualServiceSpec",
    "WorkloadEntry",
    "WorkloadEntrySpec",
    "WorkloadSelector",
]
