"""The Dagster UI as the main surface, driven in headless Chromium against a real `dagster dev` (issue 22).

One scenario on the `tests` profile (the steps depend on each other; counts come from GraphQL):
  1. the graph is built by `sync` (the shared `full_build`, copied); `gmates sync` in this process on the same
     DAGSTER_HOME / GMATES_HOME then finds nothing to do; `dagster dev` starts on 127.0.0.1 with those homes;
     the asset graph shows every asset; the automation sensor's first tick says "fresh" and each asset's
     up_to_date check passes; screenshots of the graph, an asset page and an embedded plot;
  2. edit the manifest while the UI runs (an eval task's random baseline): the sensor's tick says "manifest
     changed on disk: Reload definitions" and so does eval_scores' up_to_date check, nothing is launched;
     "Reload definitions": the check lists eval_scores' stale partitions, and the sensor rebuilds exactly
     eval_scores[every method] and method_comparison, once each;
  3. stop the UI, revert the edit, start the UI: the sensor converges (the same partitions, once each);
  4. sensor off, edit again plus the release name, reload: "Materialize unsynced" builds dataset_release only
     (it ignores stale partitions); sensor on: it finishes the stale partitions, each built once in all;
  5. sensor off, revert, reload: `gmates_sync` launched from the Launchpad rebuilds the same partitions once;
  6. sensor on: "Materialize all" on the graph filtered to eval_scores+ starts a backfill; the sensor's ticks
     wait for it (when one falls inside it) and request nothing, and the first or second tick after it says fresh;
     each partition was built once;
     `gmates status` is fresh after each step; the webserver listens on loopback only, and every process it
     started is gone afterwards.

Screenshots of each state go to test-artifacts/ui/; timings.txt gives each step's wall and CPU seconds (this
process and everything it started), its runs' mean time from creation to start and executing, and the helpers
its seconds went to. The runs execute on the warm workers `gmates ui` configures (two, held by the daemon).
Measured alone on the 2-core machine while other sessions used it (`pytest tests/test_ui_browser.py`):

  step                   before: a process per run     after: warm workers
  UI ready, 1 checks     7 s + 14 s (10 + 15 s CPU)     7 s + 9 s (7 + 11 s CPU)
  2 edit while running   96 s (82 s CPU)                48 s (32 s CPU)
  3 edit while down      65 s (not measured)            26 s (29 s CPU)
  4 materialize unsynced 83 s (69 s CPU)                49 s (33 s CPU)
  5 gmates_sync          77 s (79 s CPU)                30 s (33 s CPU)
  6 materialize all      97 s (65 s CPU)                98 s (14 s CPU)
  whole scenario         440 s (321 s CPU without 3),   267 s (160 s CPU), load 1.7 -> 2.9
                         load 1.4 -> 6.9
  fixtures (setup)       31 s                           35 s (the shared full build included)

A second run after (load 0.9 -> 1.8): 273 s, 261 s CPU (steps 10 + 13, 51, 37, 37, 31, 94 s; CPU 15 + 20, 55, 45,
43, 50, 33 s): the CPU figures vary more between runs than the wall times. Warm workers alone (the test as it was)
gave 329 s (269 s CPU, load 2.7 -> 3.1); the rest came from the test's waits: pages load to "load" rather than
"networkidle" (2-3 s a page), the page is parked on about:blank while builds run (an asset page polls the webserver
every 2 s), and wait_fresh polls the sensor's ticks rather than the staleness of every partition.

A run took 7-13 s from creation to start before (queue, a new process importing Dagster and the Definitions)
and 1-7 s after (1 s once the workers are warm). Step 6 waits for Dagster's backfill daemon, whose loop was a
fixed 30 s (dagster._daemon.controller.DEFAULT_DAEMON_INTERVAL_SECONDS, not configurable): a backfill of two waves
took 60-90 s of it. gmates' local instance now sets that loop to 3 s (gmates_assets/backfill_loop.py): step 6
took 22 s (15 s CPU) in a full-suite run at load 4-6, and the whole scenario 295 s there (252 s CPU). With warm
workers that no longer load the encoder at their start (none of these runs embeds) and one torch thread: alone
(load 0.8 -> 1.8) the test took 174 s with its fixtures, the scenario 148 s (123 s CPU; steps 5 + 6, 31, 31, 38,
20, 16 s); in the full suite 190 s.
No fixed sleeps: every wait polls a condition against a deadline. The
sensor is evaluated every SENSOR_INTERVAL seconds here ($GMATES_AUTOMATION_INTERVAL_S) and the run queue every
second (RUN_QUEUE_YAML).
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import time
from pathlib import Path
from typing import Optional

import pytest

from . import ui_helpers as h

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.system]

ARTIFACTS = h.REPO_ROOT / "test-artifacts" / "ui"
SENSOR = "gmates_automation"
SENSOR_INTERVAL = 5  # seconds; the AssetDaemon's loop is 5 s, so less would not tick sooner
GROUPS = {"pool", "influence", "selection", "training", "release"}
# The edit: an eval task's random baseline. It reaches eval_scores[every method] (code version) and, through their
# new data, method_comparison: two waves, four runs. Reverting it rebuilds the same partitions from the store.
EDITED = "eval_scores"
DOWNSTREAM = {"method_comparison"}
BASELINE = ("random_baseline: 0.25}", "random_baseline: 0.3}")
RELEASE_NAME = ("name: gmates-tests}", "name: gmates-tests-ui}")
PROGRESS_LINE = re.compile(r"\d+/\d+ \S+ \(\d+\.\d%\), [\d.]+ (\S+/s|s/\S+), eta \d+s")
PHASE_TIMEOUT = 900  # seconds per wait for a rebuild; seconds when idle, minutes on a loaded machine


SPENT: list[tuple[str, float, float]] = []  # (helper, started (epoch s), wall seconds) of each @timed call


def timed(fn):
    """Record each call's wall seconds in SPENT: the timings break a step down by helper (nested calls count in
    both)."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        t0 = time.time()
        try:
            return fn(*args, **kwargs)
        finally:
            SPENT.append((fn.__name__, t0, time.time() - t0))

    return wrapper


