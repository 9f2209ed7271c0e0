"""`gmates` command line: sync, status, verify, report, ui, release verify / export.

Runs are recorded in the Dagster instance at $DAGSTER_HOME (default `.dagster_home/`), so everything `gmates
sync` builds shows in the UI (`gmates ui`), and the artifact store lives at $GMATES_HOME (default `.gmates/`, or
an fsspec URL such as s3://bucket/gmates). Errors end with a one-line cause; `--verbose` adds Dagster's full
logs and the traceback.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import traceback
import warnings
from pathlib import Path

from .core.manifest import DEFAULT_MANIFEST
from .errors import user_cause
from .interrupts import InterruptWatch


def ensure_dagster_home(ui: bool = False) -> Path:
    """$DAGSTER_HOME (default .dagster_home/) with its dagster.yaml; `ui`: the one `gmates ui` uses (warm run
    workers, local_instance.py)."""
    from .local_instance import ensure_local_instance, ensure_ui_instance

    home = Path(os.environ.setdefault("DAGSTER_HOME", str(Path(".dagster_home").resolve()))).resolve()
    os.environ["DAGSTER_HOME"] = str(home)
    (ensure_ui_instance if ui else ensure_local_instance)(home)
    return home


def _instance():
    """The Dagster instance at $DAGSTER_HOME, opened under a lock: two gmates processes starting on a new home
    must not both create its sqlite databases (Dagster would stamp their schema twice). On Postgres it keeps its
    connections pooled (pooled.py)."""
    import fcntl

    import dagster as dg

    from .pooled import hold_connections

    home = ensure_dagster_home()
    with open(home / ".gmates-open.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return hold_connections(dg.DagsterInstance.get())


def _definitions(manifest: str):
    from .defs import build_definitions

    return build_definitions(manifest)


def _runs(defs, instance, manifest: str):
    """Where a wave's runs execute: `execution.launcher` in the manifest (in_process, instance or warm)."""
    from .defs.launch import InProcessRuns, InstanceRuns, WarmRuns

    gm = defs.resources["gmates"]
    execution = gm.manifest().manifest.execution
    if execution.launcher in ("instance", "warm"):
        kind = WarmRuns if execution.launcher == "warm" else InstanceRuns
        return kind(instance, str(Path(manifest).resolve()), str(gm.store().root), execution.max_concurrent,
                            execution.gpus)
    return InProcessRuns(defs, instance, after_run=_interrupts.check)


_activity: list[str] = []  # what the command is doing now, for the line an interrupt prints
_interrupts = InterruptWatch()  # entered by main(): an interrupt stops a sync even if a callback swallowed it


def _log_progress(message: str) -> None:
    print(message, flush=True)
    if message.startswith("wave "):
        _activity[:] = [message]


def cmd_sync(args) -> int:
    """Ends with one summary line and, when the whole graph was synced, the report, release and UI lines
    (sync_summary.py); the full status table only with --verbose."""
    import time

    from .defs.sync import sync
    from .sync_summary import closing_notes, summary_line

    start = time.perf_counter()
    if not args.verbose:  # transformers' save/load progress bars: noise between the step lines
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    defs = _definitions(args.manifest)
    with _instance() as instance, _runs(defs, instance, args.manifest) as runs:
        report = sync(defs, instance, select=args.select, log=_log_progress, runs=runs)
        seconds = time.perf_counter() - start
        notes = closing_notes(defs, instance, args.manifest, report.fresh)
    if args.verbose:
        cmd_status(argparse.Namespace(manifest=args.manifest, json=False, observe=False, no_observe=True,
                                      plan=False))
    print(summary_line(report, seconds))
    if notes:
        print(f"\n{notes}")
    return 0


def cmd_status(args) -> int:
    from .defs.sync import asset_statuses

    defs = _definitions(args.manifest)
    with _instance() as instance:
        statuses = asset_statuses(defs, instance, observe=args.observe,
                                  current_sources=not (args.observe or args.no_observe))
        total = len(statuses)
        if args.plan:
            statuses = _plan(defs, instance, statuses)
    if args.json:
        print(json.dumps([s.as_json() for s in statuses], indent=2))
        return 0
    width = max((len(s.asset) + len(s.partition or "") + 2 for s in statuses), default=10)
    for s in statuses:
        name = f"{s.asset}[{s.partition}]" if s.partition else s.asset
        partial = s.status == "partial"  # its first cause says how far it got: on the status line
        print(f"{name:<{width}}  {s.status}" + (f": {s.causes[0]}" if partial else ""))
        for cause in s.causes[1:] if partial else s.causes:
            print(f"{'':<{width}}    - {cause}")
        for note in s.notes:
            print(f"{'':<{width}}    ! {note}")
    if args.plan:
        from .defs.plan import plan_summary

        print(plan_summary(statuses, total))
    return 0


