import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from gmates_assets.core.demo_corpus import DemoCorpusParams, generate_demo_shard  # noqa: E402
from gmates_assets.core.encode import (  # noqa: E402
    EMBEDDINGS_NAME,
    chunk_encoder_inputs,
    default_encoder_dir,
    embed_documents,
    load_encoder,
    pool_chunk_outputs,
    prepare_text,
    read_embeddings,
)
from gmates_assets.core.tokenize import (  # noqa: E402
    EOS_TOKEN,
    PAD_TOKEN,
    RaggedShards,
    bpe_training_sample,
    load_lm_tokenizer,
    read_ragged_zarr,
    save_tokenizer_dir,
    tokenize_documents,
    train_bpe_tokenizer,
    write_ragged_zarr,
)

TEXTS = [d.text for d in generate_demo_shard(DemoCorpusParams.tests_profile(), 0)]

pytestmark = pytest.mark.usefixtures("one_thread")


def tree_bytes(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# -------------------------------------------------------------------------------------- LM tokenizer


@pytest.fixture(scope="module")
def bpe():
    return train_bpe_tokenizer(TEXTS, vocab_size=600)


def test_bpe_training_is_deterministic_across_processes(bpe, tmp_path):
    assert train_bpe_tokenizer(TEXTS, vocab_size=600).to_str() == bpe.to_str()
    script = textwrap.dedent("""
        import sys
        from gmates_assets.core.demo_corpus import DemoCorpusParams, generate_demo_shard
        from gmates_assets.core.tokenize import train_bpe_tokenizer
        texts = [d.text for d in generate_demo_shard(DemoCorpusParams.tests_profile(), 0)]
        sys.stdout.write(train_bpe_tokenizer(texts, vocab_size=600).to_str())
    """)
    env = dict(os.environ, PYTHONHASHSEED="12345")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, env=env)
    assert out.stdout == bpe.to_str()
    vocab = bpe.get_vocab()
    assert vocab[EOS_TOKEN] == 0 and vocab[PAD_TOKEN] == 1 and bpe.get_vocab_size() == 600


def test_saved_tokenizer_loads_with_autotokenizer(bpe, tmp_path):
    from transformers import AutoTokenizer

    save_tokenizer_dir(bpe, tmp_path / "tok", model_max_length=128)
    assert sorted(os.listdir(tmp_path / "tok")) == ["special_tokens_map.json", "tokenizer.json",
                                                   "tokenizer_config.json"]
    for hf in (AutoTokenizer.from_pretrained(tmp_path / "tok"), load_lm_tokenizer(str(tmp_path / "tok"))):
        assert hf.eos_token_id == 0 and hf.pad_token_id == 1 and hf.model_max_length == 128
        assert hf(TEXTS[3], add_special_tokens=False)["input_ids"] == bpe.encode(TEXTS[3]).ids
        assert hf.decode(bpe.encode(TEXTS[3]).ids) == TEXTS[3]
    first = tree_bytes(tmp_path / "tok")
    save_tokenizer_dir(train_bpe_tokenizer(TEXTS, vocab_size=600), tmp_path / "tok", model_max_length=128)
    assert tree_bytes(tmp_path / "tok") == first


def test_tokenize_documents_matches_per_document_encoding(bpe, tmp_path):
    texts = TEXTS[:50]
    seen = []
    values, offsets = tokenize_documents(bpe, texts, max_tokens=20, add_eos=True, batch_size=7,
                                         progress=lambda done, total, unit: seen.append((done, total, unit)))
    assert values.dtype == np.int32 and offsets.dtype == np.int64 and len(offsets) == 51
    for i, text in enumerate(texts):
        expected = bpe.encode(text, add_special_tokens=False).ids[:19] + [0]
        assert values[offsets[i]:offsets[i + 1]].tolist() == expected
    assert seen[-1] == (50, 50, "docs") and len(seen) == 8
    plain, plain_offsets = tokenize_documents(bpe, texts, max_tokens=None, add_eos=False, batch_size=1000)
    assert plain_offsets[-1] == sum(len(bpe.encode(t).ids) for t in texts)
    save_tokenizer_dir(bpe, tmp_path / "tok")
    hf_values, hf_offsets = tokenize_documents(load_lm_tokenizer(str(tmp_path / "tok")), texts, 20, True, 3)
    assert np.array_equal(hf_values, values) and np.array_equal(hf_offsets, offsets)
    with pytest.raises(ValueError, match="no room for the EOS"):
        tokenize_documents(bpe, texts, max_tokens=0, add_eos=True)