def wait(predicate, timeout: float, what: str, every: float = 2.0):
    """h.wait_until, recorded in SPENT as "wait: <what>"."""
    t0 = time.time()
    try:
        return h.wait_until(predicate, timeout, what, every)
    finally:
        SPENT.append((f"wait: {what}", t0, time.time() - t0))


# ------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def browser():
    if not Path(h.CHROMIUM).is_file():
        pytest.fail(f"{h.CHROMIUM} not found: the UI test needs Debian's chromium "
                    "(apt-get install -y chromium; `make test` installs it). It must not be skipped.")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("python package 'playwright' is missing: pip install -e '.[dev]' (never `playwright install`; "
                    "the test drives /usr/bin/chromium)")
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=h.CHROMIUM, args=h.CHROMIUM_ARGS, headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def server(full_build, build_env, tmp_path, capsys):
    from gmates_assets.cli import main
    from gmates_assets.defs.automation import INTERVAL_ENV

    build = full_build.copy_to(tmp_path / "build")
    build_env(build)
    assert main(["sync", "--manifest", str(build.manifest)]) == 0
    assert "everything is fresh; nothing to do" in capsys.readouterr().out
    dev = h.DagsterDev(manifest=build.manifest, dagster_home=build.dagster_home, gmates_home=build.store,
                       log_path=tmp_path / "dagster_dev.log", env_extra={INTERVAL_ENV: str(SENSOR_INTERVAL)})
    dev.start()
    try:
        yield dev
    finally:
        dev.stop()
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(dev.log_path, ARTIFACTS / "dagster_dev.log")  # for a post-mortem; pytest prunes tmp dirs
    leftovers = dev.our_processes()
    assert not leftovers, f"processes of this dagster dev survived the shutdown: {leftovers}"


@pytest.fixture
def page(browser):
    page = browser.new_page(viewport={"width": 2000, "height": 1100})  # the expanded graph fits
    # The one-time "Join the Dagster community" dialog: dismissed whenever it shows up, without waiting for it.
    page.add_locator_handler(page.get_by_role("button", name="Skip"), lambda skip: skip.click())
    yield page
    page.close()


# ------------------------------------------------------------------------------------------ UI actions
@timed
def open_page(page, dev: h.DagsterDev, path: str) -> None:
    """Load a page of the UI; callers wait for what they need on it (the UI keeps polling: "networkidle"
    cost 2-3 s a page for nothing)."""
    page.goto(dev.url + path, wait_until="load", timeout=120_000)


def park(page) -> None:
    """Leave the UI while waiting for builds: an open asset page polls the webserver every 2 s (live data)."""
    page.goto("about:blank")


