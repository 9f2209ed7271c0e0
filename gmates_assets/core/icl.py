"""In-context-learning prompts built by llm-foundry's rules, so scores compare with DCLM Core (method.md §3.9).

DCLM scores its Core tasks with llm-foundry's ICL datasets (llm-foundry 0.9, `icl_tasks` of
`mmlu_and_lowvar.yaml`). The rules reproduced here, per task file:

- Strip: every top-level string field of an item (query, context, continuation) loses surrounding whitespace;
  list fields (choices, context_options) are kept as they are.
- Prefix space: a tokenizer "needs a prefix space" when " a" encodes to exactly one token (GPT-2 / GPT-NeoX
  byte-level BPE). The scored answer then gets a leading space unless it has one. SentencePiece tokenizers
  (Llama-style) put their own "▁" in front of a separately encoded string and get no space.
- Few-shot sampling: one `random.Random(fewshot_random_seed)` is consumed item after item in file order. For each
  item: `sample(range(n), k)` into a set; if the item itself was drawn it is removed and `choice(range(n))` is
  drawn until a new index comes up; the examples follow the set's iteration order. k is at most n − 1.
- Text: preamble = prompt_string, then each example preceded by example_delimiter unless the text is still
  empty, each example being `left + continuation_delimiter + answer` (the gold choice, the context option with
  the continuation, or the continuation; no prefix space). The scored item's context follows the same way and
  is right-stripped (multiple choice, language modeling). Schema items instead get one context per option:
  the bare option when there is no preamble, else `example_delimiter + option + rstripped
  continuation_delimiter`.
- Tokens: ids(preamble, with the tokenizer's special tokens, a trailing EOS dropped when there is more than
  one id) + ids(context) + ids(answer), the last two without special tokens. Each piece is encoded on its
  own, so no merge crosses a boundary (see `evaluation.encode_requests`).
- Categories (`has_categories`): the file is split by its `category` field (categories sorted); each part is
  a task of its own, with its own sampler seeded with fewshot_random_seed and few-shot examples from the same
  category. The task's accuracy is the mean of the per-category accuracies (as DCLM aggregates them).
"""
from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional

TASK_KINDS = ("multiple_choice", "schema", "language_modeling")


@dataclass(frozen=True)
class PromptFormat:
    """llm-foundry's per-task prompt settings; the defaults are llm-foundry's (`build_icl_evaluators`)."""

    shots: int = 0
    continuation_delimiter: str = " "
    example_delimiter: str = "\n"
    prompt_string: str = ""
    fewshot_random_seed: int = 1234


@dataclass(frozen=True)
class Request:
    """One (context, answer) pair to score; `option` is the choice / context-option index (0 for LM).

    The model reads preamble + context + continuation; only the continuation's tokens are scored.
    `answer_chars` is the length of the answer as written in the task file (without an added prefix space):
    the divisor of `length_normalize: char`.
    """

    item: int
    option: int
    preamble: str
    context: str
    continuation: str
    answer_chars: int

    @property
    def prompt(self) -> str:
        return self.preamble + self.context


def tokenizer_needs_prefix_space(tokenizer: Any) -> bool:
    """True when " a" is one token (byte-level BPE): answers then get a leading space."""
    return len(tokenizer(" a", add_special_tokens=False)["input_ids"]) == 1


def strip_item(item: dict) -> dict:
    return {k: v.strip() if isinstance(v, str) else v for k, v in item.items()}


def fewshot_sample(n_items: int, shots: int, item: int, rng: random.Random) -> list[int]:
    """Few-shot example indices for `item` (see the module docstring); consumes `rng` like llm-foundry."""
    chosen = set(rng.sample(range(n_items), min(n_items - 1, shots)))
    if item in chosen:
        chosen.remove(item)
        if len(chosen) < n_items - 1:
            extra = rng.choice(range(n_items))
            while extra in chosen or extra == item:
                extra = rng.choice(range(n_items))
            chosen.add(extra)
    return list(chosen)  # the set's iteration order is part of the rule


def fewshot_draws(n_items: int, shots: int, seed: int) -> list[list[int]]:
    """Few-shot indices of every item of one (category of a) task file, one sampler over the items in order."""
    if shots == 0:
        return [[] for _ in range(n_items)]
    rng = random.Random(seed)
    return [fewshot_sample(n_items, shots, item, rng) for item in range(n_items)]


def category_groups(items: Sequence[dict]) -> list[list[int]]:
    """Item indices per category, categories sorted, items in file order within each."""
    groups: dict[str, list[int]] = {}
    for index, item in enumerate(items):
        groups.setdefault(item["category"], []).append(index)
    return [groups[name] for name in sorted(groups)]


def _answered(item: dict, kind: str) -> tuple[str, str]:
    """(left, answer) of an item shown as a solved example."""
    if kind == "multiple_choice":
        return item["query"], item["choices"][item["gold"]]
    if kind == "schema":
        return item["context_options"][item["gold"]], item["continuation"]
    return item["context"], item["continuation"]


def fewshot_preamble(examples: Sequence[dict], kind: str, fmt: PromptFormat) -> str:
    text = fmt.prompt_string
    for example in examples:
        left, answer = _answered(example, kind)
        text += (fmt.example_delimiter if text else "") + left + fmt.continuation_delimiter + answer
    return text


def _spaced(answer: str, prefix_space: bool) -> str:
    return " " + answer if prefix_space and not answer.startswith(" ") else answer


def item_requests(index: int, item: dict, preamble: str, kind: str, fmt: PromptFormat,
                  prefix_space: bool) -> list[Request]:
    """The requests of one (stripped) item after its preamble, one per option."""
    lead = fmt.example_delimiter if preamble else ""
    if kind == "schema":
        answer = item["continuation"]
        tail = fmt.continuation_delimiter.rstrip()
        contexts = [lead + option + tail if preamble else option for option in item["context_options"]]
        return [Request(index, option, preamble, context, _spaced(answer, prefix_space), len(answer))
                for option, context in enumerate(contexts)]
    left = item["query"] if kind == "multiple_choice" else item["context"]
    context = (lead + left + fmt.continuation_delimiter).rstrip()
    answers = item["choices"] if kind == "multiple_choice" else [item["continuation"]]
    return [Request(index, option, preamble, context, _spaced(answer, prefix_space), len(answer))
            for option, answer in enumerate(answers)]


def build_requests(items: Sequence[dict], kind: str, fmt: PromptFormat, prefix_space: bool,
                   has_categories: bool = False, n_eval: Optional[int] = None) -> list[Request]:
    """Requests of the items with index < n_eval (all by default), in file order, options in order.

    Few-shot draws always run over every item, so evaluating a prefix of a file gives the same prompts as
    evaluating all of it.
    """
    if kind not in TASK_KINDS:
        raise ValueError(f"kind must be one of {TASK_KINDS}, got {kind!r}")
    stripped = [strip_item(item) for item in items]
    groups = category_groups(items) if has_categories else [list(range(len(items)))]
    limit = len(stripped) if n_eval is None else n_eval
    requests = []
    for group in groups:
        draws = fewshot_draws(len(group), fmt.shots, fmt.fewshot_random_seed)
        for local, index in enumerate(group):
            if index < limit:
                preamble = fewshot_preamble([stripped[group[j]] for j in draws[local]], kind, fmt)
                requests.extend(item_requests(index, stripped[index], preamble, kind, fmt, prefix_space))
    return sorted(requests, key=lambda r: (r.item, r.option))
