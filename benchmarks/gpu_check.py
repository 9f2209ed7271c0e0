"""GPU checks (issue 21 item 3): the CUDA paths measured, one part at a time, each skipped cleanly if it fails.

    bash benchmarks/gpu_check.sh                      # on a GPU machine: every part under its time budget
    python benchmarks/gpu_check.py --part oracle --work W --out DIR [--device cuda]   # one part -> W/part_oracle.json
    python benchmarks/gpu_check.py --summarize --work W --out DIR     # -> DIR/gpu_check.{json,md}, gpu_figures.json
    python benchmarks/gpu_check.py --smoke            # every part at tiny size on the CPU, in this process

Parts (what each measures; "tool" is gmates' own code path, "bare" a plain loop doing the same work):

* embeddings: a base-size BERT encoder (hidden 768, 12 layers, 12 heads) with RANDOM weights, made offline from a
  BertConfig and a WordPiece vocabulary written here (no base-size encoder ships offline; throughput is what
  counts, the vectors mean nothing). The tool's path (core/encode: chunk_encoder_inputs, length-sorted trimmed
  batches, pooling) vs a bare AutoModel loop on the same tokenized chunks in document order, fp32 and bf16:
  docs/s and the max |difference| of the chunk vectors. The manifest has no encoder precision setting: bf16
  here is the loaded model cast to bfloat16 before the tool's encode path (what a caller of core.encode can
  do). With zarr installed, embed_documents end to end (zarr writes included) is timed too.
* oracle: probe_rollouts (core/oracle) with a >= 100M-parameter llama probe, oracle.precision fp32 and bf16
  (autocast; the option exists): rollouts/s end to end and steady state (after the first committed chunk).
* selection: group_greedy_select on the GPU (torch loop) vs the CPU (numpy, 1 and all workers) vs the
  reference loop (reference_greedy per cluster, time-boxed and extrapolated by sum(k_c * n_c) when cut),
  synthetic h (topic clusters, members in index order, no faiss needed): seconds, speedups, identical picks.
* torchrun: `pretrain.backend: torchrun` with 1 process: the worker gmates_assets.pipes.pretrain_worker
  under `python -m torch.distributed.run --standalone --nproc_per_node=1` (the command defs/torchrun.py
  builds), inside an emulated Dagster Pipes session (the protocol files, so dagster itself is not needed):
  what the worker reports (device, tokens seen, worker seconds) -> tokens/s; a short and a long job, whose
  difference is the training rate without the fixed costs (model build, checkpoint write).
* end_to_end: benchmarks/end_to_end.py --docs N --device D --out OUT/end_to_end_gpu.json, if that file exists
  (OUT/gpu_figures.json, with the parts measured before it, is written first).

gpu_figures.json (read by end_to_end.py to predict GPU time):
    {"format": "gmates-gpu-figures-v1", "card": "NVIDIA H100 80GB HBM3", "device": "cuda", "smoke": false,
     "assets": {"embeddings": {"docs_per_s": ..., "tokens_per_doc": ..., "precision": "bf16", ...},
                "oracle_random": {"rollouts_per_s": ..., "rollout_length": T, "precision": "fp32", ...},
                "selected_subset": {"docs_per_s": ..., ...},
                "pretrained_checkpoint": {"tokens_per_s": ..., "fixed_seconds": ..., "precision": "bf16", ...}}}
An asset whose part failed is absent; every rate is per second of wall time on that card.
"""
from __future__ import annotations

import argparse
import base64
import copy
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import zlib
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PARTS = ("embeddings", "oracle", "selection", "torchrun", "end_to_end")
FIGURES_FORMAT = "gmates-gpu-figures-v1"
E2E_DOCS = 100_000
REFERENCE_BOX_S = {"smoke": 1.0, "full": 30.0}  # the reference loop's time box; extrapolated when cut
TORCHRUN_STEPS = {"smoke": (2,), "full": (4, 40)}  # a short and a long job: their difference is the training rate


# ------------------------------------------------------------------------------------------------- helpers


def pick_device(setting: str) -> torch.device:
    from gmates_assets.core.devices import resolve_device

    return resolve_device(setting)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def card_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"


def rounded(value: float, digits: int = 4) -> float:
    return float(f"{value:.{digits}g}")


def words(n: int, seed: int) -> list[str]:
    """Pronounceable pseudo-words (the synthetic text's vocabulary)."""
    rng = np.random.default_rng(seed)
    onsets, vowels = "b c d f g h k l m n p r s t v w z br st tr pl".split(), "a e i o u ai ea ou".split()
    out: set[str] = set()
    while len(out) < n:
        out.add("".join(rng.choice(onsets) + rng.choice(vowels) for _ in range(int(rng.integers(1, 4)))))
    return sorted(out)