def open_materialize_menu(page) -> None:
    button = page.get_by_role("button", name=re.compile(r"Materialize all \(\d+\)"))
    button.wait_for(timeout=60_000)
    box = button.bounding_box()
    page.mouse.click(box["x"] + box["width"] + 14, box["y"] + box["height"] / 2)  # the caret next to it


def expanded_graph_path(groups) -> str:
    return "/asset-groups?expanded=" + "%2C".join(f"global%40global%3A{g}" for g in sorted(groups))


def graph_labels(page) -> list[str]:
    nodes = page.locator("svg foreignObject [class*=AssetNode_assetName]")
    nodes.first.wait_for(timeout=60_000)
    return nodes.all_inner_texts()


@timed
def wait_for_settled_graph(page, timeout: float = 60) -> None:
    """Until the node positions are the same on two polls in a row (the layout animates in)."""
    nodes = page.locator("svg foreignObject [class*=AssetNode_assetName]")
    last: list = [None]

    def settled() -> bool:
        boxes = [nodes.nth(i).bounding_box() for i in range(nodes.count())]
        same, last[0] = boxes == last[0], boxes
        return same and bool(boxes)

    h.wait_until(settled, timeout, "the asset graph layout to settle", every=0.3)


def close_search_dropdown(page) -> None:
    """The graph page focuses its asset-selection input, whose suggestion list covers part of the graph."""
    page.keyboard.press("Escape")
    page.locator("body").click(position={"x": 5, "y": 1095})  # an empty corner, away from nodes and inputs
    h.wait_until(lambda: not page.locator("[role=listbox]:visible, [role=menu]:visible").count(), 30,
                 "the search dropdown to close", every=0.2)


def label_matches(label: str, name: str) -> bool:
    """Zoomed-out nodes shorten long names in the middle ("clust…_assignments")."""
    if "…" not in label:
        return label == name
    head, tail = label.split("…", 1)
    return name.startswith(head) and name.endswith(tail) and len(name) > len(head) + len(tail)


def failure_report(dev: h.DagsterDev) -> str:
    lines = []
    for run in h.runs(dev.gql):
        if run["status"] == "FAILURE":
            errors = [m for m in h.run_logs(dev.gql, run["runId"]) if "rror" in m or "failed" in m]
            lines.append(f"run {run['runId']} {[a['path'] for a in run['assetSelection'] or []]}: {errors[-5:]}")
    return "\n".join(lines) or dev.log_tail()


@timed
def toggle_sensor(page, dev: h.DagsterDev, running: bool) -> None:
    """Flip the sensor's switch on its page, as a user would.

    The switch is disabled until the page has loaded the sensor's state, and a click on it then can be lost
    under load; the click is repeated only while both the switch and the server still show the old state (a
    repeated click asks for the same new state, so it cannot flip the sensor back).
    """
    want = "RUNNING" if running else "STOPPED"
    open_page(page, dev, f"/locations/{h.LOCATION}/sensors/{SENSOR}")
    switch = page.locator("label:has(input[type=checkbox])").first
    box = switch.locator("input[type=checkbox]")
    last_click = [-math.inf]

    def flipped() -> bool:
        if h.sensor_status(dev.gql, SENSOR) == want:
            return True
        if box.is_enabled() and box.is_checked() != running and time.monotonic() - last_click[0] > 15:
            switch.click()
            last_click[0] = time.monotonic()
        return False

    h.wait_until(flipped, 120, f"sensor {SENSOR} {'on' if running else 'off'}", every=0.5)


@timed
def reload_definitions(page, dev: h.DagsterDev, asset: str) -> str:
    """Press "Reload definitions" and wait until `asset` reports a new code version; return it."""
    old = h.asset_nodes(dev.gql)[asset]["opVersion"]
    open_page(page, dev, "/asset-groups")
    page.get_by_role("button", name="Reload definitions").click()

    def new_version() -> Optional[str]:
        if not h.location_loaded(dev.gql):
            return None
        version = h.asset_nodes(dev.gql)[asset]["opVersion"]
        return version if version != old else None

    return h.wait_until(new_version, 300, f"the reloaded definitions to change {asset}'s code version", every=0.5)


def check_png(path: Path, min_size=(800, 500)) -> None:
    from PIL import Image

    assert path.is_file() and path.stat().st_size > 20_000, f"{path}: missing or suspiciously small"
    with Image.open(path) as img:
        assert img.size[0] >= min_size[0] and img.size[1] >= min_size[1], f"{path}: {img.size}"
        colors = img.convert("RGB").getcolors(maxcolors=1_000_000)
    assert colors is not None and len(colors) > 64, f"{path}: only {len(colors or [])} colours (blank page?)"