def test_ragged_zarr_round_trip_and_deterministic_bytes(bpe, tmp_path):
    values, offsets = tokenize_documents(bpe, TEXTS, max_tokens=64, add_eos=True, batch_size=64)
    path = write_ragged_zarr(tmp_path / "a", values, offsets)
    assert path == tmp_path / "a" / "tokens.zarr"
    got_values, got_offsets = read_ragged_zarr(tmp_path / "a")
    assert np.array_equal(got_values, values) and np.array_equal(got_offsets, offsets)
    write_ragged_zarr(tmp_path / "b", values, offsets)
    assert tree_bytes(tmp_path / "a") == tree_bytes(tmp_path / "b")
    write_ragged_zarr(tmp_path / "empty", np.zeros(0, np.int32), np.zeros(1, np.int64))
    assert [len(x) for x in read_ragged_zarr(tmp_path / "empty")] == [0, 1]
    with pytest.raises(ValueError, match="end at len"):
        write_ragged_zarr(tmp_path / "bad", values, offsets[:-1])


# -------------------------------------------------------------------------------------------- encoder


@pytest.fixture(scope="module")
def tiny_encoder_dir(tmp_path_factory):
    """A small random BERT with the MiniLM tokenizer: fast, and loaded through the generic HF path."""
    from transformers import BertConfig, BertModel

    root = tmp_path_factory.mktemp("tiny_bert")
    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                 intermediate_size=64, max_position_embeddings=128))
    model.save_pretrained(root)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copy(Path(default_encoder_dir()) / name, root / name)
    return str(root)


@pytest.fixture(scope="module")
def tiny(tiny_encoder_dir):
    return load_encoder(tiny_encoder_dir, device="cpu")


def test_prepare_text_strips_lines():
    assert prepare_text("  a line \n\n\tsecond  \r\n third") == "a line second third"


def test_chunking_every_rule_frames_each_chunk(tiny):
    _, tok = tiny
    text = "one two three four five six seven"  # 7 word pieces
    words = tok(text, add_special_tokens=False)["input_ids"]
    out = chunk_encoder_inputs(tok, [text, "\n  \n"], max_length=24, chunk_size=6)
    ids, mask = out["input_ids"], out["attention_mask"]
    assert ids.shape == mask.shape == (2, 4, 6)
    cls, sep, pad = tok.cls_token_id, tok.sep_token_id, tok.pad_token_id
    assert ids[0, 0].tolist() == [cls, *words[0:4], sep]
    assert ids[0, 1].tolist() == [cls, *words[4:7], sep, pad]
    assert mask[0, 1].tolist() == [1, 1, 1, 1, 1, 0]
    assert ids[0, 2].tolist() == [pad] * 6 and mask[0, 2:].sum() == 0
    assert ids[1, 0].tolist() == [cls, sep, pad, pad, pad, pad] and mask[1, 1:].sum() == 0  # empty doc


def test_chunking_paper_rule_has_cls_only_in_first_chunk(tiny):
    _, tok = tiny
    text = "one two three four five six seven"
    full = tok(text, add_special_tokens=True)["input_ids"]  # [CLS] 7 pieces [SEP]
    out = chunk_encoder_inputs(tok, [text], max_length=18, chunk_size=6, cls_rule="paper")
    flat = out["input_ids"][0].reshape(-1).tolist()
    assert flat[:9] == full and set(flat[9:]) == {tok.pad_token_id}
    assert out["attention_mask"][0].sum(-1).tolist() == [6, 3, 0]
    assert out["input_ids"][0, 1, 0] != tok.cls_token_id


def test_pool_chunk_outputs_by_hand():
    hidden = torch.tensor([[[1.0, 0.0], [3.0, 2.0], [100.0, 100.0]],
                           [[2.0, 4.0], [0.0, 0.0], [4.0, 2.0]]])
    mask = torch.tensor([[1, 1, 0], [0, 0, 0]])
    assert pool_chunk_outputs(hidden, mask, "cls").tolist() == [[1.0, 0.0], [2.0, 4.0]]
    # row 0: mean of the two real positions; row 1 (all padding): mean over every position
    assert pool_chunk_outputs(hidden, mask, "mean").tolist() == [[2.0, 1.0], [2.0, 2.0]]


