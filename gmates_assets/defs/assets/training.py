"""Training stage: the target LM trained on each method's selection, scored on held-out tasks, compared."""
from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import polars as pl

from ...core.hashing import stable_hash
from ...core.manifest import replicate_identity
from ...core.task_files import validate_task_file
from ...core.tokenize import load_lm_tokenizer, special_ids
from ...lazy import lazy_module
from ..artifacts import documents_column, pool_tokens
from ..declare import METHODS, AssetDecl, Input
from ..runtime import md, png_md, table
from ..torchrun import run_pretrain_worker
from ..wiring import demo_params, heldout_texts, reference_examples, textset_identity
from .influence import lm_architecture, optim_config

eval_suite, evaluation, lm, plots, pretrain_job = (
    lazy_module(f"gmates_assets.core.{m}") for m in ("eval_suite", "evaluation", "lm", "plots", "pretrain_job"))

GROUP = "training"
MODEL_DIR = "model"


def observe_eval_inputs(loaded) -> str:
    """Content identity of everything eval reads besides the model: task files (and a suite's settings, which
    live outside the manifest), held-out sets."""
    from ...core.hashing import sha256_file

    tasks, core = eval_suite.all_tasks(loaded.manifest.eval, loaded.resolve)
    files = {task.name: sha256_file(loaded.resolve(task.path)) if task.path else "demo" for task in tasks}
    for task in tasks:  # a bad item fails here, before any compute, not after pretraining
        if task.path:
            validate_task_file(loaded.resolve(task.path), files[task.name], task.kind, task.has_categories)
    return stable_hash({"tasks": files, "settings": [t.model_dump(exclude={"path"}) for t in tasks],
                        "core": core.label if core else None,
                        "heldout_text": textset_identity(loaded, "heldout_text"),
                        "heldout_reference": textset_identity(loaded, "heldout_reference"),
                        "demo": loaded.manifest.demo if not all(t.path for t in tasks) else None},
                       64)


def _task_specs(step, out: Path) -> tuple[list[evaluation.TaskSpec], evaluation.CoreSpec | None]:
    """Task specs and the core they report; demo tasks are written into the artifact so every score names
    the exact file it used."""
    section = step.manifest.eval
    tasks, core = eval_suite.all_tasks(section, step.loaded.resolve)
    demo_tasks = None
    specs = []
    for task in tasks:
        if task.path:
            path = step.loaded.resolve(task.path)
        else:
            from ...core.demo_corpus import generate_eval_tasks

            demo_tasks = demo_tasks or generate_eval_tasks(demo_params(step.loaded))
            if task.name not in demo_tasks:
                raise ValueError(f"eval.tasks: {task.name!r} has no path and is not a demo task {sorted(demo_tasks)}")
            path = out / "tasks" / f"{task.name}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(json.dumps(item, sort_keys=True) + "\n" for item in demo_tasks[task.name]))
        specs.append(eval_suite.task_spec(task, path, section.seed))
    return specs, core


def _selected_tokens(step) -> Iterator[np.ndarray]:
    """Token rows of the selected documents, in pool order (independent of the method's ranking), streamed."""
    selected = pl.read_parquet(step.input("selected_subset").file("selected.parquet"))["doc_id"]
    return pool_tokens(step).rows(documents_column(step, "doc_id").find(selected))


def _pretrain_job(step, sequences: lm.PackedSequences, train_dir: Path, vocab_size: int) -> pretrain_job.PretrainJob:
    section = step.manifest.pretrain
    start_state, start_step = None, 0
    if section.init == "probe":
        start_state = step.input("probe_checkpoint").path
        start_step = int(lm.read_checkpoint_meta(start_state)["step"])
    return pretrain_job.PretrainJob.for_rows(
        sequences, out_dir=str(train_dir), arch=lm_architecture(section.model, vocab_size).to_dict(),
        model_seed=section.seed, optim=optim_config(section.optim, start_step + section.steps).to_dict(),
        steps=section.steps, batch_size=section.batch_size, seed=section.seed,
        checkpoint_every=section.checkpoint_every, start_state=str(start_state) if start_state else None,
        precision=section.precision, device=step.device)


def _train(step, job: pretrain_job.PretrainJob):
    """-> (trained model, summary metadata): in this process, or under torchrun through Dagster Pipes."""
    section = step.manifest.pretrain
    if section.backend == "in_process":
        model, summary = pretrain_job.run(job, progress=step.progress("pretrain"))
        return model, pretrain_job.summary_metadata(summary, lm.SINGLE_PROCESS)
    # The job file sits in the resumable train dir: a re-run after a failure resumes from its checkpoints.
    reported = run_pretrain_worker(step.context, job.write(Path(job.out_dir) / "job.json"), section.nproc_per_node)
    return pretrain_job.load_result(job, reported), reported


def _pretrain(step, out: Path) -> dict:
    section = step.manifest.pretrain
    tok_dir = step.input("lm_tokenizer").path
    tok = load_lm_tokenizer(str(tok_dir))
    with lm.packed_scratch(_selected_tokens(step), section.seq_len, special_ids(tok)[0], out) as sequences:
        job = _pretrain_job(step, sequences, out / "train", len(tok))
        model, reported = _train(step, job)
    lm.save_hf_pretrained(model, str(tok_dir), out / MODEL_DIR)
    shutil.rmtree(out / "train")  # resumable training state; the released model is the HF folder
    losses = reported.pop("losses")  # shown as the loss curve
    start_step = int(lm.read_checkpoint_meta(job.start_state)["step"]) if job.start_state else 0
    return {"init": section.init, "start_step": start_step, "steps": section.steps,
            "packed_sequences": int(len(sequences)), "backend": section.backend, "precision": section.precision,
            **reported,  # final loss, tokens seen, world size, ... (over Dagster Pipes from a torchrun worker)
            "loss_curve": png_md(plots.line_plot({"train loss": losses}, f"{step.partition}: pretraining loss"))}


