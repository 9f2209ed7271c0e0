"""`gmates` command line: sync, status, report, ui, release verify.

Runs are recorded in the Dagster instance at $DAGSTER_HOME (default `.dagster_home/`), so everything `gmates
sync` builds shows in the UI (`gmates ui`), and the artifact store lives at $GMATES_HOME (default `.gmates/`).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

DEFAULT_MANIFEST = "data_manifests/demo.yaml"


def ensure_dagster_home() -> Path:
    from .defs.instance import ensure_local_instance

    home = Path(os.environ.setdefault("DAGSTER_HOME", str(Path(".dagster_home").resolve()))).resolve()
    os.environ["DAGSTER_HOME"] = str(home)
    ensure_local_instance(home)
    return home


def _instance():
    import dagster as dg

    ensure_dagster_home()
    return dg.DagsterInstance.get()


def _definitions(manifest: str):
    from .defs import build_definitions

    return build_definitions(manifest)


def _runs(defs, instance, manifest: str):
    """Where a wave's runs execute: `execution.launcher` in the manifest (in_process or instance)."""
    from .defs.launch import InProcessRuns, InstanceRuns

    gm = defs.resources["gmates"]
    execution = gm.manifest().manifest.execution
    if execution.launcher == "instance":
        return InstanceRuns(instance, str(Path(manifest).resolve()), str(gm.store().root), execution.max_concurrent,
                            execution.gpus)
    return InProcessRuns(defs, instance)


def cmd_sync(args) -> int:
    from .defs.sync import sync

    defs = _definitions(args.manifest)
    with _instance() as instance, _runs(defs, instance, args.manifest) as runs:
        report = sync(defs, instance, select=args.select, log=lambda m: print(m, flush=True), runs=runs)
    built = report.executed
    print(f"sync: {len(report.waves)} wave(s), {len(built)} asset partition(s) materialized" if built
          else "sync: everything is fresh; nothing to do")
    return 0


def cmd_status(args) -> int:
    from .defs.sync import asset_statuses

    defs = _definitions(args.manifest)
    with _instance() as instance:
        statuses = asset_statuses(defs, instance, observe=not args.no_observe)
    if args.json:
        print(json.dumps([s.as_json() for s in statuses], indent=2))
        return 0
    width = max((len(s.asset) + len(s.partition or "") + 2 for s in statuses), default=10)
    for s in statuses:
        name = f"{s.asset}[{s.partition}]" if s.partition else s.asset
        print(f"{name:<{width}}  {s.status}")
        for cause in s.causes:
            print(f"{'':<{width}}    - {cause}")
    return 0


def cmd_ui(args) -> int:
    """`dagster dev` on loopback with DAGSTER_HOME set; default signal handlers so Ctrl-C/TERM stop it."""
    ensure_dagster_home()
    os.environ["GMATES_MANIFEST"] = str(Path(args.manifest).resolve())
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    os.execvp("dagster", ["dagster", "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(args.port)])
    return 0  # not reached


def cmd_release_verify(args) -> int:
    from .core.release import main_verify

    return main_verify([args.dir])


def cmd_release_export(args) -> int:
    """Copy the latest materialized dataset_release out of the store (then verify the copy)."""
    import shutil

    import dagster as dg

    from .core.release import main_verify

    with _instance() as instance:
        event = instance.get_latest_materialization_event(dg.AssetKey("dataset_release"))
    if event is None:
        print("no dataset_release has been materialized yet; run `gmates sync` first", file=sys.stderr)
        return 1
    source = Path(event.asset_materialization.metadata["artifact_path"].value) / "release"
    target = Path(args.dir)
    if target.exists() and any(target.iterdir()):
        print(f"{target} exists and is not empty", file=sys.stderr)
        return 1
    shutil.copytree(source, target, dirs_exist_ok=True)
    print(f"exported {source} -> {target}")
    return main_verify([str(target)])


def cmd_report(args) -> int:
    """The method comparison of the manifest's builds (mean ± sd over seeds), from the artifact store."""
    from .core.manifest import load_manifest
    from .core.store import ArtifactStore, store_root_from_env
    from .report import build_report, format_report

    report = build_report(ArtifactStore(store_root_from_env()), load_manifest(args.manifest).manifest)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0 if report["methods"] else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gmates", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("sync", help="materialize stale or missing assets and partitions until all are fresh")
    p.add_argument("--manifest", "-m", default=DEFAULT_MANIFEST)
    p.add_argument("--select", nargs="+", metavar="ASSET",
                   help="only these assets (and what they need upstream)")
    p.set_defaults(func=cmd_sync)

    p = sub.add_parser("status", help="fresh / stale / missing per asset and partition, with causes")
    p.add_argument("--manifest", "-m", default=DEFAULT_MANIFEST)
    p.add_argument("--json", action="store_true")
    p.add_argument("--no-observe", action="store_true", help="do not re-hash the source files first")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("report", help="method comparison table of the built manifest (mean ± sd over seeds)")
    p.add_argument("--manifest", "-m", default=DEFAULT_MANIFEST)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("ui", help="serve the Dagster UI on 127.0.0.1")
    p.add_argument("--manifest", "-m", default=DEFAULT_MANIFEST)
    p.add_argument("--port", type=int, default=3000)
    p.set_defaults(func=cmd_ui)

    p = sub.add_parser("release", help="dataset releases")
    rsub = p.add_subparsers(dest="release_command", required=True)
    v = rsub.add_parser("verify", help="re-hash a release and name every file that differs")
    v.add_argument("dir")
    v.set_defaults(func=cmd_release_verify)
    e = rsub.add_parser("export", help="copy the latest dataset_release out of the store, then verify it")
    e.add_argument("dir")
    e.set_defaults(func=cmd_release_export)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except Exception as exc:  # a clear one-line error for users; tracebacks with GMATES_DEBUG=1
        if os.environ.get("GMATES_DEBUG"):
            raise
        from .core.manifest import ManifestError

        if isinstance(exc, ManifestError):
            print(str(exc), file=sys.stderr)
        else:
            print(f"gmates {args.command}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
