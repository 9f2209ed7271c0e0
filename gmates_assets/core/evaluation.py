"""Log-likelihood evaluation of a causal LM on DCLM / llm-foundry eval-gauntlet tasks (docs/method.md §3.9).

Task files are jsonl, one object per line (docs/contracts.md):
- multiple choice: {"query": str, "choices": [str, ...], "gold": int}
- schema:          {"context_options": [str, ...], "continuation": str, "gold": int}
- language model:  {"context": str, "continuation": str}

How a request is built (the same for every kind; nanochat's core_eval and llm-foundry do the same in effect):
- The scored text is `prefix + left + delimiter + right`: MC left=query, right=choice; schema left=context
  option, right=continuation; LM left=context, right=continuation. A whitespace-only delimiter is not added when
  `left` already ends (or `right` already starts) with whitespace, so gauntlet files that carry their own
  spacing do not get doubled spaces.
- Few-shot: `prefix` is k answered examples (same format, gold answer filled in) each followed by the example
  delimiter (default "\\n\\n"). They are drawn from the whole task file excluding the item itself, with
  numpy's default_rng([seed, item index]); the order is the draw order.
- The context/continuation split moves the context's trailing whitespace to the front of the continuation
  ("Q" + " A" rather than "Q " + "A"): BPE tokenizers then see their usual " word" tokens, which is what
  llm-foundry's rstrip + prefix-space achieves; the scored text is unchanged.

Scoring: the context and the continuation are tokenized separately and their ids concatenated, so the
continuation's tokens are exactly its own (no merge across the boundary can shift the split). The context is
tokenized with the tokenizer's default special tokens (a BOS if it adds one, a trailing EOS dropped, as
llm-foundry's `_fix_eos_on_preamble`), the continuation without. Sequences are right-padded; a too-long input
loses context tokens from the left.

Metrics: MC and schema pick the option with the highest length-normalised log-likelihood. The default
normalisation is the per-token mean ("token"), which is what llm-foundry's multiple-choice accuracy computes;
"char" divides by the continuation's character count (lm-eval's acc_norm) and "none" uses the plain sum. Ties
go to the lowest option index. LM accuracy is llm-foundry's: every continuation token is the greedy argmax.
Centered accuracy is (acc − r)/(1 − r) with r the task's random baseline as a fraction; Core is the mean of
the centered accuracies over the tasks evaluated.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, NamedTuple, Sequence

import numpy as np
import torch

from gmates_assets.core.progress import ProgressFn

TASK_KINDS = ("multiple_choice", "schema", "language_modeling")
NORMALIZATIONS = ("token", "char", "none")
DEFAULT_MAX_LENGTH = 2048


class TaskFormatError(ValueError):
    """A task file line that does not match its declared format; the message names file, line and field."""


@dataclass(frozen=True)
class TaskSpec:
    name: str
    path: str
    kind: str
    shots: int = 0
    random_baseline: float = 0.0  # fraction in [0, 1), e.g. 0.25 for 4-way multiple choice
    length_normalize: str | bool = "token"  # "token" (mean per token), "char", "none"; True/False = token/none
    seed: int = 1234
    max_items: int | None = None  # evaluate only the first max_items items (few-shot still draws from all)
    continuation_delimiter: str = " "
    example_delimiter: str = "\n\n"

    def __post_init__(self) -> None:
        if self.kind not in TASK_KINDS:
            raise ValueError(f"task {self.name!r}: kind must be one of {TASK_KINDS}, got {self.kind!r}")
        if self.shots < 0:
            raise ValueError(f"task {self.name!r}: shots must be >= 0, got {self.shots}")
        if not 0.0 <= self.random_baseline < 1.0:
            raise ValueError(f"task {self.name!r}: random_baseline must be a fraction in [0, 1), "
                             f"got {self.random_baseline}")
        if self.max_items is not None and self.max_items < 1:
            raise ValueError(f"task {self.name!r}: max_items must be >= 1, got {self.max_items}")
        self.normalization  # validates length_normalize

    @property
    def normalization(self) -> str:
        mode = {True: "token", False: "none"}.get(self.length_normalize, self.length_normalize)  # type: ignore[arg-type]
        if mode not in NORMALIZATIONS:
            raise ValueError(f"task {self.name!r}: length_normalize must be one of {NORMALIZATIONS} or a bool, "
                             f"got {self.length_normalize!r}")
        return mode


@dataclass(frozen=True)
class Request:
    """One (context, continuation) pair to score; `option` is the choice / context-option index (0 for LM)."""
    item: int
    option: int
    context: str
    continuation: str


class ContinuationScore(NamedTuple):
    logprob: float  # sum of the continuation tokens' log-probabilities
    n_tokens: int
    greedy_match: bool  # every continuation token is the argmax prediction


@dataclass
class TaskResult:
    name: str
    kind: str
    accuracy: float
    centered_accuracy: float
    n_items: int
    random_baseline: float
    shots: int
    predictions: list[int]  # chosen option per item (LM: 1 if greedy match else 0)
    mean_logprob: float | None = None  # LM only: mean over items of the continuation's summed log-likelihood
    mean_token_logprob: float | None = None  # LM only: total log-likelihood / total continuation tokens

    def summary(self) -> dict[str, Any]:
        out = {"kind": self.kind, "accuracy": self.accuracy, "centered_accuracy": self.centered_accuracy,
               "n_items": self.n_items, "random_baseline": self.random_baseline, "shots": self.shots}
        if self.kind == "language_modeling":
            out["mean_logprob"] = self.mean_logprob
            out["mean_token_logprob"] = self.mean_token_logprob
        return out


# ----------------------------------------------------------------------------------------------------------
# Task files

_STR_FIELDS = {
    "multiple_choice": {"query": False},  # field -> must be non-empty
    "schema": {"continuation": True},
    "language_modeling": {"context": False, "continuation": True},
}
_LIST_FIELD = {"multiple_choice": "choices", "schema": "context_options"}


def _fail(path: Path, line: int, message: str) -> TaskFormatError:
    return TaskFormatError(f"{path}:{line}: {message}")


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _check_item(obj: Any, kind: str, path: Path, line: int) -> dict:
    if not isinstance(obj, dict):
        raise _fail(path, line, f"expected a JSON object, got {_type_name(obj)}")
    for field, non_empty in _STR_FIELDS[kind].items():
        if field not in obj:
            raise _fail(path, line, f"missing field {field!r}")
        if not isinstance(obj[field], str):
            raise _fail(path, line, f"field {field!r} must be a string, got {_type_name(obj[field])}")
        if non_empty and not obj[field]:
            raise _fail(path, line, f"field {field!r} must be a non-empty string")
    list_field = _LIST_FIELD.get(kind)
    if list_field is None:
        return obj
    options = obj.get(list_field)
    if list_field not in obj:
        raise _fail(path, line, f"missing field {list_field!r}")
    if not isinstance(options, list):
        raise _fail(path, line, f"field {list_field!r} must be a list of strings, got {_type_name(options)}")
    if not options:
        raise _fail(path, line, f"field {list_field!r} is empty")
    for i, option in enumerate(options):
        if not isinstance(option, str):
            raise _fail(path, line, f"field '{list_field}[{i}]' must be a string, got {_type_name(option)}")
        if kind == "multiple_choice" and not option:
            raise _fail(path, line, f"field '{list_field}[{i}]' must be a non-empty string")
    if "gold" not in obj:
        raise _fail(path, line, "missing field 'gold'")
    gold = obj["gold"]
    if isinstance(gold, bool) or not isinstance(gold, int):
        raise _fail(path, line, f"field 'gold' must be an integer, got {_type_name(gold)}")
    if not 0 <= gold < len(options):
        raise _fail(path, line, f"field 'gold' = {gold} is out of range for {len(options)} {list_field}")
    return obj


def load_task(spec: TaskSpec) -> list[dict]:
    """Read and validate every line of a task file (blank lines are skipped)."""
    path = Path(spec.path)
    items: list[dict] = []
    with open(path, encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise _fail(path, line_no, f"invalid JSON ({err.msg} at column {err.colno})") from None
            items.append(_check_item(obj, spec.kind, path, line_no))
    if not items:
        raise TaskFormatError(f"{path}: task file has no items")
    return items


# ----------------------------------------------------------------------------------------------------------
# Prompt construction

def _join(left: str, delimiter: str, right: str) -> str:
    if not left:
        return right
    if delimiter.isspace() and (left[-1].isspace() or right[:1].isspace()):
        return left + right
    return left + delimiter + right


def _pieces(item: dict, kind: str) -> list[tuple[str, str]]:
    """(left, right) per option of an item; see the module docstring."""
    if kind == "multiple_choice":
        return [(item["query"], choice) for choice in item["choices"]]
    if kind == "schema":
        return [(option, item["continuation"]) for option in item["context_options"]]
    return [(item["context"], item["continuation"])]


def _answered_example(item: dict, kind: str, delimiter: str) -> str:
    pieces = _pieces(item, kind)
    left, right = pieces[item["gold"]] if kind != "language_modeling" else pieces[0]
    return _join(left, delimiter, right)


def fewshot_indices(n_items: int, item: int, shots: int, seed: int) -> list[int]:
    """Indices of the few-shot examples for `item`: `shots` others, drawn without replacement."""
    if shots == 0:
        return []
    if shots > n_items - 1:
        raise ValueError(f"{shots} shots need at least {shots + 1} items, the task has {n_items}")
    rng = np.random.default_rng([seed, item])
    draws = rng.choice(n_items - 1, size=shots, replace=False)
    return [int(d) + (d >= item) for d in draws]  # skip the item itself


def _split_context(context: str, right: str) -> tuple[str, str]:
    """Move the context's trailing whitespace to the continuation (same text, BPE-friendly split)."""
    stripped = context.rstrip()
    return stripped, context[len(stripped):] + right


