"""A stand-in Kubernetes API server: a TEST DOUBLE, not Kubernetes.

No API server can be installed on these machines, so discovery and the CRD
config store are tested against this one. It keeps JSON objects in memory per
resource type, namespace and name, and implements the parts of the API the
control plane uses, with Kubernetes' semantics:

- one cluster-wide resourceVersion counter, bumped by every change (like
  etcd's revision); lists carry it in `metadata.resourceVersion`;
- list (`?labelSelector=` with `k=v`, `k!=v`, `k`, `!k`), get, create (409
  AlreadyExists), update (409 Conflict on a stale `metadata.resourceVersion`;
  no-op updates keep the version), merge patch, delete (with
  `preconditions.resourceVersion`), the `status` subresource of the CRDs, and
  cluster-scoped namespaces; `metadata.generation` moves when anything but
  metadata and status changes;
- watch (`?watch=true&resourceVersion=N&allowWatchBookmarks=true&timeoutSeconds=S`):
  newline-delimited ADDED/MODIFIED/DELETED events after N, BOOKMARK events
  every `bookmark_interval` when asked for, and an ERROR event with a 410
  Status when N is older than the retained history (`retained_events`, or
  everything before `compact()`); without N (or N = "0") the current objects
  come first as ADDED;
- `/version`, `/api`, `/apis` and the per-group resource lists for discovery.

Tests drive it over HTTP like any client, plus `compact()` (forces 410 Gone
on the next watch resume), `break_watches()` (ends every open watch, as a
dropped connection would), `pause_watches()`/`resume_watches()` (hold events
back, as a slow watch would) and `fail_requests` (the next N resource
requests get 500, as an overloaded server would answer). With `authorize`
set, every resource request is first described as RBAC sees it (`Access`:
verb, group, resource, namespace, name) and answered 403 Forbidden when
`authorize` says no (`kube_rbac` checks it against rendered Roles);
`accesses` and `denied` record what was asked; `calls` records each
request's bearer token, so tests tell clients apart. `LEASES` adds
coordination.k8s.io Leases for leader election, `CONFIG_MAPS` ConfigMaps.
Lists and watches take the `metadata.name`/`metadata.namespace` field
selectors, which RBAC also reads a list's object name from.
"""

from __future__ import annotations

import asyncio
import copy
import json
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from trellis.controlplane.api_kinds import KINDS

JsonObject = dict[str, Any]


@dataclass(frozen=True, slots=True)
class ResourceType:
    """One kind the stand-in serves: where (group, versions, plural) and how (scope, status)."""

    group: str
    versions: tuple[str, ...]
    kind: str
    plural: str
    namespaced: bool = True
    status_subresource: bool = False

    @property
    def key(self) -> tuple[str, str]:
        return (self.group, self.plural)

    def api_version(self, version: str) -> str:
        return f"{self.group}/{version}" if self.group else version


BUILTIN_TYPES: tuple[ResourceType, ...] = (
    ResourceType("", ("v1",), "Namespace", "namespaces", namespaced=False),
    ResourceType("", ("v1",), "Service", "services", status_subresource=True),
    ResourceType("", ("v1",), "Pod", "pods", status_subresource=True),
    ResourceType("discovery.k8s.io", ("v1",), "EndpointSlice", "endpointslices"),
)


LEASES = ResourceType("coordination.k8s.io", ("v1",), "Lease", "leases")
CONFIG_MAPS = ResourceType("", ("v1",), "ConfigMap", "configmaps")


@dataclass(frozen=True, slots=True)
class Access:
    """One request in RBAC's terms, as the API server's request info describes it."""

    verb: str
    """get, list, watch, create, update, patch, delete or deletecollection."""
    group: str
    resource: str
    """The plural, or `plural/subresource`."""
    namespace: str = ""
    """"" for cluster-scoped objects and requests across all namespaces."""
    name: str = ""
    """"" for requests on a collection (list, watch, create)."""


def request_verb(method: str, named: bool, watch: bool) -> str:
    """The RBAC verb of an HTTP method on an object (`named`) or a collection."""
    if method == "GET":
        return "get" if named else ("watch" if watch else "list")
    if method == "DELETE":
        return "delete" if named else "deletecollection"
    return {"POST": "create", "PUT": "update", "PATCH": "patch"}.get(method, method.lower())


