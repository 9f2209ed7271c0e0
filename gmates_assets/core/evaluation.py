"""Log-likelihood evaluation of a causal LM on DCLM / llm-foundry eval-gauntlet tasks (docs/method.md §3.9).

Task files are jsonl, one object per line (docs/contracts.md):
- multiple choice: {"query": str, "choices": [str, ...], "gold": int}
- schema:          {"context_options": [str, ...], "continuation": str, "gold": int}
- language model:  {"context": str, "continuation": str}
plus a string "category" on every line for tasks with `has_categories`.

Prompts follow llm-foundry's ICL rules (`icl.py`): stripped fields, prefix space only for tokenizers that need
it, llm-foundry's few-shot sampler and delimiters, per-category few-shot. Tokens: the preamble is encoded with
the tokenizer's special tokens (a trailing EOS dropped, llm-foundry's `_fix_eos_on_preamble`), the context and
the answer without, each on its own, and the ids concatenated. A too-long input loses context tokens from the
left; an answer that cannot fit at all is an error, or (`too_long="skip"`) its item is left out and counted.

Metrics: MC and schema pick the option with the highest length-normalised log-likelihood. The default
normalisation is the per-token mean ("token"), which is llm-foundry's multiple-choice accuracy (lowest
perplexity); "char" divides by the answer's character count as written in the task file (lm-eval's
acc_norm) and "none" uses the plain sum. Ties go to the lowest option index. LM accuracy is llm-foundry's:
every answer token is the greedy argmax. Tasks with categories average the per-category accuracies.
Centered accuracy is (acc − r)/(1 − r) with r the task's random baseline as a fraction; a core score is the
mean centered accuracy over a named list of tasks (`CoreSpec`), always reported with its label.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Optional

import torch

from gmates_assets.core.icl import Request, build_requests, tokenizer_needs_prefix_space
from gmates_assets.core.progress import ProgressFn
from gmates_assets.core.task_files import TaskFormatError, read_task_items  # noqa: F401 (re-exported)
from gmates_assets.core.validation import items_that_fit

from .devices import resolve_device
from .eval_specs import NORMALIZATIONS, CoreSpec, TaskSpec  # noqa: F401  (defined there: no torch)

TOO_LONG = ("error", "skip")
PERPLEXITY_PREFIXES = ("tokenizer", "bos")
DEFAULT_MAX_LENGTH = 2048
# Relative figures against a base this close to zero (centered accuracy) say nothing; show differences.
NEAR_ZERO_BASE = 0.05




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
    n_items: int  # items scored
    random_baseline: float
    shots: int
    predictions: dict[int, int]  # item -> chosen option (LM: 1 if greedy match else 0)
    n_skipped: int = 0  # items left out because an answer could not fit (too_long="skip")
    categories: Optional[dict[str, float]] = None  # per-category accuracy (has_categories)
    mean_logprob: float | None = None  # LM only: mean over items of the continuation's summed log-likelihood
    mean_token_logprob: float | None = None  # LM only: total log-likelihood / total continuation tokens

    def summary(self) -> dict[str, Any]:
        out = {"kind": self.kind, "accuracy": self.accuracy, "centered_accuracy": self.centered_accuracy,
               "n_items": self.n_items, "n_skipped": self.n_skipped, "random_baseline": self.random_baseline,
               "shots": self.shots}
        if self.categories is not None:
            out["categories"] = self.categories
        if self.kind == "language_modeling":
            out["mean_logprob"] = self.mean_logprob
            out["mean_token_logprob"] = self.mean_token_logprob
        return out


# ----------------------------------------------------------------------------------------------------------
# Task files

def load_task(spec: TaskSpec) -> list[dict]:
    """Read and validate every line of a task file (blank lines are skipped)."""
    return read_task_items(spec.path, spec.kind, spec.has_categories)


def task_requests(spec: TaskSpec, items: Sequence[dict], tokenizer: Any) -> list[Request]:
    """llm-foundry's requests for the first `max_items` items (see icl.py)."""
    n_eval = len(items) if spec.max_items is None else min(spec.max_items, len(items))
    return build_requests(items, spec.kind, spec.prompt_format, tokenizer_needs_prefix_space(tokenizer),
                          spec.has_categories, n_eval)


# ----------------------------------------------------------------------------------------------------------
# Tokens

