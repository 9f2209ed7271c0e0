"""End-to-end cost of a build: every asset's wall time, CPU time, peak memory and rate at N documents, then a
cost model (fixed + per-document terms per asset) and its predictions for 1M and 10M documents.

    python benchmarks/end_to_end.py --docs 5000 --out e2e-5k.json              # one size (minutes)
    python benchmarks/end_to_end.py --sizes 5000 20000 100000 --out e2e.json   # several, then the fitted model
    python benchmarks/end_to_end.py --from e2e-5k.json e2e-20k.json --markdown  # fit runs made separately
    python benchmarks/end_to_end.py --docs 100000 --device cuda --out OUT/end_to_end_gpu.json   # gpu_check.py
    python benchmarks/end_to_end.py --docs 20000 --jsonl my_pool.jsonl         # your own documents

For each size it writes a pool of N documents as jsonl shards (--docs-per-shard each) and a manifest generated
for N into a fresh home (a temporary folder, or --keep DIR), runs `gmates sync` on it (the whole graph, in a
subprocess: in-process runs, as `make demo`), and reads what each materialization recorded
(core/step_usage.py: step_seconds, cpu_seconds, peak_rss_mib; compute_seconds; row and token counts) from the
Dagster instance. The sync's own wall time, CPU time (its process and children, os.wait4) and peak RSS are
measured around it; "overhead" is the sync's wall time not spent inside any step (Dagster runs, waves, source
observation, process start).

The pool: the demo generator's documents (a seeded 3,000-document demo corpus: target-domain, off-domain, junk
and near-duplicate text) concatenated into documents of web-page length: lognormal word counts, median
--median-words (default 500), sigma 0.8, clipped to 40 .. 8x the median. Or --jsonl PATH: the first N records
of your file (field --text-field). The manifest keeps the quickstart's model sizes and fixed work (probe warm-up,
64 x 2 oracle rollouts, bootstrap, 150 pretraining steps per method, evaluation) and sets what a web pool needs:
a BPE of 2,048 trained on a 5,000-document sample, 512 LM tokens per document, the all-MiniLM-L6-v2 encoder at
256 tokens in 2 chunks of 128, k = N / --docs-per-cluster clusters, methods group_mates, mates and random.

The cost model, per asset and for wall and CPU seconds alike: t(N) = fixed + per_doc * N; for cluster_assignments
fixed + c * N * k from two sizes and fixed + per_doc * N + c * N * k from three or more (k-means assignment and its
training sample both grow with N * k, and k = N / docs-per-cluster; reading the vectors and writing the assignments
is linear; at one size it is taken as per-document); for lm_tokenizer fixed + c * min(N, 5,000) (it
trains on a sample of at most 5,000 documents). With two or more sizes each asset's two terms are fitted by least
squares (both kept >= 0; for an asset that does a fixed amount of work, a per-document term worth under 5% of its
cost at the largest size is taken as load noise and dropped); with one size, the assets that touch every document
are taken as purely per-document and the rest as fixed. Predictions for 1M and 10M documents are on this machine
under the load measured (said beside them) and, with GPU figures (--gpu-figures, default gpu_figures.json beside
--out; docs/performance.md "## GPU"), on one GPU: the assets whose per-document rate the GPU check measured
(embeddings, the group_mates greedy) at the card's rate, everything else as measured here. Figures describe this
2-core machine; the load changes wall time far more than CPU time.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
FORMAT = "gmates-end-to-end-v1"
GPU_FORMAT = "gmates-gpu-figures-v1"
PREDICT_DOCS = (1_000_000, 10_000_000)
METHODS = ["group_mates", "mates", "random"]
# Assets whose work touches every document (the rest do a fixed amount of work set by the manifest).
PER_DOC_ASSETS = {"documents", "tokenized_pool", "embeddings", "influence_scores", "documents_index",
                  "tokenized_pool_index", "embeddings_index", "influence_scores_index", "cluster_assignments",
                  "selected_subset", "dataset_release"}
NK_ASSETS = {"cluster_assignments"}  # cost grows with N * k
TOKENIZER_TRAIN_DOCS = 5000  # the BPE trains on a sample of at most this many documents
SAMPLED_ASSETS = {"lm_tokenizer"}  # cost grows with min(N, TOKENIZER_TRAIN_DOCS)
SHARD_ASSETS = {"documents", "tokenized_pool", "embeddings", "influence_scores"}  # one partition per shard
OVERHEAD = "(overhead: sync and Dagster around the steps)"
SIGMA_WORDS = 0.8
NOISE_SHARE = 0.05  # a fixed-work asset's fitted per-document term below this share of its cost is dropped


# ------------------------------------------------------------------------------------------------ the pool
def demo_base_texts(smoke: bool) -> list[str]:
    from gmates_assets.core.demo_corpus import DemoCorpusParams, generate_demo_shard

    params = DemoCorpusParams(n_docs=1200 if smoke else 3000, n_shards=1, seed=7)
    return [doc.text for doc in generate_demo_shard(params, 0)]


def web_lengths(n_docs: int, median_words: int, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    return np.clip(rng.lognormal(math.log(median_words), SIGMA_WORDS, n_docs), 40, 8 * median_words).astype(int)


def web_documents(n_docs: int, median_words: int, smoke: bool):
    """Demo documents concatenated (consecutive ones, from a seeded start) up to web-page word counts."""
    import numpy as np

    base = [text.split() for text in demo_base_texts(smoke)]
    rng = np.random.default_rng(1)
    for length in web_lengths(n_docs, median_words):
        words, i = [], int(rng.integers(len(base)))
        while len(words) < length:
            words.extend(base[i % len(base)])
            i += 1
        yield " ".join(words[:length])


def user_documents(path: Path, field: str, n_docs: int):
    with open(path) as lines:
        count = 0
        for line in lines:
            if count == n_docs:
                return
            if line.strip():
                yield json.loads(line)[field]
                count += 1
    if count < n_docs:
        sys.exit(f"{path} has {count} records, fewer than the {n_docs} documents asked for")


def write_pool(root: Path, n_docs: int, args) -> dict:
    """jsonl shards under root/pool; returns the pool's shape (shards, words and characters per document)."""
    (root / "pool").mkdir(parents=True, exist_ok=True)
    texts = (user_documents(args.jsonl, args.text_field, n_docs) if args.jsonl
             else web_documents(n_docs, args.median_words, args.smoke))
    shards, words, chars, out = [], 0, 0, None
    for i, text in enumerate(texts):
        if i % args.docs_per_shard == 0:
            if out:
                out.close()
            shards.append(f"pool/shard-{len(shards):05d}.jsonl")
            out = open(root / shards[-1], "w")
        out.write(json.dumps({"text": text}) + "\n")
        words += len(text.split())
        chars += len(text)
    if out:
        out.close()
    return {"shards": shards, "words_per_doc": round(words / n_docs, 1), "chars_per_doc": round(chars / n_docs, 1)}


