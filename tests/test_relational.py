"""Relational influence model (docs/method.md §3.2), its training, and the bootstrap beam search (§3.3)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from gmates_assets.core.bootstrap import bootstrap_beam_search, bootstrap_rollouts, seed_share
from gmates_assets.core.oracle import cumulative_from_marginals, marginals_from_cumulative
from gmates_assets.core.relational import (
    RelationalInfluenceModel,
    load_influence_model,
    masked_mean_of_unit_vectors,
    relational_predictions,
    save_influence_model,
    score_items,
    train_influence_model,
    zscore_labels,
)

torch.set_num_threads(1)


# ------------------------------------------------------------------ model formula

def _adapter_model(dim: int, seed: int = 0) -> RelationalInfluenceModel:
    torch.manual_seed(seed)
    return RelationalInfluenceModel(dim, mode="adapter", dropout=0.0).eval()


def test_p0_equals_s_and_formula_matches_explicit_sum():
    torch.manual_seed(1)
    model = _adapter_model(6)
    with torch.no_grad():
        model.tau.fill_(0.7)
        model.alpha.fill_(1.3)
    chunks = torch.randn(3, 4, 2, 6)  # B=3 rollouts, T=4, C=2 chunks, d=6
    with torch.no_grad():
        p, s, h = model({"chunks": chunks})
    assert torch.equal(p[:, 0], s[:, 0])
    for b in range(3):
        for t in range(1, 4):
            rel = sum(1 - float(h[b, t] @ h[b, j]) / 0.7 for j in range(t)) / t
            assert float(p[b, t]) == pytest.approx(1.3 * float(s[b, t]) * rel, rel=1e-5, abs=1e-6)


def test_orthogonal_h_and_unit_tau_gives_alpha_times_s():
    h = torch.eye(4).unsqueeze(0)  # one rollout of 4 mutually orthogonal unit vectors: R_tj = 0 for j ≠ t
    s = torch.tensor([[0.5, -1.0, 2.0, 0.25]])
    p = relational_predictions(s, h, torch.tensor(1.0), torch.tensor(1.7))
    assert torch.allclose(p, torch.tensor([[0.5, -1.7, 3.4, 0.425]]))


def test_embedding_is_mean_of_unit_chunk_vectors_over_real_chunks():
    chunks = torch.tensor([[[3.0, 0.0], [0.0, 5.0]], [[0.0, 2.0], [7.0, 7.0]]])
    mask = torch.tensor([[True, True], [True, False]])
    h = masked_mean_of_unit_vectors(chunks, mask)
    assert torch.allclose(h, torch.tensor([[0.5, 0.5], [0.0, 1.0]]))
    model = _adapter_model(2)  # adapter starts at A = 0, so h is the frozen encoder's h
    assert torch.allclose(model.embed({"chunks": chunks, "chunk_mask": mask}), h)
    with torch.no_grad():
        assert float(model.embed({"chunks": chunks}).norm(dim=-1).max()) <= 1.0 + 1e-6


def test_relation_stays_within_each_rollout():
    model = _adapter_model(5, seed=3)
    a = torch.randn(1, 4, 2, 5)
    b = torch.randn(1, 4, 2, 5)
    with torch.no_grad():
        p_a, s_a, _ = model({"chunks": a})
        p_b, _, _ = model({"chunks": b})
        p_ab, s_ab, _ = model({"chunks": torch.cat([a, b])})
        p_ab2, _, _ = model({"chunks": torch.cat([a, b + 10 * torch.randn_like(b)])})
    assert torch.allclose(p_ab[0], p_a[0], atol=1e-6) and torch.allclose(p_ab[1], p_b[0], atol=1e-6)
    assert torch.equal(p_ab2[0], p_ab[0])  # perturbing rollout B never moves rollout A
    assert torch.equal(s_ab[0], s_a[0])


# ------------------------------------------------------------------ labels

def test_cumulative_marginal_round_trip_through_oracle_functions():
    c = np.array([[0.1, 0.05, -0.2], [-0.3, -0.1, 0.4]])
    marginal = marginals_from_cumulative(c)
    np.testing.assert_allclose(marginal, [[0.1, -0.05, -0.25], [-0.3, 0.2, 0.5]])
    np.testing.assert_allclose(cumulative_from_marginals(marginal), c)
    y, mu, sigma = zscore_labels(marginal)  # labels are z-scored marginals, never cumulative deltas
    np.testing.assert_allclose(y * sigma + mu, marginal)


def test_zscore_train_only_stats_versus_all_rows():
    marginals = np.array([[1.0, 3.0], [5.0, 7.0], [100.0, 200.0]])
    train = np.array([True, True, False])
    y, mu, sigma = zscore_labels(marginals, train)
    assert mu == pytest.approx(4.0) and sigma == pytest.approx(np.sqrt(5.0))
    np.testing.assert_allclose(y[:2].mean(), 0.0, atol=1e-12)
    np.testing.assert_allclose(y[:2].std(), 1.0)
    y_all, mu_all, sigma_all = zscore_labels(marginals, None)  # the original: held-out rows leak into μ, σ
    assert mu_all == pytest.approx(marginals.mean()) and sigma_all == pytest.approx(marginals.std())
    np.testing.assert_allclose(y_all.mean(), 0.0, atol=1e-12)
    with pytest.raises(ValueError, match="zero spread"):
        zscore_labels(np.ones((2, 3)))


# ------------------------------------------------------------------ bootstrap beam search

# Five items in 2-D, τ = α = 1, T = 3, K = 2, keep = 2.
#   h0 = (1,0) s0 = -1.0 | h1 = (0,1) s1 = -0.5 | h2 = (1,0) s2 = -0.8 | h3 = (0,-1) s3 = 0.5 | h4 = (.6,.8) s4 = 1.0
#   c_k = 1 − R_{·k}:  c0 = c2 = [0, 1, 0, 1, .4]   c1 = [1, 0, 1, 2, .2]   c3 = [1, 2, 1, 0, 1.8]   c4 = [.4, .2, .4, 1.8, 0]
_H = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, -1.0], [0.6, 0.8]])
_S = np.array([-1.0, -0.5, -0.8, 0.5, 1.0])


def test_beam_search_by_hand_argmin():
    # step 0 (scores = s): best two are 0 (-1.0), 2 (-0.8)                      → [0] -1.0, [2] -0.8
    # step 1, [0]: a = c0, a·s = [×, -.5, 0, .5, .4] → 1 (-.5), 2 (0)           → [0,1] -1.5, [0,2] -1.0
    #         [2]: a = c2, a·s = [0, -.5, ×, .5, .4] → 1 (-.5), 0 (0)           → [2,1] -1.3, [2,0] -0.8
    #   keep 2: [0,1] -1.5, [2,1] -1.3
    # step 2, a = (c0 + c1)/2 = (c2 + c1)/2 = [.5, .5, .5, 1.5, .3]
    #         [0,1]: 2 → .5·-.8 = -.4, 4 → .3, 3 → .75                           → [0,1,2] -1.9, [0,1,4] -1.2
    #         [2,1]: 0 → .5·-1 = -.5, 4 → .3                                     → [2,1,0] -1.8, [2,1,4] -1.0
    #   keep 2: [0,1,2] -1.9, [2,1,0] -1.8
    result = bootstrap_beam_search(_H, _S, 1.0, 1.0, 3, 2, 2, +1)
    np.testing.assert_array_equal(result.rollouts, [[0, 1, 2], [2, 1, 0]])
    np.testing.assert_allclose(result.cumulative, [[-1.0, -1.5, -1.9], [-0.8, -1.3, -1.8]])
    np.testing.assert_allclose(result.predicted, [[-1.0, -0.5, -0.4], [-0.8, -0.5, -0.5]])
    assert result.rollouts.dtype == np.int64


def test_beam_search_by_hand_argmax():
    # step 0: largest s are 4 (1.0), 3 (0.5)                                    → [4] 1.0, [3] 0.5
    # step 1, [4]: a = c4, a·s = [-.4, -.1, -.32, .9, ×] → 3 (.9), 1 (-.1)      → [4,3] 1.9, [4,1] 0.9
    #         [3]: a = c3, a·s = [-1, -1, -.8, ×, 1.8] → 4 (1.8), 2 (-.8)       → [3,4] 2.3, [3,2] -0.3
    #   keep 2: [3,4] 2.3, [4,3] 1.9
    # step 2, a = (c3 + c4)/2 = [.7, 1.1, .7, .9, .9]; a·s over 0, 1, 2 = [-.7, -.55, -.56]
    #         [3,4] → 1 (-.55), 2 (-.56) → 1.75, 1.74;  [4,3] → 1.35, 1.34
    #   keep 2: [3,4,1] 1.75, [3,4,2] 1.74
    result = bootstrap_beam_search(_H, _S, 1.0, 1.0, 3, 2, 2, -1)
    np.testing.assert_array_equal(result.rollouts, [[3, 4, 1], [3, 4, 2]])
    np.testing.assert_allclose(result.cumulative, [[0.5, 2.3, 1.75], [0.5, 2.3, 1.74]])


def test_beam_search_uses_learned_tau_and_alpha():
    # τ = 2, α = 3: c0 = c2 = 3(1 − R_{·0}/2) = [1.5, 3, 1.5, 3, 2.1]
    # step 0 → [0] -1.0, [2] -0.8;  step 1, [0]: a·s = [×, -1.5, -1.2, 1.5, 2.1] → 1 (-1.5), 2 (-1.2)
    #   [2]: a·s = [-1.5, -1.5, ×, ...] → 0 (-1.5), 1 (-1.5)  (tie → lower index first)
    #   cumulative: [0,1] -2.5, [0,2] -2.2, [2,0] -2.3, [2,1] -2.3 → keep 3: [0,1], [2,0], [2,1]
    result = bootstrap_beam_search(_H, _S, 2.0, 3.0, 2, 2, 3, +1)
    np.testing.assert_array_equal(result.rollouts, [[0, 1], [2, 0], [2, 1]])
    np.testing.assert_allclose(result.cumulative[:, -1], [-2.5, -2.3, -2.3])


def _reference_beam_search(h, s, tau, alpha, length, k, keep, direction, quirk):
    """Literal transcription of §3.3 with full stable sorts (slow, obviously right)."""
    n = len(s)
    states = [([], np.zeros(n), 0.0, [])]
    for i in range(length):
        children = []
        for chosen, a, total, hist in states:
            score = np.zeros(n) if (i == 0 and quirk) else (s.copy() if i == 0 else a * s)
            score[chosen] = direction * np.inf
            for cand in np.argsort(direction * score, kind="stable")[:k]:
                c = alpha * (1 - (h @ h[cand]) / tau)
                children.append((chosen + [int(cand)], (i * a + c) / (i + 1), total + score[cand],
                                 hist + [total + score[cand]]))
        order = np.argsort([direction * c[2] for c in children], kind="stable")[:keep]
        states = [children[j] for j in order]
    return np.array([st[0] for st in states]), np.array([st[3] for st in states])


@pytest.mark.parametrize("direction", [1, -1])
@pytest.mark.parametrize("step0", ["predicted", "reference-quirk"])
def test_beam_search_matches_literal_reference(direction, step0):
    rng = np.random.default_rng(7)
    h = rng.normal(size=(30, 4))
    h /= np.linalg.norm(h, axis=1, keepdims=True) * rng.uniform(1.0, 2.0, size=(30, 1))
    s = rng.normal(size=30)
    result = bootstrap_beam_search(h, s, 0.9, 1.2, 4, 3, 7, direction, step0=step0, block_size=4)
    expected_items, expected_cum = _reference_beam_search(h, s, 0.9, 1.2, 4, 3, 7, direction,
                                                          step0 == "reference-quirk")
    np.testing.assert_array_equal(result.rollouts, expected_items)
    np.testing.assert_allclose(result.cumulative, expected_cum, rtol=1e-12, atol=1e-12)
    for row in result.rollouts:
        assert len(set(row.tolist())) == len(row)  # no item twice in a rollout


def test_step0_modes_choose_the_first_items():
    rng = np.random.default_rng(11)
    h = rng.normal(size=(40, 3)) / 3
    s = rng.normal(size=40)
    quirk = bootstrap_rollouts(h, s, 1.0, 1.0, 3, 4, 20, step0="reference-quirk")
    assert set(quirk.rollouts[:, 0].tolist()) <= {0, 1, 2, 3}  # both directions: ties → pool indices 0..K−1
    np.testing.assert_array_equal(quirk.predicted[:, 0], 0.0)
    predicted = bootstrap_rollouts(h, s, 1.0, 1.0, 3, 4, 20, step0="predicted")
    lowest, highest = set(np.argsort(s)[:4].tolist()), set(np.argsort(s)[-4:].tolist())
    assert set(predicted.rollouts[predicted.directions == 1, 0].tolist()) <= lowest
    assert set(predicted.rollouts[predicted.directions == -1, 0].tolist()) <= highest
    assert predicted.rollouts.shape == (40, 3) and predicted.directions.dtype == np.int8
    # best-first: argmin beams ascend in final cumulative score, argmax beams descend
    up, down = predicted.cumulative[:20, -1], predicted.cumulative[20:, -1]
    assert np.all(np.diff(up) >= 0) and np.all(np.diff(down) <= 0)


# ------------------------------------------------------------------ training

def _planted_problem(seed=0, n_clusters=24, per=10, d=16, chunks=2, n_rollouts=400, length=5,
                     tau=0.6, alpha=1.3, noise=0.05):
    """Features in clusters (so rollouts hold near-duplicates), labels from a known relational model."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(n_clusters, d))
    cluster = np.repeat(np.arange(n_clusters), per)
    vecs = (centers[cluster][:, None, :] + 0.35 * rng.normal(size=(len(cluster), chunks, d))).astype(np.float32)
    mask = np.ones((len(cluster), chunks), bool)
    mask[rng.random(len(cluster)) < 0.3, 1] = False
    h = masked_mean_of_unit_vectors(torch.from_numpy(vecs), torch.from_numpy(mask))
    s = h @ torch.from_numpy(rng.normal(size=d)).float() + 0.1
    items = np.empty((n_rollouts, length), np.int64)
    for r in range(n_rollouts):  # each rollout draws from two clusters: the relation matters
        members = np.flatnonzero(np.isin(cluster, rng.choice(n_clusters, 2, replace=False)))
        items[r] = rng.choice(members, length, replace=False)
    index = torch.from_numpy(items)
    p = relational_predictions(s[index], h[index], torch.tensor(tau), torch.tensor(alpha)).numpy()
    y = p + noise * rng.normal(size=p.shape)
    return {"chunks": vecs, "chunk_mask": mask}, items, 0.02 * y + 0.001  # raw marginals, arbitrary scale