def crd_types() -> tuple[ResourceType, ...]:
    """The Istio kinds Trellis installs as CRDs (`trellis.kube.crds`), status subresource on."""
    return tuple(
        ResourceType(info.group, info.versions, info.kind, info.plural, status_subresource=True)
        for info in KINDS
    )


class ApiStatusError(Exception):
    """Ends a request with a Kubernetes `Status` body."""

    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message

    def status(self) -> JsonObject:
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }

    def response(self) -> JSONResponse:
        return JSONResponse(self.status(), status_code=self.code)


@dataclass(slots=True)
class _Event:
    type: str
    rtype: ResourceType
    obj: JsonObject
    version: int


@dataclass(slots=True, eq=False)
class _Watcher:
    rtype: ResourceType
    namespace: str | None
    selector: Callable[[Mapping[str, str]], bool]
    queue: asyncio.Queue[_Event | None] = field(default_factory=asyncio.Queue)


def parse_selector(text: str) -> Callable[[Mapping[str, str]], bool]:
    """An equality-based label selector (`a=b,c!=d,e,!f`) as a predicate."""
    terms: list[tuple[str, str, str]] = []  # (operator, key, value)
    for raw in filter(None, (part.strip() for part in text.split(","))):
        if "!=" in raw:
            key, value = raw.split("!=", 1)
            terms.append(("!=", key.strip(), value.strip()))
        elif "=" in raw:
            key, value = raw.replace("==", "=").split("=", 1)
            terms.append(("=", key.strip(), value.strip()))
        elif raw.startswith("!"):
            terms.append(("absent", raw[1:].strip(), ""))
        else:
            terms.append(("present", raw, ""))

    def matches(labels: Mapping[str, str]) -> bool:
        for operator, key, value in terms:
            found = labels.get(key)
            if operator == "=" and found != value:
                return False
            if operator == "!=" and found == value:
                return False
            if operator == "absent" and key in labels:
                return False
            if operator == "present" and key not in labels:
                return False
        return True

    return matches


def parse_field_selector(text: str) -> dict[str, str]:
    """`metadata.name=X,metadata.namespace=Y` (the field selectors every type has) as a dict."""
    fields: dict[str, str] = {}
    for term in filter(None, text.split(",")):
        key, sep, value = term.partition("=")
        if not sep or key not in ("metadata.name", "metadata.namespace"):
            raise ApiStatusError(400, "BadRequest", f"unsupported field selector {term!r}")
        fields[key] = value.removeprefix("=")
    return fields


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _labels(obj: Mapping[str, Any]) -> Mapping[str, str]:
    labels = obj.get("metadata", {}).get("labels") or {}
    return labels if isinstance(labels, dict) else {}


def _body_of(obj: Mapping[str, Any]) -> JsonObject:
    """What generation tracks: everything but metadata and status."""
    return {k: v for k, v in obj.items() if k not in ("metadata", "status", "apiVersion", "kind")}


