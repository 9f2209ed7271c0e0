"""Optional backend (`eval.backend: lm_eval`, `pip install 'gmates[lm_eval]'`): the same task files scored by
lm-eval-harness (`lm_eval.simple_evaluate` on the in-memory model, one task-config dict per task).

The texts follow llm-foundry's layout as far as lm-eval allows: the item's context is the stripped field plus
the right-stripped continuation_delimiter, the answer follows after one space (lm-eval's target_delimiter)
and examples are joined by example_delimiter. What stays lm-eval's: its few-shot sampler (other examples
than llm-foundry's; from the whole file, also for tasks with categories), the joint encoding of context and
answer split at the context's length, its batching and truncation. Per-item log-likelihoods come back through
`log_samples` and go through gmates' own metrics (normalisation, categories, centered accuracy, core), so the
two backends report the same quantities.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from .evaluation import (
    ContinuationScore,
    CoreSpec,
    TaskSpec,
    checked_core,
    core_summary,
    load_task,
    resolve_device,
    task_result,
)
from .icl import Request


def _text(field: str, tail: str) -> Callable[[dict], str]:
    return lambda doc: doc[field].strip() + tail


def task_config(spec: TaskSpec) -> dict[str, Any]:
    """lm-eval task config for one gmates task over its jsonl file."""
    tail = spec.continuation_delimiter.rstrip()
    config: dict[str, Any] = {
        "task": f"gmates_{spec.name}", "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": spec.path}},
        "test_split": "test", "fewshot_split": "test", "target_delimiter": " ",
        "fewshot_delimiter": spec.example_delimiter, "description": spec.prompt_string,
        "metric_list": [{"metric": "acc"}]}
    if spec.kind == "multiple_choice":
        config.update(output_type="multiple_choice", doc_to_text=_text("query", tail),
                      doc_to_choice=lambda doc: doc["choices"], doc_to_target=lambda doc: doc["gold"])
    elif spec.kind == "schema":  # lm-eval's partial evaluation: the options are contexts, the text is the gold index
        config.update(output_type="multiple_choice", doc_to_text=lambda doc: doc["gold"],
                      doc_to_choice=lambda doc: [option + tail for option in doc["context_options"]],
                      doc_to_target=lambda doc: doc["continuation"].strip())
    else:  # lm-eval adds no target_delimiter to a loglikelihood request: the space goes into the target
        config.update(output_type="loglikelihood", doc_to_text=_text("context", tail), target_delimiter="",
                      doc_to_target=lambda doc: " " + doc["continuation"].strip())
    return config


def _answers(item: dict, kind: str) -> list[str]:
    """The answer of each option as written (the divisor of length_normalize: char)."""
    if kind == "multiple_choice":
        return item["choices"]
    n_options = len(item["context_options"]) if kind == "schema" else 1
    return [item["continuation"].strip()] * n_options


def task_scores(lm: Any, spec: TaskSpec, items: Sequence[dict]) -> tuple[list[Request], list[ContinuationScore]]:
    """Requests and scores of one task as lm-eval ran them (token counts from lm-eval's own split)."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    out = lm_eval.simple_evaluate(model=lm, tasks=[task_config(spec)], num_fewshot=spec.shots, limit=spec.max_items,
                                  log_samples=True, bootstrap_iters=0, fewshot_random_seed=spec.fewshot_random_seed,
                                  task_manager=TaskManager(include_defaults=False))  # skips indexing its own tasks
    samples = sorted(out["samples"][f"gmates_{spec.name}"], key=lambda sample: sample["doc_id"])
    requests, scores = [], []
    for sample in samples:
        item = sample["doc_id"]
        answers = _answers(items[item], spec.kind)
        for option, ((context, continuation), [(logprob, greedy)]) in enumerate(zip(sample["arguments"],
                                                                                     sample["resps"])):
            n_tokens = len(lm._encode_pair(context, continuation)[1])
            requests.append(Request(item, option, "", context, continuation, len(answers[option])))
            scores.append(ContinuationScore(float(logprob), n_tokens, bool(greedy)))
    return requests, scores


def evaluate_tasks(model: Any, tokenizer: Any, specs: Sequence[TaskSpec], batch_size: int = 8,
                   device: Any = None, core: CoreSpec | None = None) -> dict[str, Any]:
    """Like evaluation.evaluate_tasks, scored by lm-eval (which truncates over-long inputs itself)."""
    from lm_eval.models.huggingface import HFLM

    core = checked_core(specs, core)
    dev = resolve_device(device)
    model.to(dev).eval()
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=str(dev))
    tasks = {}
    for spec in specs:
        items = load_task(spec)
        requests, scores = task_scores(lm, spec, items)
        tasks[spec.name] = task_result(spec, items, requests, scores).summary()
    return core_summary(tasks, core)