_FAST = dict(lr=1e-2, epochs=25, rollouts_per_step=16, eval_every=20, warmup_steps=20, dropout=0.0)


@pytest.fixture(scope="module")
def planted():
    features, items, marginals = _planted_problem()
    relational = train_influence_model(features, items, marginals, seed=0, **_FAST)
    individual = train_influence_model(features, items, marginals, seed=0, individual_only=True, **_FAST)
    return features, items, marginals, relational, individual


def test_training_recovers_planted_relational_model(planted):
    _, _, _, relational, individual = planted
    metrics = relational.metrics
    assert metrics["heldout_spearman"] == metrics["spearman_all"] > 0.9
    assert metrics["spearman_ge1"] > 0.9 and metrics["n_heldout_rollouts"] == 60
    assert relational.tau == pytest.approx(0.6, abs=0.1) and relational.alpha == pytest.approx(1.3, abs=0.2)
    # the individual (MATES) model fits position 0 but cannot track group labels at positions ≥ 1
    assert individual.metrics["spearman_pos0"] > 0.9
    assert individual.metrics["spearman_ge1"] < metrics["spearman_ge1"] - 0.3
    assert individual.tau == 1.0 and individual.alpha == 1.0  # frozen, weight decay included
    curves = relational.curves
    assert len(curves["train_loss"]) == metrics["total_steps"] and curves["eval_step"][-1] == metrics["total_steps"]
    assert curves["train_loss"][-1] < curves["train_loss"][0]
    assert max(curves["eval_spearman"]) == pytest.approx(metrics["spearman_all"])


