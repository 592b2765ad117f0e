"""The proxy's own HTTP date formatting agrees with the standard library's."""

from __future__ import annotations

from email.utils import formatdate

from hypothesis import given
from hypothesis import strategies as st

from trellis.runtime.wire import http_date


def test_the_rfc_example() -> None:
    assert http_date(784111777) == b"Sun, 06 Nov 1994 08:49:37 GMT"


@given(st.integers(min_value=0, max_value=4_102_444_800))
def test_dates_match_email_utils(when: int) -> None:
    # Whole seconds: email.utils rounds fractions to microseconds, gmtime truncates.
    assert http_date(when).decode() == formatdate(when, usegmt=True)
