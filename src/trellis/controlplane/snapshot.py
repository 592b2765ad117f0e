"""A consistent set of xDS resources for one proxy, each serialized once.

A `Resource` wraps one xDS message with what every ADS stream needs from it:
its name, a content version (a hash of the deterministic serialization) and the
bytes it occupies inside a `DiscoveryResponse`. Building it serializes the
message exactly once, so the control plane should build each distinct resource
once per version and share the `Resource` (and whole `ResourceSet`s) between
the snapshots of all proxies that see it: streams then only join bytes.

A `Snapshot` is published only when consistent (go-control-plane's rule): every
RouteConfiguration named by a listener's HTTP connection manager (`rds`) and
every ClusterLoadAssignment named by an EDS cluster exists in it.
"""

from __future__ import annotations

import hashlib
import weakref
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2,
)
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2, descriptor_pool, message_factory
from google.protobuf.message import Message

from trellis.errors import TrellisError
from trellis.xds import vhds
from trellis.xds.ads_client import REQUEST_ORDER
from trellis.xds.vhds import VIRTUAL_HOST_TYPE

TYPE_PREFIX = "type.googleapis.com/"
LISTENER_TYPE = TYPE_PREFIX + listener_pb2.Listener.DESCRIPTOR.full_name
ROUTE_TYPE = TYPE_PREFIX + route_pb2.RouteConfiguration.DESCRIPTOR.full_name
CLUSTER_TYPE = TYPE_PREFIX + cluster_pb2.Cluster.DESCRIPTOR.full_name
ENDPOINT_TYPE = TYPE_PREFIX + endpoint_pb2.ClusterLoadAssignment.DESCRIPTOR.full_name
SECRET_TYPE = TYPE_PREFIX + secret_pb2.Secret.DESCRIPTOR.full_name
HCM_TYPE = TYPE_PREFIX + http_connection_manager_pb2.HttpConnectionManager.DESCRIPTOR.full_name

# Envoy's make-before-break order (xds_protocol.rst, eventual consistency).
PUSH_ORDER = REQUEST_ORDER
SHORT_NAMES = {
    LISTENER_TYPE: "LDS",
    ROUTE_TYPE: "RDS",
    CLUSTER_TYPE: "CDS",
    ENDPOINT_TYPE: "EDS",
    SECRET_TYPE: "SDS",
    VIRTUAL_HOST_TYPE: "VHDS",
}
# The types whose SotW responses always carry every resource the client has.
FULL_STATE_TYPES = frozenset({LISTENER_TYPE, CLUSTER_TYPE})


class SnapshotError(TrellisError):
    """A resource or snapshot is malformed; the message names the resource."""


class InconsistentSnapshotError(SnapshotError):
    """A snapshot references RDS or EDS resources it does not contain."""

    def __init__(self, version: str, missing: tuple[str, ...]) -> None:
        self.version = version
        self.missing = missing
        super().__init__(f"snapshot {version!r} is inconsistent: " + "; ".join(missing))


_REMEMBERED_DIFFS = 4
_MASK = (1 << 64) - 1


def _digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=8).hexdigest()