def _pad_id(tokenizer: Any) -> int:
    """Padding is masked out, so any id works: pad, else eos, else 0."""
    for name in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, name, None)
        if value is not None:
            return int(value)
    return 0


def _start_id(tokenizer: Any) -> int:
    """BOS, else EOS: what an empty context starts from (and lm-eval's rolling prefix token)."""
    for name in ("bos_token_id", "eos_token_id"):
        value = getattr(tokenizer, name, None)
        if value is not None:
            return int(value)
    raise ValueError("the tokenizer has neither a BOS nor an EOS token to start a sequence with")


def _encode_unique(tokenizer: Any, texts: Iterable[str], special_tokens: bool) -> dict[str, list[int]]:
    unique = sorted(set(texts))
    if not unique:
        return {}
    rows = tokenizer(unique, add_special_tokens=special_tokens)["input_ids"]
    return {text: [int(t) for t in row] for text, row in zip(unique, rows)}


def _without_trailing_eos(tokenizer: Any, ids: list[int]) -> list[int]:
    eos = getattr(tokenizer, "eos_token_id", None)
    return ids[:-1] if eos is not None and len(ids) > 1 and ids[-1] == eos else ids


def encode_requests(tokenizer: Any, requests: Sequence[Request]) -> list[tuple[list[int], list[int]]]:
    """(context ids, continuation ids) per request: preamble with special tokens + context + answer, each
    encoded on its own (llm-foundry); an empty context starts from BOS (else EOS)."""
    preambles = _encode_unique(tokenizer, (r.preamble for r in requests), True)
    contexts = _encode_unique(tokenizer, (r.context for r in requests), False)
    answers = _encode_unique(tokenizer, (r.continuation for r in requests), False)
    out = []
    for r in requests:
        context = _without_trailing_eos(tokenizer, preambles[r.preamble]) + contexts[r.context]
        if not answers[r.continuation]:
            raise ValueError(f"continuation {r.continuation!r} tokenizes to no tokens")
        out.append((context or [_start_id(tokenizer)], answers[r.continuation]))
    return out


# ----------------------------------------------------------------------------------------------------------
# Scoring

def model_max_length(model: Any) -> int:
    config = getattr(model, "config", None)
    return int(getattr(config, "max_position_embeddings", None) or DEFAULT_MAX_LENGTH)


def _fit(context: list[int], continuation: list[int], max_length: int) -> list[int]:
    """Concatenate, dropping context tokens from the left when too long (at least one is kept)."""
    keep = min(len(context), max_length - len(continuation))
    return context[len(context) - keep:] + continuation


def fits(continuation: Sequence[int], max_length: int) -> bool:
    """One context token is needed to predict the first continuation token."""
    return len(continuation) <= max_length - 1


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


def score_encoded(model: Any, encoded: Sequence[tuple[list[int], list[int]]], pad_id: int, batch_size: int = 8,
                  max_length: int | None = None, device: str | torch.device | None = None,
                  progress: ProgressFn = None) -> list[ContinuationScore]:
    """Score each (context ids, continuation ids) pair, in input order; every continuation must fit."""
    dev = _prepare(model, device)  # outside inference mode: moved parameters must stay trainable
    max_length = max_length or model_max_length(model)
    for _, continuation in encoded:
        if not fits(continuation, max_length):
            raise ValueError(f"a continuation of {len(continuation)} tokens does not fit max_length {max_length} "
                             "(one context token is needed to predict its first token)")
    sequences = [_fit(ctx, cont, max_length) for ctx, cont in encoded]
    return _score_sequences(model, sequences, [len(c) for _, c in encoded], pad_id, batch_size, dev, progress)


def continuation_logprobs(model: Any, tokenizer: Any, pairs: Sequence[tuple[str, str]], batch_size: int = 8,
                          max_length: int | None = None, device: str | torch.device | None = None,
                          progress: ProgressFn = None) -> list[ContinuationScore]:
    """Score text pairs: the context encoded with special tokens, the continuation without, as given."""
    requests = [Request(0, 0, context, "", continuation, len(continuation)) for context, continuation in pairs]
    return score_encoded(model, encode_requests(tokenizer, requests), _pad_id(tokenizer), batch_size, max_length,
                         device, progress)


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


