"""Read an Envoy v3 `Bootstrap` from a YAML or JSON file."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from typing import Any

from envoy.config.bootstrap.v3 import bootstrap_pb2
from google.protobuf import descriptor_pool, json_format

from trellis.core.addresses import EndpointAddress, PipeAddress
from trellis.errors import ConfigError
from trellis.xds.type_modules import import_types_named

Bootstrap = bootstrap_pb2.Bootstrap

_FAILED_FIELD = re.compile(r"^Failed to parse (\w+) field: ")
_AT_PATH = re.compile(r'^(?P<msg>.*?)\s+at\s+"?Bootstrap\.?(?P<path>[^"\s]*?)"?\.*$')
_NO_FIELD = re.compile(r'^Message type "(?P<type>[\w.]+)" has no field named "(?P<field>[^"]+)"$')


def load_bootstrap(path: str | os.PathLike[str]) -> bootstrap_pb2.Bootstrap:
    """Read and parse a bootstrap file; JSON if it starts with `{`, YAML otherwise.

    Read with `open`, not pathlib: the proxy process does not load pathlib and
    urllib.parse (~0.5 MiB of the sidecar's memory budget).
    """
    source = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as file:
            text = file.read()
    except FileNotFoundError:
        raise ConfigError("file not found", source=source) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"file is not UTF-8: {exc.reason}", source=source) from None
    except OSError as exc:
        raise ConfigError(f"cannot read file: {exc.strerror or exc}", source=source) from None
    data = _decode(text, source)
    return parse_bootstrap(data, source)


def parse_bootstrap(data: Mapping[str, Any], source: str) -> bootstrap_pb2.Bootstrap:
    """Build a `Bootstrap` from decoded YAML/JSON; proto or camelCase field names."""
    if not isinstance(data, Mapping):
        raise ConfigError("the top level must be a mapping", source=source)
    import_types_named(data)
    msg = bootstrap_pb2.Bootstrap()
    try:
        json_format.ParseDict(dict(data), msg)
    except json_format.ParseError as exc:
        path, message = _describe_parse_error(str(exc))
        raise ConfigError(message, path=path, source=source) from exc
    except (TypeError, ValueError, AttributeError) as exc:
        raise ConfigError(f"malformed value: {exc}", source=source) from exc
    return msg


def _decode(text: str, source: str) -> Mapping[str, Any]:
    data: object
    if text.lstrip().startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            where = f"line {exc.lineno} column {exc.colno}"
            raise ConfigError(f"invalid JSON at {where}: {exc.msg}", source=source) from None
    else:
        # PyYAML costs the proxy ~1.2 MiB: loaded only for YAML files.
        from trellis.xds.bootstrap_yaml import load_yaml  # noqa: PLC0415

        data = load_yaml(text, source)
    if data is None:
        raise ConfigError("file is empty", source=source)
    if not isinstance(data, dict):
        raise ConfigError("the top level must be a mapping", source=source)
    return data


def _describe_parse_error(text: str) -> tuple[str, str]:
    """Turn json_format's nested message into (field path, short message)."""
    line = text.splitlines()[0] if text else "invalid bootstrap"
    fields: list[str] = []
    while match := _FAILED_FIELD.match(line):
        fields.append(match.group(1))
        line = line[match.end() :]
    path = ".".join(fields)
    at = _AT_PATH.match(line)
    if at is not None:
        line = at.group("msg")
        path = at.group("path").strip(".")
    line = line.rstrip(".")
    unknown = _NO_FIELD.match(line)
    if unknown is None:
        return path, line
    field = unknown.group("field")
    path = f"{path}.{field}" if path else field
    message = f"unknown field {field!r} in {unknown.group('type')}"
    hint = _closest_field(unknown.group("type"), field)
    return path, f"{message} (did you mean {hint!r}?)" if hint else message


def _closest_field(type_name: str, field: str) -> str | None:
    try:
        descriptor = descriptor_pool.Default().FindMessageTypeByName(type_name)
    except KeyError:
        return None
    import difflib  # noqa: PLC0415 - only for a bad bootstrap; the sidecar need not keep it

    names = [f.name for f in descriptor.fields]
    close = difflib.get_close_matches(field, names, n=1)
    return close[0] if close else None


ADS_CLUSTER = "xds-grpc"


def with_ads(
    bootstrap: bootstrap_pb2.Bootstrap, control_plane: EndpointAddress, *, delta: bool = True
) -> bootstrap_pb2.Bootstrap:
    """The bootstrap plus Envoy's usual ADS wiring to a control plane at `control_plane`.

    Adds a STATIC HTTP/2 cluster `xds-grpc` and `dynamic_resources` with
    `ads_config` and LDS/CDS over ADS (what `trellis proxy --xds` means). A
    `PipeAddress` becomes the endpoint's `pipe` (a Unix socket), as in Envoy.
    `delta`: incremental xDS (`api_type: DELTA_GRPC`, as Istio's sidecars use
    since 1.22), else state of the world (`GRPC`).
    """
    if bootstrap.HasField("dynamic_resources"):
        raise ConfigError("the bootstrap already has dynamic_resources", source="--xds")
    if any(c.name == ADS_CLUSTER for c in bootstrap.static_resources.clusters):
        raise ConfigError(f"the bootstrap already has a cluster {ADS_CLUSTER!r}", source="--xds")
    result = bootstrap_pb2.Bootstrap()
    result.CopyFrom(bootstrap)
    addition = parse_bootstrap(
        {
            "static_resources": {
                "clusters": [
                    {
                        "name": ADS_CLUSTER,
                        "type": "STATIC",
                        "connect_timeout": "1s",
                        "load_assignment": {
                            "cluster_name": ADS_CLUSTER,
                            "endpoints": [
                                {
                                    "lb_endpoints": [
                                        {"endpoint": {"address": _address_json(control_plane)}}
                                    ]
                                }
                            ],
                        },
                        "typed_extension_protocol_options": {
                            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                                "@type": "type.googleapis.com/"
                                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                                "explicit_http_config": {"http2_protocol_options": {}},
                            }
                        },
                    }
                ]
            },
            "dynamic_resources": {
                "ads_config": {
                    "api_type": "DELTA_GRPC" if delta else "GRPC",
                    "transport_api_version": "V3",
                    "grpc_services": [{"envoy_grpc": {"cluster_name": ADS_CLUSTER}}],
                },
                "lds_config": {"ads": {}, "resource_api_version": "V3"},
                "cds_config": {"ads": {}, "resource_api_version": "V3"},
            },
        },
        "--xds",
    )
    result.MergeFrom(addition)
    return result


def _address_json(address: EndpointAddress) -> dict[str, object]:
    """A `core.v3.Address` as the dict `parse_bootstrap` takes."""
    if isinstance(address, PipeAddress):
        return {"pipe": {"path": address.path}}
    return {"socket_address": {"address": address.host, "port_value": address.port}}
