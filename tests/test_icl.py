"""llm-foundry's ICL rules on real-format gauntlet items, for a byte-level BPE and a SentencePiece-style tokenizer.

The expected prompt strings and answer tokens are written by hand from llm-foundry's rules (docs/evaluation.md):
fields stripped, few-shot examples joined by example_delimiter, the item's context right-stripped, the answer
with a leading space only for tokenizers where " a" is one token, preamble / context / answer encoded separately.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from gmates_assets.core.evaluation import (
    TaskSpec,
    encode_requests,
    evaluate_task,
    load_task,
    score_encoded,
    task_requests,
)
from gmates_assets.core.icl import fewshot_draws, tokenizer_needs_prefix_space

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)

# Gauntlet-format items (the fields and quirks of llm-foundry's eval bundle: piqa queries end in "\n").
PIQA = [{"query": "How do you dry a wet towel quickly?\n", "choices": ["Hang it up in the sun.", "Fold it in a drawer."],
         "gold": 0},
        {"query": "How do you keep bread fresh?\n", "choices": ["Seal it in a bag.", "Leave it in the sun."], "gold": 0},
        {"query": "How do you cool hot soup?\n", "choices": ["Put it on the stove.", "Stir it and wait."], "gold": 1}]
COPA = [{"query": "The man turned on the faucet, so", "choices": ["the toilet filled with water.",
                                                                  "water flowed from the spout."], "gold": 1}]
ARC = [{"query": "Question: Which gas do plants take in from the air?\n",
        "choices": ["oxygen", "carbon dioxide", "helium", "neon"], "gold": 1},
       {"query": "Question: What melts ice fastest?\n", "choices": ["salt", "sand", "paper", "wood"], "gold": 0}]
WINOGRAD = [{"context_options": ["The trophy does not fit in the suitcase because the trophy",
                                 "The trophy does not fit in the suitcase because the suitcase"],
             "continuation": "is too big.", "gold": 0}]
LAMBADA = [{"context": "She opened the door and called her dog, but the", "continuation": "dog"}]
ANSWER = "\nAnswer: "

# name -> (kind, spec settings (DCLM's delimiters, shots small enough to draw every other item), items)
TASKS = {
    "piqa": ("multiple_choice", {"shots": 2, "continuation_delimiter": ANSWER}, PIQA),
    "copa": ("multiple_choice", {}, COPA),
    "arc_easy": ("multiple_choice", {"shots": 1, "continuation_delimiter": ANSWER}, ARC),
    "winograd": ("schema", {}, WINOGRAD),
    "lambada_openai": ("language_modeling", {}, LAMBADA),
}

# item 0 of each task: (preamble, context of each option, answer of each option without a prefix space)
EXPECTED = {
    "piqa": ("How do you keep bread fresh?\nAnswer: Seal it in a bag.\nHow do you cool hot soup?\nAnswer: Stir it and wait.",
             ["\nHow do you dry a wet towel quickly?\nAnswer:"] * 2,
             ["Hang it up in the sun.", "Fold it in a drawer."]),
    "copa": ("", ["The man turned on the faucet, so"] * 2,
             ["the toilet filled with water.", "water flowed from the spout."]),
    "arc_easy": ("Question: What melts ice fastest?\nAnswer: salt",
                 ["\nQuestion: Which gas do plants take in from the air?\nAnswer:"] * 4,
                 ["oxygen", "carbon dioxide", "helium", "neon"]),
    "winograd": ("", WINOGRAD[0]["context_options"], ["is too big."] * 2),
    "lambada_openai": ("", ["She opened the door and called her dog, but the"], ["dog"]),
}

# the scored tokens of one answer per task, by hand: byte-level BPE keeps the space in "Ġ", SentencePiece's
# "▁" comes from encoding the answer on its own (no extra "▁" token)
ANSWER_TOKENS = {
    "bpe": {"piqa": ["ĠHang", "Ġit", "Ġup", "Ġin", "Ġthe", "Ġsun", "."],
            "copa": ["Ġwater", "Ġflowed", "Ġfrom", "Ġthe", "Ġspout", "."],
            "arc_easy": ["Ġcarbon", "Ġdioxide"], "winograd": ["Ġis", "Ġtoo", "Ġbig", "."],
            "lambada_openai": ["Ġdog"]},
    "sentencepiece": {"piqa": ["▁Hang", "▁it", "▁up", "▁in", "▁the", "▁sun."],
                      "copa": ["▁water", "▁flowed", "▁from", "▁the", "▁spout."],
                      "arc_easy": ["▁carbon", "▁dioxide"], "winograd": ["▁is", "▁too", "▁big."],
                      "lambada_openai": ["▁dog"]},
}
GOLD_OPTION = {"piqa": 0, "copa": 1, "arc_easy": 1, "winograd": 0, "lambada_openai": 0}


def _corpus() -> list[str]:
    """Every prompt piece and answer, so a generous vocabulary learns whole-word tokens for them."""
    texts = []
    for name, (_, _, items) in TASKS.items():
        for item in items:
            texts += [v for v in item.values() if isinstance(v, str)]
            texts += [v for key in ("choices", "context_options") for v in item.get(key, [])]
        preamble, contexts, answers = EXPECTED[name]
        texts += [preamble, *contexts, *answers, *(" " + a for a in answers)]
    return (texts + ["a", " a", "b a"]) * 3


def _byte_level_bpe():
    """GPT-NeoX-like: byte-level BPE, no BOS added, <|endoftext|> as EOS."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(_corpus(), trainers.BpeTrainer(vocab_size=4000, min_frequency=1,
                                                           special_tokens=["<|endoftext|>"],
                                                           initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>")


