"""Route actions: forward to clusters (with retries), redirect, or answer directly."""

from __future__ import annotations

from envoy.config.route.v3 import route_components_pb2 as rc

from trellis.core.config import (
    RETRY_ON_NAMES,
    ClusterAction,
    DirectResponseAction,
    RedirectAction,
    RetryOn,
    RetryPolicy,
    WeightedCluster,
)
from trellis.xds.convert import MAX_PORT, duration, header_mutation, positive_duration, wrapped
from trellis.xds.supported import PREVIOUS_HOSTS_TYPE
from trellis.xds.where import Where

DEFAULT_ROUTE_TIMEOUT = 15.0
DEFAULT_BASE_INTERVAL = 0.025
MAX_DIRECT_RESPONSE_BODY = 4096  # Envoy's default max_direct_response_body_size_bytes
PREVIOUS_HOSTS_NAME = "envoy.retry_host_predicates.previous_hosts"
_REDIRECT_CODES = {
    rc.RedirectAction.MOVED_PERMANENTLY: 301,
    rc.RedirectAction.FOUND: 302,
    rc.RedirectAction.SEE_OTHER: 303,
    rc.RedirectAction.TEMPORARY_REDIRECT: 307,
    rc.RedirectAction.PERMANENT_REDIRECT: 308,
}


def cluster_action(
    action: rc.RouteAction, clusters: frozenset[str] | None, where: Where
) -> ClusterAction:
    """Convert a `RouteAction`; every cluster it names must exist."""
    kind = action.WhichOneof("cluster_specifier")
    if kind == "cluster":
        _check_cluster(action.cluster, clusters, where.at("cluster"))
        targets: tuple[WeightedCluster, ...] = (WeightedCluster(action.cluster, 1),)
    elif kind == "weighted_clusters":
        targets = _weighted(action.weighted_clusters, clusters, where.at("weighted_clusters"))
    else:
        raise where.error("one of cluster or weighted_clusters is required")
    retry = None
    if action.HasField("retry_policy"):
        retry = retry_policy(action.retry_policy, where.at("retry_policy"))
    return ClusterAction(
        clusters=targets,
        total_weight=sum(t.weight for t in targets),
        timeout=duration(action, "timeout", where, DEFAULT_ROUTE_TIMEOUT),
        retry_policy=retry,
        prefix_rewrite=action.prefix_rewrite or None,
        host_rewrite=action.host_rewrite_literal or None,
    )


def _check_cluster(name: str, clusters: frozenset[str] | None, where: Where) -> None:
    if not name:
        raise where.error("cluster name is required")
    if clusters is not None and name not in clusters:
        raise where.error(f"unknown cluster {name!r}")


def _weighted(
    weighted: rc.WeightedCluster, clusters: frozenset[str] | None, where: Where
) -> tuple[WeightedCluster, ...]:
    if not weighted.clusters:
        raise where.at("clusters").error("at least one cluster is required")
    targets = []
    for i, entry in enumerate(weighted.clusters):
        here = where.at("clusters").item(i)
        _check_cluster(entry.name, clusters, here.at("name"))
        targets.append(
            WeightedCluster(
                name=entry.name,
                weight=wrapped(entry, "weight", 0),
                request_headers=header_mutation(
                    entry.request_headers_to_add, entry.request_headers_to_remove, here, "request"
                ),
                response_headers=header_mutation(
                    entry.response_headers_to_add,
                    entry.response_headers_to_remove,
                    here,
                    "response",
                ),
            )
        )
    total = sum(t.weight for t in targets)
    if total == 0:
        raise where.at("clusters").error("the weights must add up to more than 0")
    if weighted.HasField("total_weight") and weighted.total_weight.value != total:
        raise where.at("total_weight").error(
            f"the weights add up to {total}, not total_weight {weighted.total_weight.value}"
        )
    return tuple(targets)