def test_training_is_deterministic_for_a_seed(planted, tmp_path):
    features, items, marginals, relational, _ = planted
    again = train_influence_model(features, items, marginals, seed=0, **_FAST)
    save_influence_model(tmp_path / "a", relational)
    save_influence_model(tmp_path / "b", again)
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()
    other = train_influence_model(features, items, marginals, seed=1, **{**_FAST, "epochs": 1})
    assert not torch.equal(other.state_dict["head.weight"], relational.state_dict["head.weight"])


def test_label_stats_option(planted):
    features, items, marginals, relational, _ = planted
    assert relational.label_stats == "train"
    quick = {**_FAST, "epochs": 1}
    leak = train_influence_model(features, items, marginals, label_stats="all", **quick)
    assert leak.mu == pytest.approx(marginals.mean()) and leak.sigma == pytest.approx(marginals.std())
    assert relational.mu != pytest.approx(marginals.mean(), abs=0, rel=1e-12)


def test_save_load_round_trip_gives_identical_predictions(planted, tmp_path):
    features, items, _, relational, _ = planted
    save_influence_model(tmp_path, relational)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["mode"] == "adapter" and config["dim"] == 16
    assert config["tau"] == relational.tau and config["mu"] == relational.mu
    assert config["metrics"]["heldout_spearman"] == pytest.approx(relational.metrics["heldout_spearman"])
    loaded = load_influence_model(tmp_path, device="cpu")
    h_a, s_a = score_items(relational, {**features, "pooled": None, "attrs": {"x": 1}}, batch_size=64)
    h_b, s_b = score_items(loaded, features, batch_size=64)  # same batching: BLAS rounding can differ otherwise
    np.testing.assert_array_equal(h_a, h_b)
    np.testing.assert_array_equal(s_a, s_b)
    assert h_a.dtype == np.float32 and s_a.shape == (len(features["chunks"]),)
    assert loaded.tau == relational.tau and loaded.alpha == relational.alpha
    batch = {k: torch.from_numpy(v[items[:3]]) for k, v in features.items()}
    with torch.no_grad():
        assert torch.equal(relational.module(batch)[0], loaded.module(batch)[0])


