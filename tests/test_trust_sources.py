"""Trust in what goes in: local model folders enter staleness, commit knobs never change bytes, one file is
read once whatever its spelling, lone surrogates are bad records, and custom model code never runs unasked."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gmates_assets.core.encode import default_encoder_dir
from gmates_assets.core.hashing import hash_dir
from gmates_assets.core.sources import ShardSpec, SourceError, check_files, check_shards_disjoint, read_shard

from .pipeline import Build
from .tiny import TINY, counting_docs

ROOT = Path(__file__).resolve().parents[1]


def write_jsonl(path: Path, texts) -> None:
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))


# ------------------------------------------------------------------------- 3. one file, two spellings
@pytest.fixture
def pool_file(tmp_path) -> Path:
    write_jsonl(tmp_path / "a.jsonl", ["one", "two"])
    return tmp_path / "a.jsonl"


def test_same_file_by_relative_and_absolute_path_in_two_shards_is_refused(tmp_path, pool_file):
    specs = [ShardSpec("x", "jsonl", ("a.jsonl",), base_dir=str(tmp_path)),
             ShardSpec("y", "jsonl", (str(pool_file),), base_dir=str(tmp_path))]
    with pytest.raises(SourceError, match="same file") as err:
        check_shards_disjoint(specs)
    assert err.value.reason == "duplicate_source" and "'x'" in str(err.value) and "'y'" in str(err.value)


def test_same_file_through_a_symlink_in_two_shards_is_refused(tmp_path, pool_file):
    (tmp_path / "link.jsonl").symlink_to(pool_file)
    specs = [ShardSpec("x", "jsonl", ("a.jsonl",), base_dir=str(tmp_path)),
             ShardSpec("y", "jsonl", ("link.jsonl",), base_dir=str(tmp_path))]
    with pytest.raises(SourceError, match="same file"):
        check_shards_disjoint(specs)


def test_same_file_twice_in_one_shard_is_refused_before_reading(tmp_path, pool_file):
    (tmp_path / "sub").mkdir()
    (tmp_path / "link.jsonl").symlink_to(pool_file)
    for paths in [("a.jsonl", str(pool_file)), ("a.jsonl", "sub/../link.jsonl"), ("*.jsonl",)]:
        spec = ShardSpec("s", "jsonl", paths, base_dir=str(tmp_path))
        with pytest.raises(SourceError, match="same file"):
            check_files(spec)
        with pytest.raises(SourceError, match="same file"):
            read_shard(spec)  # never the pool doubled


def test_same_local_dataset_folder_under_two_spellings_is_refused(tmp_path):
    (tmp_path / "saved").mkdir()
    specs = [ShardSpec("x", "hf", base_dir=str(tmp_path), hf_name="./saved"),
             ShardSpec("y", "hf", base_dir=str(tmp_path), hf_name=str(tmp_path / "saved"))]
    with pytest.raises(SourceError, match="same file"):
        check_shards_disjoint(specs)
    other_split = ShardSpec("y", "hf", base_dir=str(tmp_path), hf_name=str(tmp_path / "saved"), hf_split="test")
    check_shards_disjoint([specs[0], other_split])  # another split of it is another source


def test_distinct_files_still_pass(tmp_path, pool_file):
    write_jsonl(tmp_path / "b.jsonl", ["three"])
    check_shards_disjoint([ShardSpec("x", "jsonl", ("a.jsonl",), base_dir=str(tmp_path)),
                           ShardSpec("y", "jsonl", ("b.jsonl",), base_dir=str(tmp_path))])
    docs, _ = read_shard(ShardSpec("s", "jsonl", ("*.jsonl",), base_dir=str(tmp_path)))
    assert [d.text for d in docs] == ["one", "two", "three"]


# ------------------------------------------------------------------------------ 4. lone surrogates
SURROGATE_TEXT = '{"text": "bad \\ud800 text"}'
SURROGATE_META = '{"text": "fine text", "title": "bad \\udc00"}'


@pytest.mark.parametrize("line,field", [(SURROGATE_TEXT, "text"), (SURROGATE_META, "title")])
def test_lone_surrogate_is_a_bad_record_naming_file_line_and_field(tmp_path, line, field):
    (tmp_path / "a.jsonl").write_text('{"text": "ok"}\n' + line + "\n")
    spec = ShardSpec("s", "jsonl", ("a.jsonl",), base_dir=str(tmp_path))
    with pytest.raises(SourceError) as err:
        read_shard(spec)
    message = str(err.value)
    assert message.startswith("a.jsonl, line 2 (row 1)") and repr(field) in message and "surrogate" in message

    docs, stats = read_shard(spec, on_bad_record="skip")
    assert [d.text for d in docs] == ["ok"] and stats.skipped == {"lone_surrogate": 1}
    from gmates_assets.core.sources import write_documents_parquet

    write_documents_parquet(docs, tmp_path / "documents.parquet")  # what is kept can be stored


def test_lone_surrogate_in_a_nested_metadata_value_is_found(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"text": "ok", "meta": {"tags": ["x", "\\ud83d"]}}\n{"text": "ok"}\n')
    with pytest.raises(SourceError, match="'meta'.*surrogate"):
        read_shard(ShardSpec("s", "jsonl", ("a.jsonl",), base_dir=str(tmp_path)))


def test_paired_surrogate_escapes_are_ordinary_text(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"text": "smile \\ud83d\\ude00"}\n')
    docs, _ = read_shard(ShardSpec("s", "jsonl", ("a.jsonl",), base_dir=str(tmp_path)))
    assert docs[0].text == "smile \U0001F600"


# ------------------------------------------------------------------------ 5. custom model code refused
CUSTOM_CODE = """
from pathlib import Path
Path({marker!r}).write_text("custom code ran")
raise SystemExit("custom code ran")
"""

LOAD_SCRIPT = """
import sys
from gmates_assets.core.validation import ModelLoadError
kind, folder = sys.argv[1], sys.argv[2]
try:
    if kind == "tokenizer":
        from gmates_assets.core.tokenize import load_lm_tokenizer
        load_lm_tokenizer(folder)
    else:
        from gmates_assets.core.encode import load_encoder
        load_encoder(folder, device="cpu")