def _evaluate(step, out: Path) -> dict:
    from transformers import AutoModelForCausalLM

    section = step.manifest.eval
    model_dir = step.input("pretrained_checkpoint").path / MODEL_DIR
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), trust_remote_code=False)
    tok = load_lm_tokenizer(str(model_dir))
    specs, core = _task_specs(step, out)
    if section.backend == "lm_eval":
        from ...core import lm_eval_backend

        results = lm_eval_backend.evaluate_tasks(model, tok, specs, batch_size=section.batch_size, core=core)
    else:
        results = evaluation.evaluate_tasks(model, tok, specs, batch_size=section.batch_size,
                                            progress=step.progress("eval"), core=core, too_long=section.too_long,
                                            device=step.device)
    results["heldout_perplexity"] = evaluation.perplexity(model, heldout_texts(step.loaded), tokenizer=tok,
                                                          batch_size=section.batch_size,
                                                          prefix=section.perplexity_prefix, device=step.device)
    pairs = lm.tokenize_reference(tok, reference_examples(step.loaded, "heldout_reference"),
                                  step.manifest.pretrain.seq_len, "pretrain.seq_len",
                                  step.manifest.sources.heldout_reference.too_long)
    batches = lm.make_reference_batches(pairs, section.batch_size, special_ids(tok)[1])
    results["heldout_reference_loss"] = lm.reference_loss(model, batches)
    # Which configuration (all sections, seeds blanked) and seeds this score belongs to, for `gmates report`.
    # It reads the whole manifest, so it is part of the cache key too (eval_identity): content = f(key).
    results["provenance"] = {"method": step.partition, **replicate_identity(step.raw_loaded.manifest)}
    (out / "scores.json").write_text(json.dumps(results, indent=2, sort_keys=True, default=float) + "\n")
    rows = [{"task": name, "accuracy": round(r["accuracy"], 4), "centered": round(r["centered_accuracy"], 4),
             "items": r["n_items"]} for name, r in results["tasks"].items()]
    return {"core": round(float(results["core"]), 4), "core_version": results["core_version"],
            "heldout_perplexity": round(results["heldout_perplexity"], 3),
            "heldout_reference_loss": round(results["heldout_reference_loss"], 4), "tasks": table(rows)}


def _markdown_table(rows: list[dict]) -> str:
    columns = list(dict.fromkeys(k for r in rows for k in r))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def build_method_comparison(step, out: Path) -> dict:
    scores = {m: json.loads(artifact.file("scores.json").read_text())
              for m, artifact in step.inputs("eval_scores").items()}
    rows = evaluation.comparison_rows(scores)
    pl.DataFrame(rows).write_csv(out / "comparison.csv")
    groups = {m: {**{t: r["centered_accuracy"] for t, r in s["tasks"].items()}, "core": s["core"]}
              for m, s in scores.items()}
    png = plots.grouped_bar_plot(groups, "centered accuracy by task and method")
    (out / "comparison.png").write_bytes(png)
    return {"comparison": md(_markdown_table(rows)), "plot": png_md(png, "method comparison"),
            "best_core": max(rows, key=lambda r: r["core"])["method"]}


def eval_identity(loaded, _instance=None, _graph=None) -> dict:
    return {"replicate": replicate_identity(loaded.manifest)}


# ------------------------------------------------------------------------------------------ declarations
DECLS = [
    AssetDecl("eval_tasks", GROUP, "Eval task files, held-out text and held-out reference set (content hash).",
              observe=observe_eval_inputs, sections=("eval.tasks", "eval.heldout_text", "sources.heldout_reference")),
    AssetDecl("pretrained_checkpoint", GROUP,
              "The target LM trained on this method's selection (same token budget and seed).",
              compute=_pretrain, partitioning=METHODS, resumable=True, sections=("pretrain",),
              finite="pretrain.optim.lr",
              inputs=(Input("selected_subset", "same"), Input("tokenized_pool_index"), Input("documents_index"),
                      Input("probe_checkpoint"), Input("lm_tokenizer")),
              kinds=frozenset({"pytorch", "huggingface"})),
    AssetDecl("eval_scores", GROUP,
              "Log-likelihood task accuracies, centered accuracy, core score and held-out perplexity.",
              compute=_evaluate, finite="pretrain.optim.lr", partitioning=METHODS, version="2", identity=eval_identity,
              inputs=(Input("pretrained_checkpoint", "same"), Input("eval_tasks")),
              sections=("eval", "demo", "sources.heldout_reference", "pretrain.seq_len"), kinds=frozenset({"json"})),
    AssetDecl("method_comparison", GROUP,
              "The paper's table in miniature: every method's scores side by side, vs random.",
              compute=build_method_comparison, inputs=(Input("eval_scores", "all"),), version="2",
              kinds=frozenset({"csv", "png"})),
]
