"""Data-parallel pretraining in the core: DDP at world size 2 (gloo, spawned processes) matches the
single-process trainer, resumes, and rejects a batch it cannot split; bf16 autocast; the JSON job file."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from gmates_assets.core import lm, pretrain_job
from gmates_assets.core.hashing import hash_dir
from gmates_assets.core.manifest import ManifestError, parse_manifest

from . import ddp_ranks
from .pipeline import TESTS_MANIFEST
from .tiny import TINY

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    """Two gloo ranks: an uninterrupted run, and one killed after step 3 then resumed (tests/ddp_ranks.py).

    Forked, so the ranks start with torch and transformers already imported (a spawned rank spends seconds
    importing them); each rank sets one torch thread, as DataLoader workers do after a fork."""
    root = tmp_path_factory.mktemp("ddp")
    lm.build_causal_lm(TINY, seed=0)  # imports the model classes before the fork
    torch.multiprocessing.start_processes(ddp_ranks.run_rank, args=(2, str(root)), nprocs=2, start_method="fork")
    return root, json.loads((root / "report.json").read_text())


def test_ddp_world_2_matches_the_single_process_trainer(ddp_run, tmp_path):
    root, report = ddp_run
    single = ddp_ranks.train(tmp_path / "single")
    assert report["full_tokens"] == single.tokens_seen  # global target count, uneven across ranks
    np.testing.assert_allclose(report["full_losses"], single.losses, rtol=1e-5)
    ddp, one = load_file(root / "full" / lm.MODEL_FILE), load_file(tmp_path / "single" / lm.MODEL_FILE)
    assert ddp.keys() == one.keys()
    for name in one:
        torch.testing.assert_close(ddp[name], one[name], rtol=1e-5, atol=1e-6, msg=name)
    meta = lm.read_checkpoint_meta(root / "full")
    assert meta["extra"]["world_size"] == 2 and "world_size" not in lm.read_checkpoint_meta(tmp_path / "single")["extra"]


def test_interrupted_ddp_run_resumes_to_the_uninterrupted_end_state(ddp_run):
    root, report = ddp_run
    assert report["kept"] == ["step-00000002"]  # rank 0 committed step 2 before the kill after step 3
    assert report["resumed_from"] == 2
    assert report["resumed_losses"] == report["full_losses"]
    assert hash_dir(root / "crashed") == hash_dir(root / "full")


def test_a_batch_that_does_not_split_over_the_ranks_fails_before_any_work(tmp_path):
    model = lm.build_causal_lm(TINY, seed=0)
    with pytest.raises(ValueError, match="batch_size 6 is not divisible by the data-parallel world size 4"):
        lm.train_lm(model, ddp_ranks.padded_docs(), ddp_ranks.CFG, 2, 6, 0, tmp_path / "x", 1, device="cpu",
                    replicas=lm.Replicas(1, 4))
    assert not (tmp_path / "x").exists()
    text = TESTS_MANIFEST.read_text().replace("  batch_size: 8\n  seq_len: 64\n\neval",
                                              "  batch_size: 8\n  seq_len: 64\n  backend: torchrun\n"
                                              "  nproc_per_node: 3\n\neval")
    with pytest.raises(ManifestError, match=r"pretrain.*batch_size \(8\) must be divisible by nproc_per_node \(3\)"):
        parse_manifest(text, "tests.yaml")
    with pytest.raises(ManifestError, match="nproc_per_node 2 needs backend 'torchrun'"):
        parse_manifest(text.replace("backend: torchrun", "backend: in_process").replace(
            "nproc_per_node: 3", "nproc_per_node: 2"), "tests.yaml")


def test_bf16_autocast_trains_finite_and_differs_from_fp32(tmp_path):
    fp32 = ddp_ranks.train(tmp_path / "run")
    bf16 = ddp_ranks.train(tmp_path / "run", precision="bf16")  # same directory: an fp32 run is not resumed
    assert bf16.resumed_from_step is None
    assert all(np.isfinite(bf16.losses)) and bf16.losses != fp32.losses
    np.testing.assert_allclose(bf16.losses, fp32.losses, rtol=0.05)  # the same training, in lower precision
    weights = load_file(tmp_path / "run" / lm.MODEL_FILE)
    assert all(torch.isfinite(w).all() and w.dtype == torch.float32 for w in weights.values())
    assert lm.read_checkpoint_meta(tmp_path / "run")["extra"]["precision"] == "bf16"
    with pytest.raises(ValueError, match="precision"):
        ddp_ranks.train(tmp_path / "bad", precision="fp16")


def test_pretrain_job_round_trips_through_json_and_names_bad_fields(tmp_path):
    packed = lm.pack_sequences_to_file([[1, 2, 3, 4, 5]] * 8, 4, 63, tmp_path / "rows.int32")
    job = pretrain_job.PretrainJob.for_rows(packed, out_dir=str(tmp_path / "out"), arch=TINY.to_dict(), model_seed=0,
                                            optim=ddp_ranks.CFG.to_dict(), steps=2, batch_size=4, seed=0,
                                            checkpoint_every=1, precision="bf16")
    assert pretrain_job.PretrainJob.read(job.write(tmp_path / "job.json")) == job
    assert job.packed().content_hash() == packed.content_hash()
    raw = json.loads((tmp_path / "job.json").read_text())
    (tmp_path / "bad.json").write_text(json.dumps({**raw, "stepz": 3}))
    with pytest.raises(ValueError, match=r"bad.json: unknown fields \['stepz'\]"):
        pretrain_job.PretrainJob.read(tmp_path / "bad.json")
    assert pretrain_job.rank_device("cpu", 1, 2) == torch.device("cpu")
    if not torch.cuda.is_available():
        assert pretrain_job.rank_device("auto", 1, 2) == torch.device("cpu")
    (tmp_path / "rows.int32").write_bytes(b"\0" * 12)
    with pytest.raises(FileNotFoundError, match="rows.int32: packed sequences of"):
        job.packed()
