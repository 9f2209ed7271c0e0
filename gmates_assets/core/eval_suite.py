"""The tasks an eval section scores: a task-config suite (e.g. DCLM Core) and the manifest's own tasks.

A suite file (data_manifests/dclm_core_tasks.yaml) fixes a task list, its prompt settings and random
baselines per version; the manifest points it at a local copy of the eval bundle and picks the baseline
version. Its core is labelled with the suite's name and that version ("DCLM Core v2"); without a suite the
core is the mean over the manifest's tasks and says so.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Optional

from .eval_specs import CoreSpec, TaskSpec
from .manifest import EvalSection, ManifestError, TaskSource, TaskSuiteFile, read_yaml_text, validate_yaml


def load_suite(path: str | Path) -> TaskSuiteFile:
    path = Path(path)
    if not path.exists():
        raise ManifestError(f"eval.suite.config: task-config file {path} not found")
    return validate_yaml(TaskSuiteFile, read_yaml_text(path, "task-config file"), str(path), "task-config file")


def suite_tasks(section: EvalSection, resolve: Callable[[str], Path]) -> tuple[list[TaskSource], Optional[CoreSpec]]:
    """The suite's tasks as plain tasks (absolute paths under the bundle, the chosen baselines) and its core."""
    suite = section.suite
    if suite is None:
        return [], None
    config = load_suite(resolve(suite.config))
    if suite.baselines not in config.baselines:
        raise ManifestError(f"eval.suite.baselines: {suite.baselines!r} is not one of {config.baselines} "
                            f"given by {suite.config}")
    bundle = resolve(suite.bundle)
    if not bundle.is_dir():
        raise ManifestError(f"eval.suite.bundle: folder {bundle} not found; point it at your local copy of the "
                            f"eval bundle (the folder that holds {config.tasks[0].path})")
    tasks = []
    for task in config.tasks:
        path = bundle / str(task.path)
        if not path.is_file():
            raise ManifestError(f"eval.suite: task {task.name!r} of {suite.config}: {path} not found in the bundle")
        fields = task.model_dump(exclude={"random_baseline", "path", "max_items"})
        tasks.append(TaskSource(**fields, path=str(path.resolve()), max_items=suite.max_items,
                                random_baseline=task.random_baseline[suite.baselines]))
    label = f"{config.name} {suite.baselines}"
    if suite.max_items:
        label += f" on the first {suite.max_items} items per task (not comparable with published {config.name})"
    return tasks, CoreSpec(label, tuple(t.name for t in tasks))


def all_tasks(section: EvalSection, resolve: Callable[[str], Path]) -> tuple[list[TaskSource], Optional[CoreSpec]]:
    """Suite tasks, then the manifest's tasks; names must be unique across both."""
    tasks, core = suite_tasks(section, resolve)
    clash = sorted({t.name for t in tasks} & {t.name for t in section.tasks})
    if clash:
        raise ManifestError(f"eval.tasks: {clash} repeat task names of the suite {section.suite.config}")
    return tasks + list(section.tasks), core


def task_spec(task: TaskSource, path: str | Path, seed: Optional[int] = None) -> TaskSpec:
    """The evaluation spec of a task; `seed` (eval.seed) replaces its fewshot_random_seed when set."""
    return TaskSpec(name=task.name, path=str(path), kind=task.kind, shots=task.shots,
                    random_baseline=task.random_baseline, length_normalize=task.length_normalize,
                    max_items=task.max_items, continuation_delimiter=task.continuation_delimiter,
                    example_delimiter=task.example_delimiter, prompt_string=task.prompt_string,
                    fewshot_random_seed=task.fewshot_random_seed if seed is None else seed,
                    has_categories=task.has_categories)
