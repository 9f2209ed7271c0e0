"""Evaluation runner checked against a bigram LM whose log-likelihoods are known by construction."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from gmates_assets.core.evaluation import (
    ContinuationScore,
    CoreSpec,
    TaskFormatError,
    TaskSpec,
    centered_accuracy,
    comparison_rows,
    continuation_logprobs,
    evaluate_task,
    evaluate_tasks,
    load_task,
    perplexity,
    task_requests,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)

VOCAB = ["<eos>", "<s>", "the", "sky", "is", "blue", "very", "green", "grass", "Q:", "A:", "=>", "a", "###"]
ID = {w: i for i, w in enumerate(VOCAB)}
# next-token probabilities P[prev][next]; every unlisted entry of a row shares the row's remaining mass
# equally, and rows not listed are uniform. The tests only use listed entries (or a uniform row) by hand.
BIGRAMS = {
    "<s>": {"the": 0.8},
    "the": {"sky": 0.5, "grass": 0.4},
    "sky": {"is": 0.6},
    "grass": {"is": 0.3},
    "is": {"blue": 0.1, "very": 0.3, "green": 0.05},
    "very": {"green": 0.3},
}


def bigram_table() -> torch.Tensor:
    n = len(VOCAB)
    probs = torch.full((n, n), 1.0 / n, dtype=torch.float64)
    for prev, row in BIGRAMS.items():
        rest = (1.0 - sum(row.values())) / (n - len(row))
        probs[ID[prev]] = rest
        for nxt, p in row.items():
            probs[ID[prev], ID[nxt]] = p
    return probs.log()


class BigramLM(torch.nn.Module):
    """HF-like causal LM: logits[t] = log P[token t] (so log_softmax(logits) is exactly log P)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("log_table", bigram_table())
        self.calls: list[tuple[int, int]] = []

    def forward(self, input_ids, attention_mask=None, **kwargs):
        assert attention_mask is not None
        lengths = attention_mask.sum(dim=1)
        positions = torch.arange(input_ids.shape[1])[None, :]
        assert torch.equal(attention_mask.bool(), positions < lengths[:, None]), "inputs must be right-padded"
        self.calls.append(tuple(input_ids.shape))
        return SimpleNamespace(logits=self.log_table[input_ids])


class WordTokenizer:
    """Whitespace tokenizer over VOCAB with the HF call interface the runner uses (" a" is one token, so it
    needs a prefix space, like a byte-level BPE)."""

    def __init__(self, add_bos: bool = False, add_eos: bool = False, eos: bool = True):
        self.add_bos, self.add_eos = add_bos, add_eos
        self.bos_token_id = ID["<s>"] if add_bos else None
        self.eos_token_id = ID["<eos>"] if eos else None
        self.pad_token_id = None  # the runner must fall back to eos (or 0)

    def __call__(self, texts, add_special_tokens=True):
        single = isinstance(texts, str)
        rows = []
        for text in [texts] if single else texts:
            ids = [ID[w] for w in text.split()]
            if add_special_tokens and self.add_bos:
                ids = [ID["<s>"]] + ids
            if add_special_tokens and self.add_eos:
                ids = ids + [ID["<eos>"]]
            rows.append(ids)
        return {"input_ids": rows[0] if single else rows}


def lp(*probs: float) -> float:
    return sum(math.log(p) for p in probs)


def write_jsonl(path: Path, rows) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


MC_ITEM = {"query": "the sky is", "choices": ["blue", "very green"], "gold": 1}


# ---------------------------------------------------------------------------------------------------------
# Scoring

def test_choice_loglikelihoods_match_the_table():
    scores = continuation_logprobs(BigramLM(), WordTokenizer(), [("the sky is", " blue"), ("the sky is", " very green")],
                                   device="cpu")
    assert scores[0] == ContinuationScore(pytest.approx(lp(0.1)), 1, False)  # argmax after "is" is "very"
    assert scores[1].logprob == pytest.approx(lp(0.3, 0.3))
    assert scores[1].n_tokens == 2 and scores[1].greedy_match  # very | is, green | very are row argmaxes