def clusters_for(n_docs: int, docs_per_cluster: int) -> int:
    return max(4, n_docs // docs_per_cluster)


def manifest_for(n_docs: int, shards: list[str], args) -> dict:
    """The quickstart's fixed work with a web pool's settings (module docstring); tests profile with --smoke."""
    import yaml

    base = yaml.safe_load((ROOT / "data_manifests" / ("tests.yaml" if args.smoke else "quickstart.yaml")).read_text())
    data = {**base, "name": f"e2e-{n_docs}"}
    data["execution"] = {"device": args.device}
    data["sources"] = {"on_bad_record": "error", "reference": {"format": "demo"},
                       "heldout_reference": {"format": "demo"},
                       "shards": [{"name": Path(s).stem, "format": "jsonl", "paths": [s], "text_field": "text"}
                                  for s in shards]}
    if not args.smoke:
        data["tokenizer"] = {"kind": "train_bpe", "vocab_size": 2048, "train_docs": TOKENIZER_TRAIN_DOCS,
                             "max_tokens": 512}
        data["encoder"] = {"model": "builtin:all-MiniLM-L6-v2", "max_length": 256, "chunk_size": 128,
                           "pooling": "mean", "batch_size": 64}
        data["oracle"] = {**data["oracle"], "pool_size": 1000}
    data["clustering"] = {**data.get("clustering", {}), "k": clusters_for(n_docs, args.docs_per_cluster)}
    data["selection"] = {**data.get("selection", {}), "methods": METHODS}
    data["release"] = {**data["release"], "name": f"gmates-e2e-{n_docs}"}
    return data


# ------------------------------------------------------------------------------------------------ one build
def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def run_sync(root: Path, manifest: Path, time_limit: Optional[float]) -> dict:
    """`gmates sync` in a child process: wall, CPU (user + system, its whole tree that it waited for), peak RSS,
    and whether it finished (a time limit interrupts it as Ctrl-C does; what it built so far stays recorded)."""
    env = {**os.environ, "GMATES_HOME": str(root / "store"), "DAGSTER_HOME": str(root / "dagster_home"),
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, "-m", "gmates_assets.cli", "sync", "--manifest", str(manifest)]
    log = root / "sync.log"
    started = time.monotonic()
    with open(log, "w") as out:
        child = subprocess.Popen(command, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT)
        timer = None
        if time_limit:
            import threading

            timer = threading.Timer(time_limit, lambda: child.send_signal(signal.SIGINT))
            timer.start()
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
        if timer:
            timer.cancel()
    wall = time.monotonic() - started
    return {"command": " ".join(command[1:]), "exit_code": child.returncode, "complete": child.returncode == 0,
            "wall_s": round(wall, 1), "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
            "peak_rss_mib": round(usage.ru_maxrss / 1024, 1), "log": str(log)}


def _value(meta, key, default=None):
    return meta[key].value if key in meta else default


def read_materializations(dagster_home: Path) -> list[dict]:
    """The latest materialization of every asset partition in the instance, with what its step recorded."""
    import dagster as dg

    rows = {}
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        for key in instance.get_asset_keys():
            records, cursor = [], None
            while True:  # oldest first, so the latest of a partition wins; Dagster pages at 10,000
                page = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=key), limit=10_000,
                                                       cursor=cursor, ascending=True)
                records += page.records
                if not page.has_more:
                    break
                cursor = page.cursor
            for record in records:
                event = record.asset_materialization
                meta = event.metadata
                rows[(key.to_user_string(), event.partition)] = {
                    "asset": key.to_user_string(), "partition": event.partition,
                    "step_s": _value(meta, "step_seconds", 0.0), "compute_s": _value(meta, "compute_seconds", 0.0),
                    "cpu_s": _value(meta, "cpu_seconds", 0.0), "peak_rss_mib": _value(meta, "peak_rss_mib", 0.0),
                    "rows": _value(meta, "dagster/row_count"), "tokens": _value(meta, "tokens"),
                    "reused": _value(meta, "reused", False)}
    return list(rows.values())