def _option_score(score: ContinuationScore, request: Request, mode: str) -> float:
    if mode == "token":
        return score.logprob / score.n_tokens
    if mode == "char":
        return score.logprob / max(request.answer_chars, 1)
    return score.logprob


def _item_outcomes(spec: TaskSpec, items: Sequence[dict], requests: Sequence[Request],
                   scores: Sequence[ContinuationScore]) -> dict[int, int]:
    """item -> chosen option (MC, schema) or 1/0 greedy match (LM); ties keep the lower option index."""
    if spec.kind == "language_modeling":
        return {r.item: int(s.greedy_match) for r, s in zip(requests, scores)}
    best: dict[int, tuple[float, int]] = {}
    for request, score in zip(requests, scores):
        value = _option_score(score, request, spec.normalization)
        if request.item not in best or value > best[request.item][0]:
            best[request.item] = (value, request.option)
    return {item: option for item, (_, option) in best.items()}


def _accuracy(spec: TaskSpec, items: Sequence[dict], outcomes: dict[int, int]) -> tuple[float, Optional[dict]]:
    """Accuracy over the scored items; with categories the mean of per-category accuracies."""
    correct = {i: (o if spec.kind == "language_modeling" else int(o == items[i]["gold"])) for i, o in outcomes.items()}
    if not spec.has_categories:
        return sum(correct.values()) / len(correct), None
    per: dict[str, list[int]] = {}
    for item, hit in correct.items():
        per.setdefault(items[item]["category"], []).append(hit)
    categories = {name: sum(h) / len(h) for name, h in sorted(per.items())}
    return sum(categories.values()) / len(categories), categories


def task_result(spec: TaskSpec, items: Sequence[dict], requests: Sequence[Request],
                scores: Sequence[ContinuationScore], n_skipped: int = 0) -> TaskResult:
    """Metrics of one task from the scores of its (scored) requests."""
    outcomes = _item_outcomes(spec, items, requests, scores)
    if not outcomes:
        raise ValueError(f"task {spec.name!r}: no item could be scored ({n_skipped} skipped as too long)")
    accuracy, categories = _accuracy(spec, items, outcomes)
    result = TaskResult(name=spec.name, kind=spec.kind, accuracy=accuracy, n_items=len(outcomes),
                        centered_accuracy=centered_accuracy(accuracy, spec.random_baseline),
                        random_baseline=spec.random_baseline, shots=spec.shots, predictions=outcomes,
                        n_skipped=n_skipped, categories=categories)
    if spec.kind == "language_modeling":
        total = sum(s.logprob for s in scores)
        result.mean_logprob = total / len(outcomes)
        result.mean_token_logprob = total / sum(s.n_tokens for s in scores)
    return result


@dataclass
class _PlannedTask:
    spec: TaskSpec
    items: list[dict]
    requests: list[Request]
    encoded: list[tuple[list[int], list[int]]]
    n_skipped: int = 0


def _plan_task(spec: TaskSpec, items: list[dict], tokenizer: Any, max_length: int, too_long: str) -> _PlannedTask:
    """Requests and their tokens; an item whose answer cannot fit raises naming its file and line, or (too_long
    "skip") is dropped and counted."""
    requests = task_requests(spec, items, tokenizer)
    encoded = encode_requests(tokenizer, requests)
    longest = [0] * (max((r.item for r in requests), default=-1) + 1)
    for request, (_, continuation) in zip(requests, encoded):
        longest[request.item] = max(longest[request.item], len(continuation))
    keep, skipped = items_that_fit(spec.name, spec.path, longest, max_length, too_long)
    kept = set(keep)
    rows = [i for i, r in enumerate(requests) if r.item in kept]
    return _PlannedTask(spec, items, [requests[i] for i in rows], [encoded[i] for i in rows], len(skipped))


def evaluate_task(model: Any, tokenizer: Any, spec: TaskSpec, batch_size: int = 8,
                  device: str | torch.device | None = None, max_length: int | None = None,
                  progress: ProgressFn = None, too_long: str = "error") -> TaskResult:
    plan = _plan_task(spec, load_task(spec), tokenizer, max_length or model_max_length(model), too_long)
    scores = score_encoded(model, plan.encoded, _pad_id(tokenizer), batch_size, max_length, device, progress)
    return task_result(spec, plan.items, plan.requests, scores, plan.n_skipped)


