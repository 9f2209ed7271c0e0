"""Causal-LM core: factory, token windows, schedule, losses, checkpoint IO, resumable training."""
from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch

from gmates_assets.core import lm
from gmates_assets.core.hashing import hash_dir

from .tiny import TINY, counting_docs

TINY_NEOX_TIED = lm.LMArchitecture("gpt_neox", hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
                                   max_seq_len=16, vocab_size=64, tie_word_embeddings=True)
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def packed() -> np.ndarray:
    return lm.pack_sequences(counting_docs(np.random.default_rng(0), 60), seq_len=16, eos_id=63)


def tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[PAD]": 0, "[UNK]": 1, **{w: i + 2 for i, w in enumerate("a b c d e f ? .".split())}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]")


# ---------------------------------------------------------------------------------------------- factory


@pytest.mark.parametrize("arch", [TINY, TINY_NEOX_TIED])
def test_build_is_seeded_and_leaves_global_rng_alone(arch):
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a = lm.build_causal_lm(arch, seed=0)
    assert torch.equal(torch.rand(1), expected_next)  # the caller's RNG stream is untouched
    b = lm.build_causal_lm(arch, seed=0)
    c = lm.build_causal_lm(arch, seed=1)
    assert lm.weights_hash(a) == lm.weights_hash(b) != lm.weights_hash(c)
    assert a.config.vocab_size == 64 and a.config.num_hidden_layers == 2


def test_architecture_validation_names_the_field():
    with pytest.raises(ValueError, match="family"):
        lm.LMArchitecture("gpt2", 32, 2, 2, 64, 16, 64)
    with pytest.raises(ValueError, match="hidden_size"):
        lm.LMArchitecture("llama", 30, 2, 4, 64, 16, 64)


# ---------------------------------------------------------------------------------------------- token data


def test_pack_sequences_concatenates_with_eos_and_drops_the_tail():
    rows = lm.pack_sequences([[1, 2, 3], [4, 5], [6]], seq_len=2, eos_id=9)
    # stream: 1 2 3 9 4 5 9 6 9 -> rows of 3; nothing left over
    assert rows.tolist() == [[1, 2, 3], [9, 4, 5], [9, 6, 9]]
    rows = lm.pack_sequences([[1, 2, 3], [4]], seq_len=2, eos_id=9)  # stream 1 2 3 9 4 9: tail [9,4,9]
    assert rows.tolist() == [[1, 2, 3], [9, 4, 9]]
    assert lm.pack_sequences([[1]], seq_len=4, eos_id=9).shape == (0, 5)
    seqs = lm.as_token_sequences(rows)
    assert seqs.labels.tolist() == [[2, 3], [4, 9]]


def test_packing_in_blocks_and_to_a_file_gives_the_same_rows(packed, tmp_path):
    rng = np.random.default_rng(0)
    docs = [((int(rng.integers(60)) + np.arange(int(rng.integers(3, 30)))) % 60).tolist() for _ in range(60)]
    blocks = list(lm.iter_packed_rows(iter(docs), seq_len=16, eos_id=63, block_tokens=40))
    assert len(blocks) > 5 and np.array_equal(np.concatenate(blocks), packed)
    on_disk = lm.pack_sequences_to_file(iter(docs), 16, 63, tmp_path / "packed.int32")
    assert (len(on_disk), on_disk.seq_len, on_disk.token_bounds()) == (len(packed), 16, (0, 63))
    in_memory = lm.as_token_sequences(packed)
    assert on_disk.content_hash(block_rows=7) == in_memory.content_hash()
    index = np.array([5, 0, 5, len(packed) - 1])
    for got, expected in zip(on_disk.batch(index), in_memory.batch(index)):
        assert got.dtype == np.int64 and np.array_equal(got, expected)
    empty = lm.pack_sequences_to_file([[1]], 4, 9, tmp_path / "empty.int32")
    assert len(empty) == 0 and empty.token_bounds() is None
    with lm.packed_scratch(iter(docs), 16, 63, tmp_path) as scratch:
        assert scratch.path.is_file()
    assert not scratch.path.exists()


def test_train_lm_on_packed_file_equals_training_on_the_array(packed, tmp_path):
    from_array, model_a = run_train(packed, tmp_path / "array", 4)
    # one document holding the packed stream, whose EOS completes the last row: the same rows on disk
    same = lm.pack_sequences_to_file(iter([packed.reshape(-1)[:-1]]), 16, int(packed[-1, -1]), tmp_path / "same")
    from_file, model_b = run_train(same, tmp_path / "file", 4)
    assert from_file.losses == from_array.losses and lm.weights_hash(model_a) == lm.weights_hash(model_b)
    assert hash_dir(tmp_path / "array") == hash_dir(tmp_path / "file")  # same fingerprint: same job


