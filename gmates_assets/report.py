"""`gmates report`: the method comparison of a manifest's builds, read from the artifact store.

Every `eval_scores` artifact records the manifest configuration it came from with its seeds blanked and the
seeds themselves (`manifest.replicate_identity`). The report takes the artifacts of this manifest's
configuration, one per method and seed setting (the newest when one was built more than once), and shows
per method the mean, and the standard deviation over seed settings when there are several: every task's
centered accuracy, the core score with its label, held-out perplexity and held-out reference loss, and the
figures against `random` (the core as an absolute difference, relative only off a base away from zero).
"""
from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from .core.evaluation import comparison_rows
from .core.manifest import Manifest, replicate_identity
from .core.store import RECORD_FILE, Artifact, ArtifactStore

SCORES_FILE = "scores.json"


@dataclass(frozen=True)
class Run:
    artifact: Artifact
    scores: dict[str, Any]

    @property
    def built_at(self) -> float:
        return (self.artifact.path / RECORD_FILE).stat().st_mtime


class BuiltBy:
    """Whether an artifact was built entirely by one configuration: its code version is that configuration's
    and so, recursively, is that of some stored artifact with each input's content hash. An eval_scores built
    from another manifest's checkpoint (a sensor whose Definitions saw another sync's materializations) records
    this manifest's configuration in its provenance, but its checkpoint's lineage gives it away. Observed
    sources (assets without a code version here) are data, not configuration, and are not followed."""

    def __init__(self, store: ArtifactStore, code_versions: Mapping[str, str]):
        self.store, self.code_versions = store, dict(code_versions)
        self._memo: dict[tuple[str, str], bool] = {}
        self._by_content: dict[str, dict[str, list[Artifact]]] = {}

    def __call__(self, artifact: Artifact) -> bool:
        key = (artifact.asset, artifact.input_key)
        if key not in self._memo:
            self._memo[key] = False  # a cycle (impossible in a DAG) never counts as a match
            self._memo[key] = self._check(artifact)
        return self._memo[key]

    def _check(self, artifact: Artifact) -> bool:
        if artifact.record.get("code_version") != self.code_versions.get(artifact.asset):
            return False
        for asset, by_partition in (artifact.record.get("inputs") or {}).items():
            if asset not in self.code_versions:
                continue
            for version in by_partition.values():
                if not any(self(found) for found in self._with_content(asset, version)):
                    return False
        return True

    def _with_content(self, asset: str, content_hash: str) -> list[Artifact]:
        if asset not in self._by_content:
            grouped: dict[str, list[Artifact]] = {}
            for found in self.store.artifacts(asset):
                grouped.setdefault(found.content_hash, []).append(found)
            self._by_content[asset] = grouped
        return self._by_content[asset].get(content_hash, [])


def manifest_code_versions(manifest: Manifest) -> dict[str, str]:
    """asset -> code version, for every built (not observed) asset of a manifest."""
    from .defs.assets import DECLARATIONS
    from .defs.graph import AssetGraph

    graph = AssetGraph(manifest, DECLARATIONS)
    return {name: graph.code_version(name) for name, decl in graph.decls.items() if not decl.is_source}


def with_seeds(manifest: Manifest, seeds: Mapping[str, Any]) -> Manifest:
    """The manifest of one replicate: its seed settings (`replicate_identity(...)["seeds"]`) put back."""
    for dotted, value in seeds.items():
        section, name = dotted.split(".")
        manifest = manifest.model_copy(update={section: getattr(manifest, section).model_copy(update={name: value})})
    return manifest


def find_runs(store: ArtifactStore, manifest: Manifest, check_lineage: bool = False) -> dict[str, list[Run]]:
    """method -> runs of this manifest's configuration, one per seed setting (the newest), in seed order.
    `check_lineage`: leave out scores whose lineage is not entirely this configuration's at their seeds
    (BuiltBy); their provenance alone cannot tell."""
    configuration = replicate_identity(manifest)["configuration"]
    newest: dict[tuple[str, str], Run] = {}
    built_by: dict[str, BuiltBy] = {}  # per seed setting
    for artifact in store.artifacts("eval_scores"):
        path = artifact.file(SCORES_FILE)
        scores = json.loads(path.read_text()) if path.is_file() else {}
        provenance = scores.get("provenance") or {}
        if provenance.get("configuration") != configuration:
            continue
        seeds = json.dumps(provenance["seeds"], sort_keys=True)
        if check_lineage:
            if seeds not in built_by:
                replicate = with_seeds(manifest, provenance["seeds"])
                built_by[seeds] = BuiltBy(store, manifest_code_versions(replicate))
            if not built_by[seeds](artifact):
                continue
        key = (provenance["method"], seeds)
        run = Run(artifact, scores)
        if key not in newest or run.built_at > newest[key].built_at:
            newest[key] = run
    runs: dict[str, list[Run]] = {}
    for method in manifest.selection.methods:
        found = sorted((k[1], r) for k, r in newest.items() if k[0] == method)
        if found:
            runs[method] = [r for _, r in found]
    return runs


