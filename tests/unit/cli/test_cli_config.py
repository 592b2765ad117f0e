"""`trellis apply/get/delete/analyze` against the real API app (in process, memory store)."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from .api_testing import INVALID, SHOP, column, lines, make_api, table_rows

SHOP_CREATED = [
    "serviceentry.networking.istio.io/payment created",
    "workloadentry.networking.istio.io/payment-v1 created",
    "workloadentry.networking.istio.io/payment-v2 created",
    "destinationrule.networking.istio.io/payment created",
    "virtualservice.networking.istio.io/payment created",
]

UNKNOWN_HOST_VS = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ghost, namespace: shop}
spec:
  hosts: [ghost]
  http:
  - route:
    - destination: {host: nowhere.example.com}
"""


def test_apply_prints_what_happened_to_each_resource() -> None:
    api = make_api()
    first = api.run("apply", "-f", str(SHOP))
    assert first.exit_code == 0, first.output
    assert lines(first.stdout) == SHOP_CREATED

    again = api.run("apply", "-f", str(SHOP))
    assert again.exit_code == 0, again.output
    assert all(line.endswith(" unchanged") for line in lines(again.stdout))

    changed = (
        SHOP.read_text().replace("weight: 90", "weight: 80").replace("weight: 10", "weight: 20")
    )
    third = api.run("apply", "-f", "-", input=changed)
    assert third.exit_code == 0, third.output
    assert "virtualservice.networking.istio.io/payment configured" in lines(third.stdout)
    assert "destinationrule.networking.istio.io/payment unchanged" in lines(third.stdout)


def test_apply_a_directory(tmp_path: Path) -> None:
    api = make_api()
    (tmp_path / "shop.yaml").write_text(SHOP.read_text())
    (tmp_path / "notes.txt").write_text("not config")
    result = api.run("apply", "-f", str(tmp_path))
    assert result.exit_code == 0, result.output
    assert lines(result.stdout) == SHOP_CREATED


def test_invalid_files_print_every_problem_and_store_nothing() -> None:
    api = make_api()
    result = api.run("apply", "-f", str(SHOP), "-f", str(INVALID))
    assert result.exit_code == 1
    errors = lines(result.stderr)
    assert len(errors) == 2, result.stderr
    assert f"{INVALID}: document 2 (VirtualService shop/cart)" in errors[0]
    assert "spec.http[0].route[0].weight: must be >= 0" in errors[0]
    assert "spec.http[1].retriez: unknown field" in errors[1]
    assert api.list_keys() == []


def test_apply_rejected_by_analysis_unless_forced() -> None:
    api = make_api()
    assert api.run("apply", "-f", str(SHOP)).exit_code == 0
    rejected = api.run("apply", "-f", "-", input=UNKNOWN_HOST_VS)
    assert rejected.exit_code == 1
    assert "IST0101" in rejected.stderr and "nowhere.example.com" in rejected.stderr
    assert ("VirtualService", "shop", "ghost") not in api.list_keys()

    forced = api.run("apply", "--force", "-f", "-", input=UNKNOWN_HOST_VS)
    assert forced.exit_code == 0, forced.output
    assert lines(forced.stdout) == ["virtualservice.networking.istio.io/ghost created"]
    assert "Warning: Error [IST0101]" in forced.stderr
    assert ("VirtualService", "shop", "ghost") in api.list_keys()


def test_server_dry_run_stores_nothing() -> None:
    api = make_api()
    result = api.run("apply", "--dry-run=server", "-f", str(SHOP))
    assert result.exit_code == 0, result.output
    assert lines(result.stdout) == [f"{line} (server dry run)" for line in SHOP_CREATED]
    assert api.list_keys() == []


def test_get_table_with_kind_columns() -> None:
    api = make_api()
    api.run("apply", "-f", str(SHOP))
    for spelling in (
        "vs",
        "virtualservice",
        "virtualservices",
        "VirtualService",
        "vs.networking.istio.io",
    ):
        result = api.run("get", spelling, "-n", "shop")
        assert result.exit_code == 0, (spelling, result.output)
        rows = table_rows(result.stdout)
        assert list(rows[0]) == ["NAME", "GATEWAYS", "HOSTS", "AGE"], spelling
        assert [(row["NAME"], row["HOSTS"], row["GATEWAYS"]) for row in rows] == [
            ("payment", "payment", "")
        ]
        assert rows[0]["AGE"].endswith("s")

    se = api.run("get", "se", "-n", "shop")
    assert table_rows(se.stdout) == [
        {
            "NAME": "payment",
            "HOSTS": "payment.shop.svc.cluster.local",
            "LOCATION": "MESH_INTERNAL",
            "RESOLUTION": "STATIC",
            "AGE": table_rows(se.stdout)[0]["AGE"],
        }
    ]
    assert column(api.run("get", "dr", "-n", "shop").stdout, "HOST") == ["payment"]
    we = api.run("get", "workloadentries", "-n", "shop", "-o", "wide").stdout
    assert column(we, "ADDRESS") == ["10.0.0.1", "10.0.0.2"]
    assert column(we, "LABELS") == ["app=payment,version=v1", "app=payment,version=v2"]