@dataclass(frozen=True, slots=True)
class Resource:
    """One xDS resource, serialized once; build with `Resource.of`."""

    type_url: str
    name: str
    version: str  # a hash of the serialized resource, 16 hex digits
    fingerprint: int  # the same hash as a number: set versions add them up
    message: Message
    packed: any_pb2.Any
    # The resource as `DiscoveryResponse.resources` entry (tag, length, Any).
    encoded: bytes
    # RDS names (listeners) or EDS names (clusters) this resource needs.
    references: frozenset[str]
    # The `DeltaDiscoveryResponse.resources` entry, built when first asked for.
    _delta: list[bytes] = field(default_factory=list, repr=False, compare=False)

    @classmethod
    def of(cls, item: Message | any_pb2.Any) -> Resource:
        """Wrap a Listener, RouteConfiguration, Cluster, ClusterLoadAssignment, Secret or Any."""
        message = _unpack(item) if isinstance(item, any_pb2.Any) else item
        type_url = TYPE_PREFIX + message.DESCRIPTOR.full_name
        name = _name_of(message, type_url)
        value = message.SerializeToString(deterministic=True)
        packed = any_pb2.Any(type_url=type_url, value=value)
        encoded = discovery_pb2.DiscoveryResponse(resources=[packed]).SerializeToString()
        version = _digest(value)
        return cls(
            type_url=type_url,
            name=name,
            version=version,
            fingerprint=int(version, 16),
            message=message,
            packed=packed,
            encoded=encoded,
            references=_references(message, type_url, name),
        )

    def delta_encoded(self) -> bytes:
        """The resource as a `DeltaDiscoveryResponse.resources` entry (name, version, Any)."""
        if not self._delta:
            entry = discovery_pb2.Resource(
                name=self.name, version=self.version, resource=self.packed
            )
            response = discovery_pb2.DeltaDiscoveryResponse(resources=[entry])
            self._delta.append(response.SerializeToString())
        return self._delta[0]


def _resource(item: Resource | Message | any_pb2.Any) -> Resource:
    return item if isinstance(item, Resource) else Resource.of(item)


def _unpack(packed: any_pb2.Any) -> Message:
    try:
        descriptor = descriptor_pool.Default().FindMessageTypeByName(packed.TypeName())
    except KeyError:
        raise SnapshotError(f"unknown resource type {packed.type_url!r}") from None
    message: Message = message_factory.GetMessageClass(descriptor)()
    if not packed.Unpack(message):
        raise SnapshotError(f"cannot unpack a {packed.type_url!r} resource")
    return message


def _name_of(message: Message, type_url: str) -> str:
    if isinstance(message, endpoint_pb2.ClusterLoadAssignment):
        name = message.cluster_name
    elif "name" in message.DESCRIPTOR.fields_by_name:
        name = getattr(message, "name")  # noqa: B009 - the field is not typed on Message
    else:
        raise SnapshotError(f"{type_url} has no name field; it cannot be an xDS resource")
    if not isinstance(name, str) or not name:
        raise SnapshotError(f"a {type_url} resource has an empty name")
    return name


def _references(message: Message, type_url: str, name: str) -> frozenset[str]:
    if isinstance(message, listener_pb2.Listener):
        return _route_names(message, name)
    if isinstance(message, cluster_pb2.Cluster) and message.type == cluster_pb2.Cluster.EDS:
        return frozenset({message.eds_cluster_config.service_name or name})
    return frozenset()


def _route_names(listener: listener_pb2.Listener, name: str) -> frozenset[str]:
    configs: list[any_pb2.Any] = []
    if listener.HasField("api_listener"):
        configs.append(listener.api_listener.api_listener)
    chains = [*listener.filter_chains]
    if listener.HasField("default_filter_chain"):
        chains.append(listener.default_filter_chain)
    configs.extend(f.typed_config for chain in chains for f in chain.filters)
    names = set()
    for config in configs:
        if config.type_url != HCM_TYPE:
            continue
        hcm = http_connection_manager_pb2.HttpConnectionManager()
        if not config.Unpack(hcm):
            raise SnapshotError(f"listener {name!r}: undecodable HttpConnectionManager")
        if hcm.HasField("rds"):
            names.add(hcm.rds.route_config_name)
    return frozenset(names)


