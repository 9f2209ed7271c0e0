"""Growing the pool (issue 20): stable samples, appends that rebuild only what the new shard touches."""
from __future__ import annotations

import json

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


# ------------------------------------------------------------------------------------------ append a shard
FAN_IN_THRESHOLD = 10  # Dagster's 100, lowered for these tests (pipeline.fan_in_threshold)
N_SHARDS = 10  # at the threshold where Dagster stops tracking staleness across the pool edge
DOCS_PER_SHARD = 30  # a pool of 300 documents, as the 100 shards of 3 documents this test had before
PROBE_AND_MODELS = {"probe_checkpoint", "probe_pool", "oracle_random", "relational_model_init",
                    "bootstrap_rollouts", "oracle_bootstrap", "relational_model"}


def _shard(i: int) -> dict:
    return {"name": f"s{i:03d}", "format": "jsonl", "paths": [f"pool/s{i:03d}.jsonl"]}


def _pool_manifest(n: int, **overrides) -> str:
    import yaml

    from .pipeline import TESTS_MANIFEST

    data = yaml.safe_load(TESTS_MANIFEST.read_text())
    data["sources"] = {"shards": [_shard(i) for i in range(n)],
                       "reference": {"format": "demo"}, "heldout_reference": {"format": "demo"}}
    # A fixed tokenizer, as in the paper: the pool never changes it (a local folder, see fixed_tokenizer).
    data["tokenizer"] = {"kind": "pretrained", "name": "tok", "max_tokens": 32}
    data["probe"]["pool"] = "frozen"
    data["selection"]["methods"] = ["group_mates"]
    data["execution"] = {"executor": "in_process"}
    for dotted, value in overrides.items():
        node = data
        *parents, leaf = dotted.split("__")
        for part in parents:
            node = node[part]
        node[leaf] = value
    return yaml.safe_dump(data, sort_keys=False)


def fixed_tokenizer(root) -> None:
    """A byte-level BPE trained once on unrelated text and saved as a local pretrained tokenizer folder."""
    from gmates_assets.core import tokenize

    words = "shard document topic item about and the river stone garden market signal harbor lantern".split()
    texts = [" ".join(words[(i * k) % len(words)] for k in range(12)) + f" {i}" for i in range(200)]
    tokenize.save_tokenizer_dir(tokenize.train_bpe_tokenizer(texts, 300), root / "tok")


def _write_pool_shard(root, i: int, docs: int) -> None:
    path = root / "pool" / f"s{i:03d}.jsonl"
    path.parent.mkdir(exist_ok=True)
    text = "shard {i} document {j} about topic {topic} and item {item}"
    path.write_text("".join(json.dumps({"text": text.format(i=i, j=j, topic=j % 5, item=i * 7 % 11)}) + "\n"
                            for j in range(docs)))


def _append_shard(build, i: int, docs: int) -> None:
    import yaml

    _write_pool_shard(build.root, i, docs)
    data = yaml.safe_load(build.manifest.read_text())
    data["sources"]["shards"].append(_shard(i))
    build.manifest.write_text(yaml.safe_dump(data, sort_keys=False))


@pytest.fixture(scope="module")
def grown_pool(tmp_path_factory):
    """N_SHARDS shards (at Dagster's fan-in threshold, lowered to 10) built up to the release with a frozen
    probe, then one more shard appended and synced again."""
    from .pipeline import fan_in_threshold

    with fan_in_threshold(FAN_IN_THRESHOLD):  # only while building and judging: later tests see Dagster's own
        return _grow_pool(tmp_path_factory)


def _grow_pool(tmp_path_factory):
    from .pipeline import Build

    build = Build.create(tmp_path_factory.mktemp("grow") / "b", _pool_manifest(N_SHARDS))
    fixed_tokenizer(build.root)
    for i in range(N_SHARDS):
        _write_pool_shard(build.root, i, DOCS_PER_SHARD)
    cold = build.sync(select=["dataset_release"])
    _append_shard(build, N_SHARDS, DOCS_PER_SHARD)
    before_read = _not_fresh(build)
    read = build.sync(select=["documents"])  # the new shard's documents: now status knows how many there are
    after_read = _not_fresh(build)
    append = build.sync(select=["dataset_release"])
    append.waves[:0] = read.waves
    return build, cold, append, (before_read, after_read), build.not_fresh(["dataset_release", "influence_scores"])


def _not_fresh(build) -> dict:
    from gmates_assets.defs.sync import FRESH, asset_statuses

    with build.instance() as instance:
        return {(s.asset, s.partition): (s.status, s.causes)
                for s in asset_statuses(build.defs(), instance, observe=True) if s.status != FRESH}


