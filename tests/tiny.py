"""A tiny causal LM and token data it learns within a few steps, shared by the LM and oracle tests."""
from __future__ import annotations

import numpy as np

from gmates_assets.core import lm

TINY = lm.LMArchitecture("llama", hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64,
                         max_seq_len=16, vocab_size=64)


def counting_docs(rng: np.random.Generator, n_docs: int) -> list[list[int]]:
    """Counting runs (k, k+1, ...) mod 60 of 3-29 tokens: learnable within a few steps, so losses mean something."""
    return [((int(rng.integers(60)) + np.arange(int(rng.integers(3, 30)))) % 60).tolist() for _ in range(n_docs)]
