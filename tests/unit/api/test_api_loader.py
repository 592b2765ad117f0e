"""Loading files, directories, stdin and batches: every problem is collected and placed."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
import yaml

from trellis.api.loader import load_documents, load_paths
from trellis.api.problem import Problem, ResourceError


def _vs(weights: list[int]) -> dict[str, Any]:
    route = [
        {"destination": {"host": "payment", "subset": f"v{i}"}, "weight": weight}
        for i, weight in enumerate(weights)
    ]
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": "payment"},
        "spec": {"hosts": ["payment"], "http": [{"route": route}]},
    }


def test_yaml_syntax_and_duplicate_keys() -> None:
    with pytest.raises(ResourceError) as caught:
        load_documents("kind: VirtualService\nmetadata: {name: a\n", "broken.yaml")
    (problem,) = caught.value.problems
    assert str(problem).startswith("broken.yaml: line 3, column 1: invalid YAML:")

    text = "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nkind: ServiceEntry\n"
    with pytest.raises(ResourceError) as caught:
        load_documents(text, "dup.yaml")
    (problem,) = caught.value.problems
    assert "duplicate key 'kind'" in str(problem)
    assert str(problem).startswith("dup.yaml: line 3, column 1: invalid YAML:")


def test_list_items_are_numbered() -> None:
    bad = _vs([60, 60])
    text = yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": [bad]})
    with pytest.raises(ResourceError) as caught:
        load_documents(text, "list.yaml")
    assert [str(p) for p in caught.value.problems] == [
        "list.yaml: document 1 item 1 (VirtualService default/payment): spec.http[0].route: "
        "weights of the destinations must add up to 100 (they add up to 120)"
    ]


def test_all_problems_of_all_files_are_collected(tmp_path: Path) -> None:
    good = {
        "apiVersion": "networking.istio.io/v1",
        "kind": "WorkloadEntry",
        "metadata": {"name": "w"},
        "spec": {"address": "10.0.0.1"},
    }
    (tmp_path / "a.yaml").write_text(yaml.safe_dump_all([good, _vs([-5])]))
    (tmp_path / "b.json").write_text('{"kind": "Nope"}')
    (tmp_path / "notes.txt").write_text("ignored: not a config suffix")
    with pytest.raises(ResourceError) as caught:
        load_paths([tmp_path, tmp_path / "missing.yaml"])
    assert [str(p) for p in caught.value.problems] == [
        f"{tmp_path / 'a.yaml'}: document 2 (VirtualService default/payment): "
        "spec.http[0].route[0].weight: must be >= 0",
        f"{tmp_path / 'b.json'}: document 1 (Nope default/<no name>): kind: unknown kind "
        "'Nope' (supported: AuthorizationPolicy, DestinationRule, PeerAuthentication, "
        "ServiceEntry, Telemetry, VirtualService, WorkloadEntry)",
        f"{tmp_path / 'missing.yaml'}: No such file or directory",
    ]


def test_duplicates_in_a_batch_are_rejected() -> None:
    good = {
        "apiVersion": "networking.istio.io/v1",
        "kind": "WorkloadEntry",
        "metadata": {"name": "w"},
        "spec": {"address": "10.0.0.1"},
    }
    with pytest.raises(ResourceError) as caught:
        load_documents(yaml.safe_dump_all([good, good]), "twice.yaml")
    assert [str(p) for p in caught.value.problems] == [
        "(batch): WorkloadEntry default/w is defined more than once in this batch"
    ]


def test_stdin_and_empty_directory(tmp_path: Path) -> None:
    text = "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: s}\n"
    text += "spec: {address: 10.0.0.9}\n"
    (loaded,) = load_paths(["-"], stdin=io.StringIO(text))
    assert loaded.key == ("WorkloadEntry", "default", "s")
    with pytest.raises(ResourceError) as caught:
        load_paths([tmp_path])
    assert caught.value.problems == (
        Problem(source=str(tmp_path), message="no .yaml, .yml or .json files"),
    )


def test_aliases_are_bounded() -> None:
    lines = ["a: &a [x]"] + [f"k{i}: *a" for i in range(150)]
    with pytest.raises(ResourceError) as caught:
        load_documents("\n".join(lines), "bomb.yaml")
    assert "more than 100 YAML aliases" in str(caught.value)
