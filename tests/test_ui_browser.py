"""The Dagster UI as the main surface, driven in headless Chromium against a real `dagster dev`.

One scenario on the `tests` profile (the steps depend on each other):
  1. the graph is built by `sync` (the shared `full_build`, copied); `gmates sync` in this process on the same
     DAGSTER_HOME / GMATES_HOME then finds nothing to do; `dagster dev` starts on 127.0.0.1 with those homes;
  2. the asset graph shows every asset of the definitions; the automation sensor's first tick requests nothing;
  3. screenshots of the graph (search dropdown closed), of an asset page and of an embedded plot go to
     test-artifacts/ui; the asset page shows description, group, kinds, manifest_sections and partitions;
  4. in the UI: sensor off, edit `selection.ratio`, "Reload definitions": exactly selected_subset's partitions
     are unsynced ("Materialize unsynced" does not see them: the reason the rebuild is the sensor's job);
  5. in the UI: sensor on; it rebuilds selected_subset and what its new data reaches, each asset partition
     once, and nothing upstream gets a new materialization (GraphQL); `gmates status` agrees all is fresh;
  6. the webserver listens on loopback only, and every process it started is gone afterwards.

No fixed sleeps: every wait polls a condition against a deadline. The sensor is evaluated every
SENSOR_INTERVAL seconds here ($GMATES_AUTOMATION_INTERVAL_S) and the run queue every second (RUN_QUEUE_YAML).
"""
from __future__ import annotations

import json
import math
import re
import shutil
import time
from pathlib import Path
from typing import Optional

import pytest

from . import ui_helpers as h

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ARTIFACTS = h.REPO_ROOT / "test-artifacts" / "ui"
SENSOR = "gmates_automation"
SENSOR_INTERVAL = 5  # seconds; the AssetDaemon's loop is 5 s, so less would not tick sooner
GROUPS = {"pool", "influence", "selection", "training", "release"}
# What a selection.ratio edit reaches: the edited asset, then everything whose inputs' data changed.
EDITED = "selected_subset"
DOWNSTREAM = {"pretrained_checkpoint", "eval_scores", "method_comparison", "dataset_release"}
PROGRESS_LINE = re.compile(r"\d+/\d+ \S+ \(\d+\.\d%\), [\d.]+ (\S+/s|s/\S+), eta \d+s")
PHASE_TIMEOUT = 1200  # seconds; ~3 min on an idle 2-core machine, ~11 min seen with 6 loads per core


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
def open_page(page, dev: h.DagsterDev, path: str) -> None:
    page.goto(dev.url + path, wait_until="networkidle", timeout=120_000)


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


def materialize_unsynced_dialog(page, dev: h.DagsterDev) -> str:
    from playwright.sync_api import expect

    open_page(page, dev, "/asset-groups")
    open_materialize_menu(page)
    page.get_by_text("Materialize unsynced", exact=True).click()
    dialog = page.get_by_role("dialog").filter(has_not_text="Open launchpad").last  # not the menu itself
    dialog.wait_for(timeout=60_000)
    expect(dialog).not_to_contain_text("Fetching", timeout=60_000)
    text = dialog.inner_text()
    page.keyboard.press("Escape")
    return text


def finished_tick_after(dev: h.DagsterDev, after: float) -> dict:
    """The first finished tick of the sensor that started after `after` (epoch seconds)."""
    def tick() -> Optional[dict]:
        ticks = [t for t in h.sensor_ticks(dev.gql, SENSOR) if t["timestamp"] > after and t["status"] != "STARTED"]
        return ticks[-1] if ticks else None

    return h.wait_until(tick, 300, f"a tick of {SENSOR}", every=1)


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


def check_graph(page, dev: h.DagsterDev, names: set[str]) -> None:
    """Every asset of the definitions is one node of the expanded graph; screenshot it."""
    open_page(page, dev, expanded_graph_path(GROUPS))
    labels = graph_labels(page)
    unmatched = [n for n in names if sum(label_matches(label, n) for label in labels) != 1]
    assert len(labels) == len(names) and not unmatched, f"graph labels {labels} vs assets {sorted(names)}"
    close_search_dropdown(page)
    wait_for_settled_graph(page)
    page.screenshot(path=str(ARTIFACTS / "asset_graph.png"))
    check_png(ARTIFACTS / "asset_graph.png")


def check_asset_page(page, dev: h.DagsterDev, node: dict) -> None:
    """Description, group, kinds, manifest_sections and partitions as the asset's page shows them."""
    name = "/".join(node["assetKey"]["path"])
    open_page(page, dev, f"/assets/{name}")
    page.get_by_text("manifest_sections", exact=True).first.wait_for(timeout=60_000)
    text = page.locator("body").inner_text()
    sections = next(m["text"] for m in node["metadataEntries"] if m["label"] == "manifest_sections")
    for expected in (node["description"].strip(), f"Group\n{node['groupName']}", sections, "Kinds\n"):
        assert expected in text, f"/assets/{name} does not show {expected!r}"
    kinds_shown = text.split("Kinds\n", 1)[1].split("Tags", 1)[0].lower()
    assert all(k.lower() in kinds_shown for k in node["kinds"]), f"kinds {node['kinds']} vs {kinds_shown!r}"
    page.screenshot(path=str(ARTIFACTS / f"asset_{name}.png"), full_page=False)
    check_png(ARTIFACTS / f"asset_{name}.png")
    open_page(page, dev, f"/assets/{name}?view=partitions")
    page.get_by_text(f"Materialized ({len(node['partitionKeys'])})").first.wait_for(timeout=60_000)
    for key in node["partitionKeys"]:
        assert page.get_by_text(key, exact=True).count() >= 1, f"partition {key} not listed for {name}"


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


