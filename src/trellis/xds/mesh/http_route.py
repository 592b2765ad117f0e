"""VirtualService `http` rules as Envoy routes, one route per match (Istio's `translateRoute`).

Rules are taken in order; a rule without matches, or a match that catches
everything, ends the list (later rules could never match). A match with a
`port` other than the virtual host's, or `sourceLabels` the proxy's workload
does not carry, is left out for this proxy. Route names are the rule's
`name`, plus `.<match name>` when the match is named.

Matches: `uri` exact/prefix/regex -> path/prefix/safe_regex (`caseSensitive`
from `ignoreUriCase`), `headers` and `withoutHeaders` -> header matchers
sorted by name (an empty match, or Istio's regex `*`, is a presence check),
then `method` -> `:method` and `authority` -> `:authority`. `queryParams` is
an error: the Trellis proxy does not match query parameters.

Actions: `redirect`, `directResponse`, or forwarding with the timeout (unset:
0s, no timeout, as in Istio), `rewrite` (prefix and authority), the retry
policy, and one cluster or weighted clusters (`outbound|PORT|SUBSET|HOST`;
weight-0 destinations are dropped when there are several, as in Istio).
"""

from __future__ import annotations

import base64
import binascii

from envoy.config.core.v3 import base_pb2 as core_base_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.type.matcher.v3 import regex_pb2, string_pb2

from trellis.api.networking import (
    Destination,
    HTTPDirectResponse,
    HTTPMatchRequest,
    HTTPRedirect,
    HTTPRoute,
    StringMatch,
    VirtualService,
)
from trellis.api.services import labels_match
from trellis.xds.compile_action import MAX_DIRECT_RESPONSE_BODY
from trellis.xds.mesh.build import boolean, duration, u32
from trellis.xds.mesh.errors import unsupported
from trellis.xds.mesh.headers import HeaderEdits, header_edits
from trellis.xds.mesh.names import outbound_cluster
from trellis.xds.mesh.registry import Registry
from trellis.xds.mesh.retry import retry_policy

_REDIRECT_CODES = {
    301: rc.RedirectAction.MOVED_PERMANENTLY,
    302: rc.RedirectAction.FOUND,
    303: rc.RedirectAction.SEE_OTHER,
    307: rc.RedirectAction.TEMPORARY_REDIRECT,
    308: rc.RedirectAction.PERMANENT_REDIRECT,
}

_VS_PATH = "/apis/networking.istio.io/v1"