def build_requests(spec: TaskSpec, items: Sequence[dict]) -> list[Request]:
    """Requests for the first `max_items` items, each option in order."""
    n_eval = len(items) if spec.max_items is None else min(spec.max_items, len(items))
    delim = spec.continuation_delimiter
    requests = []
    for index in range(n_eval):
        shots = fewshot_indices(len(items), index, spec.shots, spec.seed)
        prefix = "".join(_answered_example(items[j], spec.kind, delim) + spec.example_delimiter for j in shots)
        for option, (left, right) in enumerate(_pieces(items[index], spec.kind)):
            joined = _join(left, delim, right)
            context, continuation = _split_context(prefix + joined[: len(joined) - len(right)], right)
            requests.append(Request(index, option, context, continuation))
    return requests


# ----------------------------------------------------------------------------------------------------------
# Scoring

def resolve_device(device: str | torch.device | None = None) -> torch.device:
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _model_max_length(model: Any) -> int:
    config = getattr(model, "config", None)
    return int(getattr(config, "max_position_embeddings", None) or DEFAULT_MAX_LENGTH)


def _pad_id(tokenizer: Any) -> int:
    """Padding is masked out, so any id works: pad, else eos, else 0."""
    for name in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, name, None)
        if value is not None:
            return int(value)
    return 0