def cli_statuses(manifest: Path, capsys) -> set[str]:
    from gmates_assets.cli import main

    capsys.readouterr()
    assert main(["status", "--manifest", str(manifest), "--json"]) == 0
    return {row["status"] for row in json.loads(capsys.readouterr().out)}


# ------------------------------------------------------------------------------------------ the scenario
def test_ui_reload_after_an_edit_rebuilds_only_what_changed(server, page, capsys):
    started = time.time()
    info = server.wait_ready(timeout=300)
    assert info["dagster_webserver_version"] == "1.13.27", info
    t_ready = time.time()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)

    # 2. the definitions as the UI sees them; the sensor's first tick sees a fresh graph (and sets its baseline)
    nodes = h.asset_nodes(server.gql)
    names = expected_asset_names(server.manifest)
    assert set(nodes) == names, f"GraphQL assets differ from the definitions: {set(nodes) ^ names}"
    assert {n["groupName"] for n in nodes.values()} == GROUPS
    assert not not_fresh(server, nodes), "the synced graph is not fresh in the UI"
    tick = finished_tick_after(server, after=started - 1)
    assert tick["requestedAssetMaterializationCount"] == 0 and not tick["runIds"], \
        f"the automation sensor requested work on an up-to-date graph: {tick}"
    built = h.materialization_counts(server.gql, nodes)
    assert set(built.values()) == {1}, f"each asset partition should have been built once by sync: {built}"

    # progress lines ("X/Y unit (p%), rate, eta") of the sync runs reach the event log the UI shows
    embed_run = next(r for r in h.runs(server.gql) if {"path": ["embeddings"]} in (r["assetSelection"] or []))
    progress = [m for m in h.run_logs(server.gql, embed_run["runId"]) if PROGRESS_LINE.search(m)]
    assert progress, "no progress line in the embeddings run's logs"

    # 3. the graph, an asset page, an embedded plot
    check_graph(page, server, names)
    check_asset_page(page, server, nodes[EDITED])
    check_embedded_plot(page, server, "relational_model", "relational_loss_curve")

    # 4. sensor off while editing (so the check below sees the state before any rebuild); edit; reload
    toggle_sensor(page, server, running=False)
    text = server.manifest.read_text()
    assert "ratio: 0.5" in text
    server.manifest.write_text(text.replace("ratio: 0.5", "ratio: 0.4"))
    reload_definitions(page, server, EDITED)
    nodes = h.asset_nodes(server.gql)
    stale = not_fresh(server, nodes)
    expected_stale = {(EDITED, pk) for pk in nodes[EDITED]["partitionKeys"]}
    assert set(stale) == expected_stale, f"unsynced after the edit: {sorted(stale)}"
    for status, causes in stale.values():
        assert status == "STALE" and [c["category"] for c in causes] == ["CODE"], causes
    # Dagster 1.13.27's "Materialize unsynced" ignores stale partitions (#20463 fixed only missing ones; #22553).
    assert "All assets are up to date" in materialize_unsynced_dialog(page, server)

    # 5. sensor on: it rebuilds wave by wave until everything is fresh, then requests nothing more
    t_rebuild = time.time()
    toggle_sensor(page, server, running=True)
    h.wait_until(lambda: not runs_in_flight(server) and not not_fresh(server, nodes), PHASE_TIMEOUT,
                 "the sensor to rebuild what the edit made stale", every=2)
    t_rebuilt = time.time()
    tick = finished_tick_after(server, after=t_rebuilt)
    assert tick["requestedAssetMaterializationCount"] == 0, f"the sensor still requests work: {tick}"
    assert not [r for r in h.runs(server.gql) if r["status"] == "FAILURE"], failure_report(server)

    assert h.descendants(nodes, EDITED) == DOWNSTREAM
    after = h.materialization_counts(server.gql, nodes)
    new = {k: after[k] - built[k] for k in after if after[k] != built[k]}
    assert {asset for asset, _ in new} == {EDITED} | DOWNSTREAM, f"rebuilt: {sorted(new)}"
    expected_new = {k: 1 for k in after if k[0] in {EDITED} | DOWNSTREAM}
    assert new == expected_new, f"every reached asset partition is rebuilt exactly once: {new}"
    assert cli_statuses(server.manifest, capsys) == {"fresh"}

    # 6. loopback only; the fixture then stops the server and checks that no process of ours survives
    check_loopback_only(server)
    print(f"UI ready {t_ready - started:.0f}s, checks and edit {t_rebuild - t_ready:.0f}s, sensor rebuild "
          f"{t_rebuilt - t_rebuild:.0f}s, whole scenario {time.time() - started:.0f}s")