def row_name(asset: str, partition: Optional[str]) -> str:
    """Table rows: one per asset, one per method for selected_subset (each method is another algorithm)."""
    return f"{asset}[{partition}]" if asset == "selected_subset" else asset


def aggregate(materializations: list[dict]) -> dict[str, dict]:
    by_row: dict[str, dict] = {}
    for m in materializations:
        row = by_row.setdefault(row_name(m["asset"], m["partition"]), {
            "partitions": 0, "step_s": 0.0, "compute_s": 0.0, "cpu_s": 0.0, "peak_rss_mib": 0.0, "tokens": 0,
            "rows": 0})
        row["partitions"] += 1
        row["rows"] += int(m["rows"] or 0)
        for key in ("step_s", "compute_s", "cpu_s"):
            row[key] = round(row[key] + float(m[key]), 3)
        row["peak_rss_mib"] = max(row["peak_rss_mib"], float(m["peak_rss_mib"]))
        row["tokens"] += int(m["tokens"] or 0)
    return by_row


def expected_partitions(manifest: Path) -> dict[str, int]:
    """Partitions of every table row in a whole build of this manifest (what a partial run is compared with)."""
    from gmates_assets.core.manifest import load_manifest
    from gmates_assets.defs.assets import DECLARATIONS
    from gmates_assets.defs.graph import AssetGraph

    graph = AssetGraph(load_manifest(manifest).manifest, DECLARATIONS)
    expected: dict[str, int] = {}
    for name, decl in graph.decls.items():
        if decl.is_source or decl.compute is None:
            continue
        for partition in graph.partition_keys(name):
            row = row_name(name, partition)
            expected[row] = expected.get(row, 0) + 1
    return expected