def default_core(specs: Sequence[TaskSpec]) -> CoreSpec:
    return CoreSpec(f"core: mean centered accuracy over {len(specs)} task(s) with the manifest's random baselines "
                    "(not DCLM Core)", tuple(s.name for s in specs))


def evaluate_tasks(model: Any, tokenizer: Any, specs: Sequence[TaskSpec], batch_size: int = 8,
                   device: str | torch.device | None = None, progress: ProgressFn = None,
                   max_length: int | None = None, core: CoreSpec | None = None,
                   too_long: str = "error") -> dict[str, Any]:
    """Per-task accuracy / centered accuracy / item counts, and `core` = mean centered accuracy over
    `core.tasks` (default: every task), labelled by `core_version`."""
    if too_long not in TOO_LONG:
        raise ValueError(f"too_long must be one of {TOO_LONG}, got {too_long!r}")
    core = checked_core(specs, core)
    limit = max_length or model_max_length(model)
    loaded = [(spec, load_task(spec)) for spec in specs]  # validate every file before any model work
    planned = [_plan_task(spec, items, tokenizer, limit, too_long) for spec, items in loaded]
    total = sum(len(p.requests) for p in planned)
    tasks: dict[str, dict[str, Any]] = {}
    offset = 0
    for plan in planned:
        step = None if progress is None else _offset_progress(progress, offset, total)
        scores = score_encoded(model, plan.encoded, _pad_id(tokenizer), batch_size, limit, device, step)
        tasks[plan.spec.name] = task_result(plan.spec, plan.items, plan.requests, scores, plan.n_skipped).summary()
        offset += len(plan.requests)
    return core_summary(tasks, core)


def checked_core(specs: Sequence[TaskSpec], core: CoreSpec | None) -> CoreSpec:
    """The core of these tasks (default: all of them), after checking the task names."""
    names = [s.name for s in specs]
    if not specs:
        raise ValueError("no tasks to evaluate")
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate task names: {sorted({n for n in names if names.count(n) > 1})}")
    core = core or default_core(specs)
    if not core.tasks or set(core.tasks) - set(names):
        raise ValueError(f"core tasks {sorted(set(core.tasks) - set(names))} are not among the tasks {names}")
    return core


def core_summary(tasks: dict[str, dict[str, Any]], core: CoreSpec) -> dict[str, Any]:
    """The evaluation result: task summaries plus the labelled core over `core.tasks`."""
    skipped = sum(tasks[name]["n_skipped"] for name in core.tasks)
    label = core.label + (f" ({skipped} item(s) too long to score were left out)" if skipped else "")
    value = sum(tasks[name]["centered_accuracy"] for name in core.tasks) / len(core.tasks)
    return {"core": value, "core_version": label, "core_tasks": list(core.tasks), "n_tasks": len(tasks),
            "tasks": tasks}


def _offset_progress(progress: Any, offset: int, total: int):
    return lambda done, _total, unit: progress(offset + done, total, unit)


# ----------------------------------------------------------------------------------------------------------
# Comparing methods

def versus_base(value: float, base: float, near_zero: float = 0.0) -> dict[str, float]:
    """Absolute difference to the base, plus the relative one (%) only where |base| > near_zero."""
    out = {"delta": value - base}
    if abs(base) > near_zero:
        out["relative_%"] = 100.0 * (value - base) / abs(base)
    return out


def comparison_rows(scores: dict[str, dict], base_method: str = "random") -> list[dict]:
    """One row per method: centered accuracy per task, core, held-out perplexity and reference loss, and
    figures against the base method (core: absolute difference, relative only when the base core is not near
    zero; perplexity and loss are positive, so relative)."""
    base = scores.get(base_method)
    rows = []
    for method, result in scores.items():
        row: dict[str, Any] = {"method": method}
        row.update({task: round(r["centered_accuracy"], 4) for task, r in result["tasks"].items()})
        row["core"] = round(result["core"], 4)
        row["perplexity"] = round(result["heldout_perplexity"], 3)
        row["heldout_ref_loss"] = round(result["heldout_reference_loss"], 4)
        if base is not None:
            core = versus_base(result["core"], base["core"], NEAR_ZERO_BASE)
            row[f"core_delta_vs_{base_method}"] = round(core["delta"], 4)
            if "relative_%" in core:
                row[f"core_vs_{base_method}_%"] = round(core["relative_%"], 2)
            ppl = versus_base(result["heldout_perplexity"], base["heldout_perplexity"])
            row[f"ppl_vs_{base_method}_%"] = round(ppl["relative_%"], 2)
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------------------------------------
# Held-out perplexity

