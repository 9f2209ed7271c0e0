"""Checks of settings against the data they meet, run as soon as that data is at hand (before expensive work).

The manifest schema (core/manifest.py) catches what a manifest alone gets wrong; these catch what only the pool,
the tokenizer or the task files reveal: a cluster count larger than the pool, a reference answer or an eval
continuation that cannot fit the model's window, a model that cannot be loaded. Every message names the
setting (dotted manifest field) and, where there is one, the file and line.
"""
from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

TooLong = Literal["error", "skip"]


class ValidationError(ValueError):
    """A setting that does not fit the data; the message names the setting, file and line."""


class ModelLoadError(ValidationError):
    pass


@contextmanager
def loading_model(setting: str, name: str) -> Iterator[None]:
    """Turn a loader's failure into one line that names the model and the manifest setting."""
    from huggingface_hub.errors import HFValidationError

    try:
        yield
    except ModelLoadError:
        raise
    except (OSError, HFValidationError) as err:
        reason = str(err).strip().splitlines()[0].rstrip(".") if str(err).strip() else type(err).__name__
        raise ModelLoadError(
            f"{setting} {name!r} cannot be loaded: {reason}. A hub model must be downloaded once before offline "
            f"use (HF_HUB_OFFLINE=1); a local folder is resolved relative to the manifest.") from err
    except ValueError as err:
        if "trust_remote_code" not in str(err):
            raise
        raise ModelLoadError(
            f"{setting} {name!r} needs custom code (its config's auto_map names python files that would run on "
            f"load); gmates never runs a model's own code unless the manifest sets "
            f"{setting.split('.')[0]}.trust_remote_code: true. Read that code first, or use a model without it."
        ) from None


def check_pool_size(n_docs: int, clustering_k: int, oracle_pool_size: int, selection_ratio: float = 1.0) -> None:
    """Settings that need at least so many pool documents (known once every shard is read)."""
    if clustering_k > n_docs:
        raise ValidationError(f"clustering.k ({clustering_k}) is larger than the pool ({n_docs} documents); "
                              f"set clustering.k to at most {n_docs}")
    if oracle_pool_size > n_docs:
        raise ValidationError(f"oracle.pool_size ({oracle_pool_size}) is larger than the pool ({n_docs} "
                              f"documents); set oracle.pool_size to at most {n_docs}")
    check_selection_size(n_docs, selection_ratio)


def _round_up(value: float, digits: int = 3) -> float:
    """`value` rounded up to `digits` significant digits (a minimum that, written as shown, still suffices)."""
    scale = 10 ** (digits - 1 - math.floor(math.log10(value)))
    return math.ceil(value * scale) / scale


def check_selection_size(n_docs: int, ratio: float) -> None:
    """selection.ratio selects at least one document of the pool (an empty selection would be committed and
    released, and fail only at pretraining)."""
    from .selection import selection_total

    if selection_total(n_docs, ratio) < 1:
        minimum = _round_up(1 / (2 * n_docs))  # round(ratio * n) >= 1 from ratio = 1 / 2n (halves up)
        raise ValidationError(f"selection.ratio ({ratio}) selects no document of the pool ({n_docs} documents): "
                              f"round({ratio} x {n_docs}) = 0; set selection.ratio to at least {minimum}")


def check_cluster_budgets(budgets: Sequence[int], ratio: float, largest_cluster: int) -> None:
    """Per-cluster budgets (selection.budget_rounding: floor rounds each down) that select nothing."""
    if int(sum(budgets)) < 1:
        raise ValidationError(f"selection.budget_rounding: floor gives every cluster a budget of 0 with "
                              f"selection.ratio ({ratio}) (the largest cluster has {largest_cluster} documents); "
                              f"set selection.ratio to at least {_round_up(1 / largest_cluster)} or "
                              f"selection.budget_rounding: exact")


def fit_prompt_answer(prompt: list[int], answer: list[int], max_tokens: int, *, example: str, setting: str,
                      on_too_long: Literal["truncate_prompt", "error"] = "truncate_prompt") -> tuple[list[int], bool]:
    """(prompt tokens that fit, truncated?): the prompt is cut from the left so the whole answer is kept.

    At least one prompt token must remain (it predicts the answer's first token); an answer that leaves no room
    for it, or any overflow with on_too_long="error", names the example and the setting.
    """
    if len(prompt) + len(answer) <= max_tokens:
        return prompt, False
    room = max_tokens - len(answer)
    if on_too_long == "error" or room < 1:
        why = (f"its answer alone has {len(answer)} tokens" if room < 1 else
               f"prompt {len(prompt)} + answer {len(answer)} tokens (too_long: error)")
        raise ValidationError(f"{example} does not fit {setting}={max_tokens}: {why}; raise {setting} or shorten it")
    return prompt[len(prompt) - room:], True


def task_item_lines(path: str | Path) -> list[int]:
    """1-based line numbers of the items of a jsonl task file (blank lines hold no item)."""
    with open(path, encoding="utf-8") as handle:
        return [number for number, line in enumerate(handle, start=1) if line.strip()]


def items_that_fit(task: str, path: str | Path, continuation_tokens: Sequence[int], max_length: int,
                   on_too_long: TooLong = "error") -> tuple[list[int], list[int]]:
    """(indices of the items whose longest continuation fits max_length with one context token, their lines
    skipped). `continuation_tokens[i]` is item i's longest continuation in tokens. With on_too_long="error"
    the first item that cannot fit names the task, file and line."""
    lines = task_item_lines(path)
    keep, skipped = [], []
    for index, n_tokens in enumerate(continuation_tokens):
        if n_tokens <= max_length - 1:
            keep.append(index)
            continue
        if on_too_long == "error":
            raise ValidationError(
                f"{path}:{lines[index]}: task {task!r}: a continuation of {n_tokens} tokens cannot fit the model's "
                f"{max_length}-token window (one context token is needed); set eval.too_long: skip to leave such "
                f"items out (they are counted)")
        skipped.append(lines[index])
    if not keep:
        raise ValidationError(f"{path}: task {task!r}: none of its {len(skipped)} items fits the model's "
                              f"{max_length}-token window")
    return keep, skipped
