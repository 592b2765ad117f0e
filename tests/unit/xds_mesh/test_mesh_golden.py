"""Golden files: Istio YAML and a proxy identity in, the proxy's xDS resources as JSON out.

Each directory under `golden/` holds `config.yaml` (multi-document Istio
resources), `node.yaml` (the proxy and translate options) and
`expected.json` (every resource, `MessageToDict` with proto field names, by
type URL then name). `TRELLIS_UPDATE_GOLDEN=1` rewrites the expected files.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import replace

import pytest
from mesh_support import GOLDEN, case_names, load_case

from trellis.xds.mesh import MeshConfig, check_consistent, to_dicts, translate

UPDATE = os.environ.get("TRELLIS_UPDATE_GOLDEN") == "1"


def _render(data: object) -> str:
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


@pytest.mark.parametrize("name", case_names())
def test_translation_matches_golden(name: str) -> None:
    case = load_case(name)
    resources = translate(case.config, case.proxy, case.options)
    check_consistent(resources)
    actual = to_dicts(resources)
    expected_path = GOLDEN / name / "expected.json"
    if UPDATE:
        expected_path.write_text(_render(actual))
    assert expected_path.exists(), f"run with TRELLIS_UPDATE_GOLDEN=1 to create {expected_path}"
    expected = json.loads(expected_path.read_text())
    assert actual == expected, f"{name}: translation differs from {expected_path}"


def test_golden_cases_exist() -> None:
    assert {
        "plain_service",
        "weighted_subsets",
        "match_order",
        "traffic_policy",
        "inbound",
        "two_namespaces",
        "transparent",
        "authz",
        "authz_tcp",
        "mtls_strict",
        "mtls_permissive",
        "mtls_port_disable",
        "mtls_mixed",
        "mtls_transparent",
    } <= set(case_names())


@pytest.mark.parametrize("name", case_names())
def test_output_does_not_depend_on_input_order(name: str) -> None:
    case = load_case(name)
    first = translate(case.config, case.proxy, case.options)
    rng = random.Random(name)
    vips = case.config.service_vips
    for _ in range(3):
        shuffled = [
            *case.config.service_entries,
            *case.config.workload_entries,
            *case.config.virtual_services,
            *case.config.destination_rules,
            *case.config.peer_authentications,
            *case.config.authorization_policies,
        ]
        rng.shuffle(shuffled)
        config = replace(MeshConfig.of(shuffled, case.config.tls), service_vips=vips)
        again = translate(config, case.proxy, case.options)
        assert _render(to_dicts(again)) == _render(to_dicts(first))
        for type_url, by_name in again.items():
            assert list(by_name) == sorted(by_name), type_url