def web_texts(n_docs: int, vocab: list[str], median_words: int, seed: int) -> list[str]:
    """Documents at web-page lengths: lognormal word counts (median `median_words`, 40 .. 8x the median),
    Zipf-like word frequencies, sentences and paragraphs."""
    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.lognormal(np.log(median_words), 0.8, n_docs), 40, 8 * median_words).astype(int)
    p = 1.0 / np.arange(1, len(vocab) + 1)
    p /= p.sum()
    texts = []
    for length in lengths:
        picked = rng.choice(len(vocab), size=int(length), p=p)
        sentences = [" ".join(vocab[i] for i in picked[s:s + 14]).capitalize() + "."
                     for s in range(0, int(length), 14)]
        texts.append("\n".join(" ".join(sentences[p:p + 6]) for p in range(0, len(sentences), 6)))
    return texts


# --------------------------------------------------------------------------------------------- embeddings


def make_bert_encoder(folder: Path, tiny: bool, device: torch.device, seed: int = 0) -> tuple[Path, list[str]]:
    """A BERT encoder folder (random weights, seeded) and a WordPiece tokenizer over the synthetic words."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    vocab = words(3000 if tiny else 20000, seed)
    folder.mkdir(parents=True, exist_ok=True)
    letters = sorted(set("".join(vocab)) | set(".,"))
    entries = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *letters, *(f"##{c}" for c in letters), *vocab]
    (folder / "vocab.txt").write_text("\n".join(entries) + "\n")
    tokenizer = BertTokenizerFast(vocab_file=str(folder / "vocab.txt"), do_lower_case=True)
    size = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64) if tiny else \
        dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)
    config = BertConfig(vocab_size=max(30522, len(entries)), max_position_embeddings=512, **size)
    torch.manual_seed(seed)
    with torch.device(device):  # random init on the GPU: a CPU init of 110M parameters costs seconds
        model = BertModel(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder, vocab


def bare_chunk_vectors(model, inputs: dict, real: np.ndarray, batch_size: int, device, pooling: str) -> np.ndarray:
    """A plain AutoModel loop: the real chunks in document order, fixed batches padded to chunk_size,
    pooled in float32."""
    n, n_chunks, width = inputs["input_ids"].shape
    docs, chunks = np.nonzero(real)
    ids = inputs["input_ids"][torch.from_numpy(docs), torch.from_numpy(chunks)]
    mask = inputs["attention_mask"][torch.from_numpy(docs), torch.from_numpy(chunks)]
    out = np.zeros((n, n_chunks, model.config.hidden_size), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, len(docs), batch_size):
            i, m = ids[start:start + batch_size].to(device), mask[start:start + batch_size].to(device)
            hidden = model(input_ids=i, attention_mask=m).last_hidden_state.float()
            if pooling == "cls":
                pooled = hidden[:, 0]
            else:
                w = m.unsqueeze(-1).float()
                pooled = (hidden * w).sum(1) / w.sum(1).clamp(min=1.0)
            out[docs[start:start + batch_size], chunks[start:start + batch_size]] = pooled.cpu().numpy()
    return out


def part_embeddings(args, device: torch.device, work: Path) -> dict:
    from gmates_assets.core import encode

    tiny = args.smoke
    folder, vocab = make_bert_encoder(work / "base_encoder", tiny, device)
    # example_hub.yaml's base-size encoder settings (bge-base): 4 chunks of 512, CLS pooling, paper framing
    settings = dict(max_length=256, chunk_size=64, batch_size=16) if tiny else \
        dict(max_length=2048, chunk_size=512, batch_size=128)
    pooling, cls_rule = "cls", "paper"
    docs = {"fp32": 16, "bf16": 24} if tiny else {"fp32": 512, "bf16": 2048}
    texts = web_texts(max(docs.values()), vocab, median_words=60 if tiny else 600, seed=1)
    model, tokenizer = encode.load_encoder(str(folder), device=device)  # the tool's loader (fp32)
    result = {"encoder": "BERT base-size config (hidden 768, 12 layers, 12 heads, FFN 3072), RANDOM weights"
                         if not tiny else "tiny BERT (smoke)",
              "parameters": sum(p.numel() for p in model.parameters()), "pooling": pooling, "cls_rule": cls_rule,
              **settings, "note": "throughput only: random weights, synthetic text; bf16 = model cast to "
                                  "bfloat16 before the tool's encode path (no manifest setting for it)"}
    for precision, n in docs.items():
        m = model if precision == "fp32" else copy.deepcopy(model).to(torch.bfloat16)
        batch = texts[:n]
        start = time.perf_counter()
        blocks = [encode.chunk_encoder_inputs(tokenizer, batch[s:s + encode.EMBED_BLOCK_DOCS],
                                              settings["max_length"], settings["chunk_size"], cls_rule)
                  for s in range(0, n, encode.EMBED_BLOCK_DOCS)]
        t_tokenize = time.perf_counter() - start
        reals = [b["attention_mask"].sum(dim=-1).numpy() > 0 for b in blocks]
        tokens = int(sum(b["attention_mask"].sum() for b in blocks))
        dim = model.config.hidden_size
        # warm-up (CUDA context, cuBLAS handles, kernel selection) on the first block, not timed
        encode._encode_real_chunks(m, blocks[0], reals[0], dim, pooling, settings["batch_size"], device)
        bare_chunk_vectors(m, blocks[0], reals[0], settings["batch_size"], device, pooling)
        sync(device)

        start = time.perf_counter()
        tool = [encode._encode_real_chunks(m, b, r, dim, pooling, settings["batch_size"], device)
                for b, r in zip(blocks, reals)]
        for v, r in zip(tool, reals):
            encode.mean_of_normalized(v, r)
        sync(device)
        t_tool = time.perf_counter() - start
        start = time.perf_counter()
        bare = [bare_chunk_vectors(m, b, r, settings["batch_size"], device, pooling) for b, r in zip(blocks, reals)]
        sync(device)
        t_bare = time.perf_counter() - start
        diff = max(float(np.abs(t - b).max()) for t, b in zip(tool, bare))
        if precision == "fp32":
            fp32_vectors = tool
        else:  # what bf16 costs in accuracy: the same documents' tool vectors in fp32
            entry_vs_fp32 = max(float(np.abs(t[:len(f)] - f).max()) for t, f in zip(tool, fp32_vectors))
        entry = {"docs": n, "real_chunks": int(sum(r.sum() for r in reals)), "tokens": tokens,
                 "tokens_per_doc": rounded(tokens / n), "tokenize_s": rounded(t_tokenize),
                 "tool_encode_s": rounded(t_tool), "bare_encode_s": rounded(t_bare),
                 "tool_docs_per_s": rounded(n / (t_tokenize + t_tool)),
                 "bare_docs_per_s": rounded(n / (t_tokenize + t_bare)),
                 "tool_over_bare_encode": rounded(t_tool / t_bare, 3), "max_abs_diff_chunk_vectors": rounded(diff, 3)}
        if precision == "bf16":
            entry["max_abs_diff_vs_fp32_tool"] = rounded(entry_vs_fp32, 3)
        entry.update(embed_documents_timing(encode, m, tokenizer, batch, settings, pooling, cls_rule, device, work))
        result[precision] = entry
        del m
    return result


def embed_documents_timing(encode, model, tokenizer, texts, settings, pooling, cls_rule, device, work) -> dict:
    """The whole tool step's core (embed_documents: tokenize, encode, zarr writes), if zarr is installed."""
    try:
        import zarr  # noqa: F401
    except ImportError:
        return {"embed_documents": "not timed: zarr is not installed here"}
    out = work / f"embed-{model.dtype}".replace("torch.", "")
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    encode.embed_documents(model, tokenizer, texts, settings["max_length"], settings["chunk_size"], pooling,
                           settings["batch_size"], out, padding_chunks="include", device=device, cls_rule=cls_rule)
    seconds = time.perf_counter() - start
    return {"embed_documents_s": rounded(seconds), "embed_documents_docs_per_s": rounded(len(texts) / seconds)}