def _metrics(scores: dict) -> dict[str, float]:
    out = {f"task:{name}": t["centered_accuracy"] for name, t in scores["tasks"].items()}
    out.update(core=scores["core"], heldout_perplexity=scores["heldout_perplexity"],
               heldout_reference_loss=scores["heldout_reference_loss"])
    return out


def _mean_sd(values: list[float]) -> tuple[float, Optional[float]]:
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def summarize(runs: dict[str, list[Run]]) -> dict[str, dict]:
    """method -> {"runs": n, "seeds": [...], "mean": {metric: value}, "sd": {metric: value or None}}."""
    out = {}
    for method, method_runs in runs.items():
        metrics = [_metrics(r.scores) for r in method_runs]
        names = list(metrics[0])
        stats = {name: _mean_sd([m[name] for m in metrics if name in m]) for name in names}
        out[method] = {"runs": len(method_runs),
                       "seeds": [r.scores["provenance"]["seeds"] for r in method_runs],
                       "mean": {name: s[0] for name, s in stats.items()},
                       "sd": {name: s[1] for name, s in stats.items()}}
    return out


def _as_scores(mean: dict[str, float]) -> dict:
    return {"core": mean["core"], "heldout_perplexity": mean["heldout_perplexity"],
            "heldout_reference_loss": mean["heldout_reference_loss"],
            "tasks": {k[5:]: {"centered_accuracy": v} for k, v in mean.items() if k.startswith("task:")}}


def comparison_plots(store: ArtifactStore, runs: dict[str, list[Run]]) -> list[Path]:
    """comparison.png of every method_comparison built from these eval_scores."""
    hashes = {r.artifact.content_hash for method_runs in runs.values() for r in method_runs}
    plots = []
    for artifact in store.artifacts("method_comparison"):
        inputs = set(artifact.record.get("inputs", {}).get("eval_scores", {}).values())
        if inputs and inputs <= hashes and artifact.file("comparison.png").is_file():
            plots.append(artifact.file("comparison.png"))
    return plots


def build_report(store: ArtifactStore, manifest: Manifest, check_lineage: bool = True) -> dict[str, Any]:
    """The comparison of the manifest's builds; only scores built entirely by its configuration (find_runs)."""
    runs = find_runs(store, manifest, check_lineage)
    summary = summarize(runs)
    first = next((r.scores for method_runs in runs.values() for r in method_runs), {})
    return {"manifest": manifest.name, "core_version": first.get("core_version"), "methods": summary,
            "comparison": comparison_rows({m: _as_scores(s["mean"]) for m, s in summary.items()}),
            "plots": [str(p) for p in comparison_plots(store, runs)]}


def _cell(mean: float, sd: Optional[float], digits: int) -> str:
    return f"{mean:.{digits}f}" if sd is None else f"{mean:.{digits}f} ± {sd:.{digits}f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip() for line in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_report(report: dict[str, Any]) -> str:
    methods = report["methods"]
    if not methods:
        return (f"gmates report: no eval_scores in the store for manifest {report['manifest']!r} "
                "(same configuration, any seeds); run `gmates sync` first")
    rows_by_method = {row["method"]: row for row in report["comparison"]}
    main = []
    for method, s in methods.items():
        row = rows_by_method[method]
        main.append([method, str(s["runs"]), _cell(s["mean"]["core"], s["sd"]["core"], 4),
                     _signed(row.get("core_delta_vs_random")), _percent(row.get("core_vs_random_%")),
                     _cell(s["mean"]["heldout_perplexity"], s["sd"]["heldout_perplexity"], 3),
                     _percent(row.get("ppl_vs_random_%")),
                     _cell(s["mean"]["heldout_reference_loss"], s["sd"]["heldout_reference_loss"], 4)])
    tasks = [k for k in next(iter(methods.values()))["mean"] if k.startswith("task:")]
    per_task = [[task[5:], *(_cell(s["mean"][task], s["sd"][task], 4) if task in s["mean"] else "-"
                             for s in methods.values())] for task in tasks]
    parts = [f"gmates report: {report['manifest']}",
             f"core = {report['core_version']}",
             "runs = seed settings built for this configuration (mean ± sd over them when more than one)",
             "",
             _table(["method", "runs", "core", "Δcore vs random", "core vs random", "perplexity", "ppl vs random",
                     "held-out ref loss"], main),
             "",
             "centered accuracy per task (0 = random baseline, 1 = perfect)",
             _table(["task", *methods], per_task),
             "",
             "core vs random (%) is left out ('-') where random's core is within ±0.05 of zero: "
             "read Δcore there"]
    plots = report["plots"] or ["(none built yet: gmates sync builds method_comparison)"]
    parts += ["", "plots (per-asset plots and tables are in the Dagster UI: gmates ui):",
              *(f"  method comparison: {display_path(p)}" for p in plots)]
    return "\n".join(parts)


def display_path(location: str) -> str:
    """A local path relative to the working directory when it is below it (short, copyable); else as is."""
    if "://" in location or not location.startswith(("/", ".")):
        return location
    path = Path(location).resolve()
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _signed(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:+.4f}"


def _percent(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:+.2f}%"
