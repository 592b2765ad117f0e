"""YAML bootstraps: PyYAML with duplicate keys refused (imported only for YAML files)."""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import yaml

from trellis.errors import ConfigError


def load_yaml(text: str, source: str) -> object:
    """The decoded document; ConfigError with line and column when it is not YAML."""
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ConfigError(_describe_yaml_error(exc), source=source) from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` that rejects a mapping with the same key twice."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        seen: set[str] = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                if key_node.value in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key_node.value!r}", key_node.start_mark
                    )
                seen.add(key_node.value)
        return super().construct_mapping(node, deep)


def _describe_yaml_error(exc: yaml.YAMLError) -> str:
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "syntax error"
        if mark is not None:
            return f"invalid YAML at line {mark.line + 1} column {mark.column + 1}: {problem}"
        return f"invalid YAML: {problem}"
    return f"invalid YAML: {exc}"
