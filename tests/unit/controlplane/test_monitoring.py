"""The control plane's own metrics (`controlplane.monitoring`): istiod's names, counters that
never go down when streams close, and text a Prometheus parser reads. No sockets."""

from __future__ import annotations

import datetime
import time
from pathlib import Path
from types import MappingProxyType

import click
import pytest
from prometheus_client.parser import text_string_to_metric_families

from trellis.api.loader import parse_resource
from trellis.api.meta import Resource
from trellis.cli.controlplane_settings import host_port
from trellis.controlplane.ads_status import ProxyNode, ProxyStatus, SyncState, TypeStatus
from trellis.controlplane.ca_files import load_or_create_root
from trellis.controlplane.ca_service import CertificateCounts
from trellis.controlplane.monitoring import (
    ControlPlaneMetrics,
    XdsTotals,
    proxy_version,
    service_hosts,
)
from trellis.controlplane.process_stats import read_process_stats

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def stream(connection_id: str, counts: dict[str, tuple[int, int]], **node: object) -> ProxyStatus:
    """A stream whose types sent `responses` and got `nacks`: {"CDS": (responses, nacks)}."""
    types = tuple(
        TypeStatus(f"type/{name}", name, SyncState.SYNCED, responses=sent, nacks=nacked)
        for name, (sent, nacked) in counts.items()
    )
    return ProxyStatus(connection_id, ProxyNode(**node), "ipv4:127.0.0.1:1", 0.0, "1", types)  # type: ignore[arg-type]