def test_scored_items_drive_bootstrap_toward_extremes(planted):
    features, _, _, relational, _ = planted
    h, s = score_items(relational, features)
    result = bootstrap_rollouts(h, s, relational.tau, relational.alpha, 5, 3, 10)
    low = result.cumulative[result.directions == 1, -1]
    high = result.cumulative[result.directions == -1, -1]
    assert low.max() < high.min()
    # the beam's per-position scores are the model's own p_t for that rollout
    batch = {k: torch.from_numpy(v[result.rollouts]) for k, v in features.items()}
    with torch.no_grad():
        p, _, _ = relational.module(batch)
    np.testing.assert_allclose(result.predicted, p.double().numpy(), rtol=1e-4, atol=1e-4)


def test_bad_inputs_name_the_field():
    features, items, marginals = _planted_problem(n_rollouts=20)
    with pytest.raises(ValueError, match="marginals"):
        train_influence_model(features, items, marginals[:, :3])
    bad = items.copy()
    bad[2, 1] = 10_000
    with pytest.raises(IndexError, match=r"rollout_items\[2, 1\]"):
        train_influence_model(features, bad, marginals)
    with pytest.raises(KeyError, match="chunks"):
        train_influence_model({"vectors": features["chunks"]}, items, marginals)
    with pytest.raises(ValueError, match="direction"):
        bootstrap_beam_search(_H, _S, 1.0, 1.0, 2, 2, 2, 0)