def measure(n_docs: int, args) -> dict:
    keep = args.keep / f"docs-{n_docs}" if args.keep else None
    root = keep or Path(tempfile.mkdtemp(prefix=f"gmates-e2e-{n_docs}-"))
    root.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    pool = write_pool(root, n_docs, args)
    manifest = manifest_for(n_docs, pool["shards"], args)
    import yaml

    (root / "manifest.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    print(f"{n_docs} documents in {len(pool['shards'])} shards ({pool['words_per_doc']} words per document), "
          f"written in {time.monotonic() - started:.0f} s under {root}; k = {manifest['clustering']['k']}", flush=True)
    load_before = _load()
    expected = expected_partitions(root / "manifest.yaml")
    sync = run_sync(root, root / "manifest.yaml", args.time_limit)
    load_after = _load()
    assets = aggregate(read_materializations(root / "dagster_home"))
    in_steps = sum(a["step_s"] for a in assets.values())
    result = {"format": FORMAT, "docs": n_docs, "device": args.device, "k": manifest["clustering"]["k"],
              "docs_per_shard": args.docs_per_shard, "pool": {**pool, "shards": len(pool["shards"]),
                                                               "source": str(args.jsonl) if args.jsonl else "demo-web"},
              "load_before": load_before, "load_after": load_after, "cpus": os.cpu_count(),
              "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "smoke": args.smoke, **sync,
              "expected_partitions": expected, "assets": assets}
    if sync["complete"]:  # the sync's time outside steps is known only for a whole build
        result["assets"][OVERHEAD] = {
            "partitions": 0, "step_s": round(max(0.0, sync["wall_s"] - in_steps), 1), "compute_s": 0.0,
            "cpu_s": round(max(0.0, sync["cpu_s"] - sum(a["cpu_s"] for a in assets.values())), 1),
            "peak_rss_mib": sync["peak_rss_mib"], "tokens": 0, "rows": 0}
    state = "finished" if sync["complete"] else f"STOPPED (exit {sync['exit_code']}): partial figures"
    print(f"{n_docs} documents: sync {state} in {sync['wall_s']:.0f} s wall, {sync['cpu_s']:.0f} s CPU, peak "
          f"{sync['peak_rss_mib']:.0f} MiB; load {load_before} -> {load_after}", flush=True)
    if not keep:
        import shutil

        shutil.rmtree(root, ignore_errors=True)
    return result


# ------------------------------------------------------------------------------------------------ the model
def fit_fixed_plus_linear(xs: list[float], ts: list[float]) -> tuple[float, float]:
    """t = fixed + slope * x by least squares, both kept >= 0 (a negative term is set to 0 and the other refitted)."""
    n = len(xs)
    mean_x, mean_t = sum(xs) / n, sum(ts) / n
    sxx = sum((x - mean_x) ** 2 for x in xs)
    slope = sum((x - mean_x) * (t - mean_t) for x, t in zip(xs, ts)) / sxx if sxx else 0.0
    fixed = mean_t - slope * mean_x
    if slope < 0:
        return max(mean_t, 0.0), 0.0
    if fixed < 0:
        return 0.0, sum(x * t for x, t in zip(xs, ts)) / sum(x * x for x in xs)
    return fixed, slope


