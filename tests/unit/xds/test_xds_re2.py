"""RE2 pattern compilation and virtual host domain validation."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trellis.core.addresses import SocketAddress
from trellis.xds.compile import addresses_overlap
from trellis.xds.compile_route import domain_problem
from trellis.xds.re2 import Re2SyntaxError, compile_re2

# host-like text without '*'
labels = st.text(alphabet=st.sampled_from("abcxyz019-.:"), min_size=1, max_size=20)


@pytest.mark.parametrize(
    ("pattern", "problem"),
    [
        (r"(a)\1", "backreferences"),
        (r"(?P<x>a)(?P=x)", "backreferences"),
        (r"a(?=b)", "lookaround"),
        (r"a(?!b)", "lookaround"),
        (r"(?<=a)b", "lookaround"),
        (r"(?<!a)b", "lookaround"),
        (r"(?>a+)", "atomic"),
        (r"a++", "possessive"),
        (r"(a)?(?(1)b|c)", "conditional"),
        (r"(?x) a", "flags"),
        (r"(?U)a+", "flags"),
        (r"a\Z", r"\z"),
        ("a(", "invalid regex"),
        ("a\\", "trailing backslash"),
    ],
)
def test_rejected_patterns(pattern: str, problem: str) -> None:
    with pytest.raises(Re2SyntaxError, match=re.escape(problem)):
        compile_re2(pattern)


@pytest.mark.parametrize(
    ("pattern", "text", "matches"),
    [
        (r"/api/v[0-9]+/.*", "/api/v2/x", True),
        (r"(?i)/ABC", "/abc", True),
        (r"(?P<ver>v\d)", "v1", True),
        (r"(?<ver>v\d)", "v1", True),  # RE2's named group spelling
        (r"abc\z", "abc", True),
        (r"[\1]", "\x01", True),  # octal escape inside a class, not a backreference
        (r"[]a]+", "]a]", True),
        (r"\d+", "\u0663", False),  # ASCII-only, as in RE2
        (r"a+?b", "aab", True),
    ],
)
def test_accepted_patterns(pattern: str, text: str, matches: bool) -> None:
    assert (compile_re2(pattern).fullmatch(text) is not None) is matches


@given(st.text(max_size=30))
def test_escaped_text_matches_itself(text: str) -> None:
    assert compile_re2(re.escape(text)).fullmatch(text)


@given(labels)
def test_plain_and_edge_wildcard_domains_are_valid(label: str) -> None:
    assert domain_problem(label) is None
    assert domain_problem("*" + label) is None
    assert domain_problem(label + "*") is None


@given(labels, labels)
def test_inner_or_repeated_wildcards_are_invalid(left: str, right: str) -> None:
    assert domain_problem(f"{left}*{right}") is not None
    assert domain_problem(f"*{left}*") is not None
    assert domain_problem(f"{left}**") is not None


def test_single_star_and_empty_domain() -> None:
    assert domain_problem("*") is None
    assert domain_problem("") is not None
    assert domain_problem("**") is not None


@pytest.mark.parametrize(
    ("a", "b", "overlap"),
    [
        (("127.0.0.1", 80), ("127.0.0.1", 80), True),
        (("127.0.0.1", 80), ("127.0.0.1", 81), False),
        (("0.0.0.0", 80), ("10.0.0.1", 80), True),
        (("127.0.0.1", 80), ("10.0.0.1", 80), False),
        (("0.0.0.0", 80), ("::1", 80), False),
        (("::", 80), ("10.0.0.1", 80), True),
        (("::1", 80), ("0:0::1", 80), True),
    ],
)
def test_addresses_overlap(a: tuple[str, int], b: tuple[str, int], overlap: bool) -> None:
    first, second = SocketAddress(*a), SocketAddress(*b)
    assert addresses_overlap(first, second) is overlap
    assert addresses_overlap(second, first) is overlap
