"""The shipped DCLM Core task-config file and how a manifest points it at a local eval bundle."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from gmates_assets.core.eval_suite import all_tasks, load_suite, task_spec
from gmates_assets.core.evaluation import centered_accuracy
from gmates_assets.core.manifest import EvalSection, ManifestError

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "data_manifests" / "dclm_core_tasks.yaml"
# DCLM's low_variance_datasets (eval/additional_aggregation.json), in its order
CORE_22 = ["hellaswag_zeroshot", "jeopardy", "bigbench_qa_wikidata", "arc_easy", "arc_challenge", "copa",
           "commonsense_qa", "piqa", "openbook_qa", "lambada_openai", "hellaswag", "winograd", "winogrande",
           "bigbench_dyck_languages", "agi_eval_lsat_ar", "bigbench_cs_algorithms", "bigbench_operators",
           "bigbench_repeat_copy_logic", "squad", "coqa", "boolq", "bigbench_language_identification"]


def test_shipped_dclm_core_config():
    suite = load_suite(CONFIG)
    tasks = {t.name: t for t in suite.tasks}
    assert list(tasks) == CORE_22 and suite.baselines == ["v1", "v2"]
    changed = {n: (t.random_baseline["v1"], t.random_baseline["v2"]) for n, t in tasks.items()
               if t.random_baseline["v1"] != t.random_baseline["v2"]}
    assert changed == {"commonsense_qa": (0.2, 0.403), "agi_eval_lsat_ar": (0.2, 0.25),
                       "bigbench_language_identification": (0.091, 0.25)}
    assert tasks["boolq"].random_baseline["v2"] == 0.62
    answer = {n for n, t in tasks.items() if t.continuation_delimiter == "\nAnswer: "}
    assert answer == {"jeopardy", "arc_easy", "arc_challenge", "piqa", "boolq"}
    assert [n for n, t in tasks.items() if t.has_categories] == ["jeopardy"]
    assert {t.example_delimiter for t in suite.tasks} == {"\n"} and {t.fewshot_random_seed for t in suite.tasks} == {1234}
    shots = {n: t.shots for n, t in tasks.items()}
    assert shots["agi_eval_lsat_ar"] == 3 and shots["hellaswag_zeroshot"] == 0 and shots["hellaswag"] == 10
    assert sum(s == 0 for s in shots.values()) == 7
    # the version matters: commonsense_qa at 50% accuracy
    assert centered_accuracy(0.5, 0.2) == pytest.approx(0.375)
    assert centered_accuracy(0.5, 0.403) == pytest.approx(0.1625, abs=1e-4)


def _bundle(root: Path) -> Path:
    for task in load_suite(CONFIG).tasks:
        path = root / "bundle" / task.path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"context": "a", "continuation": "b"}) + "\n")
    return root / "bundle"


def test_suite_points_at_a_local_bundle_with_a_labelled_core(tmp_path):
    bundle = _bundle(tmp_path)
    (tmp_path / "dclm_core_tasks.yaml").write_text(CONFIG.read_text())
    resolve = lambda p: tmp_path / p  # noqa: E731 (paths relative to the manifest's folder)
    section = EvalSection.model_validate({"suite": {"config": "dclm_core_tasks.yaml", "bundle": "bundle"},
                                          "tasks": [{"name": "extra", "kind": "schema", "path": "x.jsonl"}]})
    tasks, core = all_tasks(section, resolve)
    assert [t.name for t in tasks] == CORE_22 + ["extra"]
    assert core.label == "DCLM Core v2" and list(core.tasks) == CORE_22  # the extra task is not in Core
    by_name = {t.name: t for t in tasks}
    assert by_name["commonsense_qa"].random_baseline == 0.403
    assert Path(by_name["piqa"].path) == (bundle / "commonsense_reasoning" / "piqa.jsonl").resolve()

    v1 = EvalSection.model_validate({"suite": {"config": "dclm_core_tasks.yaml", "bundle": "bundle",
                                               "baselines": "v1", "max_items": 50}})
    tasks, core = all_tasks(v1, resolve)
    assert {t.name: t.random_baseline for t in tasks}["commonsense_qa"] == 0.2
    assert core.label == "DCLM Core v1 on the first 50 items per task (not comparable with published DCLM Core)"
    assert {t.max_items for t in tasks} == {50}

    spec = task_spec(by_name["jeopardy"], by_name["jeopardy"].path, seed=None)
    assert (spec.fewshot_random_seed, spec.continuation_delimiter, spec.has_categories) == (1234, "\nAnswer: ", True)
    assert task_spec(by_name["jeopardy"], "p", seed=7).fewshot_random_seed == 7  # eval.seed overrides


@pytest.mark.parametrize("suite,message", [
    ({"bundle": "nowhere"}, "eval.suite.bundle: folder .*nowhere not found"),
    ({"baselines": "v3"}, r"eval.suite.baselines: 'v3' is not one of \['v1', 'v2'\]"),
    ({"config": "missing.yaml"}, "task-config file .*missing.yaml not found"),
])
def test_suite_errors_name_the_field(tmp_path, suite, message):
    _bundle(tmp_path)
    (tmp_path / "dclm_core_tasks.yaml").write_text(CONFIG.read_text())
    section = EvalSection.model_validate({"suite": {"config": "dclm_core_tasks.yaml", "bundle": "bundle", **suite}})
    with pytest.raises(ManifestError, match=message):
        all_tasks(section, lambda p: tmp_path / p)


def test_suite_file_errors_and_missing_task_files(tmp_path):
    bundle = _bundle(tmp_path)
    (tmp_path / "c.yaml").write_text(CONFIG.read_text().replace("random_baseline: {v1: 0.0, v2: 0.0}}",
                                                                "random_baseline: {v1: 0.0}}", 1))
    section = EvalSection.model_validate({"suite": {"config": "c.yaml", "bundle": "bundle"}})
    with pytest.raises(ManifestError, match=r"(?s)invalid task-config file.*'jeopardy' needs a path and random_baseline"):
        all_tasks(section, lambda p: tmp_path / p)
    (tmp_path / "c.yaml").write_text(CONFIG.read_text())
    (bundle / "reading_comprehension" / "coqa.jsonl").unlink()
    with pytest.raises(ManifestError, match="task 'coqa' of c.yaml: .*coqa.jsonl not found in the bundle"):
        all_tasks(section, lambda p: tmp_path / p)
    clash = EvalSection.model_validate({"suite": {"config": "c.yaml", "bundle": "bundle"},
                                        "tasks": [{"name": "copa", "kind": "schema"}]})
    (bundle / "reading_comprehension" / "coqa.jsonl").write_text("{}\n")
    with pytest.raises(ManifestError, match=r"eval.tasks: \['copa'\] repeat task names of the suite"):
        all_tasks(clash, lambda p: tmp_path / p)
