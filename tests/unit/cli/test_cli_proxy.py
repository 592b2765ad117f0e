"""`trellis proxy-status` and `trellis proxy-config`.

The config dumps in data/ were captured from real `trellis proxy` runs: a
static bootstrap (tests/unit/xds/data/minimal.yaml with free ports), a proxy
fed over ADS (an 80/20 split), and the same proxy after it NACKed a route
update.
"""

from __future__ import annotations

import base64
import functools
import json
from pathlib import Path
from types import MappingProxyType

import pytest
from controlplane.pki_helpers import cert_pem, certificate, key_pem, new_key
from envoy.config.bootstrap.v3 import bootstrap_pb2

from trellis.controlplane.ads_status import Nack, ProxyNode, ProxyStatus, SyncState, TypeStatus
from trellis.xds.config_dump import config_dump

from .api_testing import DATA, make_api, table_rows

STATIC = DATA / "config_dump_static.json"
ADS = DATA / "config_dump_ads.json"
NACKED = DATA / "config_dump_nack.json"
TYPE_URL = "type.googleapis.com/envoy.config."


def _run(*args: str) -> tuple[int, str, str]:
    result = make_api().run(*args)
    return result.exit_code, result.stdout, result.stderr


def _ports(path: str) -> list[str]:
    dump = json.loads(DATA.joinpath(path).read_text())
    listeners = next(c for c in dump["configs"] if c["@type"].endswith("ListenersConfigDump"))
    entries = listeners.get("static_listeners") or listeners["dynamic_listeners"]
    return [
        str(
            (entry.get("listener") or entry["active_state"]["listener"])["address"][
                "socket_address"
            ]["port_value"]
        )
        for entry in entries
    ]


def test_listeners_of_a_static_bootstrap() -> None:
    code, out, err = _run("proxy-config", "static", "listeners", "--file", str(STATIC))
    assert code == 0, err
    ports = _ports("config_dump_static.json")
    assert table_rows(out) == [
        {"NAME": "http", "ADDRESS": "127.0.0.1", "PORT": ports[0], "TYPE": "HTTP",
         "DESTINATION": "Route: (inline)"},
        {"NAME": "tcp", "ADDRESS": "127.0.0.1", "PORT": ports[1], "TYPE": "TCP",
         "DESTINATION": "Cluster: app"},
    ]  # fmt: skip


def test_static_routes_clusters_endpoints() -> None:
    _, routes, _ = _run("proxy-config", "p", "routes", "--file", str(STATIC))
    assert table_rows(routes) == [
        {"NAME": "(inline)", "DOMAINS": "*", "MATCH": "/*", "VIRTUAL SERVICE": "", "CLUSTER": "app"}
    ]
    _, clusters, _ = _run("proxy-config", "p", "clusters", "--file", str(STATIC))
    assert table_rows(clusters) == [{"NAME": "app", "TYPE": "STATIC", "LB": "ROUND_ROBIN"}]
    _, endpoints, _ = _run("proxy-config", "p", "endpoints", "--file", str(STATIC))
    assert table_rows(endpoints) == [
        {"ENDPOINT": "127.0.0.1:8080", "STATUS": "HEALTHY", "CLUSTER": "app"}
    ]


def test_dynamic_resources_from_ads() -> None:
    _, listeners, _ = _run("proxy-config", "p", "listeners", "--file", str(ADS))
    assert [(row["NAME"], row["TYPE"], row["DESTINATION"]) for row in table_rows(listeners)] == [
        ("outbound", "HTTP", "Route: outbound")
    ]
    _, routes, _ = _run("proxy-config", "p", "routes", "--file", str(ADS))
    assert [row["CLUSTER"] for row in table_rows(routes)] == ["reviews-v1 80%,reviews-v2 20%"]
    _, clusters, _ = _run("proxy-config", "p", "clusters", "--file", str(ADS))
    assert [(row["NAME"], row["TYPE"]) for row in table_rows(clusters)] == [
        ("xds-grpc", "STATIC"),
        ("reviews-v1", "EDS"),
        ("reviews-v2", "EDS"),
    ]
    _, endpoints, _ = _run("proxy-config", "p", "endpoints", "--file", str(ADS))
    rows = table_rows(endpoints)
    assert [(row["ENDPOINT"], row["CLUSTER"]) for row in rows[:2]] == [
        ("127.0.0.1:9081", "reviews-v1"),
        ("127.0.0.1:9082", "reviews-v2"),
    ]
    assert rows[2]["CLUSTER"] == "xds-grpc"  # the bootstrap's static cluster, inline endpoints


