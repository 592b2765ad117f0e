"""The map from extension message to module: complete for what the allowlist accepts in
an `Any`, and right about where each message is defined."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys

from trellis.xds.supported import SUPPORTED_ANY_TYPES
from trellis.xds.type_modules import TYPE_MODULES, import_types_named


def test_every_type_an_any_may_hold_has_its_module() -> None:
    accepted = frozenset().union(*SUPPORTED_ANY_TYPES.values())
    assert sorted(accepted - TYPE_MODULES.keys()) == []


def test_each_module_defines_its_type() -> None:
    for full_name, module_name in TYPE_MODULES.items():
        package, _, short_name = full_name.rpartition(".")
        file = importlib.import_module(module_name).DESCRIPTOR
        assert file.package == package, full_name
        assert short_name in file.message_types_by_name, full_name


# A fresh interpreter, so that no other test has loaded the messages already.
_FRESH = """
import json, sys
from trellis.xds.bootstrap import parse_bootstrap
tcp = "envoy.extensions.filters.network.tcp_proxy.v3.tcp_proxy_pb2"
rbac = "envoy.extensions.filters.network.rbac.v3.rbac_pb2"
before = [tcp in sys.modules, rbac in sys.modules]
parse_bootstrap(json.loads(sys.argv[1]), "test")
print(json.dumps(before + [tcp in sys.modules, rbac in sys.modules]))
"""


def test_parse_loads_only_the_types_a_bootstrap_names() -> None:
    tcp_proxy = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
        "stat_prefix": "tcp",
        "cluster": "upstream",
    }
    listener = {"name": "l", "filter_chains": [{"filters": [{"typed_config": tcp_proxy}]}]}
    bootstrap = {"static_resources": {"listeners": [listener]}}
    out = subprocess.run(
        [sys.executable, "-c", _FRESH, json.dumps(bootstrap)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert json.loads(out) == [False, False, True, False]


def test_import_types_named_finds_nested_types_and_ignores_others() -> None:
    # Unknown names are left to json_format, which reports them; only listed ones load.
    import_types_named({"a": [{"b": {"@type": "type.googleapis.com/example.Unknown"}}], "@type": 3})
    import_types_named([{"x": {"@type": "envoy.config.trace.v3.OpenTelemetryConfig"}}])
    assert "envoy.config.trace.v3.opentelemetry_pb2" in sys.modules