@dataclass(frozen=True, slots=True, weakref_slot=True)
class ResourceSet:
    """All resources of one type for a proxy, by name; share it between snapshots."""

    type_url: str
    by_name: Mapping[str, Resource]
    version: str = field(init=False)
    names: frozenset[str] = field(init=False)
    references: frozenset[str] = field(init=False)
    _total: int = field(init=False, repr=False, compare=False)
    # Set by `extended`: the shared set this one adds `_own` to.
    _base: ResourceSet | None = field(init=False, repr=False, compare=False)
    _own: Mapping[str, Resource] = field(init=False, repr=False, compare=False)
    _blob: list[bytes] = field(init=False, repr=False, compare=False)
    _delta_blob: list[bytes] = field(init=False, repr=False, compare=False)
    _diffs: list[tuple[weakref.ref[ResourceSet], frozenset[str]]] = field(
        init=False, repr=False, compare=False
    )
    _removals: list[tuple[weakref.ref[ResourceSet], frozenset[str]]] = field(
        init=False, repr=False, compare=False
    )
    _groups: list[Mapping[str, frozenset[str]]] = field(init=False, repr=False, compare=False)
    _split: list[tuple[ResourceSet, ResourceSet]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "by_name", MappingProxyType(dict(self.by_name)))
        total = _checked_total(self.type_url, self.by_name)
        refs = frozenset().union(*(r.references for r in self.by_name.values()))
        # Order-free and linear: the sum of the resources' hashes (names are inside them).
        self._fill(total, frozenset(self.by_name), refs, None, self.by_name)

    def _fill(
        self,
        total: int,
        names: frozenset[str],
        references: frozenset[str],
        base: ResourceSet | None,
        own: Mapping[str, Resource],
    ) -> None:
        object.__setattr__(self, "version", f"{total & _MASK:016x}")
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "references", references)
        object.__setattr__(self, "_total", total)
        object.__setattr__(self, "_base", base)
        object.__setattr__(self, "_own", own)
        object.__setattr__(self, "_blob", [])
        object.__setattr__(self, "_delta_blob", [])
        object.__setattr__(self, "_diffs", [])
        object.__setattr__(self, "_removals", [])
        object.__setattr__(self, "_groups", [])
        object.__setattr__(self, "_split", [])

    def extended(self, extra: Iterable[Resource]) -> ResourceSet:
        """This set plus `extra` (new names only), in time proportional to `extra`.

        Many proxies share one large set (say the outbound clusters) and add a
        few resources of their own (their inbound clusters); the shared part's
        bytes and differences are then computed once for all of them.
        """
        own: dict[str, Resource] = {}
        for resource in extra:
            if resource.name in own or resource.name in self.by_name:
                raise SnapshotError(f"{self.type_url} {resource.name!r} appears twice")
            own[resource.name] = resource
        if not own:
            return self
        total = self._total + _checked_total(self.type_url, own)
        extended = ResourceSet.__new__(ResourceSet)
        object.__setattr__(extended, "type_url", self.type_url)
        object.__setattr__(extended, "by_name", _Layered(self.by_name, own))
        refs = self.references.union(*(r.references for r in own.values()))
        extended._fill(total, self.names.union(own), refs, self, MappingProxyType(own))
        return extended

    @classmethod
    def of(cls, type_url: str, items: Iterable[Resource | Message | any_pb2.Any]) -> ResourceSet:
        by_name: dict[str, Resource] = {}
        for item in items:
            resource = _resource(item)
            if resource.name in by_name:
                raise SnapshotError(f"{type_url} {resource.name!r} appears twice")
            by_name[resource.name] = resource
        return cls(type_url, by_name)

    def encoded(self) -> bytes:
        """Every resource as `DiscoveryResponse.resources` entries (see `encoded_parts`)."""
        return b"".join(self.encoded_parts())

    def encoded_parts(self) -> tuple[bytes, ...]:
        """The entries in pieces to join: the shared base's bytes are stored once, for all
        the proxies whose sets extend it, and an extended set keeps only its own."""
        if not self._blob:
            if self._base is None:
                self._blob.append(b"".join(r.encoded for r in self.by_name.values()))
            else:
                self._blob.append(b"".join(r.encoded for r in self._own.values()))
        if self._base is None:
            return (self._blob[0],)
        return (*self._base.encoded_parts(), self._blob[0])

    def delta_parts(self) -> tuple[bytes, ...]:
        """Every resource as `DeltaDiscoveryResponse.resources` entries, in pieces to join
        (shared like `encoded_parts`)."""
        if not self._delta_blob:
            own = self.by_name if self._base is None else self._own
            self._delta_blob.append(b"".join(r.delta_encoded() for r in own.values()))
        if self._base is None:
            return (self._delta_blob[0],)
        return (*self._base.delta_parts(), self._delta_blob[0])

    def changed_since(self, older: ResourceSet) -> frozenset[str]:
        """Names added or modified since `older`; remembered for the last few `older` sets."""
        for ref, names in self._diffs:
            if ref() is older:
                return names
        base, older_base = self._base, older._base
        if base is not None and older_base is not None:
            # The bases' difference is computed once for all the sets built on them.
            names = base.changed_since(older_base) | _differences(self._own, older.by_name)
        else:
            names = _differences(self.by_name, older.by_name)
        self._diffs.append((weakref.ref(older), names))
        del self._diffs[:-_REMEMBERED_DIFFS]
        return names

    def removed_since(self, older: ResourceSet) -> frozenset[str]:
        """Names `older` has and this set lacks; remembered like `changed_since`."""
        for ref, names in self._removals:
            if ref() is older:
                return names
        names = older.names - self.names
        self._removals.append((weakref.ref(older), names))
        del self._removals[:-_REMEMBERED_DIFFS]
        return names

    def covered_by(self, names: frozenset[str]) -> frozenset[str]:
        """The names of this set a subscription to `names` covers: those names, or for
        VHDS the virtual hosts (`<route config>/<host>`) under those route configurations
        (a namespace subscription; grouped once per set, for every stream)."""
        if self.type_url != VIRTUAL_HOST_TYPE:
            return names & self.names
        if not self._groups:
            groups: dict[str, set[str]] = {}
            for name in self.by_name:
                groups.setdefault(vhds.route_config_of(name), set()).add(name)
            self._groups.append({key: frozenset(names) for key, names in groups.items()})
        found = [group for key in names if (group := self._groups[0].get(key))]
        return found[0] if len(found) == 1 else frozenset().union(*found)

    def vhds_split(self) -> tuple[ResourceSet, ResourceSet]:
        """This set of route configurations as VHDS serves it: the configurations without
        their virtual hosts, and the virtual hosts as resources. Built once per set."""
        if not self._split:
            configs: list[Resource] = []
            hosts: list[Resource] = []
            for resource in self.by_name.values():
                assert isinstance(resource.message, route_pb2.RouteConfiguration)
                slim, named_hosts = vhds.split(resource.message)
                configs.append(Resource.of(slim))
                hosts.extend(map(Resource.of, named_hosts))
            self._split.append(
                (ResourceSet.of(self.type_url, configs), ResourceSet.of(VIRTUAL_HOST_TYPE, hosts))
            )
        return self._split[0]

    def __len__(self) -> int:
        return len(self.by_name)

    def __iter__(self) -> Iterator[Resource]:
        return iter(self.by_name.values())


