"""Growing the pool (issue 20): stable samples, appends that rebuild only what the new shard touches."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gmates_assets.core import sampling

_IDS = st.lists(st.text(min_size=1, max_size=12), min_size=0, max_size=60, unique=True)


def _split(ids: list[str], appended: list[str]) -> tuple[list[str], list[str]]:
    new = [i for i in appended if i not in set(ids)]
    return ids, new


# ------------------------------------------------------------------------------------------ stable samples
@settings(max_examples=60, deadline=None)
@given(ids=_IDS, appended=_IDS, rate=st.floats(0.0, 1.0), seed=st.integers(0, 2**31))
def test_appending_never_changes_an_existing_documents_rate_membership(ids, appended, rate, seed):
    ids, new = _split(ids, appended)
    key = sampling.sample_key("probe-pool", seed)
    before = set(sampling.rate_sample(ids, rate, key).tolist())
    after = set(sampling.rate_sample(ids + new, rate, key).tolist())
    assert {i for i in after if i < len(ids)} == before


@settings(max_examples=60, deadline=None)
@given(ids=_IDS, appended=_IDS, size=st.integers(0, 40), seed=st.integers(0, 2**31))
def test_a_sized_sample_changes_only_by_the_new_documents_it_admits(ids, appended, size, seed):
    """Bottom-k: no old document enters; one leaves only for a new one that took its place."""
    ids, new = _split(ids, appended)
    key = sampling.sample_key("warm-up", seed)
    before = set(sampling.size_sample(ids, size, key).tolist())
    after = set(sampling.size_sample(ids + new, size, key).tolist())
    old_after = {i for i in after if i < len(ids)}
    assert old_after <= before
    assert len(before - old_after) == len(after - old_after) - (len(after) - len(before))
    assert len(after) == min(size, len(ids) + len(new))


@settings(max_examples=30, deadline=None)
@given(ids=_IDS, seed=st.integers(0, 2**31))
def test_membership_is_decided_per_document_not_by_position(ids, seed):
    """Reordering the pool (shards listed in another order) keeps the same documents in the sample."""
    key = sampling.sample_key("bpe", seed)
    chosen = {ids[i] for i in sampling.size_sample(ids, 7, key)}
    reordered = ids[::-1]
    assert {reordered[i] for i in sampling.size_sample(reordered, 7, key)} == chosen


def test_positional_mode_keeps_the_earlier_draw():
    from gmates_assets.core import oracle

    ids = [f"f:{i}" for i in range(500)]
    assert np.array_equal(sampling.sample_documents(ids, 40, "probe-pool", 3, "positional"),
                          oracle.sample_probe_pool(500, 40, 3))
    with pytest.raises(ValueError, match="sampling"):
        sampling.sample_documents(ids, 40, "probe-pool", 3, "shuffled")
