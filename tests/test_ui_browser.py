"""The Dagster UI as the main surface, driven in headless Chromium against a real `dagster dev`.

One end-to-end scenario on the `tests` profile (the steps depend on each other):
  1. start `dagster dev` on 127.0.0.1 with private DAGSTER_HOME / GMATES_HOME; wait for /server_info;
  2. the asset graph shows every asset of the definitions;
  3. build the whole graph FROM THE UI: "Observe all", then "Materialize all" -> "Launch backfill" on the pool
     group (all shard partitions), then on everything else (the dialog's all-partitions backfill);
  4. edit `selection.ratio`, press "Reload definitions": exactly selected_subset's 3 partitions are unsynced;
  5. the automation sensor (toggled on in the UI) rebuilds them and what their new data reaches, nothing upstream;
  6. screenshots of the graph and of an asset page with its embedded plot go to test-artifacts/;
  7. the webserver listens on loopback only, and every process it started is gone afterwards.

Why the build is two backfills: with one partitioned root (documents), the UI's "Materialize all" anchors the
backfill on documents' partitions and Dagster 1.13.27 then walks downstream through partitioned assets only
(`AssetBackfillData.from_asset_partitions`), silently dropping oracle_random/oracle_bootstrap (seed partitions
behind unpartitioned assets). Without a partitioned root the dialog sends `allPartitions: true`, which targets
every partition of every selected asset.

Why the rebuild is the sensor: "Materialize unsynced" only picks missing partitions of partitioned assets and
answers "All assets are up to date" while selected_subset's partitions are stale; `gmates_automation` rebuilds
them wave by wave. The sensor is off during the UI build (it would race the backfills once the sources are
observed) and while the manifest is edited (so the staleness check sees the state before any rebuild).

Runtime: ~12 min on the 2-core dev machine. The BackfillDaemon runs a fixed 30 s loop and this graph needs 12
sequential stages (the partitioning alternates shards/none/seeds/none/.../methods), so the UI build alone is
~8 min; every run also pays ~5-8 s of run-worker start plus ~4 s per step subprocess.
"""
from __future__ import annotations

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
GROUPS = {"pool", "influence", "selection", "training", "release"}
# What a selection.ratio edit reaches: the edited asset, then everything whose inputs' data changed.
EDITED = "selected_subset"
DOWNSTREAM = {"pretrained_checkpoint", "eval_scores", "method_comparison", "dataset_release"}
PROGRESS_LINE = re.compile(r"\d+/\d+ \S+ \(\d+\.\d%\), [\d.]+ \S+/s, eta \d+s")
PHASE_TIMEOUT = 900  # seconds; generous because CI machines may be shared


# ------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def browser():
    if not Path(h.CHROMIUM).is_file():
        pytest.fail(f"{h.CHROMIUM} not found: the UI test needs Debian's chromium "
                    "(apt-get install -y chromium; .ci/run installs it). It must not be skipped.")
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
def server(tmp_path):
    manifest = tmp_path / "tests.yaml"
    shutil.copy(h.REPO_ROOT / "data_manifests" / "tests.yaml", manifest)
    dev = h.DagsterDev(manifest=manifest, workdir=tmp_path).start()
    try:
        yield dev
    finally:
        dev.stop()
    leftovers = dev.our_processes()
    assert not leftovers, f"processes of this dagster dev survived the shutdown: {leftovers}"


# ------------------------------------------------------------------------------------------ UI actions
def open_page(page, dev: h.DagsterDev, path: str) -> None:
    page.goto(dev.url + path, wait_until="networkidle", timeout=120_000)
    skip = page.get_by_role("button", name="Skip")  # the one-time "Join the Dagster community" dialog
    try:
        skip.wait_for(timeout=1500)
        skip.click()
    except Exception:  # noqa: BLE001 - the dialog shows only on the first visit
        pass


def open_materialize_menu(page) -> None:
    button = page.get_by_role("button", name=re.compile(r"Materialize all \(\d+\)"))
    box = button.bounding_box()
    page.mouse.click(box["x"] + box["width"] + 14, box["y"] + box["height"] / 2)  # the caret next to it