class _Layered(Mapping[str, Resource]):
    """A read-only view of a shared mapping plus a few entries of one's own (new names),
    built in constant time: an extended set must not copy its thousand-entry base."""

    __slots__ = ("_base", "_own")

    def __init__(self, base: Mapping[str, Resource], own: Mapping[str, Resource]) -> None:
        self._base = base
        self._own = own

    def __getitem__(self, name: str) -> Resource:
        found = self._own.get(name)
        return found if found is not None else self._base[name]

    def __contains__(self, name: object) -> bool:
        return name in self._own or name in self._base

    def __iter__(self) -> Iterator[str]:
        yield from self._base
        yield from self._own

    def __len__(self) -> int:
        return len(self._base) + len(self._own)


def _checked_total(type_url: str, by_name: Mapping[str, Resource]) -> int:
    """The sum of the resources' fingerprints, after checking their type and names."""
    total = 0
    for key, resource in by_name.items():
        if resource.type_url != type_url:
            raise SnapshotError(f"{resource.type_url} {key!r} is in the {type_url} set")
        if resource.name != key:
            raise SnapshotError(f"{type_url} {resource.name!r} is filed as {key!r}")
        total += resource.fingerprint
    return total


def _differences(new: Mapping[str, Resource], old: Mapping[str, Resource]) -> frozenset[str]:
    """Names in `new` that `old` lacks or holds with another content."""
    return frozenset(
        name
        for name, resource in new.items()
        if (known := old.get(name)) is None
        or (known is not resource and known.version != resource.version)
    )