@pytest.mark.slow
@pytest.mark.xdist_group("grown_pool")  # one worker builds the module fixture (--dist loadgroup)
def test_appending_a_shard_rebuilds_only_the_new_shard_and_the_whole_pool_steps(grown_pool):
    from gmates_assets.defs.rebuilds import split_rebuilt

    build, cold, append, _, not_fresh_after = grown_pool
    assert len(cold.executed) > 4 * N_SHARDS
    with build.instance() as instance:
        rebuilt, reused = split_rebuilt(instance, append.executed)
    new = f"s{N_SHARDS:03d}"
    assert rebuilt == {("documents", new), ("tokenized_pool", new), ("embeddings", new), ("influence_scores", new),
                       ("documents_index", None), ("tokenized_pool_index", None), ("embeddings_index", None),
                       ("influence_scores_index", None), ("cluster_assignments", None),
                       ("selected_subset", "group_mates"), ("dataset_release", None)}
    # The probe checkpoint and probe pool read the grown indexes, so they are asked again, and come back reused;
    # the oracles and both relational models are not even asked (their inputs kept their data versions).
    assert reused == {("probe_checkpoint", None), ("probe_pool", None)}
    assert not {asset for asset, _ in append.executed} & (PROBE_AND_MODELS - {"probe_checkpoint", "probe_pool"})
    assert not_fresh_after == set()


WHOLE_POOL_STEPS = {"documents_index", "tokenized_pool_index", "embeddings_index", "influence_scores_index",
                    "probe_checkpoint", "probe_pool", "cluster_assignments", "selected_subset", "dataset_release"}


@pytest.mark.slow
@pytest.mark.xdist_group("grown_pool")
def test_status_after_an_append_says_the_pool_grew_in_one_line(grown_pool):
    _, _, _, (before_read, after_read), _ = grown_pool
    new = f"s{N_SHARDS:03d}"
    never_built = {"pretrained_checkpoint", "eval_scores", "method_comparison"}  # the syncs stop at the release
    missing = {key for key, (status, _) in before_read.items() if status == "missing" and key[0] not in never_built}
    assert missing == {(a, new) for a in ("documents", "tokenized_pool", "embeddings", "influence_scores")}
    stale = {key: causes for key, (status, causes) in before_read.items() if status == "stale"}
    assert {asset for asset, _ in stale} == WHOLE_POOL_STEPS
    assert all(causes == (f"{asset}: the pool grew by 1 shard ({new}), not read yet",)
               for (asset, _), causes in stale.items())
    stale = {key: causes for key, (status, causes) in after_read.items() if status == "stale"}
    assert {asset for asset, _ in stale} == WHOLE_POOL_STEPS
    assert all(causes == (f"{asset}: the pool grew by {DOCS_PER_SHARD} documents in 1 shard ({new})",)
               for (asset, _), causes in stale.items())


# ------------------------------------------------------------------------------------------ trained tokenizer
BPE_SHARDS, BPE_DOCS, TRAIN_DOCS = 4, 12, 10


def _bpe_build(tmp_path, mode: str):
    from .pipeline import Build

    manifest = _pool_manifest(BPE_SHARDS, tokenizer={"kind": "train_bpe", "vocab_size": 300, "max_tokens": 32,
                                                     "train_docs": TRAIN_DOCS}, sampling=mode)
    build = Build.create(tmp_path / mode, manifest)
    for i in range(BPE_SHARDS):
        _write_bpe_shard(build.root, i)
    build.sync(select=["lm_tokenizer"])
    return build


def _write_bpe_shard(root, i: int, edit_row: int = -1) -> None:
    path = root / "pool" / f"s{i:03d}.jsonl"
    path.parent.mkdir(exist_ok=True)
    words = ["river", "stone", "garden", "market", "signal", "harbor", "lantern", "meadow"]
    path.write_text("".join(json.dumps({"text": f"{words[(i + j) % 8]} {words[j * 3 % 8]} number {i * BPE_DOCS + j}"
                                                f"{' edited with zebra quartz' if j == edit_row else ''}"}) + "\n"
                            for j in range(BPE_DOCS)))


def _bpe_sample_ids(shards) -> set[str]:
    ids = [f"pool/s{i:03d}.jsonl:{j}" for i in shards for j in range(BPE_DOCS)]
    return {ids[k] for k in sampling.sample_documents(ids, TRAIN_DOCS, "bpe", 0)}


