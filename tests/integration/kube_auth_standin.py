"""A stand-in Kubernetes API server for the CA's TokenReview and leader election: a TEST DOUBLE.

Not Kubernetes: an HTTP server on 127.0.0.1 (a thread) that answers the two
APIs the control plane's `kube_calls` uses, with the API server's semantics
as far as these tests rely on them:

- `POST /apis/authentication.k8s.io/v1/tokenreviews`: tokens registered with
  `issue()` authenticate as `system:serviceaccount:NS:SA` with the pod in
  `user.extra`, for the audiences they were issued for; a review asking for
  audiences the token was not issued for, or for an unknown token, answers
  `authenticated: false` with the API server's kind of error; `failing` makes
  every review a 503 (the API server is in trouble).
- `coordination.k8s.io/v1` Leases in one namespace: get (404 when absent),
  create (409 AlreadyExists), replace with metadata.resourceVersion as the
  precondition (409 Conflict when stale), each write bumping a global
  resourceVersion. Only the names in `lease_names` are allowed, as the
  install's Role allows only `trellis-leader` (403 otherwise).

Every call must carry `Authorization: Bearer <caller_token>` (401 otherwise),
the control plane's own credential.
"""

from __future__ import annotations

import copy
import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from lightkube import KubeConfig
from lightkube.config.models import Cluster, User

CALLER_TOKEN = "control-plane-sa-token"
TOKENREVIEWS = "/apis/authentication.k8s.io/v1/tokenreviews"
_LEASE_PATH = re.compile(r"/apis/coordination\.k8s\.io/v1/namespaces/([^/]+)/leases(?:/([^/?]+))?")


@dataclass
class IssuedToken:
    username: str
    audiences: tuple[str, ...]
    pod: str | None


@dataclass
class StandinState:
    """What the stand-in holds; tests change it between calls (under `lock`)."""

    namespace: str
    lease_names: frozenset[str]
    tokens: dict[str, IssuedToken] = field(default_factory=dict)
    leases: dict[str, dict[str, Any]] = field(default_factory=dict)
    version: int = 100
    failing: bool = False
    reviews: list[dict[str, Any]] = field(default_factory=list)
    conflicts: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class KubeAuthStandin:
    """The stand-in server; `kube_config()` points a lightkube client at it."""

    def __init__(
        self, namespace: str = "trellis-system", lease_names: tuple[str, ...] = ()
    ) -> None:
        self.state = StandinState(namespace, frozenset(lease_names or ("trellis-leader",)))
        state = self.state

        class Handler(_Handler):
            standin = state

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}"

    def kube_config(self) -> KubeConfig:
        return KubeConfig.from_one(
            cluster=Cluster(server=self.url), user=User(token=CALLER_TOKEN), namespace="default"
        )

    def issue(
        self,
        token: str,
        namespace: str,
        service_account: str,
        pod: str | None = None,
        audiences: tuple[str, ...] = ("trellis-ca",),
    ) -> None:
        """Make `token` a projected token of `namespace/service_account` (bound to `pod`)."""
        with self.state.lock:
            self.state.tokens[token] = IssuedToken(
                f"system:serviceaccount:{namespace}:{service_account}", audiences, pod
            )

    def lease(self, name: str = "trellis-leader") -> dict[str, Any] | None:
        with self.state.lock:
            found = self.state.leases.get(name)
            return copy.deepcopy(found) if found is not None else None

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@contextmanager
def kube_auth_standin(lease_names: tuple[str, ...] = ()) -> Iterator[KubeAuthStandin]:
    standin = KubeAuthStandin(lease_names=lease_names)
    standin.start()
    try:
        yield standin
    finally:
        standin.stop()


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


class _Handler(BaseHTTPRequestHandler):
    standin: StandinState
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        return

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def _serve(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if self.headers.get("Authorization") != f"Bearer {CALLER_TOKEN}":
            self._answer(401, _status(401, "Unauthorized", "Unauthorized"))
            return
        body = json.loads(raw) if raw else {}
        path = self.path.split("?", 1)[0]
        with self.standin.lock:
            if path == TOKENREVIEWS and method == "POST":
                code, answer = self._review(body)
            elif match := _LEASE_PATH.fullmatch(path):
                code, answer = self._lease(method, match.group(1), match.group(2), body)
            else:
                code, answer = 404, _status(404, "NotFound", f"{method} {path}: not served")
        self._answer(code, answer)

    def _answer(self, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _review(self, review: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        state = self.standin
        state.reviews.append(review)
        if state.failing:
            return 503, _status(503, "ServiceUnavailable", "etcd is having a bad day")
        spec = review.get("spec") or {}
        token, wanted = spec.get("token"), spec.get("audiences") or ["https://kubernetes.default"]
        issued = state.tokens.get(token) if isinstance(token, str) else None
        result = dict(review)
        if issued is None:
            result["status"] = {"authenticated": False, "error": "invalid bearer token"}
            return 201, result
        granted = [audience for audience in wanted if audience in issued.audiences]
        if not granted:
            result["status"] = {
                "authenticated": False,
                "error": f"token audiences {list(issued.audiences)} is invalid for the target "
                f"audiences {wanted}",
            }
            return 201, result
        user: dict[str, Any] = {"username": issued.username, "uid": "u-1", "groups": []}
        if issued.pod is not None:
            user["extra"] = {"authentication.kubernetes.io/pod-name": [issued.pod]}
        result["status"] = {"authenticated": True, "user": user, "audiences": granted}
        return 201, result

    def _lease(
        self, method: str, namespace: str, name: str | None, body: dict[str, Any]
    ) -> tuple[int, dict[str, Any]]:
        state = self.standin
        if namespace != state.namespace:
            return 403, _status(403, "Forbidden", f"no access to leases in {namespace}")
        if method == "POST" and name is None:
            name = (body.get("metadata") or {}).get("name")
            if name not in state.lease_names:
                return 403, _status(403, "Forbidden", f"lease {name!r} is not allowed")
            if name in state.leases:
                state.conflicts += 1
                return 409, _status(409, "AlreadyExists", f'leases "{name}" already exists')
            return 201, self._store(name, body)
        if name is None or name not in state.lease_names:
            return 403, _status(403, "Forbidden", f"lease {name!r} is not allowed")
        current = state.leases.get(name)
        if method == "GET":
            if current is None:
                return 404, _status(404, "NotFound", f'leases "{name}" not found')
            return 200, copy.deepcopy(current)
        if method == "PUT":
            if current is None:
                return 404, _status(404, "NotFound", f'leases "{name}" not found')
            given = (body.get("metadata") or {}).get("resourceVersion")
            if given != current["metadata"]["resourceVersion"]:
                state.conflicts += 1
                return 409, _status(
                    409,
                    "Conflict",
                    "the object has been modified; please apply your changes "
                    "to the latest version and try again",
                )
            return 200, self._store(name, body)
        return 405, _status(405, "MethodNotAllowed", method)

    def _store(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        state = self.standin
        state.version += 1
        stored = copy.deepcopy(body)
        stored["metadata"] = {
            **(body.get("metadata") or {}),
            "name": name,
            "namespace": state.namespace,
            "resourceVersion": str(state.version),
        }
        state.leases[name] = stored
        return copy.deepcopy(stored)