# ------------------------------------------------------------------------------------------ checks
def expected_asset_names(manifest: Path) -> set[str]:
    from gmates_assets.defs import build_definitions

    graph = build_definitions(manifest).resolve_asset_graph()
    return {k.to_user_string() for k in graph.get_all_asset_keys()}


def not_fresh(dev: h.DagsterDev, nodes: dict) -> dict:
    return {k: v for k, v in h.stale_status(dev.gql, nodes).items() if v[0] != "FRESH"}


def runs_in_flight(dev: h.DagsterDev) -> list[dict]:
    return [r for r in h.runs(dev.gql) if r["status"] not in h.FINISHED]


@timed
def check_graph(page, dev: h.DagsterDev, names: set[str]) -> None:
    """Every asset of the definitions is one node of the expanded graph; screenshot it."""
    labels = shot_graph(page, dev, "asset_graph")
    unmatched = [n for n in names if sum(label_matches(label, n) for label in labels) != 1]
    assert len(labels) == len(names) and not unmatched, f"graph labels {labels} vs assets {sorted(names)}"
    check_png(ARTIFACTS / "asset_graph.png")


def shot_graph(page, dev: h.DagsterDev, name: str) -> list[str]:
    """The expanded asset graph, laid out, as test-artifacts/ui/<name>.png; its node labels."""
    open_page(page, dev, expanded_graph_path(GROUPS))
    labels = graph_labels(page)
    close_search_dropdown(page)
    wait_for_settled_graph(page)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"))
    return labels


@timed
def check_asset_page(page, dev: h.DagsterDev, node: dict) -> None:
    """Description, group, kinds, manifest_sections and partitions as the asset's page shows them."""
    name = "/".join(node["assetKey"]["path"])
    open_page(page, dev, f"/assets/{name}")
    sections = next(m["text"] for m in node["metadataEntries"] if m["label"] == "manifest_sections")
    expected = (node["description"].strip(), f"Group\n{node['groupName']}", sections, "Kinds\n")

    def shown() -> Optional[str]:  # the page renders its parts as their queries answer
        text = page.locator("body").inner_text()
        return text if all(e in text for e in expected) else None

    try:
        text = h.wait_until(shown, 60, f"/assets/{name} to show its description, group, sections, kinds", every=0.5)
    except TimeoutError:
        text = page.locator("body").inner_text()
        raise AssertionError(f"/assets/{name} does not show {[e for e in expected if e not in text]}") from None
    kinds_shown = text.split("Kinds\n", 1)[1].split("Tags", 1)[0].lower()
    assert all(k.lower() in kinds_shown for k in node["kinds"]), f"kinds {node['kinds']} vs {kinds_shown!r}"
    page.screenshot(path=str(ARTIFACTS / f"asset_{name}.png"), full_page=False)
    check_png(ARTIFACTS / f"asset_{name}.png")
    open_page(page, dev, f"/assets/{name}?view=partitions")
    page.get_by_text(f"Materialized ({len(node['partitionKeys'])})").first.wait_for(timeout=60_000)
    for key in node["partitionKeys"]:
        assert page.get_by_text(key, exact=True).count() >= 1, f"partition {key} not listed for {name}"


@timed
def check_embedded_plot(page, dev: h.DagsterDev, asset: str, entry: str) -> None:
    open_page(page, dev, f"/assets/{asset}")
    page.locator("tr", has_text=entry).first.get_by_text("[Show Markdown]").click()
    img = page.locator("[role=dialog] img[src^='data:image/png']").first
    img.wait_for(timeout=60_000)
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=img.element_handle(), timeout=30_000)
    width, height = img.evaluate("e => [e.naturalWidth, e.naturalHeight]")
    assert width >= 200 and height >= 100, f"{asset}.{entry}: plot is {width}x{height}"
    out = ARTIFACTS / f"asset_{asset}_plot.png"
    page.screenshot(path=str(out))
    page.keyboard.press("Escape")
    check_png(out)


def check_loopback_only(dev: h.DagsterDev) -> None:
    addresses = h.listening_addresses(dev.port)
    assert addresses, f"nothing listens on port {dev.port}"
    assert all(a.startswith("127.") or a == "::1" for a in addresses), f"listening on {addresses}"
    for address in h.non_loopback_ipv4():
        assert not h.can_connect(address, dev.port), f"reachable via {address}:{dev.port}"