# ------------------------------------------------------------------------------------------------- oracle


def probe_arch(tiny: bool):
    from gmates_assets.core import lm

    if tiny:
        return lm.LMArchitecture("llama", hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
                                 max_seq_len=64, vocab_size=512)
    # 134M parameters: 12 layers x 7.1M + untied 32k embeddings and head (2 x 24.6M)
    return lm.LMArchitecture("llama", hidden_size=768, num_layers=12, num_heads=12, intermediate_size=2048,
                             max_seq_len=512, vocab_size=32000)


def parameters_of(arch) -> int:
    from gmates_assets.core import lm

    with torch.device("meta"):  # shapes only, no memory or init
        return lm.count_parameters(lm.build_causal_lm(arch, 0))


def reference_pairs(rng, vocab: int, n: int) -> list:
    pairs = []
    for _ in range(n):  # prompt/answer examples of at most ~100 tokens
        n_prompt, n_answer = int(rng.integers(16, 80)), int(rng.integers(4, 24))
        ids = rng.integers(0, vocab, size=n_prompt + n_answer)
        pairs.append((ids, np.where(np.arange(ids.size) < n_prompt, -100, ids)))
    return pairs


def part_oracle(args, device: torch.device, work: Path) -> dict:
    from gmates_assets.core import lm, oracle

    tiny = args.smoke
    arch = probe_arch(tiny)
    n_rollouts, length, chunk = (3, 3, 1) if tiny else (16, 10, 4)
    rng = np.random.default_rng(0)
    pool = rng.integers(0, arch.vocab_size, size=(8 if tiny else 64, arch.max_seq_len + 1), dtype=np.int64)
    refs = lm.make_reference_batches(reference_pairs(rng, arch.vocab_size, 8 if tiny else 64), 64, pad_id=0)
    model = lm.build_causal_lm(arch, seed=0)
    params = lm.count_parameters(model)
    start = time.perf_counter()
    cfg = lm.OptimConfig(lr=3e-3, min_lr=3e-5, warmup_steps=1, total_steps=10)
    lm.train_lm(model, pool, cfg, 2, 2, 0, work / "probe_ck", checkpoint_every=2, device=device)
    t_checkpoint = time.perf_counter() - start
    del model
    rollouts = oracle.sample_random_rollouts(len(pool), n_rollouts, length, seed=0)
    result = {"probe": arch.to_dict(), "parameters": params, "rollouts": n_rollouts, "rollout_length": length,
              "reference_examples": sum(len(b[0]) for b in refs), "probe_checkpoint_s": rounded(t_checkpoint)}
    deltas = {}
    for precision in ("fp32", "bf16"):
        oracle.probe_rollouts(work / "probe_ck", pool, refs, rollouts[:1], work / f"warm-{precision}", 1,
                              device=device, precision=precision)  # warm-up, not timed
        marks: list[float] = []
        start = time.perf_counter()
        oracle.probe_rollouts(work / "probe_ck", pool, refs, rollouts, work / f"oracle-{precision}", chunk,
                              device=device, precision=precision,
                              progress=lambda done, total, unit: marks.append(time.perf_counter()))
        seconds = time.perf_counter() - start
        steady = (n_rollouts - chunk) / (marks[-1] - marks[0]) if len(marks) > 1 else None
        deltas[precision] = oracle.read_rollouts(work / f"oracle-{precision}")[2]
        result[precision] = {"seconds": rounded(seconds), "rollouts_per_s": rounded(n_rollouts / seconds),
                             "steady_rollouts_per_s": rounded(steady) if steady else None,
                             "ms_per_step": rounded(1000 * seconds / (n_rollouts * length))}
    result["max_abs_delta_fp32_vs_bf16"] = rounded(float(np.abs(deltas["fp32"] - deltas["bf16"]).max()), 3)
    return result