def test_bos_and_appended_eos_and_empty_context():
    plain = continuation_logprobs(BigramLM(), WordTokenizer(), [("", "the"), ("sky", "is")], device="cpu")
    assert plain[0].logprob == pytest.approx(math.log(1 / len(VOCAB)))  # empty context starts from eos (uniform)
    with_bos = continuation_logprobs(BigramLM(), WordTokenizer(add_bos=True, add_eos=True),
                                     [("", "the"), ("sky", "is")], device="cpu")
    # The model computes in float32: its log-probabilities carry ~1e-7 relative error on any CPU's SIMD path.
    assert with_bos[0].logprob == pytest.approx(lp(0.8), rel=1e-5)  # context = [<s>], the trailing eos is dropped
    assert with_bos[1].logprob == pytest.approx(lp(0.6), rel=1e-5) == plain[1].logprob


def test_batching_and_truncation_do_not_change_scores():
    words = ["the sky is very green", "the grass is blue", "is", "the", "sky is very", "grass is very green blue"]
    pairs = [(" ".join(words[i % 6].split()[: 1 + i % 3]), " " + words[(i * 5) % 6]) for i in range(15)]
    model = BigramLM()
    one = continuation_logprobs(model, WordTokenizer(), pairs, batch_size=1, device="cpu")
    seven = continuation_logprobs(model, WordTokenizer(), pairs, batch_size=7, device="cpu")
    assert one == seven
    assert [shape[0] for shape in model.calls[15:]] == [7, 7, 1]
    # a bigram only looks at the last context token, so left-truncation to 1 context token changes nothing
    longest = max(len(c.split()) for _, c in pairs)
    short = continuation_logprobs(model, WordTokenizer(), pairs, batch_size=4, max_length=longest + 1, device="cpu")
    assert short == one
    with pytest.raises(ValueError, match="does not fit max_length"):
        continuation_logprobs(model, WordTokenizer(), [("the", " sky is very")], max_length=3, device="cpu")


def test_perplexity_is_exp_of_token_mean_cross_entropy():
    model, tok = BigramLM(), WordTokenizer()
    expected = math.exp(-lp(0.5, 0.6, 0.3, 0.3) / 4)
    assert perplexity(model, ["the sky is very green"], tokenizer=tok, device="cpu") == pytest.approx(expected)
    ids = [[ID[w] for w in "the sky is very green".split()], [ID["grass"], ID["is"]]]
    both = math.exp(-lp(0.5, 0.6, 0.3, 0.3, 0.3) / 5)
    for max_length in (1, 2, 3, 64):  # rolling windows: every token after the first is predicted once
        assert perplexity(model, ids, batch_size=1, max_length=max_length, device="cpu") == pytest.approx(both)
    with pytest.raises(ValueError, match="two or more tokens"):
        perplexity(model, [[1]], device="cpu")


def test_perplexity_bos_prefix_scores_the_first_token_too():
    """lm-eval's rolling log-likelihood: no special tokens, one BOS in front, so "the" is scored given <s>."""
    model, tok = BigramLM(), WordTokenizer(add_bos=True, add_eos=True)
    expected = math.exp(-lp(0.8, 0.5, 0.6) / 3)
    for max_length in (1, 2, 8):
        assert perplexity(model, ["the sky is"], tokenizer=tok, max_length=max_length, prefix="bos",
                          device="cpu") == pytest.approx(expected)
    # "tokenizer": the tokenizer's own <s> (and its dropped </s>) give the same tokens here
    assert perplexity(model, ["the sky is"], tokenizer=tok, device="cpu") == pytest.approx(expected)
    without_bos = WordTokenizer()  # no BOS: "tokenizer" leaves "the" unscored, "bos" falls back to EOS
    assert perplexity(model, ["the sky is"], tokenizer=without_bos, device="cpu") == pytest.approx(
        math.exp(-lp(0.5, 0.6) / 2))
    assert perplexity(model, ["the sky is"], tokenizer=without_bos, prefix="bos", device="cpu") == pytest.approx(
        math.exp(-(math.log(1 / len(VOCAB)) + lp(0.5, 0.6)) / 3))