def brute_force(model, tok, texts, max_length, chunk_size, pooling, cls_rule="every"):
    """Encode every chunk (padding ones too) at full length in one batch."""
    inputs = chunk_encoder_inputs(tok, texts, max_length, chunk_size, cls_rule)
    n, c, length = inputs["input_ids"].shape
    ids, mask = inputs["input_ids"].reshape(-1, length), inputs["attention_mask"].reshape(-1, length)
    with torch.inference_mode():
        hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
    vectors = pool_chunk_outputs(hidden, mask, pooling).reshape(n, c, -1).numpy()
    return vectors, inputs["attention_mask"].sum(-1).numpy() > 0


def mean_unit(vectors, weights):
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    unit = np.divide(vectors, norms, out=np.zeros_like(vectors, dtype=np.float64), where=norms > 0)
    return (unit * weights[..., None]).sum(1) / weights.sum(1, keepdims=True)


@pytest.mark.parametrize("pooling, cls_rule", [("mean", "every"), ("cls", "paper")])
def test_embed_skip_matches_brute_force(tiny, tmp_path, pooling, cls_rule):
    model, tok = tiny
    texts = TEXTS[:20] + ["x"]
    path = embed_documents(model, tok, texts, max_length=96, chunk_size=32, pooling=pooling, batch_size=5,
                           out_dir=tmp_path, chunk_docs=8, padding_chunks="skip", cls_rule=cls_rule)
    assert path == tmp_path / EMBEDDINGS_NAME and not (tmp_path / "_progress.json").exists()
    got = read_embeddings(tmp_path)
    vectors, real = brute_force(model, tok, texts, 96, 32, pooling, cls_rule)
    assert got["chunks"].shape == (21, 3, 32) and got["chunks"].dtype == np.float32
    assert np.array_equal(got["chunk_mask"], real) and real[:, 0].all() and (~real).any() and real[:, 1].any()
    assert np.allclose(got["chunks"][real], vectors[real], atol=1e-5)
    assert np.all(got["chunks"][~real] == 0)
    assert np.allclose(got["pooled"], mean_unit(got["chunks"], real.astype(np.float64)), atol=1e-6)
    assert got["attrs"]["pooled_over"] == "masked_chunks"


def test_embed_include_padding_equals_encoding_every_padding_chunk(tiny, tmp_path):
    model, tok = tiny
    texts = TEXTS[:12]
    embed_documents(model, tok, texts, 96, 32, "mean", 4, tmp_path, chunk_docs=5, padding_chunks="include")
    got = read_embeddings(tmp_path)
    vectors, real = brute_force(model, tok, texts, 96, 32, "mean")
    assert (~real).sum() > 0
    assert np.array_equal(got["chunk_mask"], real)
    assert np.allclose(got["chunks"], vectors, atol=1e-5)  # padding chunks included, encoded once
    assert np.allclose(got["pooled"], mean_unit(vectors, np.ones(real.shape)), atol=1e-5)
    assert np.all(np.linalg.norm(got["pooled"], axis=1) <= 1 + 1e-6)
    assert got["attrs"]["pooled_over"] == "all_chunks"


def test_embed_is_deterministic_and_ignores_stale_progress(tiny, tmp_path):
    model, tok = tiny
    texts = TEXTS[:15]
    embed_documents(model, tok, texts, 64, 32, "mean", 4, tmp_path / "a", chunk_docs=4)
    stale = tmp_path / "b"
    (stale / EMBEDDINGS_NAME).mkdir(parents=True)
    (stale / EMBEDDINGS_NAME / "junk").write_text("left over")
    (stale / "_progress.json").write_text(json.dumps({"fingerprint": "other job", "done": [0, 1, 2, 3]}))
    embed_documents(model, tok, texts, 64, 32, "mean", 4, stale, chunk_docs=4)
    assert tree_bytes(tmp_path / "a") == tree_bytes(stale)


