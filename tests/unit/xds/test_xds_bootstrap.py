"""Loading bootstrap files: YAML and JSON, and errors that name the file and field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from trellis.errors import ConfigError
from trellis.xds.bootstrap import load_bootstrap, parse_bootstrap

HCM_PATH = "static_resources.listeners[0].filter_chains[0].filters[0].typed_config"


def _write(tmp_path: Path, text: str, name: str = "bootstrap.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_yaml_and_json_give_the_same_message(
    tmp_path: Path, data_dir: Path, full_dict: dict[str, Any]
) -> None:
    from_yaml = load_bootstrap(data_dir / "full.yaml")
    from_json = load_bootstrap(_write(tmp_path, json.dumps(full_dict, indent=2), "b.json"))
    assert from_yaml == from_json
    assert from_yaml.static_resources.listeners[0].name == "outbound_http"
    assert from_yaml.static_resources.clusters[2].name == "local-app"


def test_json_is_detected_by_content_not_extension(tmp_path: Path) -> None:
    path = _write(tmp_path, '{"node": {"id": "n1"}}', "bootstrap.conf")
    assert load_bootstrap(path).node.id == "n1"


def test_camel_case_field_names_are_accepted() -> None:
    data = {
        "staticResources": {
            "clusters": [{"name": "a", "connectTimeout": "2s", "lbPolicy": "RANDOM"}]
        }
    }
    msg = parse_bootstrap(data, "inline")
    assert msg.static_resources.clusters[0].connect_timeout.seconds == 2


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="not found") as info:
        load_bootstrap(missing)
    assert info.value.source == str(missing)
    assert str(missing) in str(info.value)


def test_yaml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = _write(tmp_path, "node:\n  id: a\n  cluster: [unclosed\n")
    with pytest.raises(ConfigError, match=r"invalid YAML at line \d+ column \d+") as info:
        load_bootstrap(path)
    assert str(path) in str(info.value)


def test_json_syntax_error_names_line(tmp_path: Path) -> None:
    path = _write(tmp_path, '{\n  "node": {"id": }\n}', "b.json")
    with pytest.raises(ConfigError, match="invalid JSON at line 2 column") as info:
        load_bootstrap(path)
    assert info.value.source == str(path)


def test_duplicate_yaml_key_is_rejected(tmp_path: Path) -> None:
    path = _write(tmp_path, "node:\n  id: a\n  id: b\n")
    with pytest.raises(ConfigError, match="duplicate key 'id'"):
        load_bootstrap(path)


def test_yaml_merge_keys_still_work(tmp_path: Path) -> None:
    text = "x-base: &base {id: a}\nnode:\n  <<: *base\n  cluster: c\n"
    path = _write(tmp_path, text)
    # the top-level "x-base" key is not an Envoy field: the error proves the merge parsed
    with pytest.raises(ConfigError, match="unknown field 'x-base'"):
        load_bootstrap(path)


@pytest.mark.parametrize("text", ["", "# just a comment\n", "- a\n- b\n", "42\n"])
def test_empty_or_non_mapping_file(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError, match=r"empty|mapping"):
        load_bootstrap(_write(tmp_path, text))


def test_unknown_field_names_path_and_suggests(tmp_path: Path) -> None:
    text = "static_resources:\n  listeners:\n  - nmae: x\n"
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_bootstrap(path)
    err = info.value
    assert err.path == "static_resources.listeners[0].nmae"
    assert "did you mean 'name'" in str(err)
    assert str(err).startswith(f"{path}: static_resources.listeners[0].nmae: unknown field")


def test_unknown_field_inside_typed_config(full_dict: dict[str, Any]) -> None:
    hcm = full_dict["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    hcm["typed_config"]["route_config"]["virtual_hosts"][1]["domainz"] = ["x"]
    with pytest.raises(ConfigError) as info:
        parse_bootstrap(full_dict, "f.yaml")
    assert info.value.path == f"{HCM_PATH}.route_config.virtual_hosts[1].domainz"
    assert "did you mean 'domains'" in str(info.value)


def test_wrong_type_names_file_and_field(tmp_path: Path) -> None:
    text = "static_resources:\n  clusters:\n  - name: a\n    connect_timeout: 5\n"
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_bootstrap(path)
    assert info.value.source == str(path)
    assert info.value.path == "static_resources.clusters[0].connect_timeout"


def test_wrong_scalar_type_names_the_field() -> None:
    data = {"static_resources": {"listeners": [{"per_connection_buffer_limit_bytes": "abc"}]}}
    with pytest.raises(ConfigError) as info:
        parse_bootstrap(data, "f.yaml")
    assert "per_connection_buffer_limit_bytes" in info.value.path
    assert str(info.value).startswith("f.yaml: ")


def test_bad_enum_value_names_the_field(full_dict: dict[str, Any]) -> None:
    full_dict["static_resources"]["clusters"][0]["lb_policy"] = "FASTEST"
    with pytest.raises(ConfigError, match="FASTEST") as info:
        parse_bootstrap(full_dict, "f.yaml")
    assert info.value.path == "static_resources.clusters[0].lb_policy"


def test_unknown_any_type_names_the_field(full_dict: dict[str, Any]) -> None:
    flt = full_dict["static_resources"]["listeners"][1]["filter_chains"][0]["filters"][0]
    flt["typed_config"]["@type"] = "type.googleapis.com/example.NoSuchFilter"
    with pytest.raises(ConfigError, match=r"example\.NoSuchFilter") as info:
        parse_bootstrap(full_dict, "f.yaml")
    assert info.value.path == (
        "static_resources.listeners[1].filter_chains[0].filters[0].typed_config"
    )


def test_list_where_mapping_expected() -> None:
    with pytest.raises(ConfigError, match="repeated field clusters") as info:
        parse_bootstrap({"static_resources": {"clusters": {"name": "a"}}}, "f.yaml")
    assert info.value.path == "static_resources"