# ---------------------------------------------------------------------------------------------------------
# Tasks

def test_length_normalisation_changes_the_argmax(tmp_path):
    path = write_jsonl(tmp_path / "mc.jsonl", [MC_ITEM])
    # sums: blue = ln .1 = -2.30 > very green = 2 ln .3 = -2.41; per token: -2.30 < -1.20; per char of the
    # answer as written (4 vs 10): -0.58 < -0.24
    picks = {mode: evaluate_task(BigramLM(), WordTokenizer(), TaskSpec("t", path, "multiple_choice",
                                                                       length_normalize=mode), device="cpu")
             for mode in ("none", "token", "char", True, False)}
    assert {str(m): r.predictions for m, r in picks.items()} == {
        "none": {0: 0}, "token": {0: 1}, "char": {0: 1}, "True": {0: 1}, "False": {0: 0}}
    assert picks["token"].accuracy == 1.0 and picks["none"].accuracy == 0.0
    requests = task_requests(TaskSpec("t", path, "multiple_choice"), [MC_ITEM], WordTokenizer())
    assert [(r.continuation, r.answer_chars) for r in requests] == [(" blue", 4), (" very green", 10)]


def test_schema_scores_the_shared_continuation_under_each_context(tmp_path):
    item = {"context_options": ["the grass", "the sky"], "continuation": "is very", "gold": 1}
    spec = TaskSpec("schema", write_jsonl(tmp_path / "s.jsonl", [item]), "schema")
    requests = task_requests(spec, load_task(spec), WordTokenizer())
    assert [(r.prompt, r.continuation) for r in requests] == [("the grass", " is very"), ("the sky", " is very")]
    scores = continuation_logprobs(BigramLM(), WordTokenizer(), [(r.prompt, r.continuation) for r in requests],
                                   device="cpu")
    assert [s.logprob for s in scores] == pytest.approx([lp(0.3, 0.3), lp(0.6, 0.3)])
    result = evaluate_task(BigramLM(), WordTokenizer(), spec, device="cpu")
    assert result.predictions == {0: 1} and result.accuracy == 1.0


def test_language_modeling_greedy_match_and_mean_loglikelihood(tmp_path):
    items = [{"context": "the sky ", "continuation": "is very green"},  # greedy: is, very, green -> match
             {"context": "the sky", "continuation": " is blue "}]  # blue is not the argmax after "is"
    spec = TaskSpec("lm", write_jsonl(tmp_path / "lm.jsonl", items), "language_modeling")
    requests = task_requests(spec, load_task(spec), WordTokenizer())
    assert [(r.prompt, r.continuation) for r in requests] == [("the sky", " is very green"), ("the sky", " is blue")]
    result = evaluate_task(BigramLM(), WordTokenizer(), spec, batch_size=2, device="cpu")
    assert result.predictions == {0: 1, 1: 0} and result.accuracy == 0.5
    assert result.mean_logprob == pytest.approx((lp(0.6, 0.3, 0.3) + lp(0.6, 0.1)) / 2)
    assert result.mean_token_logprob == pytest.approx((lp(0.6, 0.3, 0.3) + lp(0.6, 0.1)) / 5)


