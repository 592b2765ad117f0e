"""VirtualService `headers` operations as Envoy header mutations (Istio's rules).

`set` overwrites (OVERWRITE_IF_EXISTS_OR_ADD), `add` appends
(APPEND_IF_EXISTS_OR_ADD), each sorted by name; a `host` header in `set` or
`add` becomes the authority rewrite instead (`set` wins over `add`), and
`host` or pseudo-headers are never added or removed. Values are literal: a
`%` that would start an Envoy formatter is an error, since the Trellis proxy
does not expand formatters in header values.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from trellis.api.networking import HeaderOperations, Headers, VirtualService
from trellis.core.headers import has_formatter
from trellis.xds.mesh.build import header_option
from trellis.xds.mesh.errors import unsupported
from trellis.xds.protos import base_pb2


@dataclass(frozen=True, slots=True)
class HeaderEdits:
    """What one `headers` block does to requests and responses."""

    request_add: tuple[base_pb2.HeaderValueOption, ...] = ()
    request_remove: tuple[str, ...] = ()
    response_add: tuple[base_pb2.HeaderValueOption, ...] = ()
    response_remove: tuple[str, ...] = ()
    authority: str = ""


NO_EDITS = HeaderEdits()


def _internal(name: str) -> bool:
    return name.startswith(":") or name.lower() == "host"


def _options(
    values: Mapping[str, str], *, append: bool, service: VirtualService, path: str
) -> tuple[list[base_pb2.HeaderValueOption], str]:
    options = []
    authority = ""
    for name in sorted(values):
        value = values[name]
        if _internal(name):
            authority = value if name.lower() == "host" else authority
            continue
        if has_formatter(value):
            raise unsupported(
                service,
                f"{path}.{name}",
                f"{value!r}: %-formatters in header values are not supported by the "
                "Trellis proxy (write %% for a literal %)",
            )
        options.append(header_option(name.lower(), value, append=append))
    return options, authority


def _operations(
    ops: HeaderOperations | None, service: VirtualService, path: str
) -> tuple[tuple[base_pb2.HeaderValueOption, ...], tuple[str, ...], str]:
    if ops is None:
        return (), (), ""
    set_options, set_authority = _options(
        ops.set, append=False, service=service, path=f"{path}.set"
    )
    add_options, add_authority = _options(ops.add, append=True, service=service, path=f"{path}.add")
    removed = tuple(name.lower() for name in ops.remove if not _internal(name))
    return tuple(set_options + add_options), removed, set_authority or add_authority


def header_edits(headers: Headers | None, service: VirtualService, path: str) -> HeaderEdits:
    """Translate a `headers` block found at `path` of `service`."""
    if headers is None:
        return NO_EDITS
    request_add, request_remove, authority = _operations(
        headers.request, service, f"{path}.request"
    )
    response_add, response_remove, _ = _operations(headers.response, service, f"{path}.response")
    return HeaderEdits(request_add, request_remove, response_add, response_remove, authority)