def test_json_output_is_the_raw_resources() -> None:
    code, out, _ = _run("proxy-config", "p", "clusters", "--file", str(ADS), "-o", "json")
    assert code == 0
    clusters = json.loads(out)
    assert [cluster["name"] for cluster in clusters] == ["xds-grpc", "reviews-v1", "reviews-v2"]
    assert clusters[1]["eds_cluster_config"]["eds_config"]["ads"] == {}


def test_a_rejected_update_is_reported_and_the_previous_config_shown() -> None:
    code, out, err = _run("proxy-config", "p", "routes", "--file", str(NACKED))
    assert code == 0
    assert [row["CLUSTER"] for row in table_rows(out)] == ["reviews-v1 80%,reviews-v2 20%"]
    assert "Warning: rejected update: outbound: version" in err
    assert "cluster_not_found_response_code: field is not supported by Trellis" in err
    _, _, clean = _run("proxy-config", "p", "routes", "--file", str(ADS))
    assert clean == ""


def test_proxy_config_through_the_api_needs_an_admin_address() -> None:
    code, _, err = _run("proxy-config", "sidecar~web-1", "listeners")
    assert code == 1
    assert "no admin address is known for proxy 'sidecar~web-1'" in err
    assert "--admin HOST:PORT" in err


def _type(short: str, state: SyncState, nack: Nack | None = None) -> TypeStatus:
    names = {"CDS": "cluster.v3.Cluster", "LDS": "listener.v3.Listener"}
    names |= {"RDS": "route.v3.RouteConfiguration", "EDS": "endpoint.v3.ClusterLoadAssignment"}
    names |= {"VHDS": "route.v3.VirtualHost"}
    sent = "" if state is SyncState.NOT_SENT else "v2"
    acked = "v2" if state is SyncState.SYNCED else ("v1" if sent else "")
    return TypeStatus(
        TYPE_URL + names[short],
        short,
        state,
        sent_version=sent,
        acked_version=acked,
        last_nack=nack,
    )


def _statuses() -> list[ProxyStatus]:
    message = "RDS route configuration 'outbound': field is not supported"
    nack = Nack(TYPE_URL + "route.v3.RouteConfiguration", "v2", "n7", message, 1.0e9)
    web = ProxyNode("sidecar~web-1", workload_name="web", namespace="shop")
    db = ProxyNode(
        "sidecar~db-1", workload_name="db", namespace="shop", labels=MappingProxyType({})
    )
    return [
        ProxyStatus(
            "c1",
            web,
            "ipv4:127.0.0.1:50000",
            1.0e9,
            "v2",
            (
                _type("CDS", SyncState.SYNCED),
                _type("LDS", SyncState.SYNCED),
                _type("EDS", SyncState.SYNCED),
                _type("RDS", SyncState.STALE, nack),
            ),
        ),
        ProxyStatus(
            "c2", db, "ipv4:127.0.0.1:50001", 1.0e9, "", (_type("CDS", SyncState.NOT_SENT),)
        ),
    ]


def test_proxy_status_table() -> None:
    result = make_api(ads_status=_statuses).run("proxy-status")
    assert result.exit_code == 0, result.output
    assert table_rows(result.stdout) == [
        {"NAME": "sidecar~db-1", "CDS": "NOT SENT", "LDS": "NOT SENT", "EDS": "NOT SENT",
         "RDS": "NOT SENT", "VERSION": "-", "LAST NACK": ""},
        {"NAME": "sidecar~web-1", "CDS": "SYNCED", "LDS": "SYNCED", "EDS": "SYNCED",
         "RDS": "STALE", "VERSION": "v2",
         "LAST NACK": "RDS: RDS route configuration 'outbound': field is not supported"},
    ]  # fmt: skip