def expanded_graph_path(groups) -> str:
    return "/asset-groups?expanded=" + "%2C".join(f"global%40global%3A{g}" for g in sorted(groups))


def graph_labels(page) -> list[str]:
    nodes = page.locator("svg foreignObject [class*=AssetNode_assetName]")
    nodes.first.wait_for(timeout=60_000)
    return nodes.all_inner_texts()


def label_matches(label: str, name: str) -> bool:
    """Zoomed-out nodes shorten long names in the middle ("clust…_assignments")."""
    if "…" not in label:
        return label == name
    head, tail = label.split("…", 1)
    return name.startswith(head) and name.endswith(tail) and len(name) > len(head) + len(tail)


def launch_backfill_from_graph(page, dev: h.DagsterDev, selection: str, nodes: dict, assets: set[str]) -> str:
    """Filter the graph by `selection`, press "Materialize all", pick all partitions, "Launch backfill"; wait
    until every partition of `assets` is materialized. Returns the backfill id.

    The backfill's own status flips to COMPLETED only at the daemon's next 30-second pass; waiting on the
    materializations instead lets the next launch catch the pass that would otherwise be lost
    (`wait_backfill` checks the status later).
    """
    before = {b["id"] for b in h.backfills(dev.gql)}
    open_page(page, dev, "/asset-groups~" + selection.replace(" ", "%20").replace(":", "%3A") + "/")
    page.get_by_role("button", name=f"Materialize all ({len(assets)})…").click()
    dialog = page.get_by_role("dialog")
    dialog.wait_for(timeout=60_000)
    if dialog.get_by_role("button", name="All", exact=True).count():
        dialog.get_by_role("button", name="All", exact=True).click()  # anchored: all partitions of the anchor
    else:
        assert "All partitions" in dialog.inner_text(), dialog.inner_text()
    dialog.get_by_role("button", name="Launch backfill").click()
    backfill_id = h.wait_until(lambda: [b for b in h.backfills(dev.gql) if b["id"] not in before], 60,
                               f"the backfill launched for {selection!r}")[0]["id"]
    wanted = {n: v for n, v in nodes.items() if n in assets}

    def built() -> bool:
        status = next(b for b in h.backfills(dev.gql) if b["id"] == backfill_id)["status"]
        if status not in ("REQUESTED", "COMPLETED_SUCCESS"):
            pytest.fail(f"backfill {backfill_id} ({selection}) ended {status}:\n{failure_report(dev)}")
        return all(h.materialization_counts(dev.gql, wanted).values()) and not runs_in_flight(dev)

    h.wait_until(built, PHASE_TIMEOUT, f"the backfill of {selection!r} to materialize {sorted(assets)}", every=2)
    return backfill_id


def wait_backfill(dev: h.DagsterDev, backfill_id: str) -> dict:
    def done() -> Optional[dict]:
        b = next(b for b in h.backfills(dev.gql) if b["id"] == backfill_id)
        return b if b["status"] not in ("REQUESTED", "CANCELING") else None

    backfill = h.wait_until(done, 120, f"backfill {backfill_id} to report its end", every=3)
    if backfill["status"] != "COMPLETED_SUCCESS":
        pytest.fail(f"backfill {backfill_id} ended {backfill['status']}:\n{failure_report(dev)}")
    return backfill


def failure_report(dev: h.DagsterDev) -> str:
    lines = []
    for run in h.runs(dev.gql):
        if run["status"] == "FAILURE":
            errors = [m for m in h.run_logs(dev.gql, run["runId"]) if "rror" in m or "failed" in m]
            lines.append(f"run {run['runId']} {[a['path'] for a in run['assetSelection'] or []]}: {errors[-5:]}")
    return "\n".join(lines) or dev.log_tail()


