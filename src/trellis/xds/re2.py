"""Compile RE2 patterns (Envoy's `safe_regex`) with Python's `re`.

The two syntaxes mostly agree. Constructs RE2 lacks (backreferences,
lookaround, atomic groups, possessive quantifiers, conditionals) are
rejected rather than silently given Python's meaning; `\\z` and `(?<name>...)`
are rewritten to their Python spelling. Classes such as `\\d` and `\\w` are
ASCII-only, as in RE2.
"""

from __future__ import annotations

import re

_RE2_FLAGS = frozenset("ims-")


class Re2SyntaxError(ValueError):
    """The pattern is not valid RE2, or uses RE2 syntax Python cannot express."""


def compile_re2(pattern: str) -> re.Pattern[str]:
    """Return the compiled pattern, or raise `Re2SyntaxError` saying what is wrong."""
    translated = _translate(pattern)
    try:
        return re.compile(translated, re.ASCII)
    except re.error as exc:
        raise Re2SyntaxError(f"invalid regex {pattern!r}: {exc}") from None


def _translate(pattern: str) -> str:
    out: list[str] = []
    i = 0
    n = len(pattern)
    in_class = False
    while i < n:
        c = pattern[i]
        if c == "\\":
            i = _escape(pattern, i, in_class, out)
            continue
        if in_class:
            if c == "]":
                in_class = False
            out.append(c)
            i += 1
            continue
        if c == "[":
            in_class = True
            out.append(c)
            i += 1
            if pattern.startswith("^", i):
                out.append("^")
                i += 1
            if pattern.startswith("]", i):
                out.append("]")
                i += 1
            continue
        if c == "(" and pattern.startswith("?", i + 1):
            i = _group(pattern, i, out)
            continue
        if c in "*+?}" and pattern.startswith("+", i + 1):
            raise Re2SyntaxError(f"RE2 has no possessive quantifiers: {pattern!r}")
        out.append(c)
        i += 1
    return "".join(out)


def _escape(pattern: str, i: int, in_class: bool, out: list[str]) -> int:
    if i + 1 >= len(pattern):
        raise Re2SyntaxError(f"trailing backslash in {pattern!r}")
    nxt = pattern[i + 1]
    if not in_class and nxt in "123456789":
        raise Re2SyntaxError(f"RE2 does not support backreferences: {pattern!r}")
    if nxt == "Z":
        raise Re2SyntaxError(f"RE2 has no \\Z (use \\z): {pattern!r}")
    if nxt == "C":
        raise Re2SyntaxError(f"\\C (any byte) is not supported: {pattern!r}")
    out.append("\\Z" if nxt == "z" and not in_class else pattern[i : i + 2])
    return i + 2


def _group(pattern: str, i: int, out: list[str]) -> int:
    rest = pattern[i + 2 :]
    if rest.startswith(("=", "!", "<=", "<!")):
        raise Re2SyntaxError(f"RE2 does not support lookaround: {pattern!r}")
    if rest.startswith("P="):
        raise Re2SyntaxError(f"RE2 does not support backreferences: {pattern!r}")
    if rest.startswith(">"):
        raise Re2SyntaxError(f"RE2 does not support atomic groups: {pattern!r}")
    if rest.startswith("("):
        raise Re2SyntaxError(f"RE2 does not support conditional groups: {pattern!r}")
    if rest.startswith("#"):
        raise Re2SyntaxError(f"RE2 does not support comment groups: {pattern!r}")
    if rest.startswith("<"):
        out.append("(?P<")
        return i + 3
    if rest.startswith(("P<", ":")):
        out.append("(?")
        return i + 2
    end = next((k for k, ch in enumerate(rest) if ch in ":)"), len(rest))
    flags = rest[:end]
    if not flags or not set(flags) <= _RE2_FLAGS:
        raise Re2SyntaxError(f"unsupported group flags {flags!r} in {pattern!r}")
    out.append("(?")
    return i + 2
