"""Peak memory and time of the whole-pool steps at two pool sizes: bounded memory means a memory ratio far below
the size ratio, linear time a time ratio near it.

    python benchmarks/memory_scale.py                        # 20k and 200k documents (a few minutes)
    python benchmarks/memory_scale.py --sizes 2000 20000     # a quick look
    python benchmarks/memory_scale.py --steps probe_pool "selected_subset[mates]"   # these (and what they need)
    python benchmarks/memory_scale.py --sizes 100000 1000000 --steps documents_index tokenized_pool_index \
        embeddings_index influence_scores_index cluster_assignments "selected_subset[group_mates]" \
        "selected_subset[mates]" dataset_release             # the 1M-document whole-pool steps (docs/performance.md)

For each size, synthetic shard artifacts are written straight into a throwaway artifact store (no encoder or
oracle runs): documents parquet (random words), tokenized_pool ragged zarr (random ids), influence_scores zarr
(random h [n, dim], s) and their `<asset>_index` aggregators, exactly as the pipeline stores them. Then every
whole-pool step runs the asset's own compute function (the declaration's `compute`, through runtime.Step and
the store, the path `gmates sync` takes) in a fresh subprocess, in pipeline order (each step's artifact feeds
the next), and reports that process's peak RSS (getrusage ru_maxrss) and the step's wall time. `base` is the
same process after imports and setup, before the step: the step's own memory is peak - base. The shard indexes
(`<asset>_index`) are steps too; `selected_subset[m]` is the step of selection method m (group_mates, mates).
With --steps, only those steps and the steps they read run.

Settings that keep per-step work independent of the pool size, so that only streaming decides the ratio:
documents per shard (--docs-per-shard), cluster size (k = n / --docs-per-cluster; the k-means sample is
k * 64 rows), release rows_per_shard 5000, BPE train_docs 5000, probe pool 100, tiny LMs of the tests
profile with a fixed number of steps; the probe warm-up packs every document (sample_docs unset).
selection.relation_params is `fixed` so no relational model is needed. Run it on an older checkout with
PYTHONPATH=<checkout> to compare code paths.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
INDEXES = ("documents_index", "tokenized_pool_index", "embeddings_index", "influence_scores_index")
STEPS = (*INDEXES, "lm_tokenizer", "probe_checkpoint", "probe_pool", "cluster_assignments",
         "selected_subset[group_mates]", "selected_subset[mates]", "pretrained_checkpoint", "dataset_release")
METHOD = "group_mates"  # the release's method and the one pretrained
REGISTRY = "registry.json"
WORDS = [f"w{i}" for i in range(2000)]


# ------------------------------------------------------------------------------------------ setup
def manifest_text(n_docs: int, n_shards: int, docs_per_cluster: int) -> str:
    import yaml

    data = yaml.safe_load((ROOT / "data_manifests" / "tests.yaml").read_text())
    data["demo"].update(n_shards=n_shards, n_docs=n_docs)
    data["sources"]["shards"] = [{"name": f"shard-{i:04d}", "format": "demo", "demo_shard": i} for i in range(n_shards)]
    data["tokenizer"].update(vocab_size=512, max_tokens=256)
    data["clustering"] = {"k": max(2, n_docs // docs_per_cluster), "niter": 10, "max_points_per_centroid": 64}
    data["selection"] = {"ratio": 0.5, "methods": [METHOD, "mates"], "relation_params": "fixed"}
    data["release"].update(method=METHOD, rows_per_shard=5000)
    return yaml.safe_dump(data, sort_keys=False)


class _Context:
    """What runtime.Step reads from Dagster's context: run tags, a logger and the instance."""

    def __init__(self, instance):
        import logging
        from types import SimpleNamespace

        self.instance = instance
        self.run = SimpleNamespace(tags={})
        self.log = logging.getLogger("memory_scale")


