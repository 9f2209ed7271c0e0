"""Small PNG plots for asset metadata (embedded in the Dagster UI as data URIs). Deterministic bytes."""
from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

_SIZE = (5.0, 3.0)
_DPI = 80


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=_DPI, metadata={"Software": None})
    plt.close(fig)
    return buffer.getvalue()


def line_plot(series: Mapping[str, Sequence[float]], title: str, xlabel: str = "step", ylabel: str = "",
              x: Mapping[str, Sequence[float]] | None = None) -> bytes:
    fig, ax = plt.subplots(figsize=_SIZE)
    for label, values in series.items():
        xs = list(x[label]) if x and label in x else list(range(len(values)))
        ax.plot(xs, list(values), label=label)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    if len(series) > 1:
        ax.legend(fontsize=8)
    return _png(fig)


def bar_plot(values: Mapping[str, float], title: str, ylabel: str = "") -> bytes:
    fig, ax = plt.subplots(figsize=_SIZE)
    names = list(values)
    ax.bar(names, [values[n] for n in names], color="#4c72b0")
    ax.set(title=title, ylabel=ylabel)
    ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    return _png(fig)


def grouped_bar_plot(groups: Mapping[str, Mapping[str, float]], title: str, ylabel: str = "") -> bytes:
    """groups: series name -> {category -> value}; one bar per series within each category."""
    fig, ax = plt.subplots(figsize=(6.0, 3.2))
    series = list(groups)
    categories = sorted({c for g in groups.values() for c in g})
    width = 0.8 / max(len(series), 1)
    for i, name in enumerate(series):
        xs = [j + i * width for j in range(len(categories))]
        ax.bar(xs, [groups[name].get(c, 0.0) for c in categories], width=width, label=name)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(categories))], categories, rotation=20, fontsize=8)
    ax.set(title=title, ylabel=ylabel)
    ax.legend(fontsize=7)
    return _png(fig)


def histograms(samples: Mapping[str, Sequence[float]], title: str, bins: int = 30) -> bytes:
    fig, ax = plt.subplots(figsize=_SIZE)
    for label, values in samples.items():
        ax.hist(list(values), bins=bins, alpha=0.55, label=label)
    ax.set(title=title)
    ax.legend(fontsize=8)
    return _png(fig)
