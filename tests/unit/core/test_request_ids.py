"""`RequestIds` hands out, batch by batch, exactly what `generate_request_id` makes."""

from __future__ import annotations

import random
import uuid

from hypothesis import given, settings
from hypothesis import strategies as st

from trellis.core.headers import RequestIds, generate_request_id


@settings(max_examples=20)
@given(st.integers(0, 2**32))
def test_same_ids_in_the_same_order_across_batches(seed: int) -> None:
    one_by_one = random.Random(seed)
    batched = RequestIds(random.Random(seed))
    for _ in range(150):  # more than two batches of 64
        assert batched.take() == generate_request_id(one_by_one)


def test_ids_are_version_4_uuids_and_distinct() -> None:
    ids = RequestIds(random.Random(3))
    taken = [ids.take() for _ in range(1000)]
    assert len(set(taken)) == 1000
    for rid in taken[:130]:
        parsed = uuid.UUID(rid.decode())
        assert str(parsed).encode() == rid
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122