def _rolling_windows(ids: Sequence[int], max_length: int) -> list[tuple[list[int], int]]:
    """(tokens, n_scored) windows: the model reads tokens[:-1] (at most max_length) and the last n_scored
    positions are scored; every token after the first is scored exactly once, each chunk of max_length
    targets with as much preceding context as fits (lm-eval's rolling windows with context_len 1)."""
    windows = []
    for lo in range(1, len(ids), max_length):
        hi = min(lo + max_length, len(ids))
        start = max(0, hi - 1 - max_length)
        windows.append((list(ids[start:hi]), hi - lo))
    return windows


def perplexity(model: Any, data: Iterable[str] | Iterable[Sequence[int]], tokenizer: Any = None,
               batch_size: int = 8, max_length: int | None = None, device: str | torch.device | None = None,
               progress: ProgressFn = None, prefix: str = "tokenizer") -> float:
    """exp(mean next-token cross-entropy over every scored token of every sequence).

    `data` holds texts (then `tokenizer` is required) or token-id sequences. prefix "tokenizer": texts are
    encoded with the tokenizer's special tokens (a trailing EOS dropped), token sequences used as given; the
    first token is context only. prefix "bos": lm-eval's rolling log-likelihood: no special tokens, and one
    BOS (else EOS) in front so the first token is scored too. Long sequences are scored in windows.
    """
    if prefix not in PERPLEXITY_PREFIXES:
        raise ValueError(f"prefix must be one of {PERPLEXITY_PREFIXES}, got {prefix!r}")
    dev = _prepare(model, device)
    max_length = max_length or model_max_length(model)
    if max_length < 1:
        raise ValueError(f"max_length must be >= 1, got {max_length}")
    sequences = _as_token_sequences(list(data), tokenizer, prefix)
    windows = [window for seq in sequences for window in _rolling_windows(seq, max_length)]
    if not windows:
        raise ValueError("perplexity needs at least one sequence of two or more tokens")
    pad_id = 0 if tokenizer is None else _pad_id(tokenizer)
    return _windows_perplexity(model, windows, pad_id, batch_size, dev, progress)


@torch.inference_mode()
def _windows_perplexity(model: Any, windows: list[tuple[list[int], int]], pad_id: int, batch_size: int,
                        dev: torch.device, progress: ProgressFn) -> float:
    total_nll, total_tokens, done = 0.0, 0, 0
    for batch in _length_sorted_batches([len(tokens) for tokens, _ in windows], batch_size):
        ids, mask = _pad_batch([windows[i][0][:-1] for i in batch], pad_id, dev)
        logits = _forward_logits(model, ids, mask)
        for row, index in enumerate(batch):
            tokens, n = windows[index]
            width = len(tokens) - 1
            targets = torch.tensor(tokens[len(tokens) - n:], dtype=torch.long, device=dev)
            nll = torch.nn.functional.cross_entropy(logits[row, width - n: width].float(), targets, reduction="sum")
            total_nll += float(nll.double())
            total_tokens += n
        done += len(batch)
        if progress is not None:
            progress(done, len(windows), "windows")
    return math.exp(total_nll / total_tokens)


def _as_token_sequences(data: list, tokenizer: Any, prefix: str) -> list[list[int]]:
    if all(isinstance(d, str) for d in data):
        if tokenizer is None:
            raise ValueError("perplexity of texts needs a tokenizer")
        encoded = _encode_unique(tokenizer, data, special_tokens=prefix == "tokenizer")
        sequences = [_without_trailing_eos(tokenizer, encoded[text]) for text in data]
    else:
        sequences = [[int(t) for t in seq] for seq in data]
    if prefix == "tokenizer":
        return sequences
    if tokenizer is None:
        raise ValueError("perplexity with prefix 'bos' needs the tokenizer (for its BOS or EOS id)")
    return [[_start_id(tokenizer)] + seq for seq in sequences]
