"""Shared fixtures: offline hub, one torch thread, the tests-profile graph built once, its homes in the env."""
from __future__ import annotations

import os

# Tests never reach the Hugging Face hub; set before any test module imports transformers or datasets.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One torch thread here and in every process a test starts (syncs, UI, workers): the suite runs several tests per
# core, and torch's threads spin while they wait for a core that another test holds, which burns CPU for nothing.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402


@pytest.fixture(scope="module")
def one_thread():
    """torch on one thread for a module (exact, repeatable CPU numbers; no oversubscription on small machines)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def full_build(tmp_path_factory):
    """The tests profile built once by `sync` (what `gmates sync` runs); tests copy it before changing it.

    Under xdist it is built once for the whole run, by the first worker that asks (the others wait on a lock,
    instead of building it again beside it), and each worker gets its own copy of it."""
    from filelock import FileLock

    from .pipeline import Build

    if os.environ.get("PYTEST_XDIST_WORKER") is None:
        return _build_everything(tmp_path_factory.mktemp("full") / "b")
    shared = tmp_path_factory.getbasetemp().parent / "full-build"  # this run's folder, common to its workers
    with FileLock(f"{shared}.lock"):
        if not (shared / "complete").exists():
            _build_everything(shared / "b")
            (shared / "complete").touch()
    return Build(shared / "b").copy_to(tmp_path_factory.mktemp("full") / "b")


def _build_everything(root):
    from .pipeline import ALL_ASSETS, TESTS_MANIFEST, Build, assets_of

    build = Build.create(root, TESTS_MANIFEST.read_text())
    report = build.sync()
    assert assets_of(report.executed) == ALL_ASSETS
    return build


@pytest.fixture
def build_env(monkeypatch):
    """Point $DAGSTER_HOME and $GMATES_HOME at a Build's homes for this test (what the CLI and UI read)."""
    def point_at(build) -> None:
        for name, value in build.env().items():
            monkeypatch.setenv(name, value)

    return point_at


def pytest_collection_modifyitems(config, items):
    """The multi-minute tests (marker `system`: the cluster, the UI in Chromium) first, so that under xdist they
    start at once on their own workers while the short tests fill the other workers and the cores these tests
    leave idle (they mostly wait on servers, ticks and queues)."""
    items.sort(key=lambda item: item.get_closest_marker("system") is None)  # stable: the rest keep their order


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """With GMATES_TEST_CPU_LOG=FILE, append each test's wall and CPU seconds (this process, and the children it
    waited for: servers, syncs, scripts) to FILE, tab-separated, for finding where the suite's CPU goes."""
    log = os.environ.get("GMATES_TEST_CPU_LOG")
    if not log:
        yield
        return
    import resource
    import time

    def cpu(who):
        usage = resource.getrusage(who)
        return usage.ru_utime + usage.ru_stime

    wall, own, children = time.monotonic(), cpu(resource.RUSAGE_SELF), cpu(resource.RUSAGE_CHILDREN)
    yield
    row = (item.nodeid, time.monotonic() - wall, cpu(resource.RUSAGE_SELF) - own,
           cpu(resource.RUSAGE_CHILDREN) - children)
    with open(log, "a") as out:
        out.write("\t".join([row[0]] + [f"{value:.1f}" for value in row[1:]]) + "\n")