def test_document_sequences_pad_and_mask():
    seqs = lm.document_sequences([[1, 2, 3], [4, 5, 6, 7, 8, 9]], seq_len=3, pad_id=0, eos_id=99)
    assert seqs.tokens.tolist() == [[1, 2, 3, 99], [4, 5, 6, 7]]
    assert seqs.labels.tolist() == [[2, 3, 99], [5, 6, 7]]
    seqs = lm.document_sequences([[1, 2]], seq_len=4, pad_id=0)
    assert seqs.tokens.tolist() == [[1, 2, 0, 0, 0]]
    assert seqs.labels.tolist() == [[2, -100, -100, -100]]
    with pytest.raises(ValueError, match="document 1"):
        lm.document_sequences([[1, 2], [3]], seq_len=4, pad_id=0)


def test_batch_sampler_is_a_function_of_the_step_and_covers_each_epoch():
    sampler = lm.SeededBatchSampler(n_items=10, batch_size=4, seed=7)
    steps = [sampler.indices(s) for s in range(5)]  # 20 positions = 2 epochs
    fresh = lm.SeededBatchSampler(10, 4, 7)
    assert all(np.array_equal(fresh.indices(s), steps[s]) for s in (3, 0, 4))
    flat = np.concatenate(steps)
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:]) == list(range(10))
    assert not np.array_equal(lm.SeededBatchSampler(10, 4, 8).indices(0), steps[0])


# ---------------------------------------------------------------------------------------------- schedule, loss


def test_lr_schedule_warmup_then_cosine_to_min():
    cfg = lm.OptimConfig(lr=1e-3, min_lr=1e-5, warmup_steps=4, total_steps=14)
    assert [cfg.lr_at(s) for s in range(4)] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3])
    assert cfg.lr_at(4) == pytest.approx(1e-3)
    assert cfg.lr_at(9) == pytest.approx((1e-3 + 1e-5) / 2)  # halfway through the decay
    assert cfg.lr_at(14) == cfg.lr_at(100) == 1e-5
    assert lm.OptimConfig(lr=2e-3, schedule="constant").lr_at(500) == 2e-3
    with pytest.raises(ValueError, match="schedule"):
        lm.OptimConfig(schedule="linear")


def test_lm_loss_matches_hand_computation():
    logits = torch.tensor([[[0.0, math.log(3.0)], [2.0, 2.0], [1.0, 0.0]]])
    targets = torch.tensor([[1, 0, -100]])
    total, ce = lm.lm_loss(logits, targets, z_loss=0.5)
    # position 0: p(1) = 3/4; position 1: p(0) = 1/2; position 2 ignored
    expected_ce = (-math.log(0.75) - math.log(0.5)) / 2
    lse0, lse1 = math.log(4.0), 2.0 + math.log(2.0)
    assert float(ce) == pytest.approx(expected_ce, rel=1e-6)
    assert float(total) == pytest.approx(expected_ce + 0.5 * (lse0**2 + lse1**2) / 2, rel=1e-6)


def manual_reference_loss(model, batches) -> float:
    per_batch = []
    with torch.no_grad():
        for input_ids, labels in batches:
            logp = torch.log_softmax(model(input_ids=input_ids).logits.double(), dim=-1)
            nll, count = 0.0, 0
            for b in range(input_ids.shape[0]):
                for j in range(1, input_ids.shape[1]):
                    if labels[b, j] != -100:
                        nll -= float(logp[b, j - 1, labels[b, j]])
                        count += 1
            per_batch.append(nll / count)
    return sum(per_batch) / len(per_batch), per_batch


def test_reference_loss_is_a_mean_of_batch_token_means():
    model = lm.build_causal_lm(TINY, seed=0)
    tok = tiny_tokenizer()
    examples = [{"prompt": "a b c", "answer": "d e"}, {"prompt": "f", "answer": "a b c d"},
                {"prompt": "b b", "answer": "?"}]
    pairs = lm.tokenize_reference(tok, examples, max_tokens=16)
    batches = lm.make_reference_batches(pairs, batch_size=2, pad_id=0)
    assert [tuple(b[0].shape) for b in batches] == [(2, 5), (1, 3)]
    expected, per_batch = manual_reference_loss(model, batches)
    assert lm.reference_loss(model, batches) == pytest.approx(expected, rel=1e-5)
    token_weighted = (per_batch[0] * 6 + per_batch[1] * 1) / 7  # batch 1 has 2+4 answer tokens, batch 2 has 1
    assert abs(expected - token_weighted) > 1e-4  # so the test tells the two averages apart