def _start_id(tokenizer: Any) -> int:
    """Token that stands in for an empty context, so the first continuation token is still predicted."""
    for name in ("bos_token_id", "eos_token_id"):
        value = getattr(tokenizer, name, None)
        if value is not None:
            return int(value)
    raise ValueError("empty context and the tokenizer has neither a BOS nor an EOS token to start from")


def _input_ids(encoded: Any) -> list[list[int]]:
    ids = encoded["input_ids"]
    return [list(map(int, row)) for row in ids]


def encode_contexts(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    """Default special tokens (BOS if the tokenizer adds one), a trailing EOS dropped, never empty."""
    if not texts:
        return []
    eos = getattr(tokenizer, "eos_token_id", None)
    out = []
    for ids in _input_ids(tokenizer(list(texts))):
        if eos is not None and ids and ids[-1] == eos:
            ids = ids[:-1]
        out.append(ids or [_start_id(tokenizer)])
    return out


def encode_continuations(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    if not texts:
        return []
    out = _input_ids(tokenizer(list(texts), add_special_tokens=False))
    for text, ids in zip(texts, out):
        if not ids:
            raise ValueError(f"continuation {text!r} tokenizes to no tokens")
    return out


def _encode_pairs(tokenizer: Any, pairs: Sequence[tuple[str, str]]) -> list[tuple[list[int], list[int]]]:
    contexts = sorted({c for c, _ in pairs})  # MC items share one context across their choices
    context_ids = dict(zip(contexts, encode_contexts(tokenizer, contexts)))
    continuation_ids = encode_continuations(tokenizer, [c for _, c in pairs])
    return [(context_ids[c], cont) for (c, _), cont in zip(pairs, continuation_ids)]


def _fit(context: list[int], continuation: list[int], max_length: int) -> list[int]:
    """Concatenate, dropping context tokens from the left when too long (at least one is kept)."""
    if len(continuation) > max_length - 1:
        raise ValueError(f"a continuation of {len(continuation)} tokens does not fit max_length {max_length} "
                         "(one context token is needed to predict its first token)")
    keep = min(len(context), max_length - len(continuation))
    return context[len(context) - keep:] + continuation


def _forward_logits(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    output = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    return logits if logits is not None else output[0]


def _pad_batch(rows: Sequence[list[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
    return ids.to(device), mask.to(device)


def _prepare(model: Any, device: str | torch.device | None) -> torch.device:
    dev = resolve_device(device)
    if hasattr(model, "to"):
        model.to(dev)
    if hasattr(model, "eval"):
        model.eval()
    return dev


def _length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Longest first (stable), so each batch pads little and a memory problem shows on the first batch."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i: i + batch_size] for i in range(0, len(order), batch_size)]


def continuation_logprobs(model: Any, tokenizer: Any, pairs: Sequence[tuple[str, str]], batch_size: int = 8,
                          max_length: int | None = None, device: str | torch.device | None = None,
                          progress: ProgressFn = None) -> list[ContinuationScore]:
    """Score each continuation given its context: (sum log-prob, token count, greedy match), in input order.

    The model is moved to `device` (default CUDA if available) and put in eval mode.
    """
    dev = _prepare(model, device)  # outside inference mode: moved parameters must stay trainable
    max_length = max_length or _model_max_length(model)
    encoded = _encode_pairs(tokenizer, pairs)
    sequences = [_fit(ctx, cont, max_length) for ctx, cont in encoded]
    cont_lengths = [len(cont) for _, cont in encoded]
    return _score_sequences(model, sequences, cont_lengths, _pad_id(tokenizer), batch_size, dev, progress)


@torch.inference_mode()
def _score_sequences(model: Any, sequences: list[list[int]], cont_lengths: list[int], pad_id: int,
                     batch_size: int, dev: torch.device, progress: ProgressFn) -> list[ContinuationScore]:
    results: list[ContinuationScore | None] = [None] * len(sequences)
    done = 0
    for batch in _length_sorted_batches([len(s) for s in sequences], batch_size):
        ids, mask = _pad_batch([sequences[i] for i in batch], pad_id, dev)
        logits = _forward_logits(model, ids, mask)
        for row, index in enumerate(batch):
            results[index] = _score_row(logits[row], ids[row], len(sequences[index]), cont_lengths[index])
        done += len(batch)
        if progress is not None:
            progress(done, len(sequences), "continuations")
    return results  # type: ignore[return-value]


def _score_row(logits: torch.Tensor, ids: torch.Tensor, length: int, n_cont: int) -> ContinuationScore:
    start = length - n_cont  # first continuation position; logits at t predict token t + 1
    logprobs = torch.log_softmax(logits[start - 1: length - 1].float(), dim=-1)
    targets = ids[start:length]
    token_logprobs = logprobs.gather(1, targets[:, None]).squeeze(1)
    greedy = bool((logprobs.argmax(dim=-1) == targets).all())
    return ContinuationScore(float(token_logprobs.double().sum()), n_cont, greedy)


# ----------------------------------------------------------------------------------------------------------
# Task metrics

def centered_accuracy(accuracy: float, random_baseline: float) -> float:
    """(acc − r)/(1 − r): 0 at chance, 1 at perfect (DCLM Core)."""
    if not 0.0 <= random_baseline < 1.0:
        raise ValueError(f"random_baseline must be in [0, 1), got {random_baseline}")
    return (accuracy - random_baseline) / (1.0 - random_baseline)


def _option_score(score: ContinuationScore, continuation: str, mode: str) -> float:
    if mode == "token":
        return score.logprob / score.n_tokens
    if mode == "char":
        return score.logprob / max(len(continuation), 1)
    return score.logprob


def _choose_options(spec: TaskSpec, requests: Sequence[Request], scores: Sequence[ContinuationScore]) -> list[int]:
    n_items = requests[-1].item + 1
    best: list[tuple[float, int]] = [(-math.inf, -1)] * n_items
    for request, score in zip(requests, scores):
        value = _option_score(score, request.continuation, spec.normalization)
        if value > best[request.item][0] or best[request.item][1] < 0:  # ties keep the lower index
            best[request.item] = (value, request.option)
    return [option for _, option in best]


def task_result(spec: TaskSpec, items: Sequence[dict], requests: Sequence[Request],
                scores: Sequence[ContinuationScore]) -> TaskResult:
    """Metrics of one task from its requests' scores."""
    n_items = requests[-1].item + 1
    base = dict(name=spec.name, kind=spec.kind, n_items=n_items, random_baseline=spec.random_baseline,
                shots=spec.shots)
    if spec.kind == "language_modeling":
        hits = [int(s.greedy_match) for s in scores]
        accuracy = sum(hits) / n_items
        return TaskResult(**base, accuracy=accuracy, centered_accuracy=centered_accuracy(accuracy, spec.random_baseline),
                          predictions=hits, mean_logprob=sum(s.logprob for s in scores) / n_items,
                          mean_token_logprob=sum(s.logprob for s in scores) / sum(s.n_tokens for s in scores))
    chosen = _choose_options(spec, requests, scores)
    accuracy = sum(int(c == items[i]["gold"]) for i, c in enumerate(chosen)) / n_items
    return TaskResult(**base, accuracy=accuracy, centered_accuracy=centered_accuracy(accuracy, spec.random_baseline),
                      predictions=chosen)


def evaluate_task(model: Any, tokenizer: Any, spec: TaskSpec, batch_size: int = 8,
                  device: str | torch.device | None = None, max_length: int | None = None,
                  progress: ProgressFn = None) -> TaskResult:
    items = load_task(spec)
    requests = build_requests(spec, items)
    scores = continuation_logprobs(model, tokenizer, [(r.context, r.continuation) for r in requests],
                                   batch_size=batch_size, max_length=max_length, device=device, progress=progress)
    return task_result(spec, items, requests, scores)


def evaluate_tasks(model: Any, tokenizer: Any, specs: Sequence[TaskSpec], batch_size: int = 8,
                   device: str | torch.device | None = None, progress: ProgressFn = None,
                   max_length: int | None = None) -> dict[str, Any]:
    """Per-task accuracy / centered accuracy / item count, and `core` = mean centered accuracy over tasks."""
    names = [s.name for s in specs]
    if not specs:
        raise ValueError("no tasks to evaluate")
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate task names: {sorted({n for n in names if names.count(n) > 1})}")
    loaded = [(spec, load_task(spec)) for spec in specs]  # validate every file before any model work
    planned = [(spec, items, build_requests(spec, items)) for spec, items in loaded]
    total = sum(len(requests) for _, _, requests in planned)
    tasks: dict[str, dict[str, Any]] = {}
    offset = 0
    for spec, items, requests in planned:
        step = None if progress is None else _offset_progress(progress, offset, total)
        scores = continuation_logprobs(model, tokenizer, [(r.context, r.continuation) for r in requests],
                                       batch_size=batch_size, max_length=max_length, device=device, progress=step)
        tasks[spec.name] = task_result(spec, items, requests, scores).summary()
        offset += len(requests)
    core = sum(t["centered_accuracy"] for t in tasks.values()) / len(tasks)
    return {"core": core, "n_tasks": len(tasks), "tasks": tasks}


def _offset_progress(progress: Any, offset: int, total: int):
    return lambda done, _total, unit: progress(offset + done, total, unit)


# ----------------------------------------------------------------------------------------------------------
# Held-out perplexity

def _windows(ids: Sequence[int], max_length: int) -> list[list[int]]:
    """Windows of at most max_length tokens overlapping by one, so every token after the first is predicted
    exactly once (with up to max_length − 1 tokens of history)."""
    step = max_length - 1
    return [list(ids[start: start + max_length]) for start in range(0, max(len(ids) - 1, 0), step)]


def perplexity(model: Any, data: Iterable[str] | Iterable[Sequence[int]], tokenizer: Any = None,
               batch_size: int = 8, max_length: int | None = None, device: str | torch.device | None = None,
               progress: ProgressFn = None) -> float:
    """exp(mean next-token cross-entropy over every predicted token of every sequence).

    `data` holds token-id sequences, or texts (then `tokenizer` is required; special tokens as for contexts).
    Sequences longer than max_length are scored in windows overlapping by one token.
    """
    dev = _prepare(model, device)
    max_length = max_length or _model_max_length(model)
    if max_length < 2:
        raise ValueError(f"max_length must be >= 2, got {max_length}")
    sequences = _as_token_sequences(list(data), tokenizer)
    windows = [w for seq in sequences for w in _windows(seq, max_length)]
    if not windows:
        raise ValueError("perplexity needs at least one sequence of two or more tokens")
    pad_id = 0 if tokenizer is None else _pad_id(tokenizer)
    return _windows_perplexity(model, windows, pad_id, batch_size, dev, progress)


@torch.inference_mode()
def _windows_perplexity(model: Any, windows: list[list[int]], pad_id: int, batch_size: int, dev: torch.device,
                        progress: ProgressFn) -> float:
    total_nll, total_tokens, done = 0.0, 0, 0
    for batch in _length_sorted_batches([len(w) for w in windows], batch_size):
        ids, mask = _pad_batch([windows[i] for i in batch], pad_id, dev)
        logits = _forward_logits(model, ids, mask)
        for row, index in enumerate(batch):
            n = len(windows[index])
            nll = torch.nn.functional.cross_entropy(logits[row, : n - 1].float(), ids[row, 1:n], reduction="sum")
            total_nll += float(nll.double())
            total_tokens += n - 1
        done += len(batch)
        if progress is not None:
            progress(done, len(windows), "windows")
    return math.exp(total_nll / total_tokens)


def _as_token_sequences(data: list, tokenizer: Any) -> list[list[int]]:
    if all(isinstance(d, str) for d in data):
        if tokenizer is None:
            raise ValueError("perplexity of texts needs a tokenizer")
        return encode_contexts(tokenizer, data)
    return [[int(t) for t in seq] for seq in data]