_EMPTY: dict[str, ResourceSet] = {}


def _empty(type_url: str) -> ResourceSet:
    """The empty set of a type, one for all snapshots."""
    found = _EMPTY.get(type_url)
    if found is None:
        found = _EMPTY[type_url] = ResourceSet(type_url, {})
    return found


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A proxy's whole configuration at one version: a `ResourceSet` per type URL."""

    version: str
    sets: Mapping[str, ResourceSet]
    _vhds: list[Snapshot] = field(default_factory=list, repr=False, compare=False)

    def __post_init__(self) -> None:
        sets = dict(self.sets)
        for type_url in PUSH_ORDER:  # an empty set for absent core types, built once
            if type_url not in sets:
                sets[type_url] = _empty(type_url)
        object.__setattr__(self, "sets", MappingProxyType(sets))
        for type_url, resource_set in self.sets.items():
            if resource_set.type_url != type_url:
                raise SnapshotError(f"the {resource_set.type_url} set is filed as {type_url}")

    @classmethod
    def of(cls, version: str, items: Iterable[Resource | Message | any_pb2.Any]) -> Snapshot:
        """Group resources by type (any order, any of the accepted forms)."""
        grouped: dict[str, list[Resource]] = {}
        for item in items:
            resource = _resource(item)
            grouped.setdefault(resource.type_url, []).append(resource)
        return cls(version, {t: ResourceSet.of(t, rs) for t, rs in grouped.items()})

    @classmethod
    def from_mapping(
        cls,
        version: str,
        resources: Mapping[str, Mapping[str, Resource | Message | any_pb2.Any]],
    ) -> Snapshot:
        """`{type_url: {name: resource}}`; each name must match the resource's own."""
        sets = {}
        for type_url, by_name in resources.items():
            built = {n: _resource(r) for n, r in by_name.items()}
            sets[type_url] = ResourceSet(type_url, built)
        return cls(version, sets)

    def get(self, type_url: str) -> ResourceSet:
        found = self.sets.get(type_url)
        return found if found is not None else _empty(type_url)

    def for_vhds(self) -> Snapshot:
        """The snapshot a VHDS client gets: route configurations without their virtual
        hosts, which are resources of their own (`xds.vhds`)."""
        if not self._vhds:
            routes, hosts = self.get(ROUTE_TYPE).vhds_split()
            sets = {**self.sets, ROUTE_TYPE: routes, VIRTUAL_HOST_TYPE: hosts}
            self._vhds.append(Snapshot(self.version, sets))
        return self._vhds[0]

    def missing_references(self) -> tuple[str, ...]:
        """What LDS/CDS name but RDS/EDS lacks, one line each; empty when consistent."""
        missing: list[str] = []
        for parent, child in ((LISTENER_TYPE, ROUTE_TYPE), (CLUSTER_TYPE, ENDPOINT_TYPE)):
            parents, children = self.get(parent), self.get(child)
            absent = parents.references - children.names
            if not absent:
                continue
            for resource in parents:
                for name in sorted(resource.references & absent):
                    missing.append(
                        f"{SHORT_NAMES[parent]} {resource.name!r} references "
                        f"{SHORT_NAMES[child]} {name!r}, which is not in the snapshot"
                    )
        return tuple(missing)

    def is_consistent(self) -> bool:
        return not self.missing_references()

    def check(self) -> None:
        """Raise `InconsistentSnapshotError` unless consistent."""
        missing = self.missing_references()
        if missing:
            raise InconsistentSnapshotError(self.version, missing)
