"""What an evaluation task and a core score are (no torch: listing the tasks, e.g. to observe them, stays cheap).

`gmates_assets.core.evaluation` re-exports these; `eval_suite` reads them without importing torch.
"""
from __future__ import annotations

from dataclasses import dataclass

from .icl import TASK_KINDS, PromptFormat

NORMALIZATIONS = ("token", "char", "none")


@dataclass(frozen=True)
class TaskSpec:
    name: str
    path: str
    kind: str
    shots: int = 0
    random_baseline: float = 0.0  # fraction in [0, 1), e.g. 0.25 for 4-way multiple choice
    length_normalize: str | bool = "token"  # "token" (mean per token), "char", "none"; True/False = token/none
    max_items: int | None = None  # evaluate only the first max_items items (few-shot still draws from all)
    continuation_delimiter: str = " "
    example_delimiter: str = "\n"
    prompt_string: str = ""
    fewshot_random_seed: int = 1234
    has_categories: bool = False

    def __post_init__(self) -> None:
        if self.kind not in TASK_KINDS:
            raise ValueError(f"task {self.name!r}: kind must be one of {TASK_KINDS}, got {self.kind!r}")
        if self.shots < 0:
            raise ValueError(f"task {self.name!r}: shots must be >= 0, got {self.shots}")
        if not 0.0 <= self.random_baseline < 1.0:
            raise ValueError(f"task {self.name!r}: random_baseline must be a fraction in [0, 1), "
                             f"got {self.random_baseline}")
        if self.max_items is not None and self.max_items < 1:
            raise ValueError(f"task {self.name!r}: max_items must be >= 1, got {self.max_items}")
        _ = self.normalization  # validates length_normalize

    @property
    def normalization(self) -> str:
        mode = {True: "token", False: "none"}.get(self.length_normalize, self.length_normalize)  # type: ignore[arg-type]
        if mode not in NORMALIZATIONS:
            raise ValueError(f"task {self.name!r}: length_normalize must be one of {NORMALIZATIONS} or a bool, "
                             f"got {self.length_normalize!r}")
        return mode

    @property
    def prompt_format(self) -> PromptFormat:
        return PromptFormat(self.shots, self.continuation_delimiter, self.example_delimiter, self.prompt_string,
                            self.fewshot_random_seed)


@dataclass(frozen=True)
class CoreSpec:
    """Which tasks a core score averages and how it is labelled (e.g. 'DCLM Core v2')."""

    label: str
    tasks: tuple[str, ...]
