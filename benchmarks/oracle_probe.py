"""Per-step cost of oracle probing through `probe_rollouts` vs a bare torch loop doing the same steps.

Both run in this process on the small-recipe probe model (docs/method.md §8: 2 layers, d 128, 4 heads, FFN 512,
seq 128, vocab 2048) from the same checkpoint: restore weights + AdamW state, one AdamW step on one sequence
(CE + z-loss, clip 1.0), then the reference loss over the reference batches. `probe_rollouts` is timed end to
end (checkpoint load, input hashing, parquet commits included); the bare loop only for its steps. The bare
loop's deltas are checked against the tool's so both are known to do the same work.

    python benchmarks/oracle_probe.py [--rollouts 8] [--length 5] [--ref-examples 64] [--threads 1]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch
import torch.nn.functional as F

from gmates_assets.core import lm, oracle

ARCH = lm.LMArchitecture("llama", hidden_size=128, num_layers=2, num_heads=4, intermediate_size=512,
                         max_seq_len=128, vocab_size=2048)
CFG = lm.OptimConfig(lr=3e-3, min_lr=3e-5, warmup_steps=2, total_steps=20)


def make_inputs(root: Path, n_pool: int, n_ref: int, ref_batch: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    pool = rng.integers(0, ARCH.vocab_size, size=(n_pool, ARCH.max_seq_len + 1), dtype=np.int64)
    model = lm.build_causal_lm(ARCH, seed=seed)
    lm.train_lm(model, pool, CFG, 4, 4, seed, root / "ck", checkpoint_every=4, device="cpu")
    pairs = []
    for _ in range(n_ref):  # prompt/answer examples of at most 64 tokens
        n_prompt, n_answer = int(rng.integers(16, 40)), int(rng.integers(4, 24))
        ids = rng.integers(0, ARCH.vocab_size, size=n_prompt + n_answer)
        pairs.append((ids, np.where(np.arange(ids.size) < n_prompt, -100, ids)))
    return pool, lm.make_reference_batches(pairs, ref_batch, pad_id=0)


def bare_loop(checkpoint: Path, pool: np.ndarray, refs, rollouts: np.ndarray, answer_only: bool):
    """The same work written plainly: returns (seconds for the steps, cumulative deltas [R, T]).

    answer_only: project only answer positions through the output head for L_ref, as the tool does;
    otherwise compute full logits, as a straightforward implementation would.
    """
    model, opt, _ = lm.load_checkpoint(checkpoint, device="cpu")
    model.eval()
    params = list(model.parameters())
    saved_p = [p.detach().clone() for p in params]
    saved_s = [{k: v.clone() for k, v in opt.state[p].items()} for p in params]
    tokens = torch.from_numpy(pool)
    batches = [(ids[:, :-1], lab[:, 1:]) for ids, lab in refs]

    def batch_ce(i: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if answer_only:
            hidden = model.model(input_ids=i).last_hidden_state
            return F.cross_entropy(model.lm_head(hidden[t != -100]), t[t != -100])
        return F.cross_entropy(model(input_ids=i).logits.flatten(0, 1), t.flatten(), ignore_index=-100)

    def ref_loss() -> float:
        with torch.no_grad():
            return sum(float(batch_ce(i, t)) for i, t in batches) / len(batches)

    base = ref_loss()
    out = np.zeros(rollouts.shape)
    start = time.perf_counter()
    for r, row in enumerate(rollouts):
        with torch.no_grad():
            for p, sp, ss in zip(params, saved_p, saved_s):
                p.copy_(sp)
                for k, v in ss.items():
                    opt.state[p][k].copy_(v)
        for t, item in enumerate(row):
            x = tokens[item : item + 1]
            logits = model(input_ids=x[:, :-1]).logits.flatten(0, 1)
            loss = F.cross_entropy(logits, x[0, 1:]) + 1e-4 * torch.logsumexp(logits, -1).square().mean()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            out[r, t] = ref_loss() - base
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rollouts", type=int, default=8)
    parser.add_argument("--length", type=int, default=5)
    parser.add_argument("--pool", type=int, default=256)
    parser.add_argument("--ref-examples", type=int, default=64)
    parser.add_argument("--ref-batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3, help="alternate the runs; report the fastest of each")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: leave torch's default)")
    parser.add_argument("--smoke", action="store_true",
                        help="smallest size, in seconds: checks the script still runs (tests/test_benchmarks_run.py)")
    args = parser.parse_args()
    if args.smoke:
        args.rollouts, args.pool, args.ref_examples, args.ref_batch, args.repeats = 2, 16, 8, 8, 1
    if args.threads:
        torch.set_num_threads(args.threads)

    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        pool, refs = make_inputs(root, args.pool, args.ref_examples, args.ref_batch)
        rollouts = oracle.sample_random_rollouts(len(pool), args.rollouts, args.length, seed=0)
        steps = rollouts.size
        times = {"tool": [], "bare": [], "bare_answer_only": []}
        deltas = {}

        def run_tool(rep: int) -> None:
            start = time.perf_counter()
            oracle.probe_rollouts(root / "ck", pool, refs, rollouts, root / f"out{rep}", chunk_rollouts=4,
                                  seed=0, device="cpu")
            times["tool"].append(time.perf_counter() - start)
            deltas["tool"] = oracle.read_rollouts(root / f"out{rep}")[2]

        def run_bare(answer_only: bool) -> None:
            key = "bare_answer_only" if answer_only else "bare"
            seconds, deltas[key] = bare_loop(root / "ck", pool, refs, rollouts, answer_only)
            times[key].append(seconds)

        runs = [run_tool, lambda: run_bare(False), lambda: run_bare(True)]
        for rep in range(args.repeats):  # rotate the order so drifting machine load hits all runs alike
            for k in range(len(runs)):
                fn = runs[(k + rep) % len(runs)]
                fn(rep) if fn is run_tool else fn()

    ms = {key: 1000 * min(values) / steps for key, values in times.items()}
    rate = {key: args.rollouts / min(values) for key, values in times.items()}
    print(f"model: {lm.count_parameters(lm.build_causal_lm(ARCH, 0)):,} params, seq {ARCH.max_seq_len}, "
          f"{args.ref_examples} reference examples in batches of {args.ref_batch}; torch threads "
          f"{torch.get_num_threads()}")
    print(f"work: {args.rollouts} rollouts x T={args.length} = {steps} steps, best of {args.repeats}; "
          f"load average at start/end: {load_start:.1f}/{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"probe_rollouts (end to end):          {ms['tool']:8.2f} ms/step  {rate['tool']:.2f} rollouts/s")
    print(f"bare loop, full logits (steps only):  {ms['bare']:8.2f} ms/step  {rate['bare']:.2f} rollouts/s")
    print(f"bare loop, answer-only head (steps):  {ms['bare_answer_only']:8.2f} ms/step  "
          f"{rate['bare_answer_only']:.2f} rollouts/s")
    print(f"ratio probe_rollouts / bare full-logits loop: {ms['tool'] / ms['bare']:.3f} (target <= 1.2)")
    print(f"ratio probe_rollouts / bare answer-only loop: {ms['tool'] / ms['bare_answer_only']:.3f} "
          f"(framework overhead alone)")
    for key in ("bare", "bare_answer_only"):
        print(f"max |c_t(tool) - c_t({key})|: {float(np.abs(deltas['tool'] - deltas[key]).max()):.2e}")


if __name__ == "__main__":
    main()
