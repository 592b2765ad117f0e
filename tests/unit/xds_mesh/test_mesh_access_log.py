"""The mesh-wide access log: every sidecar listener logs, in a form the proxy runs."""

from __future__ import annotations

import json
from dataclasses import replace

from mesh_support import load_case

from trellis.core.accesslog import AccessLogEntry, AccessLogFormatter
from trellis.core.config import HttpConnectionManager, TcpProxy
from trellis.xds.compile_dynamic import listener_resource
from trellis.xds.mesh import LISTENER_TYPE, LogEncoding, MeshAccessLog, Translator


def _listeners(access_log: MeshAccessLog | None) -> list[object]:
    case = load_case("authz")  # explicit capture: HTTP and TCP inbound ports, RBAC on both
    config = replace(case.config, access_log=access_log)
    resources = Translator(config).translate(case.proxy, case.options)
    return list(resources[LISTENER_TYPE].values())


def test_without_the_setting_nothing_logs() -> None:
    for message in _listeners(None):
        listener = listener_resource(message)  # type: ignore[arg-type]
        assert listener.chains[0].filter.access_logs == ()


def test_every_listener_logs_json_the_proxy_can_format() -> None:
    listeners = [listener_resource(m) for m in _listeners(MeshAccessLog("/tmp/x.log"))]  # type: ignore[arg-type]
    kinds = {type(listener.chains[0].filter) for listener in listeners}
    assert kinds == {HttpConnectionManager, TcpProxy}
    for listener in listeners:
        (log,) = listener.chains[0].filter.access_logs
        assert log.path == "/tmp/x.log"
        assert log.json_format is not None
        formatter = AccessLogFormatter.from_config(log.text_format, log.json_format)
        entry = AccessLogEntry(
            start_time=0,
            response_code=403,
            rbac_result="denied",
            rbac_policy="ns[shop]-policy[db-only-from-cart]-rule[0]",
            downstream_peer_uri_san="spiffe://cluster.local/ns/shop/sa/web",
        )
        line = json.loads(formatter.format(entry))
        assert line["authz"] == "denied"
        assert line["authz_policy"] == "ns[shop]-policy[db-only-from-cart]-rule[0]"
        assert line["downstream_peer_principal"] == "spiffe://cluster.local/ns/shop/sa/web"
        assert line["response_code"] == 403


def test_text_encoding_uses_envoys_default_format() -> None:
    settings = MeshAccessLog("/dev/stdout", LogEncoding.TEXT)
    for message in _listeners(settings):
        (log,) = listener_resource(message).chains[0].filter.access_logs  # type: ignore[arg-type]
        assert (log.path, log.json_format, log.text_format) == ("/dev/stdout", None, None)
