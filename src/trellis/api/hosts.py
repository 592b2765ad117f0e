"""Host names in config: validation and Kubernetes-style short-name resolution.

DESIGN.md §2: a service host is `<name>.<namespace>.svc.cluster.local`,
reachable also as `<name>` and `<name>.<namespace>` from the same namespace.
As in Istio, a short name in a VirtualService or DestinationRule is read in the
namespace of the resource that contains it, not the service's.
"""

from __future__ import annotations

import ipaddress
import re

CLUSTER_DOMAIN = "svc.cluster.local"

_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def check_host(value: str, *, wildcard: bool = True) -> str:
    """Validate a DNS host as Istio does: lowercase DNS-1123 labels, optionally `*.`-prefixed.

    `*` alone (every host) is accepted where `wildcard` is true.
    """
    if not value:
        raise ValueError("host must not be empty")
    if len(value) > 255:
        raise ValueError(f"host {value!r} is longer than 255 characters")
    name = value
    if wildcard and value == "*":
        return value
    if wildcard and value.startswith("*."):
        name = value[2:]
    for label in name.split("."):
        if len(label) > 63 or not _LABEL.match(label):
            raise ValueError(
                f"host {value!r} is not a valid DNS name (lowercase letters, digits, '-' "
                "and '.'; a wildcard only as a leading '*.')"
            )
    return value


def is_ip(value: str) -> bool:
    """Whether `value` is an IPv4 or IPv6 address."""
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def is_ip_or_cidr(value: str) -> bool:
    """Whether `value` is an IP address or a CIDR block (ServiceEntry `addresses`)."""
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        return False
    return True


def qualify(host: str, namespace: str) -> str:
    """The FQDN a host written in `namespace` means, by Istio's rule.

    A name without dots is a short name: `reviews` ->
    `reviews.<namespace>.svc.cluster.local`. Anything else (an FQDN, a
    wildcard, `reviews.prod`, an external name) is returned as written.
    """
    if "." in host or host.startswith("*") or is_ip(host):
        return host
    return f"{host}.{namespace}.{CLUSTER_DOMAIN}"


def candidates(host: str, namespace: str) -> tuple[str, ...]:
    """The service hosts a reference may mean, in the order to try them.

    As written, then the Istio short-name FQDN; `<name>.<namespace>` also
    tries `<name>.<namespace>.svc.cluster.local` (DESIGN.md §2), after the
    literal form so that an external `example.com` keeps its meaning.
    """
    if host.startswith("*") or is_ip(host):
        return (host,)
    dots = host.count(".")
    if dots == 0:
        return (f"{host}.{namespace}.{CLUSTER_DOMAIN}", host)
    if dots == 1:
        return (host, f"{host}.{CLUSTER_DOMAIN}")
    return (host,)


def short_forms(host: str) -> tuple[str, ...]:
    """The names a service host is also reachable by from its own namespace.

    For `<name>.<namespace>.svc.cluster.local`: (`<name>`, `<name>.<namespace>`);
    for any other host, nothing.
    """
    suffix = "." + CLUSTER_DOMAIN
    if not host.endswith(suffix):
        return ()
    parts = host[: -len(suffix)].split(".")
    if len(parts) != 2 or host.startswith("*"):
        return ()
    name, namespace = parts
    return (name, f"{name}.{namespace}")


def host_namespace(host: str) -> str | None:
    """The namespace of a `<name>.<namespace>.svc.cluster.local` host, else None."""
    forms = short_forms(host)
    return forms[1].split(".", 1)[1] if forms else None


def host_matches(pattern: str, host: str) -> bool:
    """Whether `host` is covered by `pattern` (exact, `*`, or `*.suffix` wildcard)."""
    if pattern in ("*", host):
        return True
    if pattern.startswith("*."):
        return host.endswith(pattern[1:])
    return False