def fit_fixed_linear_and_nk(ns: list[float], nks: list[float], ts: list[float]) -> tuple[float, float, float]:
    """t = fixed + per_doc * N + per_nk * N*k by least squares with every term >= 0: the best of the fits over
    each subset of the three terms whose coefficients are all >= 0."""
    import itertools

    import numpy as np

    columns = np.array([[1.0] * len(ns), ns, nks]).T
    target = np.array(ts, dtype=float)
    best, best_error = (max(float(target.mean()), 0.0), 0.0, 0.0), math.inf
    for keep in itertools.product((False, True), repeat=3):
        if not any(keep):
            continue
        coef, *_ = np.linalg.lstsq(columns[:, list(keep)], target, rcond=None)
        if (coef < 0).any():
            continue
        error = float(((columns[:, list(keep)] @ coef - target) ** 2).sum())
        if error < best_error * (1 - 1e-9):  # a tie keeps the fit found first
            full = np.zeros(3)
            full[list(keep)] = coef
            best, best_error = (float(full[0]), float(full[1]), float(full[2])), error
    return best


def term_of(row: str, sizes: int) -> str:
    """What a row's cost grows with: N; for clustering N * k from two sizes (at one size its fixed overhead would
    be read as N * k work) and N + N * k from three (reading every vector and writing every assignment is
    linear: with N * k alone, a linear cost at k = N / 1,000 is read as quadratic); the tokenizer's capped
    training sample."""
    if row in NK_ASSETS and sizes >= 3:
        return "N + N*k"
    if row in NK_ASSETS and sizes >= 2:
        return "N*k"
    return f"min(N, {TOKENIZER_TRAIN_DOCS:,})" if row in SAMPLED_ASSETS else "N"


def work_units(term: str, n_docs: int, k: int) -> float:
    if term in ("N*k", "N + N*k"):  # the per_unit term; "N + N*k" adds per_doc * N
        return float(n_docs) * k
    return float(min(n_docs, TOKENIZER_TRAIN_DOCS)) if term.startswith("min(") else float(n_docs)


def finished(row: str, run: dict) -> bool:
    """Every partition of this row was built in this run (a stopped run finishes some assets only)."""
    if row not in run["assets"]:
        return False
    if run["complete"]:
        return True
    return run["assets"][row]["partitions"] >= run.get("expected_partitions", {}).get(row, math.inf)


def fit_model(runs: list[dict]) -> dict[str, dict]:
    """Per row: fixed seconds and per-unit seconds, for wall (step_s) and CPU (cpu_s).

    Shard assets (one partition per shard of --docs-per-shard documents): seconds per document over every shard
    any run finished, stopped runs included (a shard's fixed cost, e.g. loading the encoder, is then part of the
    per-document cost, as it is at any N with that shard size). Other rows: fitted over the runs that built all of
    their partitions (fit_fixed_plus_linear), or from one size (module docstring)."""
    rows = sorted({row for r in runs for row in r["assets"]})
    model = {}
    for row in rows:
        if row in SHARD_ASSETS:
            done = [r["assets"][row] for r in runs if r["assets"].get(row, {}).get("rows")]
            docs, shards = sum(a["rows"] for a in done), sum(a["partitions"] for a in done)
            if not docs:
                continue
            model[row] = {"term": "N", "sizes": [r["docs"] for r in runs if r["assets"].get(row, {}).get("rows")]}
            for metric in ("step_s", "cpu_s"):
                model[row][metric] = {"fixed": 0.0, "per_unit": sum(a[metric] for a in done) / docs,
                                      "how": f"{docs:,} docs in {shards} shards"}
            continue
        sizes = [r for r in runs if finished(row, r)]
        if not sizes:
            continue
        term = term_of(row, len({r["docs"] for r in sizes}))
        xs = [work_units(term, r["docs"], r["k"]) for r in sizes]
        entry = {"term": term, "sizes": [r["docs"] for r in sizes]}
        for metric in ("step_s", "cpu_s"):
            ts = [r["assets"][row][metric] for r in sizes]
            if term == "N + N*k":
                fixed, per_doc, slope = fit_fixed_linear_and_nk([r["docs"] for r in sizes], xs, ts)
                entry[metric] = {"fixed": fixed, "per_unit": slope, "per_doc": per_doc, "how": "fit"}
                continue
            if len(set(xs)) >= 2:
                fixed, slope = fit_fixed_plus_linear(xs, ts)
                how = "fit"
                if row.split("[")[0] not in PER_DOC_ASSETS and slope * max(xs) < NOISE_SHARE * max(ts):
                    fixed, slope = sum(ts) / len(ts), 0.0  # a fixed-work asset's slope this small is load noise
                    how = "fit: fixed"
            elif row.split("[")[0] in PER_DOC_ASSETS or row == OVERHEAD or row in SAMPLED_ASSETS:
                fixed, slope, how = 0.0, ts[0] / xs[0], "one size: per document"
            else:
                fixed, slope, how = ts[0], 0.0, "one size: fixed"
            entry[metric] = {"fixed": fixed, "per_unit": slope, "how": how}
        model[row] = entry
    return model