def _sentencepiece_style():
    """Llama-like: "▁" prepended and replacing spaces, BPE within "▁"-words, <s> added in front."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    sp = Tokenizer(models.BPE(unk_token="<unk>"))
    sp.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    sp.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never")
    sp.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    sp.train_from_iterator(_corpus(), trainers.BpeTrainer(vocab_size=4000, min_frequency=1,
                                                          special_tokens=["<unk>", "<s>", "</s>"]))
    sp.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=sp, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


@pytest.fixture(scope="module")
def tokenizers():
    return {"bpe": _byte_level_bpe(), "sentencepiece": _sentencepiece_style()}


def _tiny_llama(vocab_size: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    return LlamaForCausalLM(config).eval()


def _spec(tmp_path: Path, name: str) -> TaskSpec:
    kind, settings, items = TASKS[name]
    path = tmp_path / f"{name}.jsonl"
    path.write_text("".join(json.dumps(item) + "\n" for item in items))
    return TaskSpec(name, str(path), kind, **settings)


def _ids(tok, text: str, special: bool) -> list[int]:
    return tok(text, add_special_tokens=special)["input_ids"]


def test_prefix_space_is_detected_per_tokenizer(tokenizers):
    assert tokenizer_needs_prefix_space(tokenizers["bpe"])
    assert not tokenizer_needs_prefix_space(tokenizers["sentencepiece"])
    sp = tokenizers["sentencepiece"]  # the pitfall: a leading space becomes its own "▁" token
    assert sp.convert_ids_to_tokens(_ids(sp, " Hang it up in the sun.", False))[:2] == ["▁", "▁Hang"]


@pytest.mark.parametrize("kind", ["bpe", "sentencepiece"])
@pytest.mark.parametrize("name", list(TASKS))
def test_prompt_strings_and_answer_tokens(tmp_path, tokenizers, kind, name):
    tok = tokenizers[kind]
    spec = _spec(tmp_path, name)
    requests = [r for r in task_requests(spec, load_task(spec), tok) if r.item == 0]
    preamble, contexts, answers = EXPECTED[name]
    space = " " if kind == "bpe" else ""
    assert [(r.preamble, r.context, r.continuation) for r in requests] == [
        (preamble, context, space + answer) for context, answer in zip(contexts, answers)]

    encoded = encode_requests(tok, requests)
    for request, (context_ids, answer_ids) in zip(requests, encoded):
        # preamble with special tokens (BOS only for the SentencePiece tokenizer), then the context on its own
        bos = [tok.bos_token_id] if kind == "sentencepiece" else []
        assert context_ids == bos + _ids(tok, request.preamble, False) + _ids(tok, request.context, False)
        assert tok.eos_token_id not in context_ids
    gold = encoded[GOLD_OPTION[name]][1]
    assert tok.convert_ids_to_tokens(gold) == ANSWER_TOKENS[kind][name]


@pytest.mark.parametrize("kind", ["bpe", "sentencepiece"])
def test_tiny_llama_scores_exactly_the_llm_foundry_tokens(tmp_path, tokenizers, kind):
    tok = tokenizers[kind]
    model = _tiny_llama(len(tok))
    for name in TASKS:
        spec = _spec(tmp_path, name)
        requests = task_requests(spec, load_task(spec), tok)
        encoded = encode_requests(tok, requests)
        scores = score_encoded(model, encoded, pad_id=0, batch_size=3, device="cpu")
        for (context, answer), score in zip(encoded, scores):
            with torch.no_grad():
                logits = model(torch.tensor([context + answer])).logits[0].double()
            logprobs = torch.log_softmax(logits[len(context) - 1: -1], dim=-1)
            expected = float(logprobs[torch.arange(len(answer)), torch.tensor(answer)].sum())
            assert score.logprob == pytest.approx(expected, abs=1e-5) and score.n_tokens == len(answer)
        result = evaluate_task(model, tok, spec, device="cpu")
        assert result.n_items == len(TASKS[name][2])


def test_fewshot_sampler_follows_llm_foundry():
    # random.Random(1234), item by item: item 0 draws {0, 3}, drops itself and draws 4; item 2 draws {0, 2},
    # drops itself and draws 1; the others keep their draw
    assert fewshot_draws(6, 2, 1234) == [[3, 4], [0, 5], [0, 1], [0, 5], [0, 2], [3, 4]]
    # the examples come in the set's iteration order, not sorted
    assert fewshot_draws(100, 10, 1234)[0] == [99, 4, 74, 11, 10, 12, 14, 85, 56, 88]
    # k is capped at n - 1: every other item, whatever the seed
    assert fewshot_draws(4, 10, 7) == [[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2]]
    assert fewshot_draws(5, 0, 1) == [[]] * 5
