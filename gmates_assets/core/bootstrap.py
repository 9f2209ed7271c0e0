"""Bootstrap rollouts (docs/method.md §3.3): beam search toward both ends of predicted group influence, and
how the resulting rollouts are split across the oracle seeds for probing.

Scores live in the z-space of the oracle labels (lower is better): direction +1 seeks the minimum, −1 the
maximum, so the second oracle round covers both tails of the influence distribution.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from .progress import ProgressFn

STEP0_MODES = ("predicted", "reference-quirk")
# Bootstrap rollout ids are offset so they never collide with random-rollout ids (seed * rollouts + i).
BOOTSTRAP_ID_OFFSET = 1_000_000_000

class BeamSearchResult(NamedTuple):
    rollouts: np.ndarray  # int64 [n, T], best first by o·cumulative
    cumulative: np.ndarray  # float64 [n, T]: running sum of the beam scores
    predicted: np.ndarray  # float64 [n, T]: the beam score of each position (= the model's p_t; 0 at a quirk step 0)


class _RelationCache:
    """c_k = α(1 − R_{·k}/τ) over the whole pool, computed once per distinct chosen item k (one GEMV each, so
    the bits never depend on which other items were batched with it)."""

    def __init__(self, h: np.ndarray, tau: float, alpha: float):
        self.h, self.tau, self.alpha = h, tau, alpha
        self.rows: dict[int, np.ndarray] = {}

    def __call__(self, k: int) -> np.ndarray:
        row = self.rows.get(k)
        if row is None:
            row = self.alpha * (1.0 - (self.h @ self.h[k]) / self.tau)
            self.rows[k] = row
        return row


def _top_k_rows(keys: np.ndarray, k: int) -> np.ndarray:
    """Per row, the k smallest keys in ascending order, ties by lower column index (stable), [P, k]."""
    if k >= keys.shape[1]:
        return np.argsort(keys, axis=1, kind="stable")[:, :k]
    part = np.argpartition(keys, k - 1, axis=1)[:, :k]
    kth = np.take_along_axis(keys, part, axis=1).max(axis=1)
    ambiguous = (keys <= kth[:, None]).sum(axis=1) > k  # ties straddle the cut: settle them by index
    for row in np.flatnonzero(ambiguous):
        candidates = np.flatnonzero(keys[row] <= kth[row])
        part[row] = candidates[np.argsort(keys[row, candidates], kind="stable")[:k]]
    vals = np.take_along_axis(keys, part, axis=1)
    return np.take_along_axis(part, np.lexsort((part, vals), axis=1), axis=1)


def bootstrap_beam_search(h: np.ndarray, s: np.ndarray, tau: float, alpha: float, length: int, beam_k: int,
                          keep: int, direction: int, step0: str = "predicted", block_size: int = 256,
                          progress: ProgressFn = None) -> BeamSearchResult:
    """Beam search for extreme-influence rollouts under the learned model (docs/method.md §3.3).

    direction +1 seeks the minimum (best), −1 the maximum. At step i a state's candidate k scores a_k·s_k,
    with a the mean of α(1 − R_{·j}/τ) over its chosen j (updated as (i·a + c_k)/(i+1) in float64, the code's
    recurrence); chosen items are excluded; K best children per state; the `keep` best by o·cumulative survive.
    step0="predicted" scores step 0 with s (matching p_0); "reference-quirk" scores it with a = 0, so ties
    send every rollout to pool items 0..K−1, as the original code did. Ties always go to the lower pool index
    and, when pruning, to the earlier parent / better-ranked child.
    """
    if direction not in (1, -1):
        raise ValueError(f"direction: expected +1 (argmin) or -1 (argmax), got {direction}")
    if step0 not in STEP0_MODES:
        raise ValueError(f"step0: expected one of {STEP0_MODES}, got {step0!r}")
    h = np.asarray(h, dtype=np.float64)
    s = np.asarray(s, dtype=np.float64).reshape(-1)
    if h.ndim != 2 or h.shape[0] != s.shape[0]:
        raise ValueError(f"h {h.shape} and s {s.shape}: expected [n, d] and [n]")
    n = h.shape[0]
    if not 1 <= length <= n:
        raise ValueError(f"length: expected 1..{n} (pool size), got {length}")
    if beam_k < 1 or keep < 1:
        raise ValueError(f"beam_k and keep must be positive, got {beam_k}, {keep}")
    relation = _RelationCache(h, float(tau), float(alpha))

    chosen = np.zeros((1, 0), np.int64)
    scores = np.zeros((1, 0), np.float64)
    cumulative = np.zeros((1, 0), np.float64)
    avg = np.zeros((1, n), np.float64)
    for i in range(length):
        k_eff = min(beam_k, n - i)
        if i == 0:
            step_scores = s.copy() if step0 == "predicted" else np.zeros(n)
            picks = _top_k_rows((direction * step_scores)[None, :], k_eff)
            pick_scores = step_scores[picks]
        else:
            picks = np.empty((len(chosen), k_eff), np.int64)
            pick_scores = np.empty((len(chosen), k_eff), np.float64)
            for start in range(0, len(chosen), block_size):
                block = slice(start, start + block_size)
                block_scores = avg[block] * s[None, :]
                keys = direction * block_scores
                np.put_along_axis(keys, chosen[block], np.inf, axis=1)  # o·(o·∞) = +∞: never re-picked
                picks[block] = _top_k_rows(keys, k_eff)
                pick_scores[block] = np.take_along_axis(block_scores, picks[block], axis=1)
        parent_total = cumulative[:, -1] if i else np.zeros(len(chosen))
        child_total = (parent_total[:, None] + pick_scores).reshape(-1)  # parent-major, children by rank
        survivors = np.argsort(direction * child_total, kind="stable")[:keep]
        parents, ranks = np.divmod(survivors, k_eff)
        new_items = picks[parents, ranks]
        chosen = np.concatenate([chosen[parents], new_items[:, None]], axis=1)
        scores = np.concatenate([scores[parents], pick_scores[parents, ranks][:, None]], axis=1)
        cumulative = np.concatenate([cumulative[parents], child_total[survivors][:, None]], axis=1)
        if i + 1 < length:
            avg = _updated_averages(avg, parents, new_items, i, relation)
        if progress is not None:
            progress(i + 1, length, "steps")
    return BeamSearchResult(chosen, cumulative, scores)


def _updated_averages(avg: np.ndarray, parents: np.ndarray, new_items: np.ndarray, i: int,
                      relation: _RelationCache) -> np.ndarray:
    """a_child = (i·a_parent + c_k)/(i+1), built only for the surviving children."""
    out = np.empty((len(parents), avg.shape[1]), np.float64)
    for row, (parent, item) in enumerate(zip(parents, new_items)):  # row by row beats a gathered block: memory-bound
        out[row] = (i * avg[parent] + relation(int(item))) / (i + 1)
    return out


@dataclass
class BootstrapRollouts:
    rollouts: np.ndarray  # int64 [n, T]
    directions: np.ndarray  # int8 [n]: +1 argmin, −1 argmax
    cumulative: np.ndarray  # float64 [n, T]
    predicted: np.ndarray  # float64 [n, T]


def bootstrap_rollouts(h: np.ndarray, s: np.ndarray, tau: float, alpha: float, length: int, beam_k: int,
                       keep_per_direction: int, step0: str = "predicted", progress: ProgressFn = None
                       ) -> BootstrapRollouts:
    """Both directions: the argmin beams (+1) first, then the argmax beams (−1)."""
    results = []
    for index, direction in enumerate((1, -1)):
        def direction_progress(done: int, total: int, unit: str, _offset=index * length) -> None:
            if progress is not None:
                progress(_offset + done, 2 * length, unit)
        results.append(bootstrap_beam_search(h, s, tau, alpha, length, beam_k, keep_per_direction, direction,
                                             step0=step0, progress=direction_progress))
    directions = np.concatenate([np.full(len(r.rollouts), d, np.int8) for r, d in zip(results, (1, -1))])
    return BootstrapRollouts(rollouts=np.concatenate([r.rollouts for r in results]), directions=directions,
                             cumulative=np.concatenate([r.cumulative for r in results]),
                             predicted=np.concatenate([r.predicted for r in results]))


def seed_share(rollout_ids: np.ndarray, index: int, n_seeds: int) -> np.ndarray:
    """The rollout ids the `index`-th of `n_seeds` oracle seeds probes: every n_seeds-th id, in id order."""
    return np.unique(rollout_ids)[index::n_seeds]