def _shard_outside_the_bpe_sample() -> int:
    """A shard to append whose documents all stay out of the stable BPE sample (which shard is up to the hash)."""
    base = list(range(BPE_SHARDS))
    return next(i for i in range(BPE_SHARDS, 100) if _bpe_sample_ids(base + [i]) == _bpe_sample_ids(base))


def _tokenizer_hash(build) -> str:
    from gmates_assets.defs.runtime import latest_data_version

    with build.instance() as instance:
        return latest_data_version(instance, "lm_tokenizer", None, False)


def test_an_edit_outside_the_bpe_sample_keeps_the_tokenizer_and_one_inside_changes_it(tmp_path):
    build = _bpe_build(tmp_path, "stable")
    before, sample = _tokenizer_hash(build), _bpe_sample_ids(range(BPE_SHARDS))
    outside = next(j for j in range(BPE_DOCS) if f"pool/s001.jsonl:{j}" not in sample)
    _write_bpe_shard(build.root, 1, edit_row=outside)
    report = build.sync(select=["lm_tokenizer"])
    assert ("lm_tokenizer", None) in report.executed and _tokenizer_hash(build) == before
    inside = next(j for j in range(BPE_DOCS) if f"pool/s002.jsonl:{j}" in sample)
    _write_bpe_shard(build.root, 2, edit_row=inside)
    build.sync(select=["lm_tokenizer"])
    assert _tokenizer_hash(build) != before


@pytest.mark.parametrize("mode", ["stable", "positional"])
def test_appending_a_shard_outside_the_bpe_sample_keeps_the_tokenizer_only_when_stable(tmp_path, mode):
    """Stable: the appended documents do not enter the sample, so the tokenizer is byte-identical. Positional (the
    earlier draw over positions): the larger pool reshuffles the sample and the tokenizer changes."""
    build = _bpe_build(tmp_path, mode)
    before = _tokenizer_hash(build)
    _append_shard(build, _shard_outside_the_bpe_sample(), BPE_DOCS)  # all of its documents stay out
    build.sync(select=["lm_tokenizer"])
    assert (_tokenizer_hash(build) == before) == (mode == "stable")


# ------------------------------------------------------------------------------------------ frozen influence model
def test_a_frozen_relational_model_scores_a_new_pool_and_the_release_names_it(full_build, tmp_path):
    from gmates_assets.core.store import ArtifactStore
    from gmates_assets.defs.runtime import latest_data_version

    build = full_build.copy_to(tmp_path / "frozen")
    with build.instance() as instance:
        model_hash = latest_data_version(instance, "relational_model", None, False)
    model_dir = ArtifactStore(build.store).require_by_content("relational_model", model_hash).path
    build.edit("relational.from", str(model_dir))
    build.edit("demo.seed", 12)  # a new pool (another generated corpus)
    report = build.sync(select=["dataset_release"])
    ran = {asset for asset, _ in report.executed}
    assert {"documents", "embeddings", "influence_scores", "relational_model", "dataset_release"} <= ran
    assert not ran & (PROBE_AND_MODELS - {"relational_model"})  # no warm-up, probe pool, oracles or training
    with build.instance() as instance:
        release = ArtifactStore(build.store).require_by_content(
            "dataset_release", latest_data_version(instance, "dataset_release", None, False))
    content = json.loads((release.path / "release" / "manifest.json").read_text())["content"]
    frozen = content["lineage"]["frozen_relational_model"]
    assert frozen["from"] == str(model_dir) and frozen["content_hash"] == model_hash
    assert set(frozen["trained_on"]) >= {"oracle_random", "probe_pool"}


def test_kmeans_trains_on_the_given_stable_subsample():
    """The shell hands spherical_kmeans a stable sample of document ids as its training rows."""
    from gmates_assets.core import selection as sel

    x = np.random.default_rng(0).normal(size=(200, 8)).astype(np.float32)
    rows = sampling.size_sample([f"f:{i}" for i in range(200)], 3 * 8, sampling.sample_key("kmeans", 5))
    given = sel.spherical_kmeans(x, 3, niter=5, seed=5, max_points_per_centroid=8, use_gpu=False, train_rows=rows)
    direct = sel.spherical_kmeans(x[rows], 3, niter=5, seed=5, max_points_per_centroid=8, use_gpu=False)
    drawn = sel.spherical_kmeans(x, 3, niter=5, seed=5, max_points_per_centroid=8, use_gpu=False)
    assert np.array_equal(given, direct) and not np.array_equal(given, drawn)