@timed
def cli_statuses(manifest: Path, capsys) -> set[str]:
    from gmates_assets.cli import main

    capsys.readouterr()
    assert main(["status", "--manifest", str(manifest), "--json"]) == 0
    return {row["status"] for row in json.loads(capsys.readouterr().out)}


def replace_in_manifest(manifest: Path, pair: tuple[str, str], reverse: bool = False) -> None:
    old, new = pair[::-1] if reverse else pair
    text = manifest.read_text()
    assert text.count(old) == 1, f"{old!r} in {manifest}"
    manifest.write_text(text.replace(old, new))


@timed
def tick_after(dev: h.DagsterDev, after: float, reason: str, timeout: float = 300) -> dict:
    """The first finished tick of the sensor after `after` (epoch s) whose reason starts with `reason`."""
    def tick() -> Optional[dict]:
        ticks = [t for t in h.sensor_ticks(dev.gql, SENSOR, limit=20) if t["timestamp"] > after
                 and t["status"] != "STARTED" and (t["skipReason"] or "").startswith(reason)]
        return ticks[-1] if ticks else None

    return h.wait_until(tick, timeout, f"a tick of {SENSOR} saying {reason!r}", every=1)


@timed
def wait_fresh(dev: h.DagsterDev, nodes: dict, after: float) -> None:
    """Until a sensor tick after `after` says fresh (its verdict covers runs and backfills in flight); then
    the UI too calls every partition fresh with nothing in flight. Polls the ticks (cheap), not the UI's
    staleness of every partition (costly for the webserver while it serves the runs)."""
    def fresh_tick() -> bool:
        reasons = [t["skipReason"] or "" for t in h.sensor_ticks(dev.gql, SENSOR, limit=20)
                   if t["timestamp"] > after and t["status"] != "STARTED"]
        assert not [r for r in reasons if "held back after a failed" in r], failure_report(dev)
        return any(r.startswith("fresh") for r in reasons)

    h.wait_until(fresh_tick, PHASE_TIMEOUT, f"a tick of {SENSOR} saying 'fresh'", every=1)
    h.wait_until(lambda: not runs_in_flight(dev) and not not_fresh(dev, nodes), 60,
                 "every asset partition fresh with nothing in flight", every=1)
    assert not [r for r in h.runs(dev.gql) if r["status"] == "FAILURE"], failure_report(dev)


@timed
def rebuilt_since(dev: h.DagsterDev, nodes: dict, before: dict) -> dict:
    after = h.materialization_counts(dev.gql, nodes)
    return {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}


def reached(nodes: dict) -> dict:
    """The partitions the edit reaches, each expected to be built exactly once."""
    return {**{(EDITED, pk): 1 for pk in nodes[EDITED]["partitionKeys"]}, **{(a, None): 1 for a in DOWNSTREAM}}


@timed
def shot(page, dev: h.DagsterDev, path: str, name: str, wait_text: Optional[str] = None) -> str:
    """Open `path`, wait for `wait_text` when given, save test-artifacts/ui/<name>.png; return the page text."""
    open_page(page, dev, path)
    if wait_text:
        page.get_by_text(wait_text).first.wait_for(timeout=60_000)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"))
    return page.locator("body").inner_text()


@timed
def show_latest_skip_reason(page, dev: h.DagsterDev, reason: str, name: str) -> None:
    """The sensor's page shows a skipped tick as "0 runs requested"; hovering it shows the reason (screenshot)."""
    def shown() -> bool:
        open_page(page, dev, f"/locations/{h.LOCATION}/sensors/{SENSOR}")
        page.get_by_text("0 runs requested").first.hover(timeout=60_000)
        try:
            page.get_by_text(reason).first.wait_for(timeout=10_000)
        except Exception:  # the tooltip of a tick that was not the latest yet: look again
            return False
        return True

    h.wait_until(shown, 120, f"the sensor page to show {reason!r}", every=1)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"))


@timed
def press_materialize_unsynced(page, dev: h.DagsterDev) -> str:
    """The dialog's text, then its "Materialize N assets" button (what a user does), until its run exists."""
    from playwright.sync_api import expect

    known = {r["runId"] for r in h.runs(dev.gql)}
    open_page(page, dev, "/asset-groups")
    open_materialize_menu(page)
    page.get_by_text("Materialize unsynced", exact=True).click()
    dialog = page.get_by_role("dialog").filter(has_text="Materialize unsynced assets").last
    dialog.wait_for(timeout=60_000)
    expect(dialog).not_to_contain_text("Fetching", timeout=60_000)
    text = dialog.inner_text()
    page.screenshot(path=str(ARTIFACTS / "materialize_unsynced_dialog.png"))
    dialog.get_by_role("button", name=re.compile(r"^Materialize \d+ assets?$")).click()
    # until the run exists: leaving the page sooner would drop the UI's launch request
    h.wait_until(lambda: [r for r in h.runs(dev.gql) if r["runId"] not in known], 60, "the button's run", every=0.5)
    return text