def _plan(defs, instance, statuses):
    from .defs.plan import rebuild_plan

    return rebuild_plan(defs, instance, statuses)


def cmd_verify(args) -> int:
    """Re-hash the artifacts the latest build uses; with --repair, move aside artifacts whose record is
    unreadable, discard the corrupt ones and everything built from them, and rebuild all of it (a rebuild with
    the same bytes leaves everything downstream fresh; other bytes make it stale for `sync`)."""
    from .defs.sync import gmates_store, sync, verify_artifacts

    defs = _definitions(args.manifest)
    with _instance() as instance:
        bad = _report_verify(verify_artifacts(defs, instance))
        if not bad or not args.repair:
            return 1 if bad else 0
        store = gmates_store(defs)
        for unreadable in store.unreadable_records():
            where = store.quarantine(unreadable.asset, unreadable.input_key)
            print(f"repair: {unreadable.asset} artifact {unreadable.input_key[:12]} has an unreadable record; "
                  f"moved aside to {where}")
        corrupt = [check.artifact for check in bad if check.artifact is not None]
        later = store.discard_with_descendants(corrupt)
        for art in later:
            print(f"repair: discarded {art.asset}{f'[{art.partition}]' if art.partition else ''} "
                  f"{art.input_key[:12]}, built from it")
        names = {k.to_user_string() for k in defs.resolve_asset_graph().materializable_asset_keys}
        select = {c.asset for c in bad} | ({a.asset for a in later} & names)
        report = sync(defs, instance, select=select, log=lambda m: print(m, flush=True))
        print(f"repair: rebuilt {len(report.executed)} asset partition(s)")
        return 1 if _report_verify(verify_artifacts(defs, instance)) else 0


def _report_verify(checks) -> list:
    bad = [c for c in checks if c.problem]
    for check in bad:
        print(f"{check.asset}[{check.partition}]" if check.partition else check.asset, f"- {check.problem}")
    print(f"verify: {len(checks)} artifact(s) checked, {len(bad)} corrupt or missing")
    return bad


def cmd_ui(args) -> int:
    """`dagster dev` on loopback with DAGSTER_HOME set; default signal handlers so Ctrl-C/TERM stop it. The
    running interpreter's dagster (`python -m dagster`): with the venv not activated, none is on PATH."""
    ensure_dagster_home(ui=True)
    os.environ["GMATES_MANIFEST"] = str(Path(args.manifest).resolve())
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    os.execv(sys.executable, [sys.executable, "-m", "dagster", "dev", "-w", "workspace.yaml", "-h", "127.0.0.1",
                              "-p", str(args.port)])
    return 0  # not reached


def cmd_release_verify(args) -> int:
    from .core.release import main_verify

    return main_verify([args.dir])


def cmd_release_export(args) -> int:
    """Copy the named manifest's dataset_release out of the store (verified on read, then verified again as a
    release before it appears); refused when that manifest's release is not built or is stale."""
    from .core.release import export_release
    from .defs.current import NotCurrent, current_artifact

    defs = _definitions(args.manifest)
    with _instance() as instance:
        try:
            artifact = current_artifact(defs, instance, "dataset_release", args.manifest)
        except NotCurrent as refused:
            print(f"gmates release export: {refused}", file=sys.stderr)
            return 1
    target = export_release(artifact.path / "release", args.dir)
    print(f"exported the release of {args.manifest} ({artifact.location}/release) -> {target}: every file matches "
          f"its manifest")
    return 0


def cmd_report(args) -> int:
    """The method comparison of the manifest's builds (mean ± sd over seeds), from the artifact store."""
    from .core.manifest import load_manifest
    from .core.store import ArtifactStore, store_root_from_env
    from .report import build_report, format_report

    report = build_report(ArtifactStore(store_root_from_env()), load_manifest(args.manifest).manifest)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0 if report["methods"] else 1