# ---------------------------------------------------------------------------------------------- selection


def synthetic_pool(n: int, d: int, n_topics: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(h float32 [n, d]: a topic direction plus the document's own noise, scaled to a norm in [0.6, 1] as a mean
    of unit chunk vectors is; topic ids; s ~ N(0, 1))."""
    rng = np.random.default_rng(seed)
    topics = rng.standard_normal((n_topics, d)).astype(np.float32)
    topics /= np.linalg.norm(topics, axis=1, keepdims=True)
    label = rng.integers(0, n_topics, size=n)
    h = rng.standard_normal((n, d), dtype=np.float32)
    h *= np.float32(1.0 / np.sqrt(d))
    h += topics[label]
    h *= (rng.uniform(0.6, 1.0, size=(n, 1)) / np.linalg.norm(h, axis=1, keepdims=True)).astype(np.float32)
    return h, label, rng.standard_normal(n).astype(np.float32)


def part_selection(args, device: torch.device, work: Path) -> dict:
    from gmates_assets.core import selection as sel

    n, d, k = (3000, 16, 6) if args.smoke else (100_000, 768, 64)
    reference_box_s = REFERENCE_BOX_S["smoke" if args.smoke else "full"]
    h, label, s = synthetic_pool(n, d, k, seed=1234)
    members = [np.flatnonzero(label == c) for c in range(k)]
    budgets = sel.cluster_budgets(np.array([m.size for m in members]), 0.5)
    torch_device = str(device)  # "cuda" (or "cpu": the torch loop on the CPU, smoke only)
    sel.group_greedy_select(h, s, members[:2], budgets[:2], device=torch_device)  # warm-up, not timed
    sync(device)

    def timed(**options):
        start = time.perf_counter()
        picks = sel.group_greedy_select(h, s, members, budgets, **options)
        sync(device)
        return picks, time.perf_counter() - start

    on_device, t_device = timed(device=torch_device)
    numpy_1, t_numpy_1 = timed(device="numpy", workers=1)
    workers = os.cpu_count() or 1
    numpy_w, t_numpy_w = timed(device="numpy", workers=workers)
    # the reference loop, cluster by cluster, until the time box is spent
    done, identical_reference, start = [], True, time.perf_counter()
    for c in np.argsort([m.size for m in members]):
        local, _ = sel.reference_greedy(h[members[c]], s[members[c]], int(budgets[c]))
        identical_reference &= np.array_equal(members[c][local], on_device.indices[on_device.cluster == c])
        done.append(int(c))
        if time.perf_counter() - start > reference_box_s:
            break
    t_reference_done = time.perf_counter() - start
    work_units = budgets.astype(float) * np.array([m.size for m in members])
    t_reference = t_reference_done * work_units.sum() / work_units[done].sum()
    same = all(np.array_equal(getattr(on_device, f), getattr(other, f))
               for other in (numpy_1, numpy_w) for f in ("indices", "score", "cluster", "rank"))
    return {"n": n, "d": d, "clusters": k, "selected": int(budgets.sum()), "device": torch_device,
            "device_s": rounded(t_device), "numpy_1_worker_s": rounded(t_numpy_1),
            f"numpy_{workers}_workers_s": rounded(t_numpy_w),
            "reference_loop_s": rounded(t_reference),
            "reference_loop": "measured on all clusters" if len(done) == k else
                              f"measured on {len(done)} of {k} clusters ({t_reference_done:.1f} s), "
                              f"EXTRAPOLATED by sum(k_c * n_c)",
            "speedup_vs_reference": rounded(t_reference / t_device, 3), "target_speedup": 20,
            "speedup_vs_numpy_1_worker": rounded(t_numpy_1 / t_device, 3),
            "picks_identical_device_vs_numpy": bool(same),
            "picks_identical_device_vs_reference": bool(identical_reference),
            "docs_per_s": rounded(n / t_device)}


# ----------------------------------------------------------------------------------------------- torchrun


def pipes_env(context_file: Path, messages_file: Path) -> dict[str, str]:
    """The two bootstrap variables of a Dagster Pipes session with a file context and file messages (what
    dg.open_pipes_session(PipesTempFileContextInjector, PipesTempFileMessageReader) sets)."""
    def encode_param(value: dict) -> str:
        return base64.b64encode(zlib.compress(json.dumps(value).encode("utf-8"))).decode("ascii")

    context_file.write_text(json.dumps({
        "asset_keys": ["pretrained_checkpoint"], "code_version_by_asset_key": None, "provenance_by_asset_key": None,
        "partition_key": None, "partition_key_range": None, "partition_time_window": None, "run_id": "gpu-check",
        "job_name": None, "retry_number": 0, "extras": {}}))
    return {"DAGSTER_PIPES_CONTEXT": encode_param({"path": str(context_file)}),
            "DAGSTER_PIPES_MESSAGES": encode_param({"path": str(messages_file)})}


def reported_metadata(messages_file: Path) -> dict:
    """The metadata of the last report_asset_materialization message, as plain values."""
    metadata = None
    for line in messages_file.read_text().splitlines():
        message = json.loads(line)
        if message.get("method") == "report_asset_materialization":
            metadata = message["params"]["metadata"]
    if metadata is None:
        raise RuntimeError(f"{messages_file}: the worker reported no materialization")
    return {key: value.get("raw_value") if isinstance(value, dict) else value for key, value in metadata.items()}


def run_worker(job, work: Path, name: str, timeout: float) -> tuple[dict, float]:
    """One `pretrain.backend: torchrun` job with 1 process -> (what rank 0 reported over Pipes, wall seconds)."""
    spec = job.write(work / f"{name}.json")
    messages = work / f"{name}-pipes-messages.jsonl"
    # as defs/torchrun.torchrun_command builds it (that module imports dagster, which this check does not need)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
               "-m", "gmates_assets.pipes.pretrain_worker", "--spec", str(spec)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
           **pipes_env(work / f"{name}-pipes-context.json", messages)}
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"torchrun ({name}) exited {done.returncode}:\n{(done.stdout + done.stderr)[-3000:]}")
    return reported_metadata(messages), wall


def part_torchrun(args, device: torch.device, work: Path) -> dict:
    """Two jobs, short and long: the long one's tokens/s includes the fixed costs (model build, checkpoint
    write); the difference of the two is the training rate alone."""
    from gmates_assets.core import lm, pretrain_job

    tiny = args.smoke
    arch = probe_arch(tiny)
    lengths = TORCHRUN_STEPS["smoke" if tiny else "full"]
    batch, precision = (2, "fp32") if tiny else (16, "bf16")
    rng = np.random.default_rng(0)
    docs = (rng.integers(1, arch.vocab_size, size=int(n)) for n in rng.integers(50, 2000, size=40 if tiny else 600))
    packed = lm.pack_sequences_to_file(docs, arch.max_seq_len, 0, work / "rows.int32")
    runs, deadline = {}, time.monotonic() + args.budget - 5  # the shell's timeout kills this process at the budget
    for steps in lengths:
        optim = lm.OptimConfig(lr=3e-3, min_lr=3e-5, warmup_steps=2, total_steps=steps)
        job = pretrain_job.PretrainJob.for_rows(packed, out_dir=str(work / f"out-{steps}"), arch=arch.to_dict(),
                                                model_seed=0, optim=optim.to_dict(), steps=steps, batch_size=batch,
                                                seed=0, checkpoint_every=steps, precision=precision,
                                                device=str(device))
        runs[steps] = run_worker(job, work, f"job-{steps}", timeout=max(10.0, deadline - time.monotonic()))
    meta, wall = runs[lengths[-1]]
    worker_s = float(meta["worker_seconds"])
    result = {"probe": arch.to_dict(), "parameters": parameters_of(arch), "precision": precision,
              "steps": lengths[-1], "global_batch": batch, "seq_len": arch.max_seq_len,
              "reported_device": meta["device"], "world_size": meta["world_size"], "tokens_seen": meta["tokens_seen"],
              "final_loss": meta["final_loss"], "worker_seconds": rounded(worker_s),
              "wall_seconds_with_torchrun_start": rounded(wall),
              "tokens_per_s_with_fixed_costs": rounded(meta["tokens_seen"] / worker_s),
              "note": "worker_seconds include building the model and writing the final checkpoint"}
    short, _ = runs[lengths[0]]
    extra_s = worker_s - float(short["worker_seconds"])
    if len(lengths) > 1 and extra_s > 0:
        rate = (meta["tokens_seen"] - short["tokens_seen"]) / extra_s
        result.update(training_tokens_per_s=rounded(rate), fixed_seconds=rounded(worker_s - meta["tokens_seen"] / rate))
    return result


# --------------------------------------------------------------------------------------------- end_to_end


def part_end_to_end(args, device: torch.device, work: Path) -> dict:
    script = ROOT / "benchmarks" / "end_to_end.py"
    if args.smoke:
        return {"skipped": "not run at smoke size (tests/test_benchmarks_run.py runs end_to_end.py --smoke)"}
    if not script.is_file():
        return {"skipped": f"{script.relative_to(ROOT)} does not exist on this branch"}
    target = Path(args.out) / "end_to_end_gpu.json"
    # the figures of the parts before this one, for end_to_end.py's GPU prediction (rewritten by --summarize)
    figures = write_figures(Path(args.out), work.parent, card_name(device), str(device), args.smoke)
    command = [sys.executable, str(script), "--docs", str(args.e2e_docs), "--device", device.type, "--out",
               str(target)]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, timeout=max(30, args.budget - 15))
    seconds = time.perf_counter() - start
    print(done.stdout[-6000:], done.stderr[-3000:], sep="\n")
    if done.returncode != 0:
        raise RuntimeError(f"end_to_end.py exited {done.returncode}:\n{done.stderr[-3000:]}")
    return {"command": " ".join(command[1:]), "seconds": rounded(seconds), "output": target.name,
            "written": target.is_file(), "gpu_figures_beforehand": str(figures)}


RUNNERS = {"embeddings": part_embeddings, "oracle": part_oracle, "selection": part_selection,
           "torchrun": part_torchrun, "end_to_end": part_end_to_end}


# ------------------------------------------------------------------------------------------- run, summary


def versions() -> str:
    import importlib.metadata as meta

    names = ("torch", "transformers", "numpy", "polars", "zarr")
    found = {}
    for name in names:
        try:
            found[name] = meta.version(name)
        except meta.PackageNotFoundError:
            found[name] = "absent"
    return ", ".join(f"{k} {v}" for k, v in found.items()) + f"; python {sys.version.split()[0]}"


def run_part(name: str, args, device: torch.device, work: Path) -> dict:
    """One part, never raising: {"part", "status": ok | skipped | error, "seconds", "result" | "error"}."""
    part_work = work / name
    part_work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    print(f"== {name} on {device} ({card_name(device)}), budget {args.budget} s; {versions()}", flush=True)
    try:
        result = RUNNERS[name](args, device, part_work)
        status = "skipped" if "skipped" in result else "ok"
        record = {"part": name, "status": status, "result": result}
    except Exception as err:  # recorded, so the other parts still run
        traceback.print_exc()
        record = {"part": name, "status": "error", "error": f"{type(err).__name__}: {err}"[-2000:]}
    record["seconds"] = rounded(time.perf_counter() - start)
    shutil.rmtree(part_work, ignore_errors=True)  # checkpoints and scratch: GBs at full size
    (work / f"part_{name}.json").write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps(record, indent=1), flush=True)
    return record


def load_parts(work: Path) -> dict[str, dict]:
    """Every part's record; a part that left none (killed at its time budget, crashed) gets one saying so,
    with the exit code gpu_check.sh wrote into rc_<part>."""
    parts = {}
    for name in PARTS:
        path = work / f"part_{name}.json"
        if path.is_file():
            parts[name] = json.loads(path.read_text())
            continue
        rc_file = work / f"rc_{name}"
        rc = rc_file.read_text().strip() if rc_file.is_file() else None
        why = {"124": "killed at its time budget", "137": "killed at its time budget (SIGKILL)"}.get(rc or "", "")
        parts[name] = {"part": name, "status": "no result" if rc is None else "error",
                       "error": f"exit code {rc}{': ' + why if why else ''}; see gpu_check.log" if rc else "not run"}
    return parts


def gpu_figures(parts: dict[str, dict], card: str, device: str, smoke: bool) -> dict:
    """Per-asset rates for end_to_end.py (the format is in this module's docstring)."""
    assets = {}

    def ok(name):
        return parts.get(name, {}).get("result") if parts.get(name, {}).get("status") == "ok" else None

    if (r := ok("embeddings")):
        best = r["bf16"]
        rate = best.get("embed_documents_docs_per_s", best["tool_docs_per_s"])
        assets["embeddings"] = {"docs_per_s": rate, "tokens_per_doc": best["tokens_per_doc"], "precision": "bf16",
                                "path": "embed_documents" if "embed_documents_docs_per_s" in best
                                else "core encode path (no zarr writes)",
                                "encoder": r["encoder"], "max_length": r["max_length"],
                                "chunk_size": r["chunk_size"]}
    if (r := ok("oracle")):
        assets["oracle_random"] = {"rollouts_per_s": r["fp32"]["rollouts_per_s"], "precision": "fp32",
                                   "bf16_rollouts_per_s": r["bf16"]["rollouts_per_s"],
                                   "rollout_length": r["rollout_length"], "probe_parameters": r["parameters"],
                                   "seq_len": r["probe"]["max_seq_len"]}
    if (r := ok("selection")):
        assets["selected_subset"] = {"docs_per_s": r["docs_per_s"], "method": "group_mates greedy only",
                                     "n": r["n"], "d": r["d"], "clusters": r["clusters"]}
    if (r := ok("torchrun")):
        assets["pretrained_checkpoint"] = {"tokens_per_s": r.get("training_tokens_per_s",
                                                                 r["tokens_per_s_with_fixed_costs"]),
                                           "fixed_seconds": r.get("fixed_seconds"), "precision": r["precision"],
                                           "backend": "torchrun x1", "parameters": r["parameters"],
                                           "seq_len": r["seq_len"]}
    return {"format": FIGURES_FORMAT, "card": card, "device": device, "smoke": smoke,
            "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "torch": torch.__version__,
            "assets": assets}


def headline(name: str, record: dict) -> str:
    if record.get("status") != "ok":
        return record.get("error") or record.get("result", {}).get("skipped", "")
    r = record["result"]
    if name == "embeddings":
        return "; ".join(f"{p}: tool {r[p]['tool_docs_per_s']} docs/s vs bare {r[p]['bare_docs_per_s']} docs/s "
                         f"(tokenizing {r[p]['tokenize_s']} s of it; max diff tool vs bare "
                         f"{r[p]['max_abs_diff_chunk_vectors']}"
                         + (f", bf16 vs fp32 {r[p]['max_abs_diff_vs_fp32_tool']}" if p == "bf16" else "")
                         + f"; {r[p]['tokens_per_doc']} tokens/doc)" for p in ("bf16", "fp32"))
    if name == "oracle":
        return (f"{r['parameters']:,}-parameter probe, T={r['rollout_length']}: " +
                "; ".join(f"{p} {r[p]['rollouts_per_s']} rollouts/s (steady {r[p]['steady_rollouts_per_s']})"
                          for p in ("fp32", "bf16")))
    if name == "selection":
        return (f"n={r['n']}, d={r['d']}: {r['device']} {r['device_s']} s, numpy {r['numpy_1_worker_s']} s, "
                f"reference {r['reference_loop_s']} s -> {r['speedup_vs_reference']}x (target 20x); identical "
                f"picks: {r['picks_identical_device_vs_numpy']} (numpy), "
                f"{r['picks_identical_device_vs_reference']} (reference)")
    if name == "torchrun":
        return (f"1 process on {r['reported_device']}, {r['precision']}, {r['parameters']:,} parameters: "
                f"{r.get('training_tokens_per_s', 'n/a')} tokens/s training, "
                f"{r['tokens_per_s_with_fixed_costs']} with the fixed costs "
                f"({r['steps']} steps x {r['global_batch']} x {r['seq_len']})")
    return f"{r.get('seconds')} s, wrote {r.get('output')}: {r.get('written')}"


def write_figures(out: Path, work: Path, card: str, device: str, smoke: bool) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_figures.json").write_text(json.dumps(gpu_figures(load_parts(work), card, device, smoke), indent=1)
                                          + "\n")
    return out / "gpu_figures.json"