def samples(text: str) -> Samples:
    """By sample name as prometheus_client's parser gives it: it appends `_total` to the
    samples of counters (the exposition itself carries istiod's names, without it)."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_totals_keep_what_closed_streams_sent() -> None:
    totals = XdsTotals()
    first = totals.observe([stream("a-1", {"CDS": (2, 0), "LDS": (1, 1)}, id="a")])
    assert first.pushes == {"cds": 2, "lds": 1} and first.rejects == {"cds": 0, "lds": 1}
    assert first.connections == {"unknown": 1}
    # a-1 sent one more, then closed; b-1 is new.
    totals.observe([stream("a-1", {"CDS": (3, 0), "LDS": (1, 1)}, id="a")])
    later = totals.observe([stream("b-1", {"CDS": (1, 0)}, id="b", user_agent="trellis/0.1.0")])
    assert later.pushes == {"cds": 4, "lds": 1}
    assert later.rejects == {"cds": 0, "lds": 1}
    # A version whose last proxy left reads 0, as istiod's gauge does.
    assert later.connections == {"unknown": 0, "0.1.0": 1}
    assert totals.observe([]).pushes == {"cds": 4, "lds": 1}


def test_proxy_version_prefers_istio_metadata() -> None:
    meta = MappingProxyType({"ISTIO_VERSION": "1.24.0"})
    assert proxy_version(ProxyNode("a", metadata=meta, user_agent="envoy/1.31")) == "1.24.0"
    assert proxy_version(ProxyNode("a", user_agent="grpc-python/1.66.1")) == "1.66.1"
    assert proxy_version(ProxyNode("a", user_agent="envoy")) == "unknown"


def resource(kind: str, name: str, spec: dict[str, object], namespace: str = "shop") -> Resource:
    api = "networking.istio.io/v1"
    document = {"apiVersion": api, "kind": kind, "metadata": {"name": name, "namespace": namespace}}
    return parse_resource({**document, "spec": spec}, source="test")


ENTRY = {"hosts": ["a.example", "b.example"], "ports": [{"number": 80, "name": "http"}]}
ROUTE = {"hosts": ["a.example"], "http": [{"route": [{"destination": {"host": "a.example"}}]}]}


def test_services_count_distinct_hosts() -> None:
    config = [
        resource("ServiceEntry", "ab", ENTRY),
        resource("ServiceEntry", "ab-again", {**ENTRY, "hosts": ["a.example"]}),
        resource("ServiceEntry", "ab", ENTRY, namespace="other"),
        resource("VirtualService", "a", ROUTE),
    ]
    assert service_hosts(config) == 4


def test_render_names_values_like_istiod(tmp_path: Path) -> None:
    ca = load_or_create_root(tmp_path, now=datetime.datetime.now(datetime.UTC))
    certificates = CertificateCounts(requests=4, issued=1, authentication_failures=2)
    certificates.identity_mismatches = 1
    now = [100.0]
    streams = [stream("a-1", {"CDS": (2, 0), "EDS": (2, 1)}, id="a", user_agent="trellis/0.1")]
    config = [resource("ServiceEntry", "ab", ENTRY), resource("VirtualService", "a", ROUTE)]
    metrics = ControlPlaneMetrics(
        lambda: streams, lambda: config, certificates, ca, clock=lambda: now[0]
    )
    now[0] = 160.5
    text = metrics.render()
    assert 'pilot_xds_pushes{type="cds"} 2\n' in text  # istiod's counter names, as they are
    assert "citadel_server_csr_count 4\n" in text
    found = samples(text)
    assert found["pilot_xds", (("version", "0.1"),)] == 1
    assert found["pilot_xds_pushes_total", (("type", "cds"),)] == 2
    assert found["pilot_total_xds_rejects_total", (("type", "eds"),)] == 1
    assert found["pilot_services", ()] == 2
    assert found["pilot_virt_services", ()] == 1
    assert found["citadel_server_csr_count_total", ()] == 4
    assert found["citadel_server_success_cert_issuance_count_total", ()] == 1
    assert found["citadel_server_authentication_failure_count_total", ()] == 2
    assert found["citadel_server_csr_parsing_err_count_total", ()] == 0
    mismatch = ("citadel_server_csr_sign_err_count_total", (("error", "identity_mismatch"),))
    assert found[mismatch] == 1
    assert found["citadel_server_csr_sign_err_count_total", (("error", "ca_error"),)] == 0
    expiry = ca.root.not_valid_after_utc.timestamp()
    assert found["citadel_server_root_cert_expiry_timestamp", ()] == expiry
    assert found["citadel_server_cert_chain_expiry_timestamp", ()] == expiry  # self-signed
    assert found["istiod_uptime_seconds", ()] == 60.5
    assert found["process_cpu_seconds_total", ()] > 0
    streams.clear()  # the proxy went away: the gauge drops, the counters stay
    found = samples(metrics.render())
    assert found["pilot_xds", (("version", "0.1"),)] == 0
    assert found["pilot_xds_pushes_total", (("type", "eds"),)] == 2


def test_without_a_ca_there_are_no_citadel_metrics() -> None:
    text = ControlPlaneMetrics(list, list).render()
    assert "citadel_" not in text and "pilot_xds{" not in text
    assert samples(text)["pilot_services", ()] == 0


def test_process_stats_are_this_process() -> None:
    stats = read_process_stats()
    assert stats.cpu_seconds > 0
    if not Path("/proc/self/stat").exists():
        pytest.skip("no /proc on this platform: memory, descriptors and start time are left out")
    assert stats.resident_bytes is not None and stats.resident_bytes > 1_000_000
    assert stats.open_fds is not None and stats.open_fds >= 3
    assert stats.start_time is not None and 0 < time.time() - stats.start_time < 3600


def test_read_process_stats_without_proc(tmp_path: Path) -> None:
    stats = read_process_stats(tmp_path)
    assert stats.resident_bytes is None and stats.start_time is None and stats.cpu_seconds > 0


@pytest.mark.parametrize("value", ["15014", "host:", ":15014", "host:http", "host:70000"])
def test_a_bad_monitoring_address_names_the_flag(value: str) -> None:
    with pytest.raises(click.BadParameter) as caught:
        host_port(value, "--monitoring-address")
    assert caught.value.param_hint == "--monitoring-address"


def test_monitoring_address_parses() -> None:
    assert host_port(None, "--monitoring-address") is None
    assert host_port("0.0.0.0:15014", "--monitoring-address") == ("0.0.0.0", 15014)
    assert host_port("[::1]:9", "--monitoring-address") == ("::1", 9)
