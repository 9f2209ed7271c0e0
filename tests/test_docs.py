"""docs/method.md stays true to the code: every `§` cited in the repository resolves to a place in it, the
paper-step table names assets and core functions that exist, and every option that restores original
behaviour is a valid manifest setting."""
from __future__ import annotations

import importlib
import re

import pytest
import yaml

from gmates_assets.core.manifest import parse_manifest

from .pipeline import ALL_ASSETS, ROOT, TESTS_MANIFEST

METHOD = ROOT / "docs" / "method.md"
SCANNED = ["gmates_assets", "tests", "benchmarks", "data_manifests", "docs", "README.md", "definitions.py"]
CITATION = re.compile(r"§(\d+)(?:\.(\d+))?(?:,? (item \d+|A\d+|[a-z])\b)?")
SOURCES = {"pool_source", "reference_set", "eval_tasks"}


def method_text() -> str:
    return METHOD.read_text(encoding="utf-8")


def section(number: str) -> str:
    """The text of `## N.` or `### N.M` up to the next heading of the same or a higher level."""
    level = "##" if "." not in number else "###"
    match = re.search(rf"^{level} {re.escape(number)}[. ].*?(?=^##? |^{level} |\Z)", method_text(), re.M | re.S)
    assert match, f"docs/method.md has no section {number}"
    return match.group(0)


def resolves(major: str, minor: str | None, detail: str | None) -> bool:
    try:
        text = section(f"{major}.{minor}" if minor else major)
    except AssertionError:
        return False
    if detail is None:
        return True
    if detail.startswith("item "):
        return re.search(rf"^{detail.split()[1]}\. ", text, re.M) is not None
    if detail.startswith("A"):
        return re.search(rf"^\| {detail}[ –]|–{detail[1:]} \|", text, re.M) is not None
    return f"({detail})" in text


def cited_files():
    for name in SCANNED:
        path = ROOT / name
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.suffix in (".py", ".md", ".yaml"))
        yield from (f for f in files if f != METHOD)


def test_every_section_citation_in_the_repository_resolves():
    unresolved, count = [], 0
    for path in cited_files():
        for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for match in CITATION.finditer(line):
                count += 1
                if not resolves(*match.groups()):
                    unresolved.append(f"{path.relative_to(ROOT)}:{line_no}: {match.group(0)}")
    assert count > 30, f"only {count} citations found: is the scan looking in the right places?"
    assert not unresolved, "citations without a place in docs/method.md:\n" + "\n".join(unresolved)


def test_sections_the_code_relies_on_exist():
    for number in ["1", "2", "3", "4", "5", "6", "7", "8"] + [f"3.{i}" for i in range(1, 10)] + \
                  [f"4.{i}" for i in range(1, 12)]:
        section(number)
    assert all(f"({letter})" in section("7") for letter in "abcdef")
    assert "Invariants" in section("8")


def table_rows(number: str, first_cell: str) -> list[list[str]]:
    rows = [line.split("|")[1:-1] for line in section(number).splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in row] for row in rows if re.match(first_cell, row[0].strip())]


def test_paper_step_table_names_real_assets_and_core_functions():
    rows = table_rows("2", r"A\d")
    assert [r[0] for r in rows][:3] == ["A0", "A1", "A2"] and rows[-1][0] == "A18"
    for _, _, assets, functions in rows:
        for asset in re.findall(r"`([a-z_]+)(?:\[\w+\])?`", assets):
            assert asset in ALL_ASSETS | SOURCES, f"§2 table: no asset {asset!r}"
        for module, name in re.findall(r"`([a-z_]+)\.([a-z_]+)`", functions):
            target = importlib.import_module(f"gmates_assets.core.{module}")
            assert hasattr(target, name), f"§2 table: gmates_assets.core.{module} has no {name}"


def deviation_rows() -> list[list[str]]:
    table = section("4").split("### Deviations and the options that restore the original", 1)[1]
    return [line.split("|")[1:-1] for line in table.splitlines() if line.startswith("| ")][1:]  # no header


def restoring_settings() -> list[str]:
    return sorted({s for row in deviation_rows() for s in re.findall(r"`([a-z_]+\.[a-z_0-9.]+: [^`]+)`", row[2])})


def test_every_deviation_row_names_a_setting_or_says_none():
    rows = deviation_rows()
    assert len(rows) >= 12 and "Deviation" not in rows[0][0]
    assert all("`" in row[2] or row[2].strip().startswith("none") for row in rows), rows


@pytest.mark.parametrize("setting", restoring_settings())
def test_restoring_options_are_valid_manifest_settings(setting):
    dotted, value = setting.split(": ", 1)
    data = yaml.safe_load(TESTS_MANIFEST.read_text())
    node = data
    *parents, leaf = dotted.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = yaml.safe_load(value)
    manifest = parse_manifest(yaml.safe_dump(data), source=setting).manifest
    current = manifest
    for part in dotted.split("."):
        current = getattr(current, part)
    assert current == yaml.safe_load(value)