class Bench:
    """The manifest, store and asset graph of one synthetic pool, plus which artifact each asset has now."""

    def __init__(self, root: Path):
        from gmates_assets.core.manifest import load_manifest
        from gmates_assets.core.store import ArtifactStore
        from gmates_assets.defs.assets import DECLARATIONS
        from gmates_assets.defs.graph import AssetGraph

        self.root = root
        self.loaded = load_manifest(root / "manifest.yaml")
        self.store = ArtifactStore(root / "store")
        self.graph = AssetGraph(self.loaded.manifest, DECLARATIONS)
        registry = root / REGISTRY
        self.registry: dict = json.loads(registry.read_text()) if registry.exists() else {}

    def step(self, asset: str, partition, instance=None):
        from gmates_assets.defs.runtime import Step

        inputs, versions = {}, {}
        for inp in self.graph.inputs(asset):
            built = self.registry.get(inp.asset, {})
            keys = self.graph.input_partitions(inp, partition)
            if all((k or "") in built for k in keys):
                inputs[inp.asset] = {k: self.store.require_by_content(inp.asset, built[k or ""], k) for k in keys}
                versions[inp.asset] = {k or "": built[k or ""] for k in keys}  # data version = content hash
        return Step(_Context(instance), self.loaded, self.store, self.graph, asset, partition, inputs, versions)

    def commit(self, step, compute, rows=None) -> dict:
        """Run compute(step, work_dir) in a store build, as runtime.run_step does, and register the result."""
        key = f"bench-{step.asset}-{step.partition or ''}"
        record = {"metadata": {"dagster/row_count": rows}} if rows is not None else {}
        with self.store.build(step.asset, key, step.partition, record=record) as work:
            metadata = compute(step, work)
        self.registry.setdefault(step.asset, {})[step.partition or ""] = self.store.get(step.asset, key).content_hash
        (self.root / REGISTRY).write_text(json.dumps(self.registry, indent=1))
        return metadata