def toggle_sensor(page, dev: h.DagsterDev, running: bool) -> None:
    """Flip the sensor's switch on its page, as a user would."""
    open_page(page, dev, f"/locations/{h.LOCATION}/sensors/{SENSOR}")
    switch = page.locator("input[type=checkbox]").first
    switch.wait_for(state="attached", timeout=60_000)
    if switch.is_checked() != running:
        page.locator("label:has(input[type=checkbox])").first.click()
    h.wait_until(lambda: h.sensor_status(dev.gql, SENSOR) == ("RUNNING" if running else "STOPPED"), 60,
                 f"sensor {SENSOR} {'on' if running else 'off'}", every=1)


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

    return h.wait_until(new_version, 120, f"the reloaded definitions to change {asset}'s code version", every=1)


def materialize_unsynced_dialog(page, dev: h.DagsterDev) -> str:
    open_page(page, dev, "/asset-groups")
    open_materialize_menu(page)
    page.get_by_text("Materialize unsynced", exact=True).click()
    from playwright.sync_api import expect

    dialog = page.get_by_role("dialog").filter(has_not_text="Open launchpad").last  # not the menu itself
    dialog.wait_for(timeout=60_000)
    expect(dialog).not_to_contain_text("Fetching", timeout=60_000)
    text = dialog.inner_text()
    page.keyboard.press("Escape")
    return text


def next_sensor_tick(dev: h.DagsterDev, after: float) -> dict:
    """The first finished tick of the sensor that started after `after` (epoch seconds)."""
    def finished_tick() -> Optional[dict]:
        ticks = [t for t in h.sensor_ticks(dev.gql, SENSOR) if t["timestamp"] > after and t["status"] != "STARTED"]
        return ticks[-1] if ticks else None

    return h.wait_until(finished_tick, 120, f"a tick of {SENSOR}", every=2)


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
    open_page(page, dev, f"/assets/{name}?view=partitions")
    page.get_by_text(f"Materialized ({len(node['partitionKeys'])})").first.wait_for(timeout=60_000)
    for key in node["partitionKeys"]:
        assert page.get_by_text(key, exact=True).count() >= 1, f"partition {key} not listed for {name}"


def check_embedded_plot(page, dev: h.DagsterDev, asset: str, entry: str) -> Path:
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
    return out


def check_loopback_only(dev: h.DagsterDev) -> None:
    addresses = h.listening_addresses(dev.port)
    assert addresses, f"nothing listens on port {dev.port}"
    assert all(a.startswith("127.") or a == "::1" for a in addresses), f"listening on {addresses}"
    for address in h.non_loopback_ipv4():
        assert not h.can_connect(address, dev.port), f"reachable via {address}:{dev.port}"