def test_tokenize_reference_masks_the_prompt_and_truncates_it_from_the_left():
    tok = tiny_tokenizer()
    ids, labels = lm.tokenize_reference(tok, [{"prompt": "a b", "answer": "c d"}], max_tokens=4)[0]
    assert ids.tolist() == [2, 3, 4, 5] and labels.tolist() == [-100, -100, 4, 5]
    ids, labels = lm.tokenize_reference(tok, [{"prompt": "a b c", "answer": "d a"}], max_tokens=4)[0]
    assert ids.tolist() == [3, 4, 5, 2] and labels.tolist() == [-100, -100, 5, 2]  # the answer is kept whole
    with pytest.raises(ValueError, match=r"reference example 2 \('a b c'\) does not fit probe\.seq_len=4: "
                                         r"prompt 3 \+ answer 2 tokens \(too_long: error\)"):
        lm.tokenize_reference(tok, [{"prompt": "a", "answer": "b"}, {"prompt": "a b c", "answer": "d a"}], 4,
                              setting="probe.seq_len", on_too_long="error")
    with pytest.raises(ValueError, match=r"reference example 1 \('a'\) does not fit probe\.seq_len=3: its "
                                         r"answer alone has 3 tokens"):
        lm.tokenize_reference(tok, [{"prompt": "a", "answer": "b c d"}], 3, setting="probe.seq_len")
    with pytest.raises(ValueError, match="reference example 1: no answer token"):
        lm.tokenize_reference(tok, [{"prompt": "", "answer": "b"}], 3)
    with pytest.raises(ValueError, match="reference example 1: field 'answer'"):
        lm.tokenize_reference(tok, [{"prompt": "a"}], 3)


# ---------------------------------------------------------------------------------------------- checkpoints


def trained(arch, packed, tmp_path, steps=3):
    model = lm.build_causal_lm(arch, seed=0)
    cfg = lm.OptimConfig(lr=3e-3, warmup_steps=1, total_steps=10)
    lm.train_lm(model, packed, cfg, steps, 4, 0, tmp_path / "run", checkpoint_every=2, device="cpu")
    return model


@pytest.mark.parametrize("arch", [TINY, TINY_NEOX_TIED])
def test_checkpoint_round_trip_is_exact(arch, packed, tmp_path):
    model = lm.build_causal_lm(arch, seed=0)
    cfg = lm.OptimConfig(lr=3e-3, warmup_steps=1, total_steps=10)
    optimizer = lm.build_optimizer(model, cfg)
    batch = torch.from_numpy(packed[:4])
    for _ in range(2):
        lm.sequence_loss(model, batch, batch[:, 1:], 1e-4)[0].backward()
        optimizer.step()
        optimizer.zero_grad()
    lm.set_lr(optimizer, 1.234e-3)
    lm.save_checkpoint(tmp_path / "ck", model, optimizer, scheduler_step=2, extra={"note": "x"})
    assert sorted(os.listdir(tmp_path / "ck")) == ["config.json", "model.safetensors", "optimizer.json",
                                                   "optimizer.safetensors"]
    assert json.loads((tmp_path / "ck" / "optimizer.json").read_text())["param_groups"][0]["lr"] == 1.234e-3

    loaded, loaded_opt, state = lm.load_checkpoint(tmp_path / "ck", device="cpu")
    assert state == {"step": 2, "lr": 1.234e-3, "extra": {"note": "x"}}
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    for p, q in zip(model.parameters(), loaded.parameters()):
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(optimizer.state[p][key], loaded_opt.state[q][key]), key
    g, h = optimizer.param_groups[0], loaded_opt.param_groups[0]
    assert (g["betas"], g["eps"], g["weight_decay"]) == (h["betas"], h["eps"], h["weight_decay"])
    # the restored pair continues exactly like the original
    for m, o in ((model, optimizer), (loaded, loaded_opt)):
        lm.sequence_loss(m, batch, batch[:, 1:], 1e-4)[0].backward()
        o.step()
    assert lm.weights_hash(model) == lm.weights_hash(loaded)