def test_fewshot_prompt_text_exactly(tmp_path):
    """llm-foundry's layout: examples joined by the example delimiter, the item's context right-stripped."""
    items = [{"query": "Q: sky", "choices": ["A: blue", "A: green"], "gold": 0},
             {"query": "Q: grass", "choices": ["A: blue", "A: green"], "gold": 1}]
    path = write_jsonl(tmp_path / "fs.jsonl", items)
    requests = task_requests(TaskSpec("fs", path, "multiple_choice", shots=1), items, WordTokenizer())
    assert [(r.item, r.option, r.preamble, r.context, r.continuation) for r in requests] == [
        (0, 0, "Q: grass A: green", "\nQ: sky", " A: blue"),  # with two items the other one is the example
        (0, 1, "Q: grass A: green", "\nQ: sky", " A: green"),
        (1, 0, "Q: sky A: blue", "\nQ: grass", " A: blue"),
        (1, 1, "Q: sky A: blue", "\nQ: grass", " A: green"),
    ]
    custom = TaskSpec("fs", path, "multiple_choice", shots=1, continuation_delimiter=" => ",
                      example_delimiter="\n###\n", prompt_string="Q: A:")
    first = task_requests(custom, items, WordTokenizer())[0]
    assert (first.prompt, first.continuation) == ("Q: A:\n###\nQ: grass => A: green\n###\nQ: sky =>", " A: blue")
    schema = [{"context_options": ["the sky", "the grass"], "continuation": "is blue", "gold": 0},
              {"context_options": ["the grass", "the sky"], "continuation": "is green", "gold": 0}]
    spec = TaskSpec("s", write_jsonl(tmp_path / "s.jsonl", schema), "schema", shots=1)
    assert [(r.prompt, r.continuation) for r in task_requests(spec, schema, WordTokenizer())] == [
        ("the grass is green\nthe sky", " is blue"), ("the grass is green\nthe grass", " is blue"),
        ("the sky is blue\nthe grass", " is green"), ("the sky is blue\nthe sky", " is green")]


def test_max_items_scores_a_prefix_with_the_full_files_prompts(tmp_path):
    rows = [{"context": f"the {w}", "continuation": "is"} for w in ["sky", "grass", "sky", "grass", "sky", "grass"]]
    full = TaskSpec("lm", write_jsonl(tmp_path / "lm.jsonl", rows), "language_modeling", shots=2)
    capped = TaskSpec("lm", full.path, "language_modeling", shots=2, max_items=3)
    tok = WordTokenizer()
    assert task_requests(capped, rows, tok) == task_requests(full, rows, tok)[:3]
    other_seed = TaskSpec("lm", full.path, "language_modeling", shots=2, fewshot_random_seed=7)
    assert [r.preamble for r in task_requests(other_seed, rows, tok)] != [r.preamble for r in
                                                                        task_requests(full, rows, tok)]


def test_categories_fewshot_within_category_and_macro_accuracy(tmp_path):
    rows = [{"context": "the sky", "continuation": "is very", "category": "b"},   # greedy match
            {"context": "the grass", "continuation": "is blue", "category": "a"},  # "blue" is not argmax
            {"context": "the sky", "continuation": "is blue", "category": "b"},    # no match
            {"context": "the sky", "continuation": "is very", "category": "b"}]   # match
    spec = TaskSpec("cat", write_jsonl(tmp_path / "c.jsonl", rows), "language_modeling", shots=1,
                    has_categories=True)
    requests = task_requests(spec, rows, WordTokenizer())
    assert requests[1].preamble == ""  # the only item of category "a": no other item to show
    for r in (requests[0], requests[2], requests[3]):  # examples come from category "b" only
        assert r.preamble.startswith("the sky is")
    result = evaluate_task(BigramLM(), WordTokenizer(), spec, device="cpu")
    assert result.categories == {"a": 0.0, "b": pytest.approx(2 / 3)}
    assert result.accuracy == pytest.approx((0.0 + 2 / 3) / 2)  # mean over categories, not over items
    with pytest.raises(TaskFormatError, match="missing field 'category'"):
        load_task(TaskSpec("cat", write_jsonl(tmp_path / "n.jsonl", rows[:1] + [{"context": "a", "continuation": "b"}]),
                           "language_modeling", has_categories=True))