def build_parser() -> argparse.ArgumentParser:
    verbose_help = "print Dagster's full logs and, on failure, the traceback"
    common = argparse.ArgumentParser(add_help=False)  # --verbose also after the command (never resets it)
    common.add_argument("--verbose", "-v", action="store_true", default=argparse.SUPPRESS, help=verbose_help)
    parser = argparse.ArgumentParser(prog="gmates", description=__doc__.splitlines()[0])
    parser.add_argument("--verbose", "-v", action="store_true", help=verbose_help)
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, **kwargs) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[common], **kwargs)

    p = add("sync", help="materialize stale or missing assets and partitions until all are fresh")
    p.add_argument("--manifest", "-m", default=DEFAULT_MANIFEST)
    p.add_argument("--select", nargs="+", metavar="ASSET",
                   help="only these assets (and what they need upstream)")
    p.set_defaults(func=cmd_sync)

    p = add("status", help="fresh / stale / missing per asset and partition, with causes (read-only)")
    p.add_argument("--manifest", "-m", default=DEFAULT_MANIFEST)
    p.add_argument("--json", action="store_true")
    p.add_argument("--observe", action="store_true",
                   help="record an observation of the sources first (a run in the history, as sync does); "
                        "plain status compares their current hashes in memory and writes nothing")
    p.add_argument("--no-observe", action="store_true", help="do not hash the source files at all (fastest)")
    p.add_argument("--plan", action="store_true",
                   help="list what a sync would rebuild at most: the partitions stale or missing now plus every "
                        "partition downstream of them (status alone shows only the first hop)")
    p.set_defaults(func=cmd_status)

    p = add("verify", help="re-hash every artifact the latest build uses against its recorded content hash")
    p.add_argument("--manifest", "-m", default=DEFAULT_MANIFEST)
    p.add_argument("--repair", action="store_true", help="discard what is corrupt, then rebuild it (gmates sync)")
    p.set_defaults(func=cmd_verify)

    p = add("report", help="method comparison table of the built manifest (mean ± sd over seeds)")
    p.add_argument("--manifest", "-m", default=DEFAULT_MANIFEST)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_report)

    p = add("ui", help="serve the Dagster UI on 127.0.0.1")
    p.add_argument("--manifest", "-m", default=DEFAULT_MANIFEST)
    p.add_argument("--port", type=int, default=3000)
    p.set_defaults(func=cmd_ui)

    p = add("release", help="dataset releases")
    rsub = p.add_subparsers(dest="release_command", required=True)
    v = rsub.add_parser("verify", parents=[common], help="re-hash a release and name every file that differs")
    v.add_argument("dir")
    v.set_defaults(func=cmd_release_verify)
    e = rsub.add_parser("export", parents=[common],
                        help="copy the named manifest's dataset_release out of the store, then verify it")
    e.add_argument("dir")
    e.add_argument("--manifest", "-m", default=DEFAULT_MANIFEST, help="whose release (default: as sync)")
    e.set_defaults(func=cmd_release_export)
    return parser


def error_line(command: str, exc: BaseException) -> str:
    cause = user_cause(exc)
    ours = type(cause).__module__.startswith("gmates_assets.")  # our errors already say file, line, field
    return f"gmates {command}: {cause if ours else f'{type(cause).__name__}: {cause}'}"


def _execution_interrupted() -> type[BaseException]:
    """Dagster's interrupt inside a run (a BaseException, like KeyboardInterrupt)."""
    try:
        from dagster import DagsterExecutionInterruptedError
    except ImportError:
        return KeyboardInterrupt
    return DagsterExecutionInterruptedError


def interrupted_line(command: str, limit: int = 160) -> str:
    doing = _activity[0] if _activity else ""
    wave, _, items = doing.partition(": ")
    where = f" during {wave} ({items if len(items) <= limit else items[:limit] + '…'})" if doing else ""
    return (f"gmates {command}: interrupted{where}; a re-run resumes (what finished is reused, resumable steps "
            f"continue from their last chunk)")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    verbose = args.verbose or bool(os.environ.get("GMATES_DEBUG"))
    if verbose:
        os.environ["GMATES_VERBOSE"] = "1"
    else:
        warnings.filterwarnings("ignore", message=r".*is currently in (beta|preview)")
    try:
        with _interrupts:
            return args.func(args)
    except (KeyboardInterrupt, _execution_interrupted()) as exc:  # BaseExceptions: Ctrl-C, or SIGTERM in a run
        if verbose:
            traceback.print_exception(exc)
        print(interrupted_line(args.command), file=sys.stderr)
        return 130
    except Exception as exc:  # the cause as the last line; the traceback only with --verbose
        if verbose:
            traceback.print_exception(exc)
        else:
            print("(run with --verbose for Dagster's logs and the traceback)", file=sys.stderr)
        print(error_line(args.command, exc), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
