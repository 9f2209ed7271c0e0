"""`pretrain.backend: torchrun` through Dagster: two gloo processes under torchrun, launched over Dagster Pipes.
A worker that dies fails the step with its error and leaves nothing complete; the re-run resumes its checkpoint,
reports over Pipes, and trains what the in-process trainer trains (up to float summation order)."""
from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest
import torch
from safetensors.torch import load_file

from gmates_assets.core.store import ArtifactStore
from gmates_assets.defs import torchrun

ASSET, PARTITION = "pretrained_checkpoint", "random"


def materialize(build, **kwargs):
    with build.instance() as instance:
        job = build.defs().resolve_implicit_global_asset_job_def()
        result = job.execute_in_process(instance=instance, partition_key=PARTITION,
                                        asset_selection=[dg.AssetKey(ASSET)], **kwargs)
        logs = [e.user_message for e in instance.all_logs(result.run_id)]
    return result, logs


def test_torchrun_backend_fails_visibly_resumes_and_matches_in_process(full_build, tmp_path, monkeypatch):
    build = full_build.copy_to(tmp_path / "copy")
    build.edit("pretrain.backend", "torchrun")
    build.edit("pretrain.nproc_per_node", 2)
    build.edit("pretrain.checkpoint_every", 2)  # volatile: the cache key stays the same

    store = ArtifactStore(build.store)
    committed = {a.content_hash for a in store.artifacts(ASSET)}  # the in-process ones of full_build
    monkeypatch.setattr(torchrun, "WORKER_MODULE", "tests.failing_pretrain_worker")
    with pytest.raises(torchrun.WorkerFailed, match=r"(?s)exit code 1.*injected worker failure after step 3"):
        materialize(build)
    assert {a.content_hash for a in store.artifacts(ASSET)} == committed  # nothing committed
    (partial,) = (build.store / "artifacts" / ASSET).glob(".partial-*")
    assert not (partial / "model").exists()  # nothing that looks like a finished model
    assert sorted(p.name for p in (partial / "train" / "checkpoints").iterdir()) == ["step-00000022"]  # probe step 20 + 2

    monkeypatch.setattr(torchrun, "WORKER_MODULE", "gmates_assets.pipes.pretrain_worker")
    result, logs = materialize(build)
    assert result.success
    meta = build.latest_metadata(ASSET, PARTITION)
    assert meta["backend"] == "torchrun" and meta["reused"] is False
    # what rank 0 reported over Pipes: the summary, and its log lines in the step's log
    assert meta["world_size"] == 2 and meta["resumed_from_step"] == 22 and meta["end_step"] == 20 + 16
    assert meta["device"] == "cpu" and "losses" not in meta and "loss_curve" in meta
    assert any(line.startswith("pretraining on 2 process(es)") for line in logs)
    assert not partial.exists() and not (Path(meta["artifact_path"]) / "train").exists()

    in_process = full_build.latest_metadata(ASSET, PARTITION)
    assert meta["tokens_seen"] == in_process["tokens_seen"]
    assert meta["final_loss"] == pytest.approx(in_process["final_loss"], abs=2e-4)
    ddp = load_file(Path(meta["artifact_path"]) / "model" / "model.safetensors")
    one = load_file(Path(in_process["artifact_path"]) / "model" / "model.safetensors")
    for name in one:
        torch.testing.assert_close(ddp[name], one[name], rtol=1e-4, atol=1e-5, msg=name)