def test_too_long_items_raise_or_are_skipped_and_counted(tmp_path):
    rows = [{"context": "the", "continuation": "sky is very"}, {"context": "the sky", "continuation": "is"}]
    spec = TaskSpec("lm", write_jsonl(tmp_path / "lm.jsonl", rows), "language_modeling")
    with pytest.raises(ValueError, match=r"lm\.jsonl:1: task 'lm'.*too_long: skip"):
        evaluate_tasks(BigramLM(), WordTokenizer(), [spec], max_length=3, device="cpu")
    out = evaluate_tasks(BigramLM(), WordTokenizer(), [spec], max_length=3, device="cpu", too_long="skip")
    assert out["tasks"]["lm"]["n_items"] == 1 and out["tasks"]["lm"]["n_skipped"] == 1
    assert out["tasks"]["lm"]["accuracy"] == 1.0  # "is" after "sky" is the argmax
    assert "1 item(s) too long to score were left out" in out["core_version"]


def test_centered_accuracy_and_core_arithmetic(tmp_path):
    mc = write_jsonl(tmp_path / "mc.jsonl", [MC_ITEM])
    lm = write_jsonl(tmp_path / "lm.jsonl", [{"context": "the sky", "continuation": "is very"},
                                             {"context": "the sky", "continuation": "is blue"}])
    specs = [TaskSpec("mc_token", mc, "multiple_choice", random_baseline=0.25),  # acc 1 -> centered 1
             TaskSpec("lm", lm, "language_modeling"),  # acc .5, r 0 -> .5
             TaskSpec("mc_sum", mc, "multiple_choice", random_baseline=0.5, length_normalize="none")]  # 0 -> -1
    calls = []
    out = evaluate_tasks(BigramLM(), WordTokenizer(), specs, batch_size=3, device="cpu",
                         progress=lambda done, total, unit: calls.append((done, total, unit)))
    assert {k: (v["accuracy"], v["centered_accuracy"], v["n_items"]) for k, v in out["tasks"].items()} == {
        "mc_token": (1.0, 1.0, 1), "lm": (0.5, 0.5, 2), "mc_sum": (0.0, -1.0, 1)}
    assert out["core"] == pytest.approx(1 / 6) and out["n_tasks"] == 3
    assert out["core_version"].startswith("core: mean centered accuracy over 3 task(s)")
    assert "not DCLM Core" in out["core_version"]
    assert out["tasks"]["lm"]["mean_logprob"] == pytest.approx((lp(0.6, 0.3) + lp(0.6, 0.1)) / 2)
    assert calls[-1] == (6, 6, "continuations") and [c[0] for c in calls] == sorted(c[0] for c in calls)
    assert centered_accuracy(0.625, 0.25) == pytest.approx(0.5)
    named = evaluate_tasks(BigramLM(), WordTokenizer(), specs, device="cpu",
                           core=CoreSpec("DCLM Core v2", ("mc_token", "lm")))
    assert named["core"] == pytest.approx(0.75) and named["core_version"] == "DCLM Core v2"
    assert named["core_tasks"] == ["mc_token", "lm"] and len(named["tasks"]) == 3
    with pytest.raises(ValueError, match="duplicate task names"):
        evaluate_tasks(BigramLM(), WordTokenizer(), specs[:1] * 2, device="cpu")
    with pytest.raises(ValueError, match=r"core tasks \['nope'\]"):
        evaluate_tasks(BigramLM(), WordTokenizer(), specs, device="cpu", core=CoreSpec("x", ("nope",)))