KILL_SCRIPT = """
import sys, torch
torch.set_num_threads(1)
from gmates_assets.core.demo_corpus import DemoCorpusParams, generate_demo_shard
from gmates_assets.core.encode import embed_documents, load_encoder
model, tok = load_encoder(sys.argv[1], device="cpu")
texts = [d.text for d in generate_demo_shard(DemoCorpusParams.tests_profile(), 0)][:200]
def report(done, total, unit):
    print(done, flush=True)
embed_documents(model, tok, texts, 96, 32, "mean", 6, sys.argv[2], chunk_docs=5, block_docs=5, progress=report)
print("finished", flush=True)
"""


def test_kill_9_then_resume_is_byte_identical(tiny, tiny_encoder_dir, tmp_path):
    model, tok = tiny
    texts = TEXTS[:200]
    embed_documents(model, tok, texts, 96, 32, "mean", 6, tmp_path / "reference", chunk_docs=5, block_docs=5)

    killed = tmp_path / "killed"
    child = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, tiny_encoder_dir, str(killed)],
                             stdout=subprocess.PIPE, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    for line in child.stdout:
        if line.strip().isdigit() and int(line) >= 15:  # three chunks committed
            os.kill(child.pid, signal.SIGKILL)
            break
    child.wait(timeout=60)
    assert child.returncode == -signal.SIGKILL
    done = json.loads((killed / "_progress.json").read_text())["done"]
    assert 3 <= len(done) < 40

    reports = []
    embed_documents(model, tok, texts, 96, 32, "mean", 6, killed, chunk_docs=5, block_docs=5,
                    progress=lambda d, t, u: reports.append(d))
    assert reports[-1] == 200 and not (killed / "_progress.json").exists()
    assert tree_bytes(killed) == tree_bytes(tmp_path / "reference")


def test_default_encoder_is_offline_minilm(tmp_path):
    model, tok = load_encoder(None, device="cpu")
    assert Path(default_encoder_dir()).name == "model" and model.config.hidden_size == 384
    texts = ["A short note about the zorblat.", "Line one\n  line two  "]
    embed_documents(model, tok, texts, 256, 128, "mean", 8, tmp_path, chunk_docs=4)
    got = read_embeddings(tmp_path)
    for i, text in enumerate(texts):  # equals sentence-transformers' MiniLM embedding (mean pooling)
        enc = tok(prepare_text(text), return_tensors="pt")
        with torch.inference_mode():
            hidden = model(**enc).last_hidden_state[0]
        expected = hidden.mean(0).numpy()
        assert np.allclose(got["chunks"][i, 0], expected, atol=1e-5)
        assert np.allclose(got["pooled"][i], expected / np.linalg.norm(expected), atol=1e-6)
    assert got["chunk_mask"].tolist() == [[True, False], [True, False]]


def test_ragged_shards_read_lengths_and_rows_one_shard_at_a_time(bpe, tmp_path):
    values, offsets = tokenize_documents(bpe, TEXTS, max_tokens=64, add_eos=True, batch_size=64)
    rows = [values[offsets[i]:offsets[i + 1]] for i in range(len(TEXTS))]
    bounds = [0, 50, 50, 120, len(TEXTS)]  # one empty shard
    for i, (lo, hi) in enumerate(zip(bounds, bounds[1:])):
        part = rows[lo:hi]
        write_ragged_zarr(tmp_path / str(i), np.concatenate(part) if part else np.zeros(0, np.int32),
                          np.concatenate([[0], np.cumsum([len(r) for r in part])]))
    shards = RaggedShards([tmp_path / str(i) for i in range(4)])
    assert len(shards) == len(TEXTS)
    assert np.array_equal(shards.lengths(), np.diff(offsets))
    wanted = np.array([0, 49, 50, 51, len(TEXTS) - 1])
    got = list(shards.rows(wanted))
    assert all(np.array_equal(g, rows[i]) and g.base is None for g, i in zip(got, wanted))
    with pytest.raises(ValueError, match="sorted"):
        list(shards.rows(np.array([3, 1])))
    with pytest.raises(IndexError):
        list(shards.rows(np.array([len(TEXTS)])))


def test_bpe_training_sample_is_fixed_sorted_and_capped():
    assert bpe_training_sample(5, 10).tolist() == [0, 1, 2, 3, 4]
    sample = bpe_training_sample(1000, 50)
    assert len(np.unique(sample)) == 50 and np.all(np.diff(sample) > 0) and sample.max() < 1000
    assert np.array_equal(sample, bpe_training_sample(1000, 50))