def unmeasured(model: dict, runs: list[dict]) -> list[str]:
    """Rows of a whole build that no run finished: the predicted totals leave them out."""
    expected = {row for r in runs for row in r.get("expected_partitions", {})}
    return sorted(expected - set(model))


def predict(model: dict, n_docs: int, docs_per_cluster: int, metric: str) -> dict[str, float]:
    k = clusters_for(n_docs, docs_per_cluster)
    return {row: e[metric]["fixed"] + e[metric]["per_unit"] * work_units(e["term"], n_docs, k)
            + e[metric].get("per_doc", 0.0) * n_docs for row, e in model.items()}


def load_gpu_figures(path: Optional[Path]) -> Optional[dict]:
    if not path or not path.is_file():
        return None
    figures = json.loads(path.read_text())
    if figures.get("format") != GPU_FORMAT:
        sys.exit(f"{path}: not a {GPU_FORMAT} file (format {figures.get('format')!r})")
    return figures


def gpu_prediction(model: dict, figures: dict, n_docs: int, docs_per_cluster: int) -> tuple[dict, list[str]]:
    """Wall seconds per row on the card: the rows the GPU check measured a per-document rate for at that rate,
    the rest as on this machine. Returns (seconds by row, the rows replaced)."""
    seconds = predict(model, n_docs, docs_per_cluster, "step_s")
    assets, replaced = figures.get("assets", {}), []
    if assets.get("embeddings", {}).get("docs_per_s") and "embeddings" in seconds:
        seconds["embeddings"] = n_docs / assets["embeddings"]["docs_per_s"]
        replaced.append("embeddings")
    greedy = "selected_subset[group_mates]"
    if assets.get("selected_subset", {}).get("docs_per_s") and greedy in seconds:
        seconds[greedy] = n_docs / assets["selected_subset"]["docs_per_s"]
        replaced.append(greedy)
    return seconds, replaced


# ------------------------------------------------------------------------------------------------ reporting
def duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.1f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def rate(row: str, figures: dict, run: dict) -> str:
    if row.startswith("tokenized_pool") and figures["tokens"] and figures["step_s"]:
        return f"{figures['tokens'] / figures['step_s']:,.0f} tokens/s"
    docs = figures.get("rows") if row in SHARD_ASSETS else run["docs"]
    if row.split("[")[0] in PER_DOC_ASSETS and figures["step_s"] and docs:
        return f"{docs / figures['step_s']:,.0f} docs/s"
    return "–"


def run_table(run: dict) -> str:
    total = run["wall_s"]
    state = "" if run["complete"] else (f" — **stopped after {duration(run['wall_s'])} (exit {run['exit_code']}): "
                                        f"partial, only the partitions listed finished**")
    expected = run.get("expected_partitions", {})
    lines = [f"**{run['docs']:,} documents** ({run['pool']['shards']} shards of ≤ {run['docs_per_shard']:,}, "
             f"{run['pool']['words_per_doc']} words per document, k = {run['k']}, device {run['device']}): "
             f"{duration(total)} wall, {duration(run['cpu_s'])} CPU, peak {run['peak_rss_mib']:,.0f} MiB; load "
             f"(1/5/15 min) {' '.join(map(str, run['load_before']))} before → "
             f"{' '.join(map(str, run['load_after']))} after, {run['cpus']} CPUs{state}", "",
             "| asset | partitions | wall | CPU | peak RSS | rate | share of wall |", "|---|---|---|---|---|---|---|"]
    for row, f in sorted(run["assets"].items(), key=lambda kv: -kv[1]["step_s"]):
        done = f["partitions"] or "–"
        if not run["complete"] and row in expected:
            done = f"{f['partitions']} of {expected[row]}"
        lines.append(f"| {row} | {done} | {f['step_s']:,.1f} s | {f['cpu_s']:,.1f} s | "
                     f"{f['peak_rss_mib']:,.0f} MiB | {rate(row, f, run)} | {100 * f['step_s'] / total:.1f}% |")
    return "\n".join(lines)


