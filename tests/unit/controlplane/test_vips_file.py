"""The control plane's virtual IP table on disk: saved on change, reloaded as it was."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from trellis.api.loader import load_documents
from trellis.api.meta import Resource
from trellis.controlplane.vips import VIPS_FILE, ServiceVips
from trellis.errors import ConfigError
from trellis.xds.mesh.vips import VipPolicy, VipRange, VipRangeExhaustedError

POLICY = VipPolicy(VipRange.parse("240.240.0.0/16"), hold=60.0)


def _services(*names: str, namespace: str = "shop") -> list[Resource]:
    text = "\n---\n".join(
        f"""
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  hosts: [{name}]
  resolution: STATIC
  ports: [{{number: 80, name: http}}]
  workloadSelector: {{labels: {{app: {name}}}}}
"""
        for name in names
    )
    return list(load_documents(text, "test.yaml"))


def test_addresses_survive_a_restart(tmp_path: Path) -> None:
    vips = ServiceVips.open(tmp_path, POLICY)
    assert vips.sync(_services("payment", "orders"), now=0.0)
    before = dict(vips.table.assigned)
    saved = json.loads((tmp_path / VIPS_FILE).read_text())
    assert saved["assigned"] == {host: str(a) for host, a in before.items()}
    assert saved["range"] == "240.240.0.0/16"
    assert [p.name for p in tmp_path.iterdir()] == [VIPS_FILE]  # no temporary left behind

    again = ServiceVips.open(tmp_path, POLICY)
    assert again.table.assigned == before
    # A service added after the restart takes a new address; the others keep theirs.
    assert again.sync(_services("payment", "orders", "ledger"), now=1.0)
    assert {h: again.table.assigned[h] for h in before} == before
    assert len(set(again.table.assigned.values())) == 3


def test_a_removed_service_is_held_across_a_restart(tmp_path: Path) -> None:
    vips = ServiceVips.open(tmp_path, POLICY)
    vips.sync(_services("payment", "orders"), now=0.0)
    address = vips.table.assigned["payment.shop.svc.cluster.local"]
    vips.sync(_services("orders"), now=10.0)

    reopened = ServiceVips.open(tmp_path, POLICY)
    assert reopened.table.held["payment.shop.svc.cluster.local"].since == 10.0
    reopened.sync(_services("orders", "newcomer"), now=20.0)
    assert reopened.table.assigned["newcomer.shop.svc.cluster.local"] != address
    reopened.sync(_services("orders", "newcomer", "payment"), now=30.0)
    assert reopened.table.assigned["payment.shop.svc.cluster.local"] == address


def test_sync_without_change_writes_nothing(tmp_path: Path) -> None:
    vips = ServiceVips.open(tmp_path, POLICY)
    vips.sync(_services("payment"), now=0.0)
    (tmp_path / VIPS_FILE).write_text((tmp_path / VIPS_FILE).read_text() + " ")
    assert not vips.sync(_services("payment"), now=1.0)
    assert (tmp_path / VIPS_FILE).read_text().endswith(" ")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "Expecting property name"),
        ('{"version": 7}', "version: 7 is not 1"),
        ('{"version": 1, "assigned": {"a": "999.1.1.1"}}', "assigned['a']: '999.1.1.1'"),
        (
            '{"version": 1, "assigned": {"a": "240.240.0.1", "b": "240.240.0.1"}}',
            "given to both 'a' and 'b'",
        ),
        ('{"version": 1, "held": {"a": {"address": "240.240.0.1"}}}', "held['a']"),
    ],
)
def test_an_unreadable_table_stops_the_control_plane_naming_the_field(
    tmp_path: Path, content: str, message: str
) -> None:
    (tmp_path / VIPS_FILE).write_text(content)
    with pytest.raises(ConfigError, match=re.escape(message)) as caught:
        ServiceVips.open(tmp_path, POLICY)
    assert VIPS_FILE in str(caught.value)


def test_exhaustion_saves_what_fitted_and_raises(tmp_path: Path) -> None:
    tiny = VipPolicy(VipRange.parse("240.240.0.0/30"), hold=60.0)
    vips = ServiceVips.open(tmp_path, tiny)
    with pytest.raises(VipRangeExhaustedError, match=re.escape("240.240.0.0/30")):
        vips.sync(_services("a", "b", "c"), now=0.0)
    saved = json.loads((tmp_path / VIPS_FILE).read_text())
    assert sorted(saved["assigned"]) == ["a.shop.svc.cluster.local", "b.shop.svc.cluster.local"]
    vips.refresh(_services("a", "b", "c"), now=1.0)  # logs, does not raise


def test_a_changed_range_moves_the_services_into_it(tmp_path: Path) -> None:
    ServiceVips.open(tmp_path, POLICY).sync(_services("payment"), now=0.0)
    other = VipPolicy(VipRange.parse("10.77.0.0/24"), hold=60.0)
    vips = ServiceVips.open(tmp_path, other)
    assert vips.sync(_services("payment"), now=1.0)
    assert str(vips.table.assigned["payment.shop.svc.cluster.local"]) == "10.77.0.1"