class KubeStandIn:
    """The in-memory API state and the Starlette app serving it (one event loop)."""

    def __init__(
        self,
        types: Iterable[ResourceType] = (),
        *,
        retained_events: int = 1000,
        bookmark_interval: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.types: dict[tuple[str, str], ResourceType] = {}
        for rtype in (*BUILTIN_TYPES, *crd_types(), *types):
            self.types[rtype.key] = rtype
        self.retained_events = retained_events
        self.bookmark_interval = bookmark_interval
        self._clock = clock
        self.version = 0
        self._compacted = 0  # watches from before this version get 410 Gone
        self._objects: dict[tuple[str, str], dict[tuple[str, str], JsonObject]] = {
            key: {} for key in self.types
        }
        self._log: deque[_Event] = deque()
        self._watchers: set[_Watcher] = set()
        self._held: list[tuple[_Watcher, _Event]] | None = None  # while watches are paused
        self.fail_requests = 0
        self.requests: list[str] = []  # "METHOD path?query", for tests to inspect
        self.bookmarked: dict[str, int] = {}  # plural -> the version its last bookmark named
        # (the caller's bearer token or "", "METHOD path"): which client asked what
        self.calls: list[tuple[str, str]] = []
        self.authorize: Callable[[Access], bool] | None = None  # None: everything is allowed
        self.accesses: list[Access] = []  # every request `authorize` was asked about
        self.denied: list[Access] = []  # those it refused (answered 403)
        self.app = Starlette(
            routes=[
                Route("/version", self._version),
                Route("/api", self._core_versions),
                Route("/apis", self._groups),
                Route(
                    "/{path:path}",
                    self._resource,
                    methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
                ),
            ]
        )

    # -- test controls (call on the server's loop: `StandInServer.call`) --

    def compact(self) -> None:
        """Forget the change history: a watch resuming from an older version gets 410 Gone."""
        self._log.clear()
        self._compacted = self.version

    def break_watches(self) -> None:
        """End every open watch stream (clients see the connection end and resume)."""
        for watcher in list(self._watchers):
            watcher.queue.put_nowait(None)

    def pause_watches(self) -> None:
        """Hold back watch events (they are still recorded) until `resume_watches`."""
        if self._held is None:
            self._held = []

    def resume_watches(self) -> None:
        held, self._held = self._held or [], None
        for watcher, event in held:
            watcher.queue.put_nowait(event)

    def watch_count(self) -> int:
        return len(self._watchers)

    def put(self, plural: str, obj: JsonObject, group: str = "") -> JsonObject:
        """Create or (unconditionally) replace an object, as a client's POST or PUT would."""
        rtype = self.types[(group, plural)]
        version = rtype.versions[0]
        meta = obj.get("metadata") or {}
        namespace = str(meta.get("namespace") or "default") if rtype.namespaced else ""
        body = copy.deepcopy(obj)
        if (namespace, str(meta.get("name"))) in self._objects[rtype.key]:
            body["metadata"].pop("resourceVersion", None)
            return self._update(rtype, version, namespace, meta["name"], body, status=False)
        return self._create(rtype, version, namespace or None, body)

    def remove(self, plural: str, namespace: str, name: str, group: str = "") -> None:
        rtype = self.types[(group, plural)]
        self._delete(rtype, rtype.versions[0], namespace, name, None)

    def get_object(self, plural: str, namespace: str, name: str, group: str = "") -> JsonObject:
        """The stored object (raises ApiStatusError 404 when there is none)."""
        rtype = self.types[(group, plural)]
        return self._view(rtype, rtype.versions[0], self._get(rtype, namespace, name))

    # -- discovery --

    async def _version(self, request: Request) -> Response:
        return JSONResponse(
            {
                "major": "1",
                "minor": "31",
                "gitVersion": "v1.31.0-trellis-standin",
                "platform": "linux/amd64",
            }
        )

    async def _core_versions(self, request: Request) -> Response:
        return JSONResponse(
            {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}
        )

    async def _groups(self, request: Request) -> Response:
        groups: dict[str, list[str]] = {}
        for rtype in self.types.values():
            if rtype.group:
                known = groups.setdefault(rtype.group, [])
                known.extend(v for v in rtype.versions if v not in known)
        return JSONResponse(
            {
                "kind": "APIGroupList",
                "apiVersion": "v1",
                "groups": [
                    {
                        "name": name,
                        "versions": [
                            {"groupVersion": f"{name}/{v}", "version": v} for v in versions
                        ],
                        "preferredVersion": {
                            "groupVersion": f"{name}/{versions[0]}",
                            "version": versions[0],
                        },
                    }
                    for name, versions in sorted(groups.items())
                ],
            }
        )

    def _resource_list(self, group: str, version: str) -> JSONResponse:
        resources = []
        for rtype in self.types.values():
            if rtype.group != group or version not in rtype.versions:
                continue
            verbs = ["create", "delete", "get", "list", "patch", "update", "watch"]
            resources.append(
                {
                    "name": rtype.plural,
                    "singularName": "",
                    "namespaced": rtype.namespaced,
                    "kind": rtype.kind,
                    "verbs": verbs,
                }
            )
            if rtype.status_subresource:
                resources.append(
                    {
                        "name": f"{rtype.plural}/status",
                        "singularName": "",
                        "namespaced": rtype.namespaced,
                        "kind": rtype.kind,
                        "verbs": ["get", "patch", "update"],
                    }
                )
        if not resources:
            raise ApiStatusError(404, "NotFound", f"the server could not find {group}/{version}")
        group_version = f"{group}/{version}" if group else version
        return JSONResponse(
            {"kind": "APIResourceList", "groupVersion": group_version, "resources": resources}
        )

    # -- resources --

    async def _resource(self, request: Request) -> Response:
        self.requests.append(f"{request.method} {request.url.path}?{request.url.query}")
        token = request.headers.get("authorization", "").removeprefix("Bearer ")
        self.calls.append((token, f"{request.method} {request.url.path}"))
        if self.fail_requests > 0:
            self.fail_requests -= 1
            return ApiStatusError(500, "InternalError", "the stand-in was told to fail").response()
        try:
            return await self._dispatch(request)
        except ApiStatusError as error:
            return error.response()

    async def _dispatch(self, request: Request) -> Response:
        parts = [p for p in request.url.path.split("/") if p]
        if parts[:1] == ["api"] and len(parts) >= 2:
            group, version, rest = "", parts[1], parts[2:]
        elif parts[:1] == ["apis"] and len(parts) >= 3:
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise ApiStatusError(404, "NotFound", f"the server could not find {request.url.path}")
        if not rest:
            return self._resource_list(group, version)
        namespace: str | None = None
        if rest[0] == "namespaces" and len(rest) >= 3 and rest[2] != "status":
            namespace, rest = rest[1], rest[2:]
        plural, name = rest[0], (rest[1] if len(rest) > 1 else None)
        subresource = rest[2] if len(rest) > 2 else None
        self._check_access(request, group, namespace, plural, name, subresource)
        rtype = self.types.get((group, plural))
        if rtype is None or version not in rtype.versions or len(rest) > 3:
            raise ApiStatusError(
                404,
                "NotFound",
                f"the server could not find the requested resource ({request.url.path})",
            )
        if rtype.namespaced and name is not None and namespace is None:
            raise ApiStatusError(
                404, "NotFound", f"{rtype.plural} are namespaced: {request.url.path}"
            )
        if subresource is not None and (subresource != "status" or not rtype.status_subresource):
            raise ApiStatusError(
                404, "NotFound", f"no subresource {subresource!r} of {rtype.plural}"
            )
        method = request.method
        if name is None:
            if method == "GET":
                if request.query_params.get("watch") in ("true", "1"):
                    return self._watch(request, rtype, version, namespace)
                return self._list(request, rtype, version, namespace)
            if method == "POST":
                return self._json(
                    self._create(rtype, version, namespace, await self._body(request)), 201
                )
            raise ApiStatusError(405, "MethodNotAllowed", f"{method} on a collection")
        ns = namespace or ""
        if method == "GET":
            return self._json(self._view(rtype, version, self._get(rtype, ns, name)))
        if method == "PUT":
            body = await self._body(request)
            return self._json(
                self._update(rtype, version, ns, name, body, status=subresource == "status")
            )
        if method == "PATCH":
            kind = request.headers.get("content-type", "").split(";")[0].strip()
            if kind not in (
                "application/merge-patch+json",
                "application/strategic-merge-patch+json",
            ):
                raise ApiStatusError(
                    415,
                    "UnsupportedMediaType",
                    f"the stand-in only takes merge patches, not {kind!r}",
                )
            current = self._get(rtype, ns, name)
            patched = merge_patch(current, await self._body(request))
            precondition = (await self._body(request)).get("metadata", {}).get("resourceVersion")
            patched.setdefault("metadata", {})["resourceVersion"] = (
                precondition or current["metadata"]["resourceVersion"]
            )
            return self._json(
                self._update(rtype, version, ns, name, patched, status=subresource == "status")
            )
        if method == "DELETE":
            raw = await request.body()
            options = json.loads(raw) if raw else {}
            expected = (options.get("preconditions") or {}).get("resourceVersion")
            return self._json(self._delete(rtype, version, ns, name, expected))
        raise ApiStatusError(405, "MethodNotAllowed", method)

    def _check_access(
        self,
        request: Request,
        group: str,
        namespace: str | None,
        plural: str,
        name: str | None,
        subresource: str | None,
    ) -> None:
        """403 Forbidden, as the API server's authorizer answers, when `authorize` says no."""
        if self.authorize is None:
            return
        watch = request.query_params.get("watch") in ("true", "1")
        verb = request_verb(request.method, name is not None, watch)
        if name is None and request.method == "GET":
            # RBAC names a list or watch by its metadata.name field selector, if any.
            fields = parse_field_selector(request.query_params.get("fieldSelector", ""))
            name = fields.get("metadata.name")
        access = Access(
            verb=verb,
            group=group,
            resource=f"{plural}/{subresource}" if subresource else plural,
            namespace=namespace or "",
            name=name or "",
        )
        self.accesses.append(access)
        if not self.authorize(access):
            self.denied.append(access)
            where = f' in the namespace "{namespace}"' if namespace else " at the cluster scope"
            raise ApiStatusError(
                403,
                "Forbidden",
                f'{plural} is forbidden: cannot {access.verb} resource "{access.resource}" in '
                f'API group "{group}"{where}',
            )

    @staticmethod
    async def _body(request: Request) -> JsonObject:
        try:
            body = json.loads(await request.body())
        except ValueError as error:
            raise ApiStatusError(400, "BadRequest", f"body is not JSON: {error}") from None
        if not isinstance(body, dict):
            raise ApiStatusError(400, "BadRequest", "body must be a JSON object")
        return body

    @staticmethod
    def _json(obj: JsonObject, code: int = 200) -> JSONResponse:
        return JSONResponse(obj, status_code=code)

    def _view(self, rtype: ResourceType, version: str, obj: JsonObject) -> JsonObject:
        view = copy.deepcopy(obj)
        view["apiVersion"] = rtype.api_version(version)
        view["kind"] = rtype.kind
        return view

    def _get(self, rtype: ResourceType, namespace: str, name: str) -> JsonObject:
        found = self._objects[rtype.key].get((namespace, name))
        if found is None:
            raise ApiStatusError(404, "NotFound", f'{rtype.plural} "{name}" not found')
        return copy.deepcopy(found)

    def _matching(
        self, rtype: ResourceType, namespace: str | None, request: Request
    ) -> list[JsonObject]:
        selector = parse_selector(request.query_params.get("labelSelector", ""))
        fields = parse_field_selector(request.query_params.get("fieldSelector", ""))
        return [
            obj
            for (ns, name), obj in sorted(self._objects[rtype.key].items())
            if (namespace is None or ns == namespace)
            and selector(_labels(obj))
            and fields.get("metadata.name", name) == name
            and fields.get("metadata.namespace", ns) == ns
        ]

    def _list(
        self, request: Request, rtype: ResourceType, version: str, namespace: str | None
    ) -> Response:
        items = [
            self._view(rtype, version, obj) for obj in self._matching(rtype, namespace, request)
        ]
        return self._json(
            {
                "apiVersion": rtype.api_version(version),
                "kind": f"{rtype.kind}List",
                "metadata": {"resourceVersion": str(self.version)},
                "items": items,
            }
        )

    def _create(
        self, rtype: ResourceType, version: str, namespace: str | None, body: JsonObject
    ) -> JsonObject:
        meta = body.setdefault("metadata", {})
        if not meta.get("name"):
            prefix = meta.get("generateName")
            if not prefix:
                raise ApiStatusError(422, "Invalid", "metadata.name: Required value")
            meta["name"] = prefix + uuid.uuid4().hex[:5]
        if rtype.namespaced:
            ns = namespace or meta.get("namespace") or "default"
            if meta.get("namespace", ns) != ns:
                raise ApiStatusError(
                    400, "BadRequest", "the namespace of the object does not match the URL"
                )
            meta["namespace"] = ns
        else:
            ns = ""
            meta.pop("namespace", None)
        key = (ns, meta["name"])
        if key in self._objects[rtype.key]:
            raise ApiStatusError(
                409, "AlreadyExists", f'{rtype.plural} "{meta["name"]}" already exists'
            )
        if meta.get("resourceVersion"):
            raise ApiStatusError(
                422, "Invalid", "metadata.resourceVersion: must be empty on create"
            )
        self.version += 1
        meta.update(
            uid=str(uuid.uuid4()),
            resourceVersion=str(self.version),
            generation=1,
            creationTimestamp=datetime.fromtimestamp(self._clock(), UTC).strftime(
                "%Y-%m-%dT%H:%M:%SZ"
            ),
        )
        stored = {k: v for k, v in body.items() if k not in ("apiVersion", "kind")}
        if rtype.status_subresource:
            stored.pop("status", None)
        self._objects[rtype.key][key] = stored
        self._record("ADDED", rtype, stored)
        return self._view(rtype, version, stored)

    def _update(
        self,
        rtype: ResourceType,
        version: str,
        namespace: str,
        name: str,
        body: JsonObject,
        *,
        status: bool,
    ) -> JsonObject:
        current = self._get(rtype, namespace, name)
        meta = body.get("metadata") or {}
        if meta.get("name", name) != name:
            raise ApiStatusError(400, "BadRequest", "the name of the object does not match the URL")
        expected = meta.get("resourceVersion")
        if expected and expected != current["metadata"]["resourceVersion"]:
            raise ApiStatusError(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {rtype.plural} "{name}": the object has been '
                "modified; please apply your changes to the latest version and try again",
            )
        if status:
            updated = dict(current, status=body.get("status"))
        else:
            updated = {k: v for k, v in body.items() if k not in ("apiVersion", "kind")}
            new_meta = dict(meta)
            for kept in ("uid", "creationTimestamp", "generation", "namespace"):
                if kept in current["metadata"]:
                    new_meta[kept] = current["metadata"][kept]
                else:
                    new_meta.pop(kept, None)
            updated["metadata"] = new_meta
            if rtype.status_subresource:
                if "status" in current:
                    updated["status"] = current["status"]
                else:
                    updated.pop("status", None)
        updated["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
        for meta_map in ("labels", "annotations"):
            if not updated["metadata"].get(meta_map):
                updated["metadata"].pop(meta_map, None)
        if updated == current:
            return self._view(rtype, version, current)  # a no-op update keeps the version
        if _body_of(updated) != _body_of(current):
            updated["metadata"]["generation"] = int(current["metadata"].get("generation", 1)) + 1
        self.version += 1
        updated["metadata"]["resourceVersion"] = str(self.version)
        self._objects[rtype.key][(namespace, name)] = updated
        self._record("MODIFIED", rtype, updated)
        return self._view(rtype, version, updated)

    def _delete(
        self, rtype: ResourceType, version: str, namespace: str, name: str, expected: str | None
    ) -> JsonObject:
        current = self._get(rtype, namespace, name)
        if expected and expected != current["metadata"]["resourceVersion"]:
            raise ApiStatusError(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {rtype.plural} "{name}": Precondition failed: '
                f"ResourceVersion in precondition: {expected}, "
                f"ResourceVersion in object meta: {current['metadata']['resourceVersion']}",
            )
        del self._objects[rtype.key][(namespace, name)]
        self.version += 1
        current["metadata"]["resourceVersion"] = str(self.version)
        self._record("DELETED", rtype, current)
        return self._view(rtype, version, current)

    def _record(self, kind: str, rtype: ResourceType, obj: JsonObject) -> None:
        event = _Event(kind, rtype, copy.deepcopy(obj), self.version)
        self._log.append(event)
        while len(self._log) > self.retained_events:
            dropped = self._log.popleft()
            self._compacted = max(self._compacted, dropped.version)
        ns = obj["metadata"].get("namespace")
        for watcher in self._watchers:
            if (
                watcher.rtype is rtype
                and watcher.namespace in (None, ns)
                and watcher.selector(_labels(obj))
            ):
                if self._held is not None:
                    self._held.append((watcher, event))
                else:
                    watcher.queue.put_nowait(event)

    def _watch(
        self, request: Request, rtype: ResourceType, version: str, namespace: str | None
    ) -> Response:
        query = request.query_params
        selector = parse_selector(query.get("labelSelector", ""))
        since_text = query.get("resourceVersion", "")
        bookmarks = query.get("allowWatchBookmarks") in ("true", "1")
        try:
            timeout = min(float(query.get("timeoutSeconds", "300")), 3600.0)
            since = int(since_text) if since_text else 0
        except ValueError:
            raise ApiStatusError(
                400, "BadRequest", "resourceVersion and timeoutSeconds must be numbers"
            ) from None
        watcher = _Watcher(rtype, namespace, selector)
        first: list[JsonObject] = []
        if since == 0:
            for obj in self._matching(rtype, namespace, request):
                first.append({"type": "ADDED", "object": self._view(rtype, version, obj)})
        elif since < self._compacted:
            gone = ApiStatusError(
                410, "Expired", f"too old resource version: {since} ({self._compacted})"
            )
            first.append({"type": "ERROR", "object": gone.status()})
            watcher = None  # type: ignore[assignment]
        else:
            for event in self._log:
                if event.version > since and event.rtype is rtype:
                    ns = event.obj["metadata"].get("namespace")
                    if namespace in (None, ns) and selector(_labels(event.obj)):
                        first.append(
                            {"type": event.type, "object": self._view(rtype, version, event.obj)}
                        )
        if watcher is not None:
            self._watchers.add(watcher)
        return StreamingResponse(
            self._stream(watcher, first, rtype, version, timeout, bookmarks),
            media_type="application/json",
        )

    async def _stream(
        self,
        watcher: _Watcher | None,
        first: list[JsonObject],
        rtype: ResourceType,
        version: str,
        seconds: float,
        bookmarks: bool,
    ) -> AsyncIterator[bytes]:
        try:
            for line in first:
                yield json.dumps(line).encode() + b"\n"
            if watcher is None:
                return
            loop = asyncio.get_running_loop()
            deadline = loop.time() + seconds
            while (left := deadline - loop.time()) > 0:
                wait = min(left, self.bookmark_interval) if bookmarks else left
                try:
                    event = await asyncio.wait_for(watcher.queue.get(), wait)
                except TimeoutError:
                    if bookmarks and deadline - loop.time() > 0:
                        mark = {
                            "type": "BOOKMARK",
                            "object": {
                                "apiVersion": rtype.api_version(version),
                                "kind": rtype.kind,
                                "metadata": {"resourceVersion": str(self.version)},
                            },
                        }
                        yield json.dumps(mark).encode() + b"\n"
                        self.bookmarked[rtype.plural] = self.version
                    continue
                if event is None:
                    return
                line = {"type": event.type, "object": self._view(rtype, version, event.obj)}
                yield json.dumps(line).encode() + b"\n"
        finally:
            if watcher is not None:
                self._watchers.discard(watcher)


class StandInServer:
    """Serves a `KubeStandIn` with uvicorn on 127.0.0.1 from a thread of its own."""

    def __init__(self, standin: KubeStandIn) -> None:
        self.standin = standin
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self.port: int = self._sock.getsockname()[1]
        config = uvicorn.Config(
            standin.app, log_level="warning", lifespan="off", timeout_graceful_shutdown=1
        )
        self._server = uvicorn.Server(config)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, name="kube-standin", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._server.serve(sockets=[self._sock]))
        finally:
            loop.close()

    def start(self) -> StandInServer:
        self._thread.start()
        for _ in range(500):
            if self._server.started:
                return self
            time.sleep(0.01)
        raise RuntimeError("the Kubernetes stand-in did not start within 5 s")

    def call(self, action: Callable[[], Any]) -> Any:
        """Run `action` on the server's loop (the state is not thread-safe); its result."""
        assert self._loop is not None

        async def run() -> Any:
            return action()

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(5.0)

    def stop(self) -> None:
        if self._loop is not None and self._thread.is_alive():
            self.call(self.standin.break_watches)
        self._server.should_exit = True
        self._thread.join(10.0)
        self._sock.close()

    def kubeconfig(self, path: Any, namespace: str = "default") -> Any:
        """Write a kubeconfig that points at this server (plain HTTP, no credentials)."""
        text = json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "standin", "cluster": {"server": self.url}}],
                "users": [{"name": "standin", "user": {}}],
                "contexts": [
                    {
                        "name": "standin",
                        "context": {
                            "cluster": "standin",
                            "user": "standin",
                            "namespace": namespace,
                        },
                    }
                ],
                "current-context": "standin",
            }
        )
        path.write_text(text)
        return path