def test_get_namespaces() -> None:
    api = make_api()
    api.run("apply", "-f", str(SHOP))
    empty = api.run("get", "vs")
    assert empty.exit_code == 0
    assert empty.stdout == "" and "No resources found in default namespace." in empty.stderr
    everywhere = api.run("get", "vs,dr", "-A")
    assert everywhere.exit_code == 0, everywhere.output
    tables = everywhere.stdout.split("\n\n")
    assert [row["NAMESPACE"] for row in table_rows(tables[0])] == ["shop"]
    assert list(table_rows(tables[1])[0]) == ["NAMESPACE", "NAME", "HOST", "AGE"]


def test_get_yaml_round_trips_and_json_and_name() -> None:
    api = make_api()
    api.run("apply", "-f", str(SHOP))
    one = yaml.safe_load(api.run("get", "vs", "payment", "-n", "shop", "-o", "yaml").stdout)
    assert one["kind"] == "VirtualService"
    assert one["metadata"]["name"] == "payment" and one["metadata"]["resourceVersion"] == "5"
    weights = [route["weight"] for route in one["spec"]["http"][0]["route"]]
    assert weights == [90, 10]

    listing = json.loads(api.run("get", "we", "-n", "shop", "-o", "json").stdout)
    assert listing["kind"] == "List"
    assert [item["metadata"]["name"] for item in listing["items"]] == ["payment-v1", "payment-v2"]

    names = api.run("get", "vs/payment", "dr/payment", "-n", "shop", "-o", "name")
    assert lines(names.stdout) == [
        "virtualservice.networking.istio.io/payment",
        "destinationrule.networking.istio.io/payment",
    ]


def test_get_missing_and_unknown_kind() -> None:
    api = make_api()
    missing = api.run("get", "vs", "nope")
    assert missing.exit_code == 1
    assert 'Error from server (NotFound): virtualservices.networking.istio.io "nope" not found' in (
        missing.stderr
    )
    unknown = api.run("get", "gateways")
    assert unknown.exit_code == 2
    assert 'doesn\'t have a resource type "gateways"' in unknown.stderr


def test_delete_by_name_and_by_file() -> None:
    api = make_api()
    api.run("apply", "-f", str(SHOP))
    by_name = api.run("delete", "vs", "payment", "-n", "shop")
    assert by_name.exit_code == 0, by_name.output
    assert lines(by_name.stdout) == ['virtualservice.networking.istio.io "payment" deleted']

    by_file = api.run("delete", "-f", str(SHOP))
    assert by_file.exit_code == 1  # the VirtualService is already gone
    assert len(lines(by_file.stdout)) == 4
    assert 'virtualservices.networking.istio.io "payment" not found' in by_file.stderr
    assert api.list_keys() == []

    quiet = api.run("delete", "-f", str(SHOP), "--ignore-not-found")
    assert quiet.exit_code == 0 and quiet.stdout == "" and quiet.stderr == ""


def test_delete_by_file_reads_only_kind_and_name(tmp_path: Path) -> None:
    api = make_api()
    api.run("apply", "-f", str(SHOP))
    stale = tmp_path / "old.yaml"
    stale.write_text(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\n"
        "metadata: {name: payment, namespace: shop}\nspec: {host: payment, someOldField: 1}\n"
    )
    result = api.run("delete", "-f", str(stale))
    assert result.exit_code == 0, result.output
    assert ("DestinationRule", "shop", "payment") not in api.list_keys()


def test_analyze_online_and_offline(tmp_path: Path) -> None:
    api = make_api()
    api.run("apply", "-f", str(SHOP))
    clean = api.run("analyze")
    assert clean.exit_code == 0 and "No validation issues found." in clean.stdout

    ghost = tmp_path / "ghost.yaml"
    ghost.write_text(UNKNOWN_HOST_VS)
    online = api.run("analyze", "-f", str(ghost))
    assert online.exit_code == 1
    assert lines(online.stdout)[0].startswith("Error [IST0101] (VirtualService shop/ghost)")
    assert "(fix: " in online.stdout
    assert ("VirtualService", "shop", "ghost") not in api.list_keys()  # analysis stores nothing

    offline = api.run("analyze", "--offline", "-f", str(SHOP), "-f", str(ghost))
    assert offline.exit_code == 1
    assert lines(offline.stdout) == lines(online.stdout)
    only_shop = api.run("analyze", "--offline", "-f", str(SHOP))
    assert only_shop.exit_code == 0, only_shop.output


def test_analyze_offline_needs_files() -> None:
    result = make_api().run("analyze", "--offline")
    assert result.exit_code == 2 and "--offline needs -f FILE" in result.stderr
