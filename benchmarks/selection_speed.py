"""Group selection speed: reference loop vs fast greedy, then a 1M-document scale run (prints, no asserts).

    python benchmarks/selection_speed.py                       # both runs, default sizes
    python benchmarks/selection_speed.py --skip-scale          # only the reference-vs-fast comparison
    python benchmarks/selection_speed.py --reference-clusters 8   # time the reference on 8 clusters only
                                                                  # and extrapolate (printed as such)

Synthetic h imitates the DIM embedding: the mean of 4 unit "chunk" vectors scattered around a topic
direction (norm <= 1); s ~ N(0, 1). Everything is seeded. Timings on a shared 2-core machine are noisy.
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

np = None  # numpy and the selection module are imported in main(), after --threads has set the env
sel = None


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 ** 2)  # ru_maxrss is KiB on Linux


def synthetic_h(out: np.ndarray, n_topics: int, seed: int, chunks: int = 4, doc_spread: float = 0.8,
                chunk_spread: float = 0.6, block: int = 50000) -> None:
    """Fill out [n, d] float32 block by block (bounded memory, works on a memmap).

    A document is a topic direction plus its own offset; each of its chunks adds more noise and is
    normalized; h is the mean of the unit chunk vectors, so ||h|| <= 1 as in docs/method.md §3.2.
    """
    n, d = out.shape
    topics = np.random.default_rng([seed, 0]).standard_normal((n_topics, d)).astype(np.float32)
    topics /= np.linalg.norm(topics, axis=1, keepdims=True)
    scale = np.float32(1.0 / np.sqrt(d))
    for b, start in enumerate(range(0, n, block)):
        rng = np.random.default_rng([seed, 1, b])
        m = min(block, n - start)
        doc = topics[rng.integers(0, n_topics, size=m)]
        doc += np.float32(doc_spread) * scale * rng.standard_normal((m, d), dtype=np.float32)
        acc = np.zeros((m, d), dtype=np.float32)
        for _ in range(chunks):
            v = doc + np.float32(chunk_spread) * scale * rng.standard_normal((m, d), dtype=np.float32)
            v /= np.linalg.norm(v, axis=1, keepdims=True)
            acc += v
        out[start:start + m] = acc / np.float32(chunks)


def original_style_greedy(h_c: np.ndarray, s_c: np.ndarray, k: int, tau: float, alpha: float) -> np.ndarray:
    """Timing baseline only: the §3.6 loop as the original code runs it (float32 matrix-vector product on
    unquantized h, list masking). Its R can differ from the exact R in the last float32 bit, so its
    picks are not compared; it shows what the reference costs without the exact-relation GEMV."""
    reps = np.ascontiguousarray(h_c, dtype=np.float32)
    metrics = s_c.astype(np.float64)
    avg_rel = np.zeros(reps.shape[0])
    chosen: list[int] = []
    for i in range(k):
        scores = avg_rel * metrics if i > 0 else metrics.copy()
        scores[chosen] = np.inf
        j = int(np.argmin(scores))
        chosen.append(j)
        cur_rel = alpha * (1 - reps @ reps[j] / np.float32(tau))
        avg_rel = (i * avg_rel + cur_rel) / (i + 1)
    return np.array(chosen)


def timed(label: str, fn, *args, **kwargs):
    start, cpu = time.perf_counter(), time.process_time()
    value = fn(*args, **kwargs)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    print(f"  {label:<38s} {elapsed:8.2f} s wall {cpu:8.2f} s cpu  (peak RSS so far {peak_rss_gib():.2f} GiB)",
          flush=True)
    return value, elapsed


def cluster_pipeline(h, k, niter, seed):
    centroids, t_km = timed(f"spherical k-means (k={k}, niter={niter})", sel.spherical_kmeans, h, k,
                            niter=niter, seed=seed)
    (assignment, sim), t_as = timed("assignment (IndexFlatIP)", sel.assign_clusters, h, centroids,
                                    return_similarity=True)
    members, t_or = timed("member order (farthest first)", sel.cluster_member_order, h, centroids,
                          assignment, similarity=sim)
    return members, {"kmeans": t_km, "assign": t_as, "order": t_or}


def compare_run(args) -> None:
    print(f"== reference loop vs fast greedy: n={args.n}, d={args.d}, k={args.clusters}, ratio={args.ratio}")
    h = np.empty((args.n, args.d), dtype=np.float32)
    synthetic_h(h, n_topics=args.clusters * 2, seed=args.seed)
    s = np.random.default_rng([args.seed, 2]).standard_normal(args.n).astype(np.float32)
    members, _ = cluster_pipeline(h, args.clusters, niter=args.niter, seed=args.seed)
    sizes = np.array([m.size for m in members])
    budgets = sel.cluster_budgets(sizes, args.ratio)
    print(f"  cluster sizes: min {sizes.min()}, median {int(np.median(sizes))}, max {sizes.max()}, "
          f"sum of n_c^2 = {float((sizes.astype(float) ** 2).sum()):.3g}; selecting {budgets.sum()}")

    fast, t_fast = timed("fast greedy (workers=1)", sel.group_greedy_select, h, s, members, budgets,
                         args.tau, args.alpha, device="numpy")
    if args.workers > 1:
        fast_w, t_fast_w = timed(f"fast greedy (workers={args.workers})", sel.group_greedy_select, h, s,
                                 members, budgets, args.tau, args.alpha, device="numpy", workers=args.workers)
        print(f"  workers={args.workers} picks identical to workers=1: "
              f"{np.array_equal(fast_w.indices, fast.indices)}")

    subset = range(len(members)) if args.reference_clusters <= 0 else range(min(args.reference_clusters,
                                                                                 len(members)))
    subset = [c for c in subset if budgets[c] > 0]
    start, cpu = time.perf_counter(), time.process_time()
    identical = True
    fast_by_cluster = {c: fast.indices[fast.cluster == c] for c in subset}
    for c in subset:
        local, _ = sel.reference_greedy(h[members[c]], s[members[c]], int(budgets[c]), args.tau, args.alpha)
        identical &= np.array_equal(members[c][local], fast_by_cluster[c])
    t_ref, cpu_ref = time.perf_counter() - start, time.process_time() - cpu
    start, cpu = time.perf_counter(), time.process_time()
    for c in subset:
        original_style_greedy(h[members[c]], s[members[c]], int(budgets[c]), args.tau, args.alpha)
    t_orig, cpu_orig = time.perf_counter() - start, time.process_time() - cpu
    print(f"  (loop cpu times: reference {cpu_ref:.2f} s, original-style {cpu_orig:.2f} s)")
    full = len(subset) == int((budgets > 0).sum())
    if full:
        print(f"  reference loop (all {len(subset)} clusters)   {t_ref:9.2f} s")
        print(f"  original-style float32 loop (timing only)  {t_orig:9.2f} s")
        t_ref_total, t_orig_total = t_ref, t_orig
    else:
        # Extrapolate by the work the loop does: sum over clusters of budget * size.
        work = (budgets * sizes).astype(float)
        factor = work.sum() / work[subset].sum()
        t_ref_total, t_orig_total = t_ref * factor, t_orig * factor
        print(f"  reference loop on {len(subset)} of {int((budgets > 0).sum())} clusters: {t_ref:.2f} s; "
              f"EXTRAPOLATED to all clusters by sum(k_c * n_c): {t_ref_total:.2f} s (not measured)")
        print(f"  original-style float32 loop on the same clusters: {t_orig:.2f} s; EXTRAPOLATED: "
              f"{t_orig_total:.2f} s (not measured)")
    tag = "" if full else " (loop times extrapolated)"
    print(f"  picks identical (reference vs fast, {'all' if full else len(subset)} clusters): {identical}")
    print(f"  speedup fast vs reference loop: {t_ref_total / t_fast:.1f}x{tag}")
    print(f"  speedup fast vs original-style float32 loop: {t_orig_total / t_fast:.1f}x{tag}")


def scale_run(args) -> None:
    print(f"== scale run: n={args.scale_n}, d={args.d}, k={args.scale_k}, ratio={args.ratio}")
    with tempfile.TemporaryDirectory(dir=args.tmp_dir) as tmp:
        path = os.path.join(tmp, "h.f32")
        h = np.memmap(path, dtype=np.float32, mode="w+", shape=(args.scale_n, args.d))
        _, t_gen = timed("synthetic h -> float32 memmap", synthetic_h, h, args.scale_k * 2, args.seed + 1)
        h.flush()
        del h
        h = np.memmap(path, dtype=np.float32, mode="r", shape=(args.scale_n, args.d))
        s = np.random.default_rng([args.seed, 3]).standard_normal(args.scale_n).astype(np.float32)
        total_start = time.perf_counter()
        members, times = cluster_pipeline(h, args.scale_k, niter=args.scale_niter, seed=args.seed)
        sizes = np.array([m.size for m in members])
        budgets = sel.cluster_budgets(sizes, args.ratio)
        print(f"  cluster sizes: min {sizes.min()}, median {int(np.median(sizes))}, max {sizes.max()}; "
              f"selecting {budgets.sum()}")
        result, t_sel = timed("group greedy selection", sel.group_greedy_select, h, s, members, budgets,
                              args.tau, args.alpha, device="numpy", workers=args.workers)
        total = time.perf_counter() - total_start
        assert len(result) == budgets.sum()
        print(f"  total k-means + assignment + order + selection: {total:.1f} s "
              f"({total / 60:.1f} min); peak RSS {peak_rss_gib():.2f} GiB")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--d", type=int, default=384)
    parser.add_argument("--clusters", type=int, default=64)
    parser.add_argument("--niter", type=int, default=20, help="k-means iterations for the comparison run")
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--tau", type=float, default=1.0)
    parser.add_argument("--alpha", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--reference-clusters", type=int, default=0,
                        help="time the reference loop on this many clusters and extrapolate (0 = all)")
    parser.add_argument("--scale-n", type=int, default=1_000_000)
    parser.add_argument("--scale-k", type=int, default=1000)
    parser.add_argument("--scale-niter", type=int, default=20)
    parser.add_argument("--tmp-dir", default=None, help="where the scale run's h memmap lives")
    parser.add_argument("--skip-compare", action="store_true")
    parser.add_argument("--skip-scale", action="store_true")
    parser.add_argument("--threads", type=int, default=0,
                        help="BLAS/OpenMP threads (set before numpy loads; 0 = library default)")
    parser.add_argument("--smoke", action="store_true",
                        help="smallest size, in seconds: checks the script still runs (tests/test_benchmarks_run.py)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.n, args.d, args.clusters, args.niter = 2000, 16, 4, 2
        args.scale_n, args.scale_k, args.scale_niter = 4000, 8, 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.threads > 0:
        for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = str(args.threads)
    global np, sel
    import numpy as np  # noqa: F811

    from gmates_assets.core import selection as sel  # noqa: F811
    print(f"numpy {np.__version__}; cpu cores visible: {os.cpu_count()}; timings are wall clock on a "
          f"shared machine and may be pessimistic")
    if not args.skip_compare:
        compare_run(args)
    if not args.skip_scale:
        scale_run(args)


if __name__ == "__main__":
    main()