def retry_policy(policy: rc.RetryPolicy, where: Where) -> RetryPolicy:
    """Convert a `RetryPolicy`, applying Envoy's defaults and back-off rules."""
    retry_on = RetryOn.NONE
    for token in policy.retry_on.split(","):
        condition = token.strip()
        if not condition:
            continue
        flag = RETRY_ON_NAMES.get(condition)
        if flag is None:
            names = ", ".join(RETRY_ON_NAMES)
            raise where.at("retry_on").error(
                f"retry condition {condition!r} is not supported (supported: {names})"
            )
        retry_on |= flag
    base, cap = DEFAULT_BASE_INTERVAL, DEFAULT_BASE_INTERVAL * 10
    if policy.HasField("retry_back_off"):
        base, cap = _back_off(policy.retry_back_off, where.at("retry_back_off"))
    codes = set()
    for i, code in enumerate(policy.retriable_status_codes):
        if not 100 <= code <= 599:
            raise (
                where.at("retriable_status_codes")
                .item(i)
                .error(f"status code {code} is out of range 100-599")
            )
        codes.add(int(code))
    for i, predicate in enumerate(policy.retry_host_predicate):
        _check_host_predicate(predicate, where.at("retry_host_predicate").item(i))
    attempts = policy.host_selection_retry_max_attempts
    if attempts < 0:
        raise where.at("host_selection_retry_max_attempts").error("must not be negative")
    return RetryPolicy(
        retry_on=retry_on,
        num_retries=wrapped(policy, "num_retries", 1),
        per_try_timeout=duration(policy, "per_try_timeout", where, None),
        base_interval=base,
        max_interval=cap,
        retriable_status_codes=frozenset(codes),
        avoid_previous_hosts=bool(policy.retry_host_predicate),
        host_selection_retry_max_attempts=int(attempts) or 1,
    )


def _back_off(back_off: rc.RetryPolicy.RetryBackOff, where: Where) -> tuple[float, float]:
    if not back_off.HasField("base_interval"):
        raise where.at("base_interval").error("base_interval is required")
    base = positive_duration(back_off, "base_interval", where, DEFAULT_BASE_INTERVAL)
    cap = positive_duration(back_off, "max_interval", where, base * 10)
    if cap < base:
        raise where.at("max_interval").error("max_interval must not be less than base_interval")
    return base, cap


def _check_host_predicate(predicate: rc.RetryPolicy.RetryHostPredicate, where: Where) -> None:
    if predicate.HasField("typed_config"):
        if predicate.typed_config.TypeName() == PREVIOUS_HOSTS_TYPE:
            return
    elif predicate.name == PREVIOUS_HOSTS_NAME:
        return
    raise where.error(f"only the {PREVIOUS_HOSTS_NAME} retry host predicate is supported")


def redirect_action(redirect: rc.RedirectAction, where: Where) -> RedirectAction:
    """Convert a `RedirectAction`."""
    scheme_kind = redirect.WhichOneof("scheme_rewrite_specifier")
    scheme = None
    if scheme_kind == "https_redirect" and redirect.https_redirect:
        scheme = "https"
    elif scheme_kind == "scheme_redirect" and redirect.scheme_redirect:
        scheme = redirect.scheme_redirect.lower()
    if redirect.port_redirect > MAX_PORT:
        raise where.at("port_redirect").error(f"port must be 1-{MAX_PORT}")
    path_kind = redirect.WhichOneof("path_rewrite_specifier")
    return RedirectAction(
        response_code=_REDIRECT_CODES[redirect.response_code],
        scheme=scheme,
        host=redirect.host_redirect or None,
        port=redirect.port_redirect or None,
        path=redirect.path_redirect if path_kind == "path_redirect" else None,
        prefix_rewrite=redirect.prefix_rewrite if path_kind == "prefix_rewrite" else None,
        strip_query=redirect.strip_query,
    )


def direct_response(response: rc.DirectResponseAction, where: Where) -> DirectResponseAction:
    """Convert a `DirectResponseAction`; the status must be 200-599."""
    if not 200 <= response.status <= 599:
        raise where.at("status").error(f"status {response.status} is out of range 200-599")
    body = b""
    if response.HasField("body"):
        kind = response.body.WhichOneof("specifier")
        if kind == "inline_string":
            body = response.body.inline_string.encode()
        elif kind == "inline_bytes":
            body = bytes(response.body.inline_bytes)
    if len(body) > MAX_DIRECT_RESPONSE_BODY:
        raise where.at("body").error(
            f"body is {len(body)} bytes; the limit is {MAX_DIRECT_RESPONSE_BODY}"
        )
    return DirectResponseAction(status=int(response.status), body=body)
