"""Validating objects against a CRD's openAPIV3Schema the way the API server would.

The schema is Kubernetes' dialect of OpenAPI v3 (nullable, int-or-string,
boolean exclusiveMinimum); `to_json_schema` turns it into draft 4 JSON Schema
for the `jsonschema` package. Unknown fields are errors, as with kubectl's
default strict field validation (the API server would otherwise prune them).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from trellis.controlplane.api_kinds import KINDS
from trellis.kube.crds import crd_manifests

ROOT = Path(__file__).resolve().parents[3]


def to_json_schema(node: Mapping[str, Any]) -> dict[str, Any]:
    """Draft 4 JSON Schema meaning what `node` means to the API server (strict fields)."""
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "properties":
            out[key] = {name: to_json_schema(child) for name, child in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, Mapping):
            out[key] = to_json_schema(value)
        elif key in ("nullable", "format") or key.startswith("x-kubernetes-"):
            continue
        else:
            out[key] = value
    if node.get("x-kubernetes-int-or-string"):
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    preserve = node.get("x-kubernetes-preserve-unknown-fields") is True
    if "properties" in node and "additionalProperties" not in node and not preserve:
        out["additionalProperties"] = False
    return out


def schemas_by_api_version() -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> the JSON Schema of that CRD version."""
    found = {}
    for crd in crd_manifests(KINDS):
        spec = crd["spec"]
        for version in spec["versions"]:
            key = (f"{spec['group']}/{version['name']}", spec["names"]["kind"])
            found[key] = to_json_schema(version["schema"]["openAPIV3Schema"])
    return found


def errors(schema: Mapping[str, Any], document: Any) -> list[str]:
    """Every violation, as `path: message`."""
    validator = jsonschema.Draft4Validator(schema)
    return [
        f"{'.'.join(str(p) for p in error.absolute_path)}: {error.message}"
        for error in validator.iter_errors(document)
    ]


def _yaml_blocks(markdown: str) -> Iterator[str]:
    inside = False
    lines: list[str] = []
    for line in markdown.splitlines():
        if not inside and line.strip() == "```yaml":
            inside, lines = True, []
        elif inside and line.strip() == "```":
            inside = False
            yield "\n".join(lines)
        elif inside:
            lines.append(line)


def shipped_documents() -> Iterator[tuple[str, Any]]:
    """(where, document) for every Istio-kind document in examples, docs and test data."""
    sources: list[tuple[str, str]] = []
    yaml_files = [
        *sorted((ROOT / "examples").rglob("*.yaml")),
        *sorted((ROOT / "tests" / "unit" / "api" / "testdata").glob("*.yaml")),
        *sorted((ROOT / "tests" / "unit" / "xds_mesh" / "golden").glob("*/config.yaml")),
        ROOT / "tests" / "unit" / "cli" / "data" / "shop.yaml",
    ]
    for path in yaml_files:
        sources.append((str(path.relative_to(ROOT)), path.read_text()))
    for path in sorted((ROOT / "docs").rglob("*.md")):
        for index, block in enumerate(_yaml_blocks(path.read_text())):
            sources.append((f"{path.relative_to(ROOT)} block {index + 1}", block))
    for where, text in sources:
        try:
            documents = list(yaml.safe_load_all(text))
        except yaml.YAMLError:
            continue
        for number, document in enumerate(documents, 1):
            if isinstance(document, dict) and ".istio.io/" in str(document.get("apiVersion")):
                yield f"{where} #{number}", document
