"""Drive `dagster dev` from tests: start it in its own process group, talk GraphQL, stop it and prove it is gone.

No dagster import here: the test only sees what a user of the UI sees (HTTP, GraphQL, the browser).
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from gmates_assets.local_instance import ui_instance_yaml

from . import procs
from .procs import cpu_seconds, process_stats, tree

REPO_ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# The run queue is polled every second instead of every 5 s: runs the sensor requests start sooner.
# What `gmates ui` gives a local home (gmates' consolidated event log, where `gmates sync` wrote the build, and
# warm run workers held by the daemon) + a fast run queue.
RUN_QUEUE_YAML = "run_queue:\n  dequeue_interval_seconds: 1\n"
LOCATION = "gmates"
REPOSITORY = "__repository__"
FINISHED = {"SUCCESS", "FAILURE", "CANCELED"}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _reset_signals() -> None:
    # Background jobs on these machines can inherit SIGINT/SIGTERM as ignored; dagster dev would then never stop.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)


# ------------------------------------------------------------------------------------------ the server
@dataclass
class DagsterDev:
    """`dagster dev` on 127.0.0.1:<port> with the given DAGSTER_HOME and GMATES_HOME, in its own process group.

    `env_extra`: more environment variables for dagster dev and everything it starts.
    """

    manifest: Path
    dagster_home: Path
    gmates_home: Path
    log_path: Path
    env_extra: dict = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    proc: Optional[subprocess.Popen] = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict:
        env = dict(os.environ)
        env.update(GMATES_MANIFEST=str(self.manifest), GMATES_HOME=str(self.gmates_home),
                   DAGSTER_HOME=str(self.dagster_home), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
                   DAGSTER_DISABLE_TELEMETRY="1", **self.env_extra)
        return env

    def start(self) -> DagsterDev:
        self.dagster_home.mkdir(parents=True, exist_ok=True)
        self.gmates_home.mkdir(parents=True, exist_ok=True)
        (self.dagster_home / "dagster.yaml").write_text(ui_instance_yaml() + RUN_QUEUE_YAML)
        exe = Path(sys.executable).parent / "dagster"  # the venv's, even when the venv is not activated
        cmd = [str(exe) if exe.is_file() else "dagster", "dev", "-w", str(REPO_ROOT / "workspace.yaml"),
               "-h", "127.0.0.1", "-p", str(self.port)]
        log = open(self.log_path, "ab")  # a restarted server appends
        self.proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=self.env(), stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=_reset_signals)
        log.close()
        return self

    def wait_ready(self, timeout: float = 180) -> dict:
        """Wait for /server_info and for the code location to be loaded; return the server info."""
        deadline = time.monotonic() + timeout
        info = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dagster dev exited with {self.proc.returncode}; log:\n{self.log_tail()}")
            try:
                if info is None:
                    with urllib.request.urlopen(f"{self.url}/server_info", timeout=5) as r:
                        info = json.loads(r.read())
                if location_loaded(self.gql):
                    return info
            except (urllib.error.URLError, ConnectionError, TimeoutError, GraphQLError):
                pass
            time.sleep(1)
        raise TimeoutError(f"dagster dev not ready after {timeout}s; log:\n{self.log_tail()}")

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except FileNotFoundError:
            return ""

    def gql(self, query: str, variables: Optional[dict] = None, timeout: float = 120) -> dict:
        return graphql(f"{self.url}/graphql", query, variables, timeout)

    def stop(self, timeout: float = 30) -> None:
        """SIGINT the process group (dagster dev shuts its children down), then TERM, then KILL what is left."""
        if self.proc is None:
            return
        pgid = self.proc.pid
        for sig, wait in ((signal.SIGINT, timeout), (signal.SIGTERM, 10), (signal.SIGKILL, 10)):
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and (self.proc.poll() is None or processes_in_group(pgid)):
                time.sleep(0.3)
            if self.proc.poll() is not None and not processes_in_group(pgid):
                break
        self.proc.wait(timeout=5)

    def our_processes(self) -> list[tuple[int, str]]:
        """Live processes whose environment names our DAGSTER_HOME (webserver, daemon, code servers, runs)."""
        return processes_with_env(f"DAGSTER_HOME={self.dagster_home}")


def processes_in_group(pgid: int) -> list[int]:
    return [pid for pid, fields in process_stats().items() if fields[0] != "Z" and int(fields[2]) == pgid]


def processes_with_env(needle: str) -> list[tuple[int, str]]:
    found, raw = [], needle.encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            state = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if raw in environ.split(b"\0") and state[state.rindex(")") + 2] != "Z":
            found.append((int(entry.name), cmdline.strip()))
    return found


def adopt_orphans() -> None:
    """Make this process the child subreaper (Linux prctl): processes orphaned below it (a daemon's children
    when the daemon stops first) stay in its tree, so tree_cpu_seconds still counts them."""
    import ctypes

    PR_SET_CHILD_SUBREAPER = 36
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def tree_cpu_seconds() -> float:
    """CPU seconds (user + system) of this process and everything it started: its live descendants with what
    they reaped, plus the children it reaped itself (dagster dev, chromium, the runs' processes). A process
    whose parent died before it (reparented to init) is not counted: dagster dev's processes do not do that."""
    import resource

    stats, me = process_stats(), os.getpid()
    own = resource.getrusage(resource.RUSAGE_SELF)
    reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (own.ru_utime + own.ru_stime + reaped.ru_utime + reaped.ru_stime
            + sum(cpu_seconds(stats[pid]) for pid in tree(me, stats) if pid != me))


# ------------------------------------------------------------------------------------------ sockets
def listening_addresses(port: int) -> list[str]:
    """Local addresses of LISTEN sockets on `port`, from /proc/net/tcp{,6} (as "ip" strings)."""
    out = []
    for table, width in (("/proc/net/tcp", 4), ("/proc/net/tcp6", 16)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            cols = line.split()
            addr_hex, port_hex = cols[1].split(":")
            if cols[3] == "0A" and int(port_hex, 16) == port:
                out.append(_proc_net_ip(addr_hex, width))
    return out


def _proc_net_ip(addr_hex: str, width: int) -> str:
    raw = bytes.fromhex(addr_hex)
    # /proc/net stores each 32-bit word in host (little-endian) order.
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    family = socket.AF_INET if width == 4 else socket.AF_INET6
    return socket.inet_ntop(family, words)


def non_loopback_ipv4() -> list[str]:
    """This machine's IPv4 addresses other than 127.0.0.0/8 (from /proc/net/fib_trie's local host routes)."""
    addrs, last = set(), None
    try:
        for line in Path("/proc/net/fib_trie").read_text().splitlines():
            line = line.strip()
            if line.startswith("|--"):
                last = line[3:].strip()
            elif "/32 host LOCAL" in line and last and not last.startswith("127."):
                addrs.add(last)
    except FileNotFoundError:
        pass
    return sorted(addrs)


def can_connect(host: str, port: int, timeout: float = 2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


# ------------------------------------------------------------------------------------------ GraphQL
class GraphQLError(RuntimeError):
    pass


def graphql(url: str, query: str, variables: Optional[dict] = None, timeout: float = 120) -> dict:
    body = json.dumps({"query": query, "variables": variables or {}}).encode()
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            payload = json.loads(r.read())
    except urllib.error.HTTPError as exc:
        raise GraphQLError(f"HTTP {exc.code}: {exc.read()[:2000]!r}") from exc
    if payload.get("errors"):
        raise GraphQLError(json.dumps(payload["errors"])[:2000])
    return payload["data"]


Gql = Callable[..., dict]


def location_loaded(gql: Gql) -> bool:
    data = gql("""{ workspaceOrError { __typename ... on Workspace { locationEntries {
                   name loadStatus locationOrLoadError { __typename ... on PythonError { message } } } } } }""")
    for entry in data["workspaceOrError"].get("locationEntries", []):
        if entry["name"] == LOCATION and entry["loadStatus"] == "LOADED":
            err = entry["locationOrLoadError"]
            if err and err["__typename"] == "PythonError":
                raise RuntimeError(f"code location {LOCATION} failed to load: {err['message']}")
            return True
    return False


ASSET_NODES = """{ assetNodes { assetKey { path } groupName description isMaterializable isObservable opVersion
  kinds isPartitioned partitionKeys dependedByKeys { path }
  metadataEntries { label ... on TextMetadataEntry { text } } } }"""


def asset_nodes(gql: Gql) -> dict[str, dict]:
    return {"/".join(n["assetKey"]["path"]): n for n in gql(ASSET_NODES)["assetNodes"]}


CAUSE_FIELDS = "reason category key { path } partitionKey dependency { path } dependencyPartitionKey"


def _per_asset(gql: Gql, nodes: dict[str, dict], fields_for: Callable[[dict], str]) -> dict[str, dict]:
    """One request, one aliased assetNodeOrError per asset; returns {asset: the requested fields}."""
    names = sorted(nodes)
    parts = [f'a{i}: assetNodeOrError(assetKey: {{path: {json.dumps(nodes[n]["assetKey"]["path"])}}}) '
             f"{{ __typename ... on AssetNode {{ {fields_for(nodes[n])} }} }}" for i, n in enumerate(names)]
    data = gql("{ " + "\n".join(parts) + " }")
    return {n: data[f"a{i}"] for i, n in enumerate(names)}


def _partitions(node: dict) -> list[Optional[str]]:
    return list(node["partitionKeys"]) if node["isPartitioned"] else [None]


def descendants(nodes: dict[str, dict], name: str) -> set[str]:
    seen, todo = set(), [name]
    while todo:
        for child in nodes[todo.pop()]["dependedByKeys"]:
            child_name = "/".join(child["path"])
            if child_name not in seen:
                seen.add(child_name)
                todo.append(child_name)
    return seen


def stale_status(gql: Gql, nodes: dict[str, dict]) -> dict[tuple[str, Optional[str]], tuple[str, list]]:
    """(asset, partition or None) -> (FRESH|STALE|MISSING, causes) for every materializable asset partition."""
    wanted = {n: v for n, v in nodes.items() if v["isMaterializable"]}

    def fields(node):
        if not node["isPartitioned"]:
            return f"staleStatus staleCauses {{ {CAUSE_FIELDS} }}"
        keys = json.dumps(node["partitionKeys"])
        return (f"staleStatusByPartition(partitions: {keys}) "
                f"staleCausesByPartition(partitions: {keys}) {{ {CAUSE_FIELDS} }}")

    out = {}
    for name, data in _per_asset(gql, wanted, fields).items():
        node = wanted[name]
        if node["isPartitioned"]:
            for pk, status, causes in zip(node["partitionKeys"], data["staleStatusByPartition"],
                                          data["staleCausesByPartition"]):
                out[(name, pk)] = (status, causes)
        else:
            out[(name, None)] = (data["staleStatus"], data["staleCauses"])
    return out


def materialization_counts(gql: Gql, nodes: dict[str, dict]) -> dict[tuple[str, Optional[str]], int]:
    """(asset, partition or None) -> number of materialization events recorded."""
    wanted = {n: v for n, v in nodes.items() if v["isMaterializable"]}
    data = _per_asset(gql, wanted, lambda _n: "assetMaterializations(limit: 1000) { partition runId }")
    out = {}
    for name, fields in data.items():
        events = fields.get("assetMaterializations") or []
        for pk in _partitions(wanted[name]):
            out[(name, pk)] = sum(1 for e in events if e["partition"] == pk)
    return out


RUN_FIELDS = "runId status tags { key value } assetSelection { path } creationTime startTime endTime"


def runs(gql: Gql, limit: int = 500) -> list[dict]:
    data = gql(f"""{{ runsOrError(limit: {limit}) {{ __typename ... on Runs {{ results {{ {RUN_FIELDS} }} }} }} }}""")
    return data["runsOrError"]["results"]


def backfills(gql: Gql) -> list[dict]:
    data = gql("""{ partitionBackfillsOrError(limit: 100) { ... on PartitionBackfills { results {
                  id status isAssetBackfill numPartitions } } } }""")
    return data["partitionBackfillsOrError"]["results"]


def run_logs(gql: Gql, run_id: str) -> list[str]:
    messages, cursor = [], None
    while True:
        data = gql("""query($id: ID!, $after: String) { logsForRun(runId: $id, afterCursor: $after) {
                      __typename ... on EventConnection { events { __typename ... on MessageEvent { message } }
                      cursor hasMore } } }""", {"id": run_id, "after": cursor})
        conn = data["logsForRun"]
        messages += [e["message"] for e in conn["events"] if "message" in e]
        cursor = conn["cursor"]
        if not conn["hasMore"]:
            return messages


def set_sensor(gql: Gql, name: str, running: bool) -> str:
    """Start or stop a sensor (what the toggle in the UI does); returns its new status."""
    selector = {"repositoryLocationName": LOCATION, "repositoryName": REPOSITORY, "sensorName": name}
    data = gql("""query($s: SensorSelector!) { sensorOrError(sensorSelector: $s) { ... on Sensor {
                  sensorState { id selectorId status } } } }""", {"s": selector})
    state = data["sensorOrError"]["sensorState"]
    if running:
        res = gql("""mutation($s: SensorSelector!) { startSensor(sensorSelector: $s) { __typename
                     ... on Sensor { sensorState { status } } ... on PythonError { message } } }""", {"s": selector})
        return res["startSensor"]["sensorState"]["status"]
    res = gql("""mutation($id: String!, $sid: String!) { stopSensor(id: $id, jobSelectorId: $sid) { __typename
                 ... on StopSensorMutationResult { instigationState { status } } ... on PythonError { message } } }""",
              {"id": state["id"], "sid": state["selectorId"]})
    return res["stopSensor"]["instigationState"]["status"]


def sensor_status(gql: Gql, name: str) -> str:
    selector = {"repositoryLocationName": LOCATION, "repositoryName": REPOSITORY, "sensorName": name}
    data = gql("""query($s: SensorSelector!) { sensorOrError(sensorSelector: $s) { ... on Sensor {
                  sensorState { status } } } }""", {"s": selector})
    return data["sensorOrError"]["sensorState"]["status"]


def sensor_ticks(gql: Gql, name: str, limit: int = 10) -> list[dict]:
    """Latest ticks first: status, timestamp (epoch s), runIds, requestedAssetMaterializationCount, skipReason."""
    selector = {"repositoryLocationName": LOCATION, "repositoryName": REPOSITORY, "sensorName": name}
    data = gql("""query($s: SensorSelector!, $n: Int) { sensorOrError(sensorSelector: $s) { ... on Sensor {
                  sensorState { ticks(limit: $n) { status timestamp runIds requestedAssetMaterializationCount
                  skipReason } } } } }""", {"s": selector, "n": limit})
    return data["sensorOrError"]["sensorState"]["ticks"]


def check_results(gql: Gql, nodes: dict[str, dict], check: str) -> dict[str, Optional[dict]]:
    """asset -> the latest execution of its check `check` against its latest materialization ({status, success,
    description}), None when there is none."""
    wanted = {n: v for n, v in nodes.items() if v["isMaterializable"]}
    fields = ("assetChecksOrError { __typename ... on AssetChecks { checks { name executionForLatestMaterialization "
              "{ status evaluation { success description } } } } }")
    out = {}
    for name, data in _per_asset(gql, wanted, lambda _n: fields).items():
        checks = {c["name"]: c for c in data["assetChecksOrError"].get("checks", [])}
        execution = (checks.get(check) or {}).get("executionForLatestMaterialization")
        out[name] = None if execution is None else {
            "status": execution["status"], "success": (execution["evaluation"] or {}).get("success"),
            "description": (execution["evaluation"] or {}).get("description") or ""}
    return out


def wait_until(predicate: Callable[[], object], timeout: float, what: str, every: float = 2.0):
    return procs.wait_until(predicate, what, timeout, every)