# ------------------------------------------------------------------------------------------ the scenario
def test_ui_builds_reloads_and_rebuilds_only_what_changed(server, browser):
    started = time.monotonic()
    info = server.wait_ready()
    assert info["dagster_webserver_version"] == "1.13.27", info
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": 2000, "height": 1100})  # the expanded graph fits

    nodes = h.asset_nodes(server.gql)
    names = expected_asset_names(server.manifest)
    assert set(nodes) == names, f"GraphQL assets differ from the definitions: {set(nodes) ^ names}"
    assert {n["groupName"] for n in nodes.values()} == GROUPS
    materializable = {n for n, v in nodes.items() if v["isMaterializable"]}
    sources = {n for n, v in nodes.items() if v["isObservable"]}

    # The sensor would start building as soon as the sources are observed, racing the UI launch: off for now.
    toggle_sensor(page, server, running=False)

    # 2. every asset of the definitions is a node of the (expanded) asset graph
    open_page(page, server, expanded_graph_path(GROUPS))
    labels = graph_labels(page)
    unmatched = [n for n in names if sum(label_matches(l, n) for l in labels) != 1]
    assert len(labels) == len(names) and not unmatched, f"graph labels {labels} vs assets {sorted(names)}"

    # 3. build everything from the UI
    open_page(page, server, "/asset-groups")
    open_materialize_menu(page)
    page.get_by_text(f"Observe all ({len(sources)})").click()
    observe = h.wait_until(lambda: [r for r in h.runs(server.gql) if r["status"] in h.FINISHED], PHASE_TIMEOUT,
                           "the observation run", every=2)
    assert [r["status"] for r in observe] == ["SUCCESS"], failure_report(server)
    pool = {n for n in materializable if nodes[n]["groupName"] == "pool"}
    backfill_ids = [launch_backfill_from_graph(page, server, "group:pool", nodes, pool),
                    launch_backfill_from_graph(page, server, "not group:pool", nodes, materializable - pool)]
    t_built = time.monotonic()

    assert not not_fresh(server, nodes), "something is not fresh after the UI build"
    built = h.materialization_counts(server.gql, nodes)
    assert set(built.values()) == {1}, f"each asset partition should be built exactly once: {built}"

    # progress lines ("X/Y unit (p%), rate, eta") reach the run's event log
    embed_run = next(r for r in h.runs(server.gql) if {"path": ["embeddings"]} in (r["assetSelection"] or []))
    progress = [m for m in h.run_logs(server.gql, embed_run["runId"]) if PROGRESS_LINE.search(m)]
    assert progress, "no progress line in the embeddings run's logs"

    # 6. screenshots: the whole graph, one asset's page, one embedded plot
    open_page(page, server, expanded_graph_path(GROUPS))
    graph_labels(page)
    page.wait_for_timeout(1500)  # let the layout settle
    page.screenshot(path=str(ARTIFACTS / "asset_graph.png"))
    check_png(ARTIFACTS / "asset_graph.png")
    check_asset_page(page, server, nodes[EDITED])
    check_png(ARTIFACTS / f"asset_{EDITED}.png")
    check_png(check_embedded_plot(page, server, "relational_model", "relational_loss_curve"))

    for backfill_id in backfill_ids:
        wait_backfill(server, backfill_id)

    # The sensor on a freshly built graph requests nothing; it goes off again while the manifest is edited, so
    # that the staleness check below sees the state before any rebuild.
    toggle_sensor(page, server, running=True)
    tick = next_sensor_tick(server, after=time.time())
    assert tick["requestedAssetMaterializationCount"] == 0 and not tick["runIds"], \
        f"the automation sensor requested work on an up-to-date graph: {tick}"
    toggle_sensor(page, server, running=False)

    # 4. edit the manifest, reload: only selected_subset (all partitions) is unsynced, for a new code version
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
    # Dagster 1.13.27's "Materialize unsynced" ignores stale partitions (#20463 fixed only missing ones; #22553),
    # which is why the rebuild below goes through the automation sensor.
    assert "All assets are up to date" in materialize_unsynced_dialog(page, server)

    # 5. rebuild: the automation sensor, switched on in the UI, runs the waves until everything is fresh
    toggle_sensor(page, server, running=True)
    h.wait_until(lambda: not runs_in_flight(server) and not not_fresh(server, nodes), PHASE_TIMEOUT,
                 "the sensor to rebuild what the edit made stale", every=5)
    reach = h.descendants(nodes, EDITED)
    assert reach == DOWNSTREAM, f"{EDITED} feeds {sorted(reach)}"
    after = h.materialization_counts(server.gql, nodes)
    new = {k: after[k] - built[k] for k in after if after[k] != built[k]}
    rebuilt_assets = {asset for asset, _ in new}
    assert rebuilt_assets <= {EDITED} | DOWNSTREAM, f"rebuilt outside the edit's reach: {sorted(new)}"
    assert all(new.get(k) == 1 for k in expected_stale), f"{EDITED} partitions rebuilt {new}"
    assert rebuilt_assets == {EDITED} | DOWNSTREAM, f"changed data did not propagate: {sorted(new)}"
    assert not [r for r in h.runs(server.gql) if r["status"] == "FAILURE"], failure_report(server)

    # 7. loopback only; the fixture then stops the server and checks that no process of ours survives
    check_loopback_only(server)
    page.close()
    print(f"UI build {t_built - started:.0f}s, whole scenario {time.monotonic() - started:.0f}s")