# ------------------------------------------------------------------ full fine-tuning mode (GPU knob, tiny here)

def test_finetune_mode_trains_the_encoder_and_round_trips(tmp_path):
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    encoder_dir = tmp_path / "encoder"
    BertModel(BertConfig(vocab_size=40, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=16, max_position_embeddings=16)).save_pretrained(encoder_dir)
    rng = np.random.default_rng(0)
    n, chunks, length = 12, 2, 6
    input_ids = rng.integers(1, 40, size=(n, chunks, length))
    attention = np.ones((n, chunks, length), np.int64)
    attention[:, 1, 3:] = 0  # second chunks are half padding
    features = {"input_ids": input_ids, "attention_mask": attention}
    items = np.stack([rng.permutation(n)[:3] for _ in range(10)])
    marginals = rng.normal(size=(10, 3))
    trained = train_influence_model(features, items, marginals, mode="finetune", encoder_dir=encoder_dir,
                                    pooling="mean", lr=1e-3, epochs=2, rollouts_per_step=4,
                                    micro_batch_rollouts=2, heldout_fraction=0.2, eval_every=2, warmup_steps=0,
                                    device="cpu")
    initial = BertModel.from_pretrained(encoder_dir)
    name = "encoder.embeddings.word_embeddings.weight"
    assert not torch.equal(trained.state_dict[name], initial.embeddings.word_embeddings.weight)
    save_influence_model(tmp_path / "model", trained)
    loaded = load_influence_model(tmp_path / "model", device="cpu")
    h_a, s_a = score_items(trained, features, batch_size=5)
    h_b, s_b = score_items(loaded, features, batch_size=5)
    np.testing.assert_array_equal(h_a, h_b)
    np.testing.assert_array_equal(s_a, s_b)
    assert h_a.shape == (n, 8) and np.all(np.linalg.norm(h_a, axis=1) <= 1 + 1e-5)


def test_seed_shares_partition_the_rollouts_without_overlap():
    ids = np.array([5, 1, 4, 2, 3, 0, 6])
    shares = [seed_share(ids, i, 3) for i in range(3)]
    assert [list(x) for x in shares] == [[0, 3, 6], [1, 4], [2, 5]]
    assert sorted(np.concatenate(shares)) == sorted(ids)