def test_proxy_status_shows_a_stale_vhds_as_stale_routes() -> None:
    node = ProxyNode("sidecar~cart-1", workload_name="cart", namespace="shop")
    types = [_type(short, SyncState.SYNCED) for short in ("CDS", "LDS", "EDS", "RDS")]

    for vhds, shown in ((SyncState.STALE, "STALE"), (SyncState.SYNCED, "SYNCED")):
        every = (*types, _type("VHDS", vhds))
        status = [ProxyStatus("c3", node, "ipv4:127.0.0.1:50002", 1.0e9, "v2", every)]
        result = make_api(ads_status=functools.partial(list, status)).run("proxy-status")
        assert result.exit_code == 0, result.output
        assert table_rows(result.stdout)[0]["RDS"] == shown


def test_proxy_status_json_and_without_ads() -> None:
    result = make_api(ads_status=_statuses).run("proxy-status", "-o", "json")
    proxies = json.loads(result.stdout)
    assert [proxy["id"] for proxy in proxies] == ["sidecar~db-1", "sidecar~web-1"]
    assert proxies[1]["types"]["RDS"]["lastNack"]["nonce"] == "n7"
    assert proxies[1]["types"]["RDS"]["ackedVersion"] == "v1"

    missing = make_api().run("proxy-status")
    assert missing.exit_code == 1
    assert "Error from server (ServiceUnavailable): the xDS server is not running" in missing.stderr


@pytest.mark.parametrize("name", ["web", "web.shop", "sidecar~web-1"])
def test_a_proxy_is_found_by_workload_name(name: str) -> None:
    asked: list[str] = []

    def admin(node_id: str) -> str | None:
        asked.append(node_id)
        return None

    result = make_api(ads_status=_statuses, proxy_admin=admin).run("proxy-config", name, "routes")
    assert result.exit_code == 1
    assert asked == ["sidecar~web-1"]


def test_secrets_show_serials_and_expiry_but_never_keys(tmp_path: Path) -> None:
    root_key, leaf_key = new_key(), new_key()
    root = certificate("root", root_key)
    leaf = certificate("leaf", leaf_key, issuer=(root, root_key), ca=False, key_cert_sign=False)
    boot = bootstrap_pb2.Bootstrap()
    static = boot.static_resources.secrets.add(name="default")
    static.tls_certificate.certificate_chain.inline_bytes = cert_pem(leaf, root)
    static.tls_certificate.private_key.inline_bytes = key_pem(leaf_key)
    ca = boot.static_resources.secrets.add(name="ROOTCA")
    ca.validation_context.trusted_ca.inline_bytes = cert_pem(root)
    path = tmp_path / "dump.json"
    path.write_text(json.dumps(config_dump(boot, 1.0)))
    code, out, err = _run("proxy-config", "p", "secrets", "--file", str(path))
    assert code == 0, err
    stamp = "%Y-%m-%dT%H:%M:%SZ"
    assert table_rows(out) == [
        {
            "RESOURCE NAME": name,
            "TYPE": kind,
            "SERIAL NUMBER": f"{cert.serial_number:x}",
            "NOT AFTER": cert.not_valid_after_utc.strftime(stamp),
        }
        for name, kind, cert in (("default", "Cert Chain", leaf), ("ROOTCA", "CA", root))
    ]
    _, raw, _ = _run("proxy-config", "p", "secrets", "--file", str(path), "-o", "json")
    assert "PRIVATE KEY" not in raw
    shown = json.loads(raw)[0]["tls_certificate"]["private_key"]["inline_bytes"]
    assert base64.b64decode(shown) == b"[redacted]"


def test_the_proxies_api_shows_where_a_proxy_serves_its_admin_endpoints() -> None:
    from trellis.controlplane.api_proxies import proxy_json  # noqa: PLC0415

    announced = ProxyNode(
        "web-1", metadata=MappingProxyType({"TRELLIS_ADMIN_ADDRESS": "127.0.0.1:15000"})
    )
    silent = ProxyNode("db-1")
    assert proxy_json(ProxyStatus("c1", announced, "p", 1.0, "v", ()))["adminAddress"] == (
        "127.0.0.1:15000"
    )
    assert proxy_json(ProxyStatus("c2", silent, "p", 1.0, "v", ()))["adminAddress"] is None