def test_save_hf_pretrained_loads_with_auto_classes(packed, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = lm.build_causal_lm(TINY, seed=3)
    lm.save_hf_pretrained(model, tiny_tokenizer(), tmp_path / "hf")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    ids = torch.from_numpy(packed[:2, :-1])
    with torch.no_grad():
        assert torch.equal(model.eval()(input_ids=ids).logits, again.eval()(input_ids=ids).logits)
    assert AutoTokenizer.from_pretrained(tmp_path / "hf")("a b", add_special_tokens=False)["input_ids"] == [2, 3]


# ---------------------------------------------------------------------------------------------- training


CFG = lm.OptimConfig(lr=3e-3, min_lr=3e-5, warmup_steps=2, total_steps=12)


def run_train(packed, out_dir, steps, **kwargs):
    model = lm.build_causal_lm(TINY, seed=0)
    return lm.train_lm(model, packed, CFG, steps, 4, 5, out_dir, checkpoint_every=2, device="cpu", **kwargs), model


def test_train_lm_lowers_loss_and_writes_a_loadable_checkpoint(packed, tmp_path):
    summary, model = run_train(packed, tmp_path / "a", 8)
    assert len(summary.losses) == 8 and summary.end_step == 8
    assert summary.lrs == [CFG.lr_at(s) for s in range(8)]
    assert summary.tokens_seen == 8 * 4 * 16
    assert summary.losses[-1] < summary.losses[0]
    assert not (tmp_path / "a" / "checkpoints").exists()
    _, optimizer, state = lm.load_checkpoint(tmp_path / "a", device="cpu")
    assert state["step"] == 8 and state["lr"] == CFG.lr_at(8)  # the LR the next step would use
    assert all(float(s["step"]) == 8 for s in optimizer.state.values())


def test_train_lm_continues_and_resumes_byte_identically(packed, tmp_path):
    full, _ = run_train(packed, tmp_path / "full", 6)

    # a job that stopped at step 4 and is then asked for 6 continues from its own checkpoint
    run_train(packed, tmp_path / "continued", 4)
    continued, _ = run_train(packed, tmp_path / "continued", 6)
    assert continued.resumed_from_step == 4
    assert hash_dir(tmp_path / "continued") == hash_dir(tmp_path / "full")
    assert continued.losses == full.losses

    # a job that crashes after step 3 resumes from the step-2 checkpoint
    def crash(done, total, unit):
        if done == 3:
            raise KeyboardInterrupt("simulated kill")

    with pytest.raises(KeyboardInterrupt):
        run_train(packed, tmp_path / "crashed", 6, progress=crash)
    assert sorted(os.listdir(tmp_path / "crashed" / "checkpoints")) == ["step-00000002"]
    resumed, model = run_train(packed, tmp_path / "crashed", 6)
    assert resumed.resumed_from_step == 2
    assert hash_dir(tmp_path / "crashed") == hash_dir(tmp_path / "full")
    assert resumed.losses == full.losses and resumed.tokens_seen == full.tokens_seen

    # a finished job is not recomputed; a different seed is a different job and is not resumed
    again, _ = run_train(packed, tmp_path / "full", 6)
    assert again.resumed_from_step == 6 and again.losses == full.losses
    other = lm.train_lm(lm.build_causal_lm(TINY, seed=0), packed, CFG, 6, 4, 6, tmp_path / "full", 2, device="cpu")
    assert other.resumed_from_step is None and other.losses != full.losses


def test_train_lm_from_start_state_continues_the_schedule_and_moments(packed, tmp_path):
    run_train(packed, tmp_path / "stage1", 4)
    model = lm.build_causal_lm(TINY, seed=99)  # its own weights are replaced by the start state
    summary = lm.train_lm(model, packed[:20], CFG, 3, 4, 1, tmp_path / "stage2", 2, device="cpu",
                          start_state=tmp_path / "stage1")
    assert (summary.start_step, summary.end_step) == (4, 7)
    assert summary.lrs == [CFG.lr_at(s) for s in (4, 5, 6)]

    # the same three steps written out by hand from the stage-1 state
    ref, optimizer, _ = lm.load_checkpoint(tmp_path / "stage1", device="cpu")
    sampler = lm.SeededBatchSampler(20, 4, 1)
    ref.eval()
    for local, step in enumerate((4, 5, 6)):
        batch = torch.from_numpy(packed[:20][sampler.indices(local)])
        lm.set_lr(optimizer, CFG.lr_at(step))
        lm.sequence_loss(ref, batch, batch[:, 1:], CFG.z_loss)[0].backward()
        torch.nn.utils.clip_grad_norm_(list(ref.parameters()), CFG.grad_clip)
        optimizer.step()
        optimizer.zero_grad()
    assert lm.weights_hash(ref) == lm.weights_hash(model)
    _, opt2, state = lm.load_checkpoint(tmp_path / "stage2", device="cpu")
    assert state["step"] == 7 and all(float(s["step"]) == 7 for s in opt2.state.values())


def test_train_lm_rejects_sequences_longer_than_the_model(tmp_path):
    model = lm.build_causal_lm(TINY, seed=0)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        lm.train_lm(model, np.zeros((4, 40), np.int64), CFG, 1, 2, 0, tmp_path, 1, device="cpu")