@timed
def press_materialize_all(page, dev: h.DagsterDev, selection: str, count: int) -> str:
    """On the graph filtered by `selection` (what typing it into the search box shows): "Materialize all…",
    every partition, "Launch backfill"; the id of the backfill it started."""
    from urllib.parse import quote

    known = {b["id"] for b in h.backfills(dev.gql)}
    open_page(page, dev, f"/asset-groups~{quote(selection, safe='')}")
    page.get_by_role("button", name=re.compile("Materialize all")).click(timeout=60_000)
    dialog = page.get_by_role("dialog").filter(has_text=f"Launch runs to materialize {count} assets").last
    dialog.wait_for(timeout=60_000)
    dialog.get_by_text("All", exact=True).first.click()
    page.screenshot(path=str(ARTIFACTS / "materialize_all_dialog.png"))
    dialog.get_by_role("button", name="Launch backfill").click()
    new = h.wait_until(lambda: [b for b in h.backfills(dev.gql) if b["id"] not in known], 60, "the backfill", every=1)
    return new[0]["id"]


@timed
def launch_sync_job(page, dev: h.DagsterDev) -> str:
    """Jobs > gmates_sync > Launchpad > Launch Run; the id of the run it started."""
    known = {r["runId"] for r in h.runs(dev.gql)}
    open_page(page, dev, f"/locations/{h.LOCATION}/jobs/gmates_sync/playground")
    page.get_by_role("button", name="Launch Run").click()

    def started() -> Optional[str]:
        new = [r for r in h.runs(dev.gql) if r["runId"] not in known
               and {"key": "gmates/sync_job", "value": "1"} in r["tags"]]
        return new[0]["runId"] if new else None

    run_id = h.wait_until(started, 120, "the gmates_sync run", every=1)
    page.screenshot(path=str(ARTIFACTS / "gmates_sync_launched.png"))
    return run_id


class StepClock:
    """Wall and CPU seconds of each step (CPU: this process and everything it started, h.tree_cpu_seconds), and
    where the step's runs spent their time: created -> started (run queue, launch, process start) and started ->
    ended (executing), from the runs' GraphQL times."""

    def __init__(self):
        self.steps: list[tuple[str, float, float, float]] = []  # name, start, end (epoch s), CPU seconds
        self.current: Optional[tuple[str, float, float]] = None
        h.adopt_orphans()
        self.cpu_before = h.tree_cpu_seconds()  # the session so far: the fixtures (and the shared full build)
        self.load_before = os.getloadavg()[0]

    def start(self, name: str) -> None:
        self.stop()
        self.current = (name, time.time(), h.tree_cpu_seconds())

    def stop(self) -> None:
        if self.current is not None:
            name, t0, cpu0 = self.current
            self.steps.append((name, t0, time.time(), h.tree_cpu_seconds() - cpu0))
            self.current = None

    def report(self, runs: list[dict], started: float) -> str:
        lines = [f"load average before/after: {self.load_before:.2f} / {os.getloadavg()[0]:.2f}",
                 f"session CPU before the scenario (fixtures): {self.cpu_before:.0f}s",
                 "step: wall, CPU; runs created in the step: count, mean created->started, mean started->ended"]
        for name, t0, t1, cpu in self.steps:
            mine = [r for r in runs if t0 <= r["creationTime"] < t1 and r["startTime"] and r["endTime"]]
            waits = [r["startTime"] - r["creationTime"] for r in mine]
            execs = [r["endTime"] - r["startTime"] for r in mine]
            run_text = (f"; {len(mine)} runs, {sum(waits) / len(mine):.1f}s to start, {sum(execs) / len(mine):.1f}s "
                        f"executing" if mine else "")
            lines.append(f"{name}: {t1 - t0:.0f}s wall, {cpu:.0f}s CPU{run_text}")
            calls: dict[str, list[float]] = {}
            for helper, at, seconds in SPENT:
                if t0 <= at < t1:
                    calls.setdefault(helper, []).append(seconds)
            for helper, spent in sorted(calls.items(), key=lambda kv: -sum(kv[1])):
                lines.append(f"    {helper}: {sum(spent):.1f}s ({len(spent)} calls)")
        total_cpu = sum(step[3] for step in self.steps)
        lines.append(f"whole scenario: {time.time() - started:.0f}s wall, {total_cpu:.0f}s CPU")
        return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------ the scenario
