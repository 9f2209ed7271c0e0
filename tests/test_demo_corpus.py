import collections
import dataclasses
import json

import pytest

from gmates_assets.core.demo_corpus import (
    ATTRIBUTES,
    TASK_TYPES,
    DemoCorpusParams,
    _fact_splits,
    build_kb,
    generate_demo_shard,
    generate_eval_tasks,
    generate_heldout_text,
    generate_reference,
    write_demo_files,
)
from gmates_assets.core.sources import ShardSpec, read_shard

PARAMS = DemoCorpusParams.tests_profile(seed=3)


def pool(params=PARAMS):
    return [d for s in range(params.n_shards) for d in generate_demo_shard(params, s)]


def read_tree(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    write_demo_files(PARAMS, tmp_path / "a")
    write_demo_files(PARAMS, tmp_path / "b")
    write_demo_files(dataclasses.replace(PARAMS, seed=4), tmp_path / "c")
    a, b, c = (read_tree(tmp_path / x) for x in "abc")
    assert a == b
    assert sorted(a) == ["demo/shard-000.jsonl", "demo/shard-001.jsonl", "heldout_reference.jsonl",
                         "heldout_text.jsonl", "kb.json", "reference.jsonl", "tasks/kb_language_modeling.jsonl",
                         "tasks/kb_multiple_choice.jsonl", "tasks/kb_schema.jsonl"]
    assert all(a[name] != c[name] for name in a)


def test_written_shards_read_back_as_the_generated_documents(tmp_path):
    write_demo_files(PARAMS, tmp_path)
    docs, _ = read_shard(ShardSpec("s", "jsonl", ("demo/shard-001.jsonl",), base_dir=str(tmp_path)))
    assert docs == generate_demo_shard(PARAMS, 1)


def test_pool_composition_and_sizes():
    docs = pool()
    assert len(docs) == PARAMS.n_docs
    assert [len(generate_demo_shard(PARAMS, s)) for s in range(2)] == [250, 250]
    kinds = collections.Counter(d.meta["kind"] for d in docs)
    assert kinds == {"target": 175, "offdomain": 175, "junk": 50, "near_duplicate": 100}
    assert {d.meta["domain"] for d in docs} >= {"bestiary", "recipes", "weather", "sports", "software",
                                                "junk-soup", "junk-boilerplate", "junk-repeat"}
    assert all(0 < len(d.text.split()) <= 100 and d.text.strip() == d.text for d in docs)
    assert len({d.doc_id for d in docs}) == len(docs)


def test_near_duplicate_clusters_are_small_edits_of_one_base():
    clusters = collections.defaultdict(list)
    for d in pool():
        if d.meta["kind"] == "near_duplicate":
            clusters[d.meta["cluster"]].append(d)
    assert len(clusters) >= 10
    target_clusters = 0
    for members in clusters.values():
        metas = {json.dumps(m.meta, sort_keys=True) for m in members}
        assert len(metas) == 1  # same entity, same facts
        word_sets = [set(m.text.split()) for m in members]
        for words in word_sets[1:]:
            assert len(words ^ word_sets[0]) <= 12
        target_clusters += members[0].meta["domain"] == "bestiary"
    assert target_clusters > len(clusters) / 2


def test_every_kb_fact_is_stated_in_the_pool_with_its_value():
    kb, docs = build_kb(PARAMS), pool()
    stated = collections.defaultdict(list)
    for d in docs:
        for name in d.meta["facts"]:
            stated[(d.meta["entity"], name)].append(d.text)
    for e, entity in enumerate(kb.entities):
        for a, attribute in enumerate(ATTRIBUTES):
            texts = stated[(entity, attribute.name)]
            assert texts, (entity, attribute.name)
            assert all(f" {kb.value(e, a)} " in t.replace(".", " . ") for t in texts)


def test_reference_and_eval_items_are_disjoint_and_never_pool_documents():
    splits = _fact_splits(PARAMS)
    all_facts = [f for facts in splits.values() for f in facts]
    assert len(all_facts) == len(set(all_facts))  # no fact is asked twice across splits
    reference, heldout = generate_reference(PARAMS), generate_reference(PARAMS, "heldout")
    tasks = generate_eval_tasks(PARAMS)
    assert len(reference) == 32 and len(heldout) == 32
    assert set(tasks) == set(TASK_TYPES) and all(len(v) == 16 for v in tasks.values())
    pool_texts = {d.text for d in pool()}
    ref_texts = {r["prompt"] + r["answer"] for r in reference}
    held_texts = {r["prompt"] + r["answer"] for r in heldout}
    lm_texts = {t["context"] + t["continuation"] for t in tasks["kb_language_modeling"]}
    assert not ref_texts & held_texts and not ref_texts & lm_texts and not held_texts & lm_texts
    assert not (ref_texts | held_texts | lm_texts) & pool_texts
    heldout_text = generate_heldout_text(PARAMS)
    assert len(heldout_text) == PARAMS.n_heldout_text and not {h["text"] for h in heldout_text} & pool_texts


def test_eval_items_have_the_kb_answer_as_gold():
    kb, splits, tasks = build_kb(PARAMS), _fact_splits(PARAMS), generate_eval_tasks(PARAMS)
    for (e, a), item in zip(splits["kb_multiple_choice"], tasks["kb_multiple_choice"]):
        assert kb.entities[e] in item["query"] and len(set(item["choices"])) == 4
        assert item["choices"][item["gold"]] == " " + kb.value(e, a)
    for (e, a), item in zip(splits["kb_schema"], tasks["kb_schema"]):
        gold, other = item["context_options"][item["gold"]], item["context_options"][1 - item["gold"]]
        assert f" {kb.entities[e]} " in gold + " " and kb.value(e, a) in item["continuation"]
        rival = next(i for i, name in enumerate(kb.entities) if f" {name} " in other + " ")
        assert kb.value(rival, a) != kb.value(e, a)
    for (e, a), item in zip(splits["kb_language_modeling"], tasks["kb_language_modeling"]):
        assert kb.entities[e] in item["context"] and item["continuation"].startswith(" " + kb.value(e, a))
    for (e, a), item in zip(splits["reference"], generate_reference(PARAMS)):
        assert kb.entities[e] in item["prompt"] and kb.value(e, a) in item["answer"]


def test_split_sizes_do_not_move_the_pool():
    bigger_eval = dataclasses.replace(PARAMS, n_eval=20, n_reference=20)
    assert pool(bigger_eval) == pool()
    assert build_kb(bigger_eval) == build_kb(PARAMS)


def test_default_profile_is_the_demo_size_and_states_facts_repeatedly():
    params = DemoCorpusParams()
    docs = pool(params)
    assert len(docs) == 3000 and params.n_shards == 2
    counts = collections.Counter((d.meta["entity"], f) for d in docs for f in d.meta["facts"])
    assert len(counts) == params.n_entities * len(ATTRIBUTES) and min(counts.values()) >= 3


def test_invalid_params_are_rejected():
    with pytest.raises(ValueError, match="sum to 1"):
        dataclasses.replace(PARAMS, frac_junk=0.5).validate()
    with pytest.raises(ValueError, match="distinct facts"):
        dataclasses.replace(PARAMS, n_eval=100).validate()
    with pytest.raises(ValueError, match="cannot state all"):
        dataclasses.replace(PARAMS, n_docs=100, n_entities=24).validate()
    with pytest.raises(ValueError, match="out of range"):
        generate_demo_shard(PARAMS, 2)