def summarize(out: Path, work: Path, card: str, device: str, smoke: bool) -> str:
    parts = load_parts(work)
    write_figures(out, work, card, device, smoke)
    (out / "gpu_check.json").write_text(json.dumps({"card": card, "device": device, "smoke": smoke,
                                                    "versions": versions(), "parts": parts}, indent=1) + "\n")
    lines = [f"GPU checks on **{card}** ({device}{', SMOKE sizes: figures meaningless' if smoke else ''}), "
             f"{versions()}", "", "| part | status | seconds | figures |", "|---|---|---|---|"]
    for name, record in parts.items():
        lines.append(f"| {name} | {record['status']} | {record.get('seconds', '')} | "
                     f"{headline(name, record).replace('|', '/').replace(chr(10), ' ')[:600]} |")
    table = "\n".join(lines) + "\n"
    (out / "gpu_check.md").write_text(table)
    return table


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=PARTS, help="run this part only (gpu_check.sh runs each in its own process)")
    parser.add_argument("--summarize", action="store_true", help="collect the parts' records into --out")
    parser.add_argument("--out", default=os.environ.get("OUT"), help="where the results go (default $OUT)")
    parser.add_argument("--work", help="scratch folder for the parts' records and files (default: a temp folder)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cuda, cuda:N or cpu")
    parser.add_argument("--budget", type=int, default=600, help="this part's time budget in seconds (informative; "
                                                                 "gpu_check.sh enforces it)")
    parser.add_argument("--e2e-docs", type=int, default=E2E_DOCS)
    parser.add_argument("--smoke", action="store_true",
                        help="tiny sizes on the CPU, every part in this process, in seconds "
                             "(tests/test_benchmarks_run.py); the figures are meaningless")
    args = parser.parse_args(argv)
    if args.smoke and args.device == "auto":
        args.device = "cpu"
    device = pick_device(args.device)
    temp = None
    if args.work is None:
        temp = tempfile.TemporaryDirectory(prefix="gpu-check-")
        args.work = temp.name
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    out = Path(args.out) if args.out else work / "out"
    args.out = str(out)
    try:
        names = [args.part] if args.part else ([] if args.summarize else list(PARTS))
        for name in names:
            run_part(name, args, device, work)
        if args.summarize or not args.part:
            print(summarize(out, work, card_name(device), str(device), args.smoke))
            print(f"wrote {out / 'gpu_check.json'}, {out / 'gpu_figures.json'}, {out / 'gpu_check.md'}")
    finally:
        if temp is not None:
            temp.cleanup()


if __name__ == "__main__":
    main()