def test_ui_every_natural_path_ends_fresh(server, page, capsys):
    started = time.time()
    clock = StepClock()
    clock.start("UI ready")
    info = timed(server.wait_ready)(timeout=300)
    assert info["dagster_webserver_version"] == "1.13.27", info
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    clock.start("1 checks")

    # 1. the definitions as the UI sees them; the sensor's first tick calls the synced build fresh
    nodes = h.asset_nodes(server.gql)
    names = expected_asset_names(server.manifest)
    assert set(nodes) == names, f"GraphQL assets differ from the definitions: {set(nodes) ^ names}"
    assert {n["groupName"] for n in nodes.values()} == GROUPS
    assert not not_fresh(server, nodes), "the synced graph is not fresh in the UI"
    tick = tick_after(server, started - 1, "fresh")
    assert not tick["runIds"], f"the automation sensor requested work on an up-to-date graph: {tick}"
    built = h.materialization_counts(server.gql, nodes)
    assert set(built.values()) == {1}, f"each asset partition should have been built once by sync: {built}"
    checks = wait(lambda: (c := h.check_results(server.gql, nodes, "up_to_date"))
                          and all(v and v["success"] for v in c.values()) and c, 60, "every up_to_date check passed")
    assert checks[EDITED]["description"].startswith("fresh")
    embed_run = next(r for r in h.runs(server.gql) if {"path": ["embeddings"]} in (r["assetSelection"] or []))
    progress = [m for m in h.run_logs(server.gql, embed_run["runId"]) if PROGRESS_LINE.search(m)]
    assert progress, "no progress line in the embeddings run's logs"
    check_graph(page, server, names)
    check_asset_page(page, server, nodes[EDITED])
    check_embedded_plot(page, server, "relational_model", "relational_loss_curve")

    # 2. edit while the UI runs: the UI says so, nothing is launched; reload: exactly what the edit reaches
    clock.start("2 edit while running")
    runs_before = len(h.runs(server.gql))
    t_edit = time.time()
    replace_in_manifest(server.manifest, BASELINE)
    tick = tick_after(server, t_edit, "manifest changed on disk: Reload definitions")
    assert str(server.manifest) in tick["skipReason"] and not tick["runIds"]
    wait(lambda: "manifest changed on disk" in (h.check_results(server.gql, nodes, "up_to_date")[EDITED]
                                                        or {}).get("description", ""), 60, "the check to say so")
    show_latest_skip_reason(page, server, "manifest changed on disk: Reload definitions", "edit_sensor_says_reload")
    shot(page, server, f"/assets/{EDITED}?view=checks&checkDetail=up_to_date", "edit_check_says_reload",
         "manifest changed on disk: Reload definitions")
    assert len(h.runs(server.gql)) == runs_before, "a run was launched from definitions of another manifest"
    reload_definitions(page, server, EDITED)
    t_reload = time.time()
    wait(lambda: "stale" in ((h.check_results(server.gql, nodes, "up_to_date")[EDITED] or {})
                                     .get("description", "")), 120, "the check to list the stale partitions", every=0.5)
    shot(page, server, f"/assets/{EDITED}?view=checks&checkDetail=up_to_date", "edit_check_lists_stale_partitions",
         f"{EDITED}[{nodes[EDITED]['partitionKeys'][0]}]")
    park(page)
    wait_fresh(server, nodes, t_reload)
    assert h.descendants(nodes, EDITED) == DOWNSTREAM
    new = rebuilt_since(server, nodes, built)
    assert new == reached(nodes), f"every reached asset partition is rebuilt exactly once: {new}"
    assert cli_statuses(server.manifest, capsys) == {"fresh"}
    shot_graph(page, server, "edit_rebuilt_graph")

    # 3. an edit made while the UI was down: the sensor of the new UI converges
    clock.start("3 edit while down")
    built = h.materialization_counts(server.gql, nodes)
    park(page)
    timed(server.stop)()
    replace_in_manifest(server.manifest, BASELINE, reverse=True)
    timed(server.start)()
    timed(server.wait_ready)(timeout=300)
    wait_fresh(server, nodes, time.time())
    assert rebuilt_since(server, nodes, built) == reached(nodes)
    assert cli_statuses(server.manifest, capsys) == {"fresh"}
    show_latest_skip_reason(page, server, "fresh:", "restart_converged_sensor")
    shot(page, server, f"/assets/{EDITED}?view=checks&checkDetail=up_to_date", "restart_converged_check",
         f"fresh ({len(nodes[EDITED]['partitionKeys'])} partitions)")

    # 4. "Materialize unsynced" builds the unpartitioned asset and ignores stale partitions; the sensor finishes
    clock.start("4 materialize unsynced")
    built = h.materialization_counts(server.gql, nodes)
    toggle_sensor(page, server, running=False)
    replace_in_manifest(server.manifest, BASELINE)
    replace_in_manifest(server.manifest, RELEASE_NAME)
    reload_definitions(page, server, "dataset_release")
    dialog = press_materialize_unsynced(page, server)
    assert "dataset_release" in dialog and EDITED not in dialog, dialog  # Dagster 1.13.27 ignores stale partitions
    park(page)
    wait(lambda: rebuilt_since(server, nodes, built).get(("dataset_release", None)) and
                 not runs_in_flight(server), PHASE_TIMEOUT, "the button's run")
    t_on = time.time()
    toggle_sensor(page, server, running=True)
    park(page)
    wait_fresh(server, nodes, t_on)
    assert rebuilt_since(server, nodes, built) == {**reached(nodes), ("dataset_release", None): 1}
    assert cli_statuses(server.manifest, capsys) == {"fresh"}

    # 5. sensor off: gmates_sync from the Launchpad rebuilds what is stale, once, and ends fresh
    clock.start("5 gmates_sync")
    built = h.materialization_counts(server.gql, nodes)
    toggle_sensor(page, server, running=False)
    replace_in_manifest(server.manifest, BASELINE, reverse=True)
    reload_definitions(page, server, EDITED)
    run_id = launch_sync_job(page, server)
    park(page)
    wait(lambda: next(r for r in h.runs(server.gql) if r["runId"] == run_id)["status"] in h.FINISHED,
                 PHASE_TIMEOUT, "the gmates_sync run to end")
    assert next(r for r in h.runs(server.gql) if r["runId"] == run_id)["status"] == "SUCCESS", failure_report(server)
    assert not not_fresh(server, nodes)
    assert rebuilt_since(server, nodes, built) == reached(nodes)
    assert cli_statuses(server.manifest, capsys) == {"fresh"}
    shot(page, server, f"/runs/{run_id}", "gmates_sync_run", "fresh:")

    # 6. sensor on: "Materialize all" on eval_scores and what follows it (a backfill); the sensor waits for it
    clock.start("6 materialize all")
    t_all = time.time()
    built = h.materialization_counts(server.gql, nodes)
    toggle_sensor(page, server, running=True)
    backfill = press_materialize_all(page, server, f"key:{EDITED}+", 1 + len(DOWNSTREAM))
    park(page)
    wait(lambda: all(b["status"] != "REQUESTED" for b in h.backfills(server.gql)), PHASE_TIMEOUT,
                 "the backfill to end")
    t_done = time.time()
    wait_fresh(server, nodes, t_done)
    since_press = h.sensor_ticks(server.gql, SENSOR, limit=40)
    # A backfill that outlasts a tick is seen by it ("waiting for backfill ..."); one that ends between two ticks
    # (7 s here once runs got faster) is not. Either way the sensor requested nothing since the press.
    waited = [t for t in since_press if t["timestamp"] > t_all and f"backfill {backfill}" in (t["skipReason"] or "")]
    print(f"ticks that waited for the backfill: {len(waited)}")
    assert not [t for t in since_press if t["timestamp"] > t_all and t["runIds"]], f"the sensor raced: {since_press}"
    ticks = sorted((t for t in since_press if t["timestamp"] > t_done), key=lambda t: t["timestamp"])
    first_fresh = next(i for i, t in enumerate(ticks) if (t["skipReason"] or "").startswith("fresh"))
    assert first_fresh <= 1, f"not fresh within two ticks: {ticks}"
    assert rebuilt_since(server, nodes, built) == reached(nodes), "a partition was built twice, or not at all"

    clock.start("screenshots and loopback")
    for png in sorted(p for p in ARTIFACTS.glob("*.png") if p.stat().st_mtime >= started):
        check_png(png)
    check_loopback_only(server)
    clock.stop()
    report = clock.report(h.runs(server.gql), started)
    (ARTIFACTS / "timings.txt").write_text(report)
    print(report)
