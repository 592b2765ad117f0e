"""RFC 6902 JSON Patch between two JSON documents, for admission responses.

The webhook computes the injected pod and answers with the difference to the
pod it was sent. Objects are compared key by key (`add`, `remove`, recurse);
a list that only grew at its end gets one `add` per new item, and any other
changed list is replaced whole, which keeps the patch exact and short for the
lists injection touches (containers, volumes).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

JsonPatch = list[dict[str, Any]]


def pointer_token(key: str) -> str:
    """One reference token of a JSON Pointer (RFC 6901): `~` is `~0`, `/` is `~1`."""
    return key.replace("~", "~0").replace("/", "~1")


def diff(old: Any, new: Any, path: str = "") -> JsonPatch:
    """The operations that turn `old` into `new` (the whole document when `path` is "")."""
    if _same(old, new):
        return []
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        return _diff_objects(old, new, path)
    if _is_list(old) and _is_list(new) and len(new) > len(old) and _same(old, new[: len(old)]):
        return [
            {"op": "add", "path": f"{path}/{index}", "value": new[index]}
            for index in range(len(old), len(new))
        ]
    return [{"op": "replace", "path": path, "value": new}]


def _diff_objects(old: Mapping[str, Any], new: Mapping[str, Any], path: str) -> JsonPatch:
    patch: JsonPatch = []
    for key in old:
        if key not in new:
            patch.append({"op": "remove", "path": f"{path}/{pointer_token(key)}"})
    for key, value in new.items():
        child = f"{path}/{pointer_token(key)}"
        if key not in old:
            patch.append({"op": "add", "path": child, "value": value})
        else:
            patch.extend(diff(old[key], value, child))
    return patch


def _is_list(value: Any) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, str | bytes)


def _same(old: Any, new: Any) -> bool:
    """Equal as JSON: `True` is not `1`, and a tuple equals the list it spells."""
    if isinstance(old, bool) or isinstance(new, bool):
        return type(old) is type(new) and old == new
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        return old.keys() == new.keys() and all(_same(old[k], new[k]) for k in old)
    if _is_list(old) and _is_list(new):
        return len(old) == len(new) and all(_same(a, b) for a, b in zip(old, new, strict=True))
    return (type(old) is type(new) and old == new) or _numbers_equal(old, new)


def _numbers_equal(old: Any, new: Any) -> bool:
    numbers = int | float
    return isinstance(old, numbers) and isinstance(new, numbers) and old == new