except ModelLoadError as err:
    print("REFUSED:", err)
    sys.exit(3)
print("LOADED")
"""


def custom_code_folder(root: Path, kind: str) -> tuple[Path, Path]:
    """A model folder whose config asks for its own python code (auto_map); the code writes a marker file."""
    folder, marker = root / f"custom_{kind}", root / f"{kind}_marker.txt"
    shutil.copytree(default_encoder_dir(), folder)
    (folder / "custom.py").write_text(CUSTOM_CODE.format(marker=str(marker)))
    config_name = "tokenizer_config.json" if kind == "tokenizer" else "config.json"
    config = json.loads((folder / config_name).read_text())
    # Only the custom classes fit (no built-in model type or tokenizer class), so transformers would ask.
    if kind == "tokenizer":
        (folder / "config.json").unlink()
        config["tokenizer_class"] = "CustomTokenizer"
        config["auto_map"] = {"AutoTokenizer": ["custom.CustomTokenizer", "custom.CustomTokenizer"]}
    else:
        config["model_type"] = "custom-bert"
        config["auto_map"] = {"AutoConfig": "custom.CustomConfig", "AutoModel": "custom.CustomModel"}
    (folder / config_name).write_text(json.dumps(config))
    return folder, marker


@pytest.mark.parametrize("kind", ["tokenizer", "encoder"])
def test_a_folder_with_custom_code_is_refused_without_a_prompt(tmp_path, kind):
    folder, marker = custom_code_folder(tmp_path, kind)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_MODULES_CACHE": str(tmp_path / "modules"),
           "HF_HUB_OFFLINE": "1"}
    # A person answering the prompt "y" (what a terminal would send): the answer must never be asked for.
    done = subprocess.run([sys.executable, "-c", LOAD_SCRIPT, kind, str(folder)], input="y\ny\ny\n",
                          capture_output=True, text=True, env=env, timeout=120)
    assert not marker.exists(), "the folder's python code ran"
    assert "[y/N]" not in done.stdout + done.stderr
    assert done.returncode == 3, done.stdout + done.stderr
    assert "trust_remote_code" in done.stdout and "custom code" in done.stdout
    setting = "tokenizer.name" if kind == "tokenizer" else "encoder.model"
    assert setting in done.stdout


def test_loaders_pass_trust_remote_code_explicitly():
    """Every from_pretrained / load_dataset call in gmates says trust_remote_code (never left to a prompt)."""
    import ast

    offenders = []
    for path in sorted((ROOT / "gmates_assets").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if name in ("from_pretrained", "load_dataset") and not any(
                    k.arg == "trust_remote_code" for k in node.keywords):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node)}")
    assert not offenders, "\n".join(offenders)


# ------------------------------------------------------------------ 2. commit knobs never change bytes
@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory) -> Path:
    """A small random BERT with the MiniLM tokenizer, saved as a local model folder."""
    import torch
    from transformers import BertConfig, BertModel

    root = tmp_path_factory.mktemp("tiny_bert") / "encoder"
    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                 intermediate_size=64, max_position_embeddings=128))
    model.save_pretrained(root)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copy(Path(default_encoder_dir()) / name, root / name)
    return root


def varied_texts(n: int) -> list[str]:
    """Documents of many lengths, so batches formed by length differ with where commits fall."""
    words = "river stone mountain glacier valley forest meadow harbour".split()
    return [" ".join(words[(i + j) % len(words)] for j in range(3 + (i * 7) % 60)) for i in range(n)]


def test_embeddings_bytes_do_not_depend_on_commit_every_docs(tiny_encoder, tmp_path):
    from gmates_assets.core.encode import embed_documents, load_encoder

    model, tok = load_encoder(str(tiny_encoder), device="cpu")
    texts = varied_texts(40)
    for blocks in ({}, {"block_docs": 8}):  # the default (one block holds every document), and several blocks
        hashes = set()
        for commit_every in (1, 3, 17, 512):
            out = tmp_path / f"b{blocks}-c{commit_every}"
            embed_documents(model, tok, texts, 64, 32, "mean", 5, out, chunk_docs=commit_every, **blocks)
            hashes.add(hash_dir(out))
        assert len(hashes) == 1, f"{blocks}: {len(hashes)} different results"


@pytest.fixture(scope="module")
def probe_setup(tmp_path_factory):
    """A tiny probe checkpoint mid-schedule, a probe pool and reference batches (as tests/test_oracle.py)."""
    import torch

    from gmates_assets.core import lm

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("oracle")
    rng = np.random.default_rng(0)
    pool = lm.pack_sequences(counting_docs(rng, 40), seq_len=16, eos_id=63)
    model = lm.build_causal_lm(TINY, seed=0)
    config = lm.OptimConfig(lr=3e-3, min_lr=3e-5, warmup_steps=1, total_steps=10)
    lm.train_lm(model, pool, config, 4, 4, 0, root / "ck", checkpoint_every=4, device="cpu")
    refs = lm.make_reference_batches([((np.arange(10) + 3) % 60, np.where(np.arange(10) < 6, -100, np.arange(10)))],
                                     batch_size=1, pad_id=0)
    return root / "ck", pool, refs


def test_oracle_bytes_do_not_depend_on_commit_every_rollouts(probe_setup, tmp_path):
    from gmates_assets.core import oracle

    checkpoint, pool, refs = probe_setup
    rollouts = oracle.sample_random_rollouts(len(pool), 5, 2, seed=0)
    hashes = set()
    for commit_every in (1, 2, 16):
        out = tmp_path / f"c{commit_every}"
        oracle.probe_rollouts(checkpoint, pool, refs, rollouts, out, chunk_rollouts=commit_every, device="cpu")
        hashes.add(hash_dir(out))
        assert "chunk_rollouts" not in (out / oracle.ORACLE_META_FILE).read_text()
    assert len(hashes) == 1


def test_oracle_resumed_with_another_chunking_leaves_no_stale_chunk(probe_setup, tmp_path):
    from gmates_assets.core import oracle

    checkpoint, pool, refs = probe_setup
    rollouts = oracle.sample_random_rollouts(len(pool), 5, 2, seed=0)
    oracle.probe_rollouts(checkpoint, pool, refs, rollouts, tmp_path / "clean", chunk_rollouts=5, device="cpu")
    work = tmp_path / "work"
    work.mkdir()
    for chunk in range(5):  # what a killed run with commit_every_rollouts: 1 left behind
        (work / f"chunk-{chunk:05d}.parquet").write_bytes(b"left over")
    oracle.probe_rollouts(checkpoint, pool, refs, rollouts, work, chunk_rollouts=5, device="cpu")
    assert hash_dir(work) == hash_dir(tmp_path / "clean")


# ------------------------------------------------------------------ 1. local model folders enter staleness
POOL = ["lm_tokenizer", "embeddings"]
BUILT = ["documents", *POOL]


def local_models_build(tmp_path: Path, encoder_dir: Path) -> Build:
    """A jsonl shard, a local tokenizer folder (./tok) and a local encoder folder (./enc)."""
    manifest = json.dumps({
        "name": "local-models",
        "sources": {"shards": [{"name": "a", "format": "jsonl", "paths": ["a.jsonl"]}]},
        "tokenizer": {"kind": "pretrained", "name": "./tok", "add_eos": False, "max_tokens": 32},
        "encoder": {"model": "./enc", "max_length": 64, "chunk_size": 32, "batch_size": 8},
    })
    build = Build.create(tmp_path / "b", manifest)
    write_jsonl(build.root / "a.jsonl", [f"alpha document {i} about rivers" for i in range(6)])
    shutil.copytree(encoder_dir, build.root / "enc")
    (build.root / "tok").mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copy(Path(default_encoder_dir()) / name, build.root / "tok" / name)
    return build


def test_in_place_edits_of_local_model_folders_make_their_readers_stale(tiny_encoder, tmp_path):
    import torch
    from transformers import BertModel

    build = local_models_build(tmp_path, tiny_encoder)
    build.sync(select=POOL)
    before = build.latest_metadata("embeddings", "a")["content_hash"]

    # Scale the word embeddings in place: same folder, same file names, new weights.
    model = BertModel.from_pretrained(build.root / "enc")
    with torch.no_grad():
        model.embeddings.word_embeddings.weight.mul_(2.0)
    model.save_pretrained(build.root / "enc")
    assert build.not_fresh(BUILT) == {("embeddings", "a")}
    assert ("embeddings", "a") in build.sync(select=POOL).executed
    assert build.latest_metadata("embeddings", "a")["content_hash"] != before

    # The same code path for a local tokenizer folder.
    config_path = build.root / "tok" / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "model_max_length": 77}))
    assert build.not_fresh(BUILT) == {("lm_tokenizer", None)}
    assert ("lm_tokenizer", None) in build.sync(select=POOL).executed
    assert build.not_fresh(BUILT) == set()

    # Edited after it was observed: the build fails rather than store new weights under the old version.
    import dagster as dg

    from gmates_assets.defs.launch import RUN_CONFIG

    config_path = build.root / "enc" / "config.json"
    config_path.write_text(config_path.read_text() + "\n")
    assert build.not_fresh(BUILT) == {("embeddings", "a")}  # observed, not built yet
    config_path.write_text(config_path.read_text() + "\n")
    job = build.defs().resolve_implicit_global_asset_job_def()
    with build.instance() as instance:
        result = job.execute_in_process(instance=instance, asset_selection=[dg.AssetKey("embeddings")],
                                        partition_key="a", run_config=RUN_CONFIG, raise_on_error=False)
    assert not result.success
    assert "changed since it was observed" in str(result.get_step_failure_events()[0].step_failure_data.error)


def test_hub_models_are_versioned_by_their_pinned_revision(tmp_path):
    from gmates_assets.defs.assets.pool import model_version

    assert model_version("BAAI/bge-base-en-v1.5", "BAAI/bge-base-en-v1.5", None) == "BAAI/bge-base-en-v1.5@main"
    assert model_version("org/m", "org/m", "abc123") == "org/m@abc123"
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    first = model_version(str(tmp_path / "m"), "./m", "ignored-for-folders")
    (tmp_path / "m" / "config.json").write_text('{"x": 1}')
    assert model_version(str(tmp_path / "m"), "./m", None) != first