def generate(root: Path, n_docs: int, docs_per_shard: int, dim: int, docs_per_cluster: int) -> None:
    import numpy as np
    import zarr

    from gmates_assets.core import sources, tokenize

    n_shards = -(-n_docs // docs_per_shard)
    (root / "manifest.yaml").write_text(manifest_text(n_docs, n_shards, docs_per_cluster))
    bench = Bench(root)
    rng = np.random.default_rng(0)
    words = np.array(WORDS)
    for i, shard in enumerate(bench.graph.partition_keys("documents")):
        size = min(docs_per_shard, n_docs - i * docs_per_shard)
        lengths = rng.integers(20, 200, size)
        docs = [sources.Document(f"{shard}:{r:07d}", " ".join(words[rng.integers(0, len(words), int(k))]),
                                 "synthetic", r) for r, k in enumerate(lengths)]
        bench.commit(bench.step("documents", shard),
                     lambda s, out: sources.write_documents_parquet(docs, out / "documents.parquet"), rows=size)
        token_lengths = rng.integers(16, 240, size)
        values = rng.integers(0, 500, int(token_lengths.sum())).astype(np.int32)
        offsets = np.concatenate([[0], np.cumsum(token_lengths)])
        bench.commit(bench.step("tokenized_pool", shard),
                     lambda s, out: tokenize.write_ragged_zarr(out, values, offsets), rows=size)
        scores = {"h": rng.standard_normal((size, dim), dtype=np.float32) / np.float32(np.sqrt(dim)),
                  "s": rng.standard_normal(size, dtype=np.float32),
                  "s_individual": rng.standard_normal(size, dtype=np.float32)}

        def write_scores(step, out, scores=scores):
            group = zarr.open_group(str(out / "scores.zarr"), mode="w")
            for name, array in scores.items():
                group.create_array(name, shape=array.shape, dtype=array.dtype,
                                   chunks=(min(4096, array.shape[0]),) + array.shape[1:])[...] = array
        bench.commit(bench.step("influence_scores", shard), write_scores, rows=size)

        def write_embeddings(step, out, size=size):  # real shapes; never-written chunks take no disk
            from gmates_assets.core.encode import EMBED_BLOCK_DOCS, EMBEDDINGS_NAME, _create_group

            _create_group(out / EMBEDDINGS_NAME, size, 2, dim, EMBED_BLOCK_DOCS, {"dim": dim, "n_chunks": 2})
        bench.commit(bench.step("embeddings", shard), write_embeddings, rows=size)


def asset_and_partition(step_name: str) -> tuple[str, str | None]:
    """'selected_subset[mates]' -> ('selected_subset', 'mates'); other method-partitioned steps run METHOD."""
    if step_name.endswith("]"):
        asset, partition = step_name[:-1].split("[")
        return asset, partition
    return step_name, (METHOD if step_name == "pretrained_checkpoint" else None)


def needed_steps(root: Path, wanted: list[str]) -> list[str]:
    """The steps asked for and every step of STEPS they read (transitively), in pipeline order."""
    bench = Bench(root)
    needed: set[str] = set()
    todo = list(wanted)
    while todo:
        name = todo.pop()
        if name in needed:
            continue
        needed.add(name)
        asset, partition = asset_and_partition(name)
        for inp in bench.graph.inputs(asset):
            for key in bench.graph.input_partitions(inp, partition):
                candidate = f"{inp.asset}[{key}]" if key else inp.asset
                todo += [s for s in STEPS if s == candidate and s not in needed]
    return [s for s in STEPS if s in needed]


def cpu_seconds() -> float:
    """User + system CPU of this process and its waited-for children: unlike wall time, little moved by load."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def run_step(root: Path, step_name: str) -> dict:
    """One step in this process: its peak RSS, and the RSS before it started (after imports and setup)."""
    import dagster as dg

    bench = Bench(root)
    asset, partition = asset_and_partition(step_name)
    with dg.DagsterInstance.ephemeral() as instance:
        step = bench.step(asset, partition, instance)
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        started, cpu_started = time.monotonic(), cpu_seconds()
        bench.commit(step, bench.graph[asset].compute)
        seconds, cpu = time.monotonic() - started, cpu_seconds() - cpu_started
    return {"asset": step_name, "base_kib": base, "peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
            "seconds": round(seconds, 3), "cpu_seconds": round(cpu, 3)}


# ------------------------------------------------------------------------------------------ driver
def child(args: list[str]) -> str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run([sys.executable, __file__, *args], env=env, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{' '.join(args)} failed:\n{done.stderr[-4000:]}")
    return done.stdout


def measure(n_docs: int, args) -> dict[str, dict]:
    with tempfile.TemporaryDirectory(prefix=f"gmates-memory-{n_docs}-") as tmp:
        started = time.monotonic()
        child(["--generate", tmp, "--n-docs", str(n_docs), "--docs-per-shard", str(args.docs_per_shard),
               "--dim", str(args.dim), "--docs-per-cluster", str(args.docs_per_cluster)])
        print(f"  {n_docs} documents generated in {time.monotonic() - started:.0f} s", flush=True)
        results = {}
        for name in json.loads(child(["--needed", tmp, *args.steps]).strip().splitlines()[-1]):
            out = json.loads(child(["--run-step", name, "--root", tmp]).strip().splitlines()[-1])
            results[name] = out
            if name in args.steps:
                print(f"  {name}: peak {out['peak_kib'] / 1024:.0f} MiB ({out['seconds']} s wall, "
                      f"{out['cpu_seconds']} s CPU; load {os.getloadavg()[0]:.1f})", flush=True)
        return {a: r for a, r in results.items() if a in args.steps}


def smoke(args) -> None:
    """Every step on a 240-document pool, in this process: the code paths, not the memory figures."""
    with tempfile.TemporaryDirectory(prefix="gmates-memory-smoke-") as tmp:
        generate(Path(tmp), 240, 120, 16, 120)
        for name in needed_steps(Path(tmp), list(STEPS)):
            out = run_step(Path(tmp), name)
            print(f"  {name}: ran in {out['seconds']} s", flush=True)


def report(sizes: list[int], figures: dict[int, dict[str, dict]]) -> None:
    small, large = sizes[0], sizes[-1]
    header = (f"{'step':<30}" + "".join(f"{f'peak@{n}':>13}" for n in sizes) + f"{'base':>8}"
              + f"{'growth':>9}{'peak ratio':>12}{'step-only ratio':>17}"
              + "".join(f"{f's@{n}':>11}" for n in sizes) + f"{'time ratio':>12}"
              + "".join(f"{f'cpu@{n}':>11}" for n in sizes) + f"{'cpu ratio':>11}")
    print("\n" + header + "\n" + "-" * len(header))
    for asset in figures[small]:
        a, b = figures[small][asset], figures[large][asset]
        peaks = "".join(f"{figures[n][asset]['peak_kib'] / 1024:>10.0f}MiB" for n in sizes)
        own = [(f["peak_kib"] - f["base_kib"]) / 1024 for f in (a, b)]
        ratio = f"{own[1] / own[0]:.2f}" if own[0] > 1 else "-"
        growth = (b["peak_kib"] - a["peak_kib"]) / 1024
        seconds = "".join(f"{figures[n][asset]['seconds']:>11.1f}" for n in sizes)
        time_ratio = f"{b['seconds'] / a['seconds']:.1f}" if a["seconds"] > 0 else "-"
        cpus = "".join(f"{figures[n][asset]['cpu_seconds']:>11.1f}" for n in sizes)
        cpu_ratio = f"{b['cpu_seconds'] / a['cpu_seconds']:.1f}" if a["cpu_seconds"] > 0 else "-"
        print(f"{asset:<30}{peaks}{a['base_kib'] / 1024:>5.0f}MiB{growth:>+6.0f}MiB"
              f"{b['peak_kib'] / a['peak_kib']:>12.2f}{ratio:>17}{seconds}{time_ratio:>12}{cpus}{cpu_ratio:>11}")
    print(f"\npool size ratio {large / small:.0f}x. peak: the step process's ru_maxrss; base: the same process after "
          f"imports and setup,\nbefore the step; growth: peak@{large} - peak@{small}; step-only ratio: "
          f"(peak - base)@{large} / (peak - base)@{small};\ns@N: the step's wall seconds (compute and commit, "
          f"load average now {' '.join(f'{x:.2f}' for x in os.getloadavg())}); time ratio: s@{large} / s@{small};\n"
          f"cpu@N: the step's CPU seconds (user + system, with children), far less moved by the load than wall time")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[20_000, 200_000])
    parser.add_argument("--steps", nargs="+", default=list(STEPS), choices=STEPS, metavar="STEP",
                        help=f"steps to report (they and the steps they read run): {', '.join(STEPS)}")
    parser.add_argument("--docs-per-shard", type=int, default=2000)
    parser.add_argument("--docs-per-cluster", type=int, default=500)
    parser.add_argument("--dim", type=int, default=384, help="width of h (the encoder's hidden size)")
    parser.add_argument("--generate", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--n-docs", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--run-step", choices=STEPS, help=argparse.SUPPRESS)
    parser.add_argument("--needed", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--smoke", action="store_true", help="one small pool, every step in this process (no memory "
                        "figures): checks the script still runs (tests/test_benchmarks_run.py)")
    args = parser.parse_args()
    if args.smoke:
        return smoke(args)
    if args.generate:
        return generate(args.generate, args.n_docs, args.docs_per_shard, args.dim, args.docs_per_cluster)
    if args.needed:
        print(json.dumps(needed_steps(Path(args.needed[0]), args.needed[1:])))
        return None
    if args.run_step:
        print(json.dumps(run_step(args.root, args.run_step)))
        return None
    figures = {}
    for n_docs in args.sizes:
        print(f"pool of {n_docs} documents:", flush=True)
        figures[n_docs] = measure(n_docs, args)
    report(args.sizes, figures)


if __name__ == "__main__":
    if not os.environ.get("PYTHONPATH"):  # else compare against the checkout PYTHONPATH names
        sys.path.insert(0, str(ROOT))
    main()