def test_comparison_rows_relative_only_against_a_base_away_from_zero():
    def scores(core, ppl):
        return {"core": core, "tasks": {"t": {"centered_accuracy": core}}, "heldout_perplexity": ppl,
                "heldout_reference_loss": 1.0}
    near = comparison_rows({"random": scores(0.0118, 20.0), "group_mates": scores(0.0228, 18.0)})
    assert near[1]["core_delta_vs_random"] == pytest.approx(0.011)
    assert "core_vs_random_%" not in near[1]  # +93% from a 0.011 difference would say nothing
    assert near[1]["ppl_vs_random_%"] == pytest.approx(-10.0)
    far = comparison_rows({"random": scores(0.2136, 20.0), "group_mates": scores(0.2351, 20.0)})
    assert far[1]["core_vs_random_%"] == pytest.approx(100 * 0.0215 / 0.2136, abs=0.01)
    assert far[0]["core_delta_vs_random"] == 0.0


def test_task_spec_validation():
    with pytest.raises(ValueError, match="kind must be one of"):
        TaskSpec("x", "p", "generation")
    with pytest.raises(ValueError, match="random_baseline"):
        TaskSpec("x", "p", "schema", random_baseline=25)
    with pytest.raises(ValueError, match="length_normalize"):
        TaskSpec("x", "p", "schema", length_normalize="bytes")


VALID = {"multiple_choice": {"query": "q", "choices": ["a", "b"], "gold": 0},
         "schema": {"context_options": ["a", "b"], "continuation": "c", "gold": 1},
         "language_modeling": {"context": "a", "continuation": "b"}}
MALFORMED = [
    ("multiple_choice", '{"query": "q", "choices": ["a"], "gold": 0', "invalid JSON"),
    ("multiple_choice", "[1, 2]", "expected a JSON object, got list"),
    ("multiple_choice", {"choices": ["a"], "gold": 0}, "missing field 'query'"),
    ("multiple_choice", {"query": 3, "choices": ["a"], "gold": 0}, "field 'query' must be a string, got int"),
    ("multiple_choice", {"query": "q", "gold": 0}, "missing field 'choices'"),
    ("multiple_choice", {"query": "q", "choices": "a", "gold": 0}, "field 'choices' must be a list of strings"),
    ("multiple_choice", {"query": "q", "choices": [], "gold": 0}, "field 'choices' is empty"),
    ("multiple_choice", {"query": "q", "choices": ["a", 2], "gold": 0}, "field 'choices[1]' must be a string"),
    ("multiple_choice", {"query": "q", "choices": ["a", ""], "gold": 0}, "field 'choices[1]' must be a non-empty"),
    ("multiple_choice", {"query": "q", "choices": ["a"]}, "missing field 'gold'"),
    ("multiple_choice", {"query": "q", "choices": ["a"], "gold": "0"}, "field 'gold' must be an integer, got str"),
    ("multiple_choice", {"query": "q", "choices": ["a"], "gold": True}, "field 'gold' must be an integer, got bool"),
    ("multiple_choice", {"query": "q", "choices": ["a", "b"], "gold": 2}, "field 'gold' = 2 is out of range for 2"),
    ("multiple_choice", {"query": "q", "choices": ["a", "b"], "gold": -1}, "field 'gold' = -1 is out of range"),
    ("schema", {"continuation": "c", "gold": 0}, "missing field 'context_options'"),
    ("schema", {"context_options": ["a"], "continuation": "", "gold": 0}, "field 'continuation' must be a non-empty"),
    ("schema", {"context_options": ["a"], "continuation": "c", "gold": 1}, "field 'gold' = 1 is out of range"),
    ("language_modeling", {"continuation": "b"}, "missing field 'context'"),
    ("language_modeling", {"context": "a", "continuation": None}, "field 'continuation' must be a string, got null"),
]


@pytest.mark.parametrize("kind,line,message", MALFORMED)
def test_malformed_lines_name_file_line_and_field(tmp_path, kind, line, message):
    path = write_jsonl(tmp_path / "task.jsonl", [VALID[kind], "", line])  # the bad object is on line 3
    with pytest.raises(TaskFormatError) as err:
        load_task(TaskSpec("t", path, kind))
    assert str(err.value).startswith(f"{path}:3: ")
    assert message in str(err.value)