class RouteBuilder:
    """Builds the routes of one VirtualService for one virtual host (service port)."""

    def __init__(self, registry: Registry, service: VirtualService, listen_port: int) -> None:
        self.registry = registry
        self.service = service
        self.listen_port = listen_port

    def routes(self) -> list[rc.Route]:
        out: list[rc.Route] = []
        for i, rule in enumerate(self.service.spec.http):
            path = f"spec.http[{i}]"
            if not rule.match:
                out.append(self._route(rule, None, path, path))
                return out
            for j, match in enumerate(rule.match):
                if not self._applies(match):
                    continue
                route = self._route(rule, match, path, f"{path}.match[{j}]")
                out.append(route)
                if is_catch_all(route):
                    return out
        return out

    def _applies(self, match: HTTPMatchRequest) -> bool:
        if match.port is not None and match.port != self.listen_port:
            return False
        return labels_match(match.source_labels, self.registry.labels)

    def _route(
        self, rule: HTTPRoute, match: HTTPMatchRequest | None, path: str, match_path: str
    ) -> rc.Route:
        name = rule.name
        if match is not None and match.name:
            name = f"{name}.{match.name}"
        route = rc.Route(name=name, match=self._match(match, match_path))
        # Istio's marker of the VirtualService a route came from (shown by proxy-config).
        meta = self.service.metadata
        config = f"{_VS_PATH}/namespaces/{meta.namespace}/virtual-service/{meta.name}"
        route.metadata.filter_metadata["istio"].fields["config"].string_value = config
        edits = header_edits(rule.headers, self.service, f"{path}.headers")
        _add_edits(route, edits)
        if rule.redirect is not None:
            route.redirect.CopyFrom(_redirect(rule.redirect))
        elif rule.direct_response is not None:
            route.direct_response.CopyFrom(
                self._direct_response(rule.direct_response, f"{path}.directResponse")
            )
        else:
            self._forward(route, rule, edits.authority, path)
        return route

    # --- matching ---------------------------------------------------------------

    def _match(self, match: HTTPMatchRequest | None, path: str) -> rc.RouteMatch:
        out = rc.RouteMatch(prefix="/")
        if match is None:
            return out
        if match.query_params:
            raise unsupported(
                self.service,
                f"{path}.queryParams",
                "query parameter matching is not supported by the Trellis proxy yet",
            )
        headers = [_header(name, value, invert=False) for name, value in match.headers.items()]
        headers += [
            _header(name, value, invert=True) for name, value in match.without_headers.items()
        ]
        out.headers.extend(sorted(headers, key=lambda header: header.name))
        uri = match.uri
        if uri is not None and uri.exact is not None:
            out.path = uri.exact
        elif uri is not None and uri.prefix is not None:
            out.prefix = uri.prefix
        elif uri is not None and uri.regex is not None:
            out.safe_regex.CopyFrom(regex_pb2.RegexMatcher(regex=uri.regex))
        out.case_sensitive.CopyFrom(boolean(not match.ignore_uri_case))
        if match.method is not None:
            out.headers.append(_header(":method", match.method, invert=False))
        if match.authority is not None:
            out.headers.append(_header(":authority", match.authority, invert=False))
        return out

    # --- actions ----------------------------------------------------------------

    def _forward(self, route: rc.Route, rule: HTTPRoute, authority: str, path: str) -> None:
        action = route.route
        action.timeout.CopyFrom(duration(rule.timeout or 0.0))
        if rule.rewrite is not None:
            if rule.rewrite.uri:
                action.prefix_rewrite = rule.rewrite.uri
            authority = rule.rewrite.authority or authority
        destinations = rule.route
        if len(destinations) == 1:
            action.cluster = self._cluster(destinations[0].destination)
            edits = header_edits(destinations[0].headers, self.service, f"{path}.route[0].headers")
            _add_edits(route, edits)
            authority = authority or edits.authority
        else:
            for i, item in enumerate(destinations):
                if item.weight == 0:
                    continue
                entry = action.weighted_clusters.clusters.add(
                    name=self._cluster(item.destination), weight=u32(item.weight)
                )
                edits = header_edits(item.headers, self.service, f"{path}.route[{i}].headers")
                _add_edits(entry, edits)
                if edits.authority:
                    raise unsupported(
                        self.service,
                        f"{path}.route[{i}].headers.request",
                        "rewriting the host per weighted destination is not supported by "
                        "the Trellis proxy; use the rule's rewrite.authority",
                    )
        if authority:
            action.host_rewrite_literal = authority
        policy = retry_policy(rule.retries, self.service, f"{path}.retries")
        if policy is not None:
            action.retry_policy.CopyFrom(policy)

    def _cluster(self, destination: Destination) -> str:
        namespace = self.service.metadata.namespace
        host, service = self.registry.resolve(destination.host, namespace)
        if destination.port is not None:
            port = destination.port.number
        elif service is not None and len(service.ports) == 1:
            port = service.ports[0].number
        else:
            port = self.listen_port
        return outbound_cluster(host, port, destination.subset)

    def _direct_response(self, response: HTTPDirectResponse, path: str) -> rc.DirectResponseAction:
        action = rc.DirectResponseAction(status=response.status)
        body = response.body
        size = 0
        if body is not None and body.string is not None:
            action.body.CopyFrom(core_base_pb2.DataSource(inline_string=body.string))
            size = len(body.string.encode())
        elif body is not None and body.bytes is not None:
            try:
                raw = base64.b64decode(body.bytes, validate=True)
            except (binascii.Error, ValueError):
                raise unsupported(self.service, f"{path}.body.bytes", "not valid base64") from None
            action.body.CopyFrom(core_base_pb2.DataSource(inline_bytes=raw))
            size = len(raw)
        if size > MAX_DIRECT_RESPONSE_BODY:
            raise unsupported(
                self.service,
                f"{path}.body",
                f"body is {size} bytes; the Trellis proxy's limit is {MAX_DIRECT_RESPONSE_BODY}",
            )
        return action


def _string_matcher(value: StringMatch) -> string_pb2.StringMatcher:
    if value.exact is not None:
        return string_pb2.StringMatcher(exact=value.exact)
    if value.prefix is not None:
        return string_pb2.StringMatcher(prefix=value.prefix)
    return string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex=value.regex or ""))


def _header(name: str, value: StringMatch, *, invert: bool) -> rc.HeaderMatcher:
    matcher = rc.HeaderMatcher(name=name.lower(), invert_match=invert)
    if value.is_empty or value.regex == "*":
        matcher.present_match = True
        return matcher
    matcher.string_match.CopyFrom(_string_matcher(value))
    if invert:
        matcher.treat_missing_header_as_empty = True
    return matcher


def _redirect(redirect: HTTPRedirect) -> rc.RedirectAction:
    action = rc.RedirectAction(response_code=_REDIRECT_CODES[redirect.redirect_code])
    if redirect.authority:
        action.host_redirect = redirect.authority
    if redirect.uri:
        action.path_redirect = redirect.uri
    if redirect.scheme:
        action.scheme_redirect = redirect.scheme
    port = redirect.port
    scheme = redirect.scheme or "http"
    if port is not None and (port, scheme) not in ((80, "http"), (443, "https")):
        action.port_redirect = port
    return action


def _add_edits(target: rc.Route | rc.WeightedCluster.ClusterWeight, edits: HeaderEdits) -> None:
    target.request_headers_to_add.extend(edits.request_add)
    target.request_headers_to_remove.extend(edits.request_remove)
    target.response_headers_to_add.extend(edits.response_add)
    target.response_headers_to_remove.extend(edits.response_remove)


def is_catch_all(route: rc.Route) -> bool:
    """Whether a route matches every request (prefix `/` or regex `.*`, no header matches)."""
    match = route.match
    kind = match.WhichOneof("path_specifier")
    everything = (kind == "prefix" and match.prefix == "/") or (
        kind == "safe_regex" and match.safe_regex.regex == ".*"
    )
    return everything and not match.headers
