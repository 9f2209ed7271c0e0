"""Every shipped manifest builds its Definitions offline: directly and through `dagster definitions validate`.

Building definitions must not read pool files or reach the Hugging Face hub (example_hub.yaml names hub
datasets, tokenizers and encoders): sockets refuse to connect for the whole test.
"""
from __future__ import annotations

import os
import socket
import sys

import dagster as dg
import pytest
import yaml

from gmates_assets.core.manifest import load_manifest
from gmates_assets.defs import build_definitions

from .pipeline import ALL_ASSETS, ROOT

# Build manifests (they declare `sources`); data_manifests/ also ships task-config files such as the DCLM suite.
MANIFESTS = sorted(p.name for p in (ROOT / "data_manifests").glob("*.yaml")
                   if isinstance((yaml.safe_load(p.read_text()) or {}).get("sources"), dict))


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*_args, **_kwargs):
        raise OSError("network access while building definitions")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def shard_partitions(defs: dg.Definitions) -> list[str]:
    return defs.resolve_asset_graph().get(dg.AssetKey("documents")).partitions_def.get_partition_keys()


def test_the_shipped_manifests_are_the_expected_ones():
    assert {"demo.yaml", "tests.yaml", "example_local.yaml", "example_hub.yaml"} <= set(MANIFESTS)


@pytest.mark.parametrize("name", MANIFESTS)
def test_manifest_builds_loadable_definitions(name, no_network):
    path = ROOT / "data_manifests" / name
    defs = build_definitions(path)
    dg.Definitions.validate_loadable(defs)
    graph = defs.resolve_asset_graph()
    assert {k.to_user_string() for k in graph.materializable_asset_keys} == ALL_ASSETS
    assert shard_partitions(defs) == [s.name for s in load_manifest(path).manifest.sources.shards]
    # gmates' status shows where Dagster shows asset health: one up_to_date check per asset (defs/uptodate.py)
    assert {k.asset_key.to_user_string() for k in graph.asset_check_keys if k.name == "up_to_date"} == ALL_ASSETS
    assert defs.get_sensor_def("gmates_automation").job_name == "__ASSET_JOB"


@pytest.mark.parametrize("name", MANIFESTS)
def test_workspace_loads_through_dagster_definitions_validate(name, no_network, monkeypatch, tmp_path):
    """The command itself, in this process (its default): workspace.yaml -> definitions.py -> $GMATES_MANIFEST."""
    from click.testing import CliRunner
    from dagster._cli.definitions import definitions_validate_command

    (tmp_path / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    path = ROOT / "data_manifests" / name
    monkeypatch.setenv("GMATES_MANIFEST", str(path))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    monkeypatch.setenv("DAGSTER_IS_DEFS_VALIDATION_CLI", "1")  # the command sets it; restored after the test
    monkeypatch.delitem(sys.modules, "definitions", raising=False)  # dagster caches definitions.py by name
    monkeypatch.delitem(sys.modules, "gmates_assets.code_location", raising=False)  # it builds defs at import
    result = CliRunner().invoke(definitions_validate_command, ["-w", str(ROOT / "workspace.yaml")])
    assert result.exit_code == 0, result.output
    assert "Validation successful for code location gmates" in result.output
    loaded = sys.modules["definitions"].defs
    assert shard_partitions(loaded) == [s.name for s in load_manifest(path).manifest.sources.shards]


def test_loading_definitions_leaves_torch_and_plotting_unimported():
    """Every launched run and the CLI load the Definitions: torch, scipy and matplotlib come in only when a step
    computes with them (gmates_assets/lazy.py)."""
    import subprocess

    code = ("import sys; from gmates_assets.defs import build_definitions; "
            f"build_definitions({str(ROOT / 'data_manifests' / 'tests.yaml')!r}); "
            "print(sorted(m for m in ('torch', 'scipy', 'matplotlib', 'transformers', 'faiss') if m in sys.modules)); "
            # First use imports for real, also while torch's own import inspects every loaded module (a LazyLoader
            # module was executed mid-import there and failed on a circular import).
            "from gmates_assets.defs.assets import training; "
            "print(training.evaluation.comparison_rows.__name__, training.eval_suite.all_tasks.__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip().splitlines()[-2:] == ["[]", "comparison_rows all_tasks"]


def test_gmates_status_does_not_import_torch(tmp_path):
    """`gmates status` (and the sensor's tick, and every source observation) only hashes files: importing torch
    to find the bundled encoder's folder cost 2.8 of its 6.4 s."""
    import subprocess
    import sys

    from .pipeline import ROOT, TESTS_MANIFEST

    code = ("import atexit, sys; atexit.register(lambda: print('torch imported:', 'torch' in sys.modules)); "
            "from gmates_assets.cli import main; sys.argv = ['gmates', 'status', '-m', sys.argv[1]]; main()")
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path / "dh"), "GMATES_HOME": str(tmp_path / "store"),
           "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", code, str(TESTS_MANIFEST)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert "torch imported: False" in done.stdout, (done.stdout[-2000:], done.stderr[-2000:])