def test_empty_task_file_is_an_error(tmp_path):
    path = write_jsonl(tmp_path / "empty.jsonl", ["", "  "])
    with pytest.raises(TaskFormatError, match="has no items"):
        load_task(TaskSpec("t", path, "schema"))


# ---------------------------------------------------------------------------------------------------------
# A real Hugging Face causal LM and BPE tokenizer

@pytest.fixture(scope="module")
def hf_model_and_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    corpus = ["the sky is blue and the grass is green", "a cat sat on the mat", "what color is the sky?"] * 20
    bpe.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=300, special_tokens=["<s>", "</s>"],
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    bpe.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(config), tokenizer


def manual_score(model, tokenizer, context, continuation):
    ctx = tokenizer(context)["input_ids"]
    cont = tokenizer(continuation, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = model(torch.tensor([ctx + cont])).logits[0].double()
    logprobs = torch.log_softmax(logits[len(ctx) - 1: -1], dim=-1)
    return float(logprobs[torch.arange(len(cont)), torch.tensor(cont)].sum()), len(cont)


def test_hf_llama_and_bpe_tokenizer_smoke(tmp_path, hf_model_and_tokenizer):
    model, tokenizer = hf_model_and_tokenizer
    pairs = [("what color is the sky?", " blue"), ("what color is the sky?", " green and the grass"),
             ("", "a cat"), ("the cat sat on", " the mat")]
    assert tokenizer("the sky")["input_ids"][0] == tokenizer.bos_token_id
    one = continuation_logprobs(model, tokenizer, pairs, batch_size=1, device="cpu")
    three = continuation_logprobs(model, tokenizer, pairs, batch_size=3, device="cpu")
    for (ctx, cont), a, b in zip(pairs, one, three):
        expected, n = manual_score(model, tokenizer, ctx, cont)
        assert a.n_tokens == b.n_tokens == n
        assert a.logprob == pytest.approx(expected, abs=1e-4) and b.logprob == pytest.approx(expected, abs=1e-4)

    mc = write_jsonl(tmp_path / "mc.jsonl", [{"query": "what color is the sky?", "choices": ["blue", "green"],
                                              "gold": 0}] * 3)
    schema = write_jsonl(tmp_path / "s.jsonl", [{"context_options": ["the sky", "the grass"],
                                                 "continuation": "is blue", "gold": 0}] * 2)
    lm = write_jsonl(tmp_path / "lm.jsonl", [{"context": "the cat sat on", "continuation": "the mat"}] * 2)
    specs = [TaskSpec("mc", mc, "multiple_choice", shots=1, random_baseline=0.5), TaskSpec("s", schema, "schema"),
             TaskSpec("lm", lm, "language_modeling", shots=1)]
    out = evaluate_tasks(model, tokenizer, specs, batch_size=4, device="cpu")
    assert [out["tasks"][n]["n_items"] for n in ("mc", "s", "lm")] == [3, 2, 2]
    assert all(0.0 <= t["accuracy"] <= 1.0 for t in out["tasks"].values())
    assert math.isfinite(out["core"]) and math.isfinite(out["tasks"]["lm"]["mean_logprob"])

    texts = ["the sky is blue and the grass is green", "a cat sat on the mat"]
    ids = [tokenizer(t)["input_ids"] for t in texts]
    with torch.no_grad():
        nll = sum(torch.nn.functional.cross_entropy(model(torch.tensor([s])).logits[0, :-1].double(),
                                                    torch.tensor(s[1:]), reduction="sum") for s in ids)
    expected_ppl = math.exp(float(nll) / sum(len(s) - 1 for s in ids))
    assert perplexity(model, texts, tokenizer=tokenizer, batch_size=2, device="cpu") == pytest.approx(expected_ppl,
                                                                                                      rel=1e-4)
    # evaluation leaves the model trainable (no inference-mode parameters)
    model.train()
    model(torch.tensor([ids[0]]), labels=torch.tensor([ids[0]])).loss.backward()
