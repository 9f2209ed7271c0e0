"""Growing a pool: a cold sync, then appending one shard, then editing one document, timed and counted in one run.

A pool of local jsonl shards (the tests profile's tiny models) is synced up to the target (default
`dataset_release`) with a fixed tokenizer (`tokenizer.kind: pretrained`, a BPE trained once on other text) and a
frozen probe (`probe.pool: frozen`, `probe.sample_docs` a quarter of the pool). Then:

* append: shard N is added to the manifest and synced;
* edit: one document (of shard 5, or the next shard that has one) that is in neither the frozen probe pool nor
  the warm-up sample is edited and synced (an edit *inside* them rebuilds the probe from the same ids, then the
  oracles).

For each sync: wall seconds, partitions it ran (`executed`), how many of those were built (`rebuilt`) and how many
the store handed back without computing (`reused`), and whether any probe/oracle/model partition was built.
`--tokenizer train_bpe` measures a BPE tokenizer trained on a stable sample of `--train-docs` documents instead.

    python benchmarks/incremental.py                 # 128 shards x 20 documents
    python benchmarks/incremental.py --smoke         # 3 shards x 6 documents up to probe_pool (a check that it runs)
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PROBE_AND_MODELS = {"lm_tokenizer", "probe_checkpoint", "probe_pool", "oracle_random", "relational_model_init",
                    "bootstrap_rollouts", "oracle_bootstrap", "relational_model"}


def _shard(i: int) -> dict:
    return {"name": f"s{i:03d}", "format": "jsonl", "paths": [f"pool/s{i:03d}.jsonl"]}


def _manifest(n_shards: int, docs: int, tokenizer: str, train_docs: int) -> dict:
    data = yaml.safe_load((ROOT / "data_manifests" / "tests.yaml").read_text())
    data["sources"] = {"shards": [_shard(i) for i in range(n_shards)],
                       "reference": {"format": "demo"}, "heldout_reference": {"format": "demo"}}
    if tokenizer == "pretrained":
        data["tokenizer"] = {"kind": "pretrained", "name": "tok", "max_tokens": 32}
    else:
        data["tokenizer"] = {"kind": "train_bpe", "vocab_size": 300, "max_tokens": 32, "train_docs": train_docs}
    data["encoder"].update({"max_length": 64, "chunk_size": 32})
    data["probe"].update({"pool": "frozen", "sample_docs": max(1, n_shards * docs // 4)})
    data["oracle"]["pool_size"] = min(data["oracle"]["pool_size"], n_shards * docs // 2)
    data["selection"]["methods"] = ["group_mates"]
    data["execution"] = {"executor": "in_process"}
    return data


def _fixed_tokenizer(root: Path) -> None:
    """A byte-level BPE trained once on other text and saved as a local folder: a fixed, pretrained tokenizer."""
    from gmates_assets.core import tokenize

    words = "notes on topic and river with a few more words about measurement number shard document".split()
    texts = [" ".join(words[(i * k) % len(words)] for k in range(14)) + f" {i}" for i in range(300)]
    tokenize.save_tokenizer_dir(tokenize.train_bpe_tokenizer(texts, 300), root / "tok")


def _lines(i: int, docs: int) -> list[str]:
    return [json.dumps({"text": f"shard {i} document {j}: notes on topic {j % 7} and river {i % 5}, "
                                f"with a few more words about measurement number {j * 31 % 97}"})
            for j in range(docs)]


def _write_shard(root: Path, i: int, docs: int) -> None:
    (root / "pool").mkdir(exist_ok=True)
    (root / "pool" / f"s{i:03d}.jsonl").write_text("\n".join(_lines(i, docs)) + "\n")


def _timed_sync(defs_for, instance, target: str) -> dict:
    from gmates_assets.defs.rebuilds import split_rebuilt
    from gmates_assets.defs.sync import sync

    started = time.monotonic()
    report = sync(defs_for(), instance, select=[target])
    seconds = time.monotonic() - started
    rebuilt, reused = split_rebuilt(instance, report.executed)
    return {"seconds": round(seconds, 1), "executed": len(report.executed), "rebuilt": len(rebuilt),
            "reused": len(reused),
            "probe_or_models_rebuilt": sorted({a for a, _ in rebuilt} & PROBE_AND_MODELS),
            "rebuilt_assets": sorted({a for a, _ in rebuilt})}


def _edit_outside_probe(root: Path, instance, store, n_shards: int, docs: int) -> str:
    """Edit one document that neither frozen sample holds (the first from shard 5 on); returns its id."""
    from gmates_assets.defs.frozen import previous_docs

    frozen = set()
    for asset in ("probe_pool", "probe_checkpoint"):
        prev = previous_docs(instance, store, asset)
        frozen |= set(prev["doc_id"].to_list()) if prev is not None else set()
    candidates = ((s % n_shards, r) for s in range(5, 5 + n_shards) for r in range(docs))
    shard, row = next((s, r) for s, r in candidates if f"pool/s{s:03d}.jsonl:{r}" not in frozen)
    rel = f"pool/s{shard:03d}.jsonl"
    lines = _lines(shard, docs)
    lines[row] = json.dumps({"text": json.loads(lines[row])["text"] + " (edited)"})
    (root / rel).write_text("\n".join(lines) + "\n")
    return f"{rel}:{row}"


def measure(n_shards: int, docs: int, tokenizer: str, train_docs: int, target: str) -> dict:
    import dagster as dg

    from gmates_assets.core.store import ArtifactStore
    from gmates_assets.defs import build_definitions
    from gmates_assets.local_instance import ensure_local_instance

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for i in range(n_shards + 1):
            _write_shard(root, i, docs)
        _fixed_tokenizer(root)
        manifest = root / "manifest.yaml"
        data = _manifest(n_shards, docs, tokenizer, train_docs)
        manifest.write_text(yaml.safe_dump(data, sort_keys=False))
        ensure_local_instance(root / "dh")
        os.environ["DAGSTER_HOME"], os.environ["GMATES_HOME"] = str(root / "dh"), str(root / "store")
        out = {"shards": n_shards, "docs/shard": docs, "tokenizer": tokenizer, "target": target}
        with dg.DagsterInstance.get() as instance:
            out["cold"] = _timed_sync(lambda: build_definitions(manifest), instance, target)
            data["sources"]["shards"].append(_shard(n_shards))
            manifest.write_text(yaml.safe_dump(data, sort_keys=False))
            out["append_one_shard"] = _timed_sync(lambda: build_definitions(manifest), instance, target)
            out["edited_doc"] = _edit_outside_probe(root, instance, ArtifactStore(root / "store"), n_shards, docs)
            out["edit_one_document"] = _timed_sync(lambda: build_definitions(manifest), instance, target)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=128)
    parser.add_argument("--docs-per-shard", type=int, default=20)
    parser.add_argument("--tokenizer", choices=["pretrained", "train_bpe"], default="pretrained")
    parser.add_argument("--train-docs", type=int, default=200)
    parser.add_argument("--target", help="the asset to sync (default dataset_release; probe_pool with --smoke)")
    parser.add_argument("--smoke", action="store_true", help="3 shards x 6 documents, up to the frozen probe pool")
    args = parser.parse_args()
    if args.smoke:  # the per-shard assets and a frozen asset: every code path here, without three whole builds
        args.shards, args.docs_per_shard = 3, 6
        args.target = args.target or "probe_pool"
    args.target = args.target or "dataset_release"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    result = measure(args.shards, args.docs_per_shard, args.tokenizer, args.train_docs, args.target)
    print(json.dumps(result, indent=1))
    print("| sync | seconds | executed | rebuilt | reused | probe/oracle/model partitions rebuilt |")
    print("|---|---|---|---|---|---|")
    for name in ("cold", "append_one_shard", "edit_one_document"):
        row = result[name]
        print(f"| {name} | {row['seconds']} | {row['executed']} | {row['rebuilt']} | {row['reused']} | "
              f"{', '.join(row['probe_or_models_rebuilt']) or 'none'} |")


if __name__ == "__main__":
    main()