def model_table(model: dict, runs: list[dict], docs_per_cluster: int, gpu: Optional[dict]) -> str:
    loads = ", ".join(f"{r['docs']:,} ({'whole build' if r['complete'] else 'stopped'}): load "
                      f"{r['load_before'][0]}→{r['load_after'][0]}" for r in runs)
    head = ("| asset | term | fixed (wall) | per document (wall) | fixed (CPU) | per document (CPU) | "
            + " | ".join(f"{n // 1_000_000}M wall | {n // 1_000_000}M CPU" for n in PREDICT_DOCS) + " |")
    gpu_rows = {}
    if gpu:
        head = head[:-2] + " | " + " | ".join(f"{n // 1_000_000}M one GPU" for n in PREDICT_DOCS) + " |"
        gpu_rows = {n: gpu_prediction(model, gpu, n, docs_per_cluster) for n in PREDICT_DOCS}
    lines = [head, "|" + "---|" * (head.count(" | ") + 1)]
    walls = {n: predict(model, n, docs_per_cluster, "step_s") for n in PREDICT_DOCS}
    cpus = {n: predict(model, n, docs_per_cluster, "cpu_s") for n in PREDICT_DOCS}
    order = sorted(model, key=lambda row: -walls[PREDICT_DOCS[0]][row])

    def per_doc(e: dict, metric: str, row: str) -> str:
        unit = e[metric]["per_unit"]
        if e["term"] == "N + N*k":
            return f"{e[metric]['per_doc'] * 1e3:.3f} ms + {unit * 1e6:.4f} µs per doc·cluster"
        if e["term"] == "N*k":
            return f"{unit * 1e6:.4f} µs per doc·cluster"
        return f"{unit * 1e3:.3f} ms"

    for row in order:
        e = model[row]
        how = e["step_s"]["how"]
        term = "fixed" if e["step_s"]["per_unit"] == 0 and e["cpu_s"]["per_unit"] == 0 else e["term"]
        cells = [row, term + ("" if how == "fit" else f" ({how})"),
                 f"{e['step_s']['fixed']:.1f} s", per_doc(e, "step_s", row),
                 f"{e['cpu_s']['fixed']:.1f} s", per_doc(e, "cpu_s", row)]
        for n in PREDICT_DOCS:
            cells += [duration(walls[n][row]), duration(cpus[n][row])]
        for n in (PREDICT_DOCS if gpu else ()):
            seconds, replaced = gpu_rows[n]
            cells.append(duration(seconds[row]) + (" (card)" if row in replaced else ""))
        lines.append("| " + " | ".join(cells) + " |")
    missing = unmeasured(model, runs)
    total = ["**total**" + (" of the rows above" if missing else ""), "", "", "", "", ""]
    for n in PREDICT_DOCS:
        total += [f"**{duration(sum(walls[n].values()))}**", f"**{duration(sum(cpus[n].values()))}**"]
    for n in (PREDICT_DOCS if gpu else ()):
        total.append(f"**{duration(sum(gpu_rows[n][0].values()))}**")
    lines.append("| " + " | ".join(total) + " |")
    notes = [f"Runs: {loads}; k = N / {docs_per_cluster:,} "
             f"({', '.join(f'{n // 1_000_000}M: k = {clusters_for(n, docs_per_cluster):,}' for n in PREDICT_DOCS)})."]
    if missing:
        notes.append(f"No run finished {', '.join(missing)}: the totals leave them out.")
    if gpu:
        notes.append(f"One GPU: {gpu.get('card')} ({'smoke figures, meaningless' if gpu.get('smoke') else 'measured'}"
                     f" by benchmarks/gpu_check.py); rows marked (card) use its per-document rate, the rest this "
                     f"machine's.")
    return "\n".join(lines) + "\n\n" + " ".join(notes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, help="one size (documents)")
    parser.add_argument("--sizes", type=int, nargs="+", help="several sizes, run one after another")
    parser.add_argument("--from", dest="inputs", type=Path, nargs="+", help="fit runs saved by earlier --out files")
    parser.add_argument("--docs-per-shard", type=int, default=2500)
    parser.add_argument("--docs-per-cluster", type=int, default=1000)
    parser.add_argument("--median-words", type=int, default=500)
    parser.add_argument("--jsonl", type=Path, help="your own documents: the first N records of this jsonl file")
    parser.add_argument("--text-field", default="text")
    parser.add_argument("--device", default="cpu", help="execution.device: cpu, cuda, cuda:N, auto")
    parser.add_argument("--time-limit", type=float, help="stop a sync after this many seconds (partial figures)")
    parser.add_argument("--keep", type=Path, help="build in DIR/docs-N (kept) instead of a temporary folder")
    parser.add_argument("--out", type=Path, help="write every run, the model and the predictions as JSON")
    parser.add_argument("--gpu-figures", type=Path, help="gpu_figures.json of benchmarks/gpu_check.py (default: "
                        "the one beside --out, if any)")
    parser.add_argument("--markdown", action="store_true", help="print every size's table too (for "
                        "docs/performance.md); without it, only the cost model's")
    parser.add_argument("--smoke", action="store_true", help="a tiny pool on the tests profile (checks the "
                        "script runs: tests/test_benchmarks_run.py)")
    args = parser.parse_args()
    if args.smoke:
        args.docs_per_shard, args.docs_per_cluster, args.median_words = 60, 40, 30
    sizes = [120] if args.smoke else (args.sizes or ([args.docs] if args.docs else []))
    runs = []
    for path in args.inputs or []:
        saved = json.loads(path.read_text())
        runs += saved["runs"] if "runs" in saved else [saved]
    if not sizes and not runs:
        parser.error("give --docs, --sizes or --from")
    for n_docs in sizes:
        runs.append(measure(n_docs, args))
    runs.sort(key=lambda r: r["docs"])
    for run in runs:  # a kept home (--keep) is read again: figures of steps that ended after the file was written
        home = Path(run.get("log", "")).parent
        if "expected_partitions" not in run and (home / "manifest.yaml").is_file():
            run["expected_partitions"] = expected_partitions(home / "manifest.yaml")
        if (home / "dagster_home").is_dir():
            run["assets"] = {**aggregate(read_materializations(home / "dagster_home")),
                             **({OVERHEAD: run["assets"][OVERHEAD]} if run["complete"] else {})}
    model = fit_model(runs) or None
    gpu_path = args.gpu_figures or (args.out.parent / "gpu_figures.json" if args.out else None)
    gpu = load_gpu_figures(gpu_path)
    tables = [run_table(r) for r in runs] if args.markdown or args.smoke else []
    print("\n" + "\n\n".join(tables + [model_table(model, runs, args.docs_per_cluster, gpu) if model
                                         else "(no complete run: no cost model)"]))
    if args.out:
        predictions = {str(n): {"wall_s": sum(predict(model, n, args.docs_per_cluster, "step_s").values()),
                                "cpu_s": sum(predict(model, n, args.docs_per_cluster, "cpu_s").values())}
                       for n in PREDICT_DOCS} if model else {}
        if model and gpu:
            for n in PREDICT_DOCS:
                predictions[str(n)]["gpu_wall_s"] = sum(gpu_prediction(model, gpu, n, args.docs_per_cluster)[0]
                                                        .values())
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_suffix(".tmp")
        tmp.write_text(json.dumps({"format": FORMAT, "runs": runs, "model": model, "predictions": predictions,
                                   "gpu_figures": str(gpu_path) if gpu else None}, indent=1) + "\n")
        tmp.replace(args.out)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    if not os.environ.get("PYTHONPATH"):
        sys.path.insert(0, str(ROOT))
    main()
