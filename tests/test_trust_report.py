"""`gmates report` shows only scores built entirely by the named manifest (issue 19, item 3).

Two manifests on one pair of homes: a sync of the second one materializes `pretrained_checkpoint` with its own
configuration, and the first manifest's Definitions (a running UI whose sensor reacts to that) then build
`eval_scores` from those checkpoints. Those scores record the first manifest's configuration in their
provenance, so a report that trusts provenance alone shows perplexities of another manifest's models.
"""
from __future__ import annotations

import dagster as dg
import yaml

from gmates_assets.core.manifest import load_manifest
from gmates_assets.core.store import ArtifactStore
from gmates_assets.defs import build_definitions
from gmates_assets.defs.sync import sync
from gmates_assets.report import BuiltBy, build_report, find_runs, manifest_code_versions


def test_report_leaves_out_scores_built_from_another_manifests_checkpoints(full_build, tmp_path):
    build = full_build.copy_to(tmp_path / "b")
    loaded = load_manifest(build.manifest)
    store = ArtifactStore(build.store)
    before = build_report(store, loaded.manifest)
    assert before["methods"]

    other = build.root / "other.yaml"
    data = yaml.safe_load(build.manifest.read_text())
    data["pretrain"]["optim"]["lr"] = 1.0e-2  # another configuration of the same assets
    other.write_text(yaml.safe_dump(data, sort_keys=False))
    with build.instance() as instance:
        sync(build_definitions(other, home=str(build.store)), instance, select=["pretrained_checkpoint"])
        # What the first manifest's sensor did next: eval_scores from the latest checkpoints, i.e. the other's.
        job = build.defs().resolve_implicit_global_asset_job_def()
        for method in loaded.manifest.selection.methods:
            job.execute_in_process(instance=instance, partition_key=method,
                                   asset_selection=[dg.AssetKey("eval_scores")], raise_on_error=True)

    trusting_provenance = build_report(store, loaded.manifest, check_lineage=False)
    assert trusting_provenance["methods"] != before["methods"]  # the newest scores are the foreign ones
    assert build_report(store, loaded.manifest) == before

    built_by = BuiltBy(store, manifest_code_versions(loaded.manifest))
    foreign = [a for a in store.artifacts("eval_scores") if not built_by(a)]
    assert len(foreign) == len(loaded.manifest.selection.methods)
    assert all(built_by(run.artifact) for runs in find_runs(store, loaded.manifest, True).values() for run in runs)
