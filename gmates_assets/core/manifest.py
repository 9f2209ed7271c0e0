"""The build manifest: one YAML file that declares a whole dataset build.

Every asset declares which sections it reads; its Dagster code version folds in `fingerprint()` of exactly
those sections, so editing one value marks only the dependent assets stale. Fields marked `volatile` (commit
intervals, worker counts) do not change any result and are left out of fingerprints.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .hashing import stable_hash

VOLATILE = {"volatile": True}
_NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


DEFAULT_MANIFEST = "data_manifests/quickstart.yaml"  # what `make demo`, the CLI and the code location build by default


class ManifestError(ValueError):
    """A manifest that cannot be used; the message names the file, the dotted field and what was expected."""


class Section(BaseModel):
    # allow_inf_nan=False: `lr: .inf` or `.nan` anywhere would only fail later, as NaN weights or scores
    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=(), allow_inf_nan=False)


# --------------------------------------------------------------------------------------------- sources
class DemoSection(Section):
    """Parameters of the generated demo corpus (used by `format: demo` shards, reference and tasks)."""

    seed: int = Field(7, ge=0)
    n_docs: int = Field(3000, ge=10)
    n_shards: int = Field(2, ge=1)
    frac_target: float = Field(0.35, ge=0, le=1)
    frac_offdomain: float = Field(0.35, ge=0, le=1)
    frac_junk: float = Field(0.10, ge=0, le=1)
    frac_near_dup: float = Field(0.20, ge=0, le=1)
    near_dup_min_size: int = Field(3, ge=2)
    near_dup_max_size: int = Field(8, ge=2)
    near_dup_target_share: float = Field(0.75, ge=0, le=1)
    n_entities: int = Field(48, ge=1)
    n_reference: int = Field(48, ge=4)
    n_heldout_reference: int = Field(48, ge=4)
    n_eval: int = Field(48, ge=4, description="items per eval task")
    n_heldout_text: int = Field(100, ge=4)


class ShardSource(Section):
    """One pool shard: a partition of `documents`, `tokenized_pool`, `embeddings` and `influence_scores`."""

    name: str = Field(pattern=_NAME_RE)
    format: Literal["jsonl", "parquet", "text", "hf", "demo"]
    paths: list[str] = Field(default_factory=list, description="files or globs, relative to the manifest")
    text_field: str = "text"
    text_mode: Literal["line", "file"] = "line"
    sha256: Optional[dict[str, str]] = None
    # Hugging Face datasets
    dataset: Optional[str] = None
    config: Optional[str] = None
    split: str = "train"
    revision: Optional[str] = None
    data_files: Optional[list[str]] = Field(None, description="for builder datasets such as 'json'")
    streaming: bool = False
    limit: Optional[int] = Field(None, ge=1, description="read only the first N records of the shard (any format)")
    trust_remote_code: bool = False
    # demo
    demo_shard: int = Field(0, ge=0)
    # a single huge record (a 50 MB line) must not blow up tokenization and embedding downstream
    max_chars: Optional[int] = Field(1_000_000, ge=1, description="documents longer than this are truncated "
                                     "or rejected (long_documents); null = no cap")
    long_documents: Literal["truncate", "reject"] = Field(
        "truncate", description="reject = a bad record (an error, or skipped under on_bad_record: skip)")

    @model_validator(mode="after")
    def _format_fields(self) -> ShardSource:
        if self.format in ("jsonl", "parquet", "text") and not self.paths:
            raise ValueError(f"format '{self.format}' needs at least one entry in paths")
        if self.format == "hf" and not self.dataset:
            raise ValueError("format 'hf' needs dataset (a hub name or a local dataset folder)")
        return self


class TextSetSource(Section):
    """A jsonl file of examples (reference set, held-out text) or the demo generator's."""

    format: Literal["jsonl", "demo"] = "demo"
    path: Optional[str] = None
    sha256: Optional[str] = None
    prompt_field: str = "prompt"
    answer_field: str = "answer"
    text_field: str = "text"
    max_examples: Optional[int] = Field(None, ge=1)

    @model_validator(mode="after")
    def _path_for_jsonl(self) -> TextSetSource:
        if self.format == "jsonl" and not self.path:
            raise ValueError("format 'jsonl' needs path")
        return self


class ReferenceSource(TextSetSource):
    """A prompt/answer set whose examples must fit a model window (probe.seq_len, pretrain.seq_len)."""

    too_long: Literal["truncate_prompt", "error"] = Field(
        "truncate_prompt", description="an example over the window: cut its prompt from the left (the answer is "
        "always kept whole), or fail naming it")


class SourcesSection(Section):
    on_bad_record: Literal["error", "skip"] = "error"
    shards: list[ShardSource] = Field(min_length=1)
    reference: ReferenceSource = ReferenceSource()
    heldout_reference: ReferenceSource = ReferenceSource()

    @field_validator("shards")
    @classmethod
    def _unique_names(cls, shards: list[ShardSource]) -> list[ShardSource]:
        names = [s.name for s in shards]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"shard names must be unique, repeated: {dupes}")
        return shards


# ------------------------------------------------------------------------------------- tokens, vectors
MAX_VOCAB_SIZE = 1 << 20  # 1,048,576: four times the largest vocabularies in use (docs/bad_inputs.md)


class TokenizerSection(Section):
    kind: Literal["train_bpe", "pretrained"] = "train_bpe"
    name: Optional[str] = Field(None, description="hub name or local folder (kind: pretrained)")
    revision: Optional[str] = None
    # The largest vocabularies in use are ~256k (Gemma); 1e9 made the Rust BPE trainer abort mid-build.
    vocab_size: int = Field(2048, ge=260, le=MAX_VOCAB_SIZE)
    train_docs: int = Field(5000, ge=10, description="kind train_bpe: size of the stable pool sample it trains on")
    max_tokens: int = Field(128, ge=8)
    add_eos: bool = True
    trust_remote_code: bool = False
    batch_size: int = Field(1000, ge=1, json_schema_extra=VOLATILE)

    @model_validator(mode="after")
    def _name_for_pretrained(self) -> TokenizerSection:
        if self.kind == "pretrained" and not self.name:
            raise ValueError("kind 'pretrained' needs name")
        return self


BUILTIN_ENCODER = "builtin:all-MiniLM-L6-v2"


class EncoderSection(Section):
    model: str = BUILTIN_ENCODER
    revision: Optional[str] = None
    max_length: int = Field(256, ge=8)
    chunk_size: int = Field(128, ge=8)
    pooling: Literal["mean", "cls"] = "mean"
    cls_rule: Literal["every", "paper"] = Field(
        "every", description="every chunk framed by CLS/SEP, or only the first (paper)")
    padding_chunks: Literal["skip", "include"] = "skip"
    batch_size: int = Field(64, ge=1)
    trust_remote_code: bool = False
    commit_every_docs: int = Field(512, ge=1, json_schema_extra=VOLATILE)

    @model_validator(mode="after")
    def _chunks_divide(self) -> EncoderSection:
        if self.max_length % self.chunk_size:
            raise ValueError(f"max_length ({self.max_length}) must be a multiple of chunk_size ({self.chunk_size})")
        return self


# ---------------------------------------------------------------------------------------- language models
class LMArchitectureSpec(Section):
    family: Literal["llama", "gpt_neox"] = "llama"
    hidden_size: int = Field(128, ge=8)
    num_layers: int = Field(2, ge=1)
    num_heads: int = Field(4, ge=1)
    intermediate_size: int = Field(512, ge=8)
    max_seq_len: int = Field(128, ge=8)

    @model_validator(mode="after")
    def _heads_divide(self) -> LMArchitectureSpec:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size ({self.hidden_size}) must be divisible by num_heads ({self.num_heads})")
        return self


class OptimSpec(Section):
    lr: float = Field(3e-3, gt=0)
    min_lr: float = Field(3e-5, ge=0)
    warmup_steps: int = Field(30, ge=0)
    weight_decay: float = Field(0.033, ge=0)
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = Field(1e-8, gt=0)
    grad_clip: float = Field(1.0, gt=0)
    z_loss: float = Field(1e-4, ge=0)
    schedule: Literal["cosine", "constant"] = "cosine"


def _check_window(section: str, seq_len: int, model: LMArchitectureSpec) -> None:
    """Training sequences must fit the model's position window (else it fails mid-training, unnamed)."""
    if seq_len > model.max_seq_len:
        raise ValueError(f"{section}.seq_len ({seq_len}) is larger than {section}.model.max_seq_len "
                         f"({model.max_seq_len}); lower {section}.seq_len or raise {section}.model.max_seq_len")


class ProbeSection(Section):
    checkpoint: Optional[str] = Field(None, description="a user-supplied checkpoint folder instead of warm-up")
    model: LMArchitectureSpec = LMArchitectureSpec()
    optim: OptimSpec = OptimSpec()
    total_steps: int = Field(300, ge=1, description="length of the warm-up schedule (stage 1)")
    save_step: int = Field(150, ge=1, description="the probe checkpoint is taken here (S = 2)")
    batch_size: int = Field(16, ge=1)
    seq_len: int = Field(128, ge=8)
    sample_docs: Optional[int] = Field(None, ge=1, description="warm-up on a stable sample of this many pool "
                                       "documents; all if unset")
    pool: Literal["sample", "frozen"] = Field(
        "sample", description="frozen: keep the last built probe pool and warm-up documents when the pool grows "
        "(new documents are scored but never probed)")
    seed: int = 0
    checkpoint_every: int = Field(50, ge=1, json_schema_extra=VOLATILE)

    @model_validator(mode="after")
    def _save_within_schedule(self) -> ProbeSection:
        if self.save_step > self.total_steps:
            raise ValueError(f"save_step ({self.save_step}) must be <= total_steps ({self.total_steps})")
        _check_window("probe", self.seq_len, self.model)
        return self


class OracleSection(Section):
    seeds: list[int] = Field(default_factory=lambda: [0, 1], min_length=1)
    rollouts: int = Field(128, ge=1, description="random rollouts per seed")
    rollout_length: int = Field(5, ge=1)
    pool_size: int = Field(1000, ge=2, description="documents in the probe pool")
    pool_seed: int = 0
    lr: Union[Literal["checkpoint"], float] = "checkpoint"
    reference_batch_size: int = Field(64, ge=1)
    precision: Literal["fp32", "bf16"] = Field(
        "fp32", description="bf16: autocast for the probing steps and reference losses (the official default)")
    commit_every_rollouts: int = Field(16, ge=1, json_schema_extra=VOLATILE)

    @field_validator("seeds")
    @classmethod
    def _unique_seeds(cls, seeds: list[int]) -> list[int]:
        if len(set(seeds)) != len(seeds):
            raise ValueError("seeds must be unique")
        return seeds


class RelationalSection(Section):
    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=(), populate_by_name=True)
    mode: Literal["adapter", "finetune"] = "adapter"
    lr: float = Field(1e-3, gt=0)
    epochs: int = Field(40, ge=1)
    rollouts_per_step: int = Field(16, ge=1)
    heldout_fraction: float = Field(0.15, gt=0, lt=1)
    split_seed: int = 1234
    weight_decay: float = Field(0.01, ge=0)
    warmup_steps: int = Field(20, ge=0)
    schedule: Literal["linear", "cosine"] = "linear"
    dropout: float = Field(0.1, ge=0, lt=1)
    eval_every: int = Field(10, ge=1)
    label_stats: Literal["train", "all"] = "train"
    label_conversion: Literal["first_difference", "official_inplace"] = Field(
        "first_difference", description="cumulative -> marginal labels: first differences, or the official "
                                        "code's in-place loop (alternating sums; [1,3,6,10] -> [1,2,4,6])")
    seed: int = 0
    from_: Optional[str] = Field(
        None, alias="from", description="a trained relational_model (its artifact folder, relative to the manifest, "
        "or store:<content hash> in $GMATES_HOME): score the pool with it, without probing, oracles or training")


class BootstrapSection(Section):
    enabled: bool = Field(True, description="false = the no-bootstrap ablation (DIM-init is final)")
    beam_k: int = Field(3, ge=1)
    rollouts_per_direction: int = Field(100, ge=1)
    step0: Literal["predicted", "reference-quirk"] = "predicted"


class ClusteringSection(Section):
    k: int = Field(16, ge=1)
    niter: int = Field(25, ge=1)
    seed: int = 1234
    max_points_per_centroid: int = Field(256, ge=1)
    space: Literal["influence", "semantic"] = "influence"
    subsample: Literal["gmates", "faiss"] = Field(
        "gmates", description="who draws the k-means training subsample when n > k * max_points_per_centroid: "
                              "gmates (seeded, reads only those rows) or faiss itself (the official code)")
    member_order: Literal["float64", "float32"] = Field(
        "float64", description="precision of the 1 - IP member sort; float32 as the official code (more ties, "
                               "broken by document index)")


SELECTION_METHODS = ("group_mates", "mates", "random", "no_relation", "no_clustering", "semantic_clusters")


class SelectionSection(Section):
    ratio: float = Field(0.5, gt=0, le=1)
    methods: list[Literal[SELECTION_METHODS]] = Field(  # type: ignore[valid-type]
        default_factory=lambda: ["group_mates", "mates", "random"], min_length=1
    )
    relation_params: Literal["learned", "fixed"] = Field(
        "learned", description="fixed = tau = alpha = 1.0 as hard-coded in the original code"
    )
    budget_rounding: Literal["exact", "floor"] = "exact"
    mates_gumbel: bool = False
    mates_tau: float = Field(0.5, gt=0)
    seed: int = Field(0, description="affects only `random` (which documents) and `mates` with mates_gumbel "
                                     "(the Gumbel noise); group_mates, no_relation, no_clustering and "
                                     "semantic_clusters do not use it")
    global_greedy_max_docs: int = Field(20000, ge=1)
    workers: int = Field(2, ge=1, json_schema_extra=VOLATILE)

    @field_validator("methods")
    @classmethod
    def _unique_methods(cls, methods: list[str]) -> list[str]:
        if len(set(methods)) != len(methods):
            raise ValueError("methods must be unique")
        return methods


class PretrainSection(Section):
    init: Literal["probe", "scratch"] = "probe"
    model: LMArchitectureSpec = LMArchitectureSpec()
    optim: OptimSpec = OptimSpec()
    steps: int = Field(300, ge=1)
    batch_size: int = Field(16, ge=1, description="global batch (sequences per optimizer step), split equally "
                                                  "among the torchrun processes")
    seq_len: int = Field(128, ge=8)
    seed: int = 0
    precision: Literal["fp32", "bf16"] = Field(
        "fp32", description="bf16: autocast around forward and loss (open_lm amp_bfloat16, the official default); "
                            "weights, gradients and AdamW state stay float32")
    # backend and nproc_per_node enter the cache key: the world size changes the order of float reductions,
    # so the trained bytes differ (docs/deployment.md, GPUs and multi-GPU training).
    backend: Literal["in_process", "torchrun"] = Field(
        "in_process", description="in_process: train inside the step on one device; torchrun: launch "
                                  "nproc_per_node data-parallel processes (DDP) through Dagster Pipes")
    nproc_per_node: int = Field(1, ge=1, description="torchrun processes (one per GPU, or CPU processes with gloo)")
    checkpoint_every: int = Field(50, ge=1, json_schema_extra=VOLATILE)

    @model_validator(mode="after")
    def _world_divides_batch(self) -> PretrainSection:
        if self.backend == "in_process" and self.nproc_per_node != 1:
            raise ValueError(f"nproc_per_node {self.nproc_per_node} needs backend 'torchrun' (in_process trains in "
                             f"one process)")
        if self.batch_size % self.nproc_per_node:
            raise ValueError(f"batch_size ({self.batch_size}) must be divisible by nproc_per_node "
                             f"({self.nproc_per_node}): every process takes an equal slice of each global batch")
        _check_window("pretrain", self.seq_len, self.model)
        return self


class TaskSource(Section):
    """One eval task; the prompt fields and their defaults are llm-foundry's (docs/evaluation.md)."""

    name: str = Field(pattern=_NAME_RE)
    kind: Literal["multiple_choice", "schema", "language_modeling"]
    path: Optional[str] = Field(None, description="jsonl file; unset = the demo generator's task of this name")
    sha256: Optional[str] = None
    shots: int = Field(0, ge=0)
    random_baseline: float = Field(0.0, ge=0, lt=1)
    length_normalize: Literal["token", "char", "none"] = Field(
        "token", description="token: mean log-likelihood per token (llm-foundry); char: per character of the "
                             "answer (lm-eval acc_norm); none: sum")
    max_items: Optional[int] = Field(None, ge=1)
    continuation_delimiter: str = Field(" ", description="between context and answer, e.g. '\\nAnswer: '")
    example_delimiter: str = Field("\n", description="before every few-shot example and the scored item")
    prompt_string: str = Field("", description="text put once before the few-shot examples")
    fewshot_random_seed: int = Field(1234, description="seed of the few-shot sampler (llm-foundry's default)")
    has_categories: bool = Field(False, description="few-shot within each 'category'; accuracy = mean over them")


class SuiteTask(TaskSource):
    """A task of a task-config file: random baselines per version instead of one value."""

    random_baseline: dict[str, float]  # type: ignore[assignment]

    @field_validator("random_baseline")
    @classmethod
    def _fractions(cls, value: dict[str, float]) -> dict[str, float]:
        bad = {k: v for k, v in value.items() if not 0 <= v < 1}
        if bad:
            raise ValueError(f"random baselines must be fractions in [0, 1), got {bad}")
        return value


class TaskSuiteFile(Section):
    """A task-config file such as data_manifests/dclm_core_tasks.yaml (a fixed task list with baselines)."""

    name: str
    description: str = ""
    sources: list[str] = Field(default_factory=list, description="where the tasks and baselines come from")
    baselines: list[str] = Field(min_length=1, description="baseline versions every task gives, e.g. [v1, v2]")
    tasks: list[SuiteTask] = Field(min_length=1)

    @model_validator(mode="after")
    def _complete(self) -> TaskSuiteFile:
        names = [t.name for t in self.tasks]
        if len(set(names)) != len(names):
            raise ValueError(f"task names must be unique, repeated: {sorted({n for n in names if names.count(n) > 1})}")
        for task in self.tasks:
            missing = sorted(set(self.baselines) - set(task.random_baseline))
            if missing or not task.path:
                raise ValueError(f"task {task.name!r} needs a path and random_baseline for {missing or self.baselines}")
        return self


class EvalSuite(Section):
    """A fixed task list (e.g. DCLM Core) scored from a local copy of its eval bundle."""

    config: str = Field(description="task-config file, relative to the manifest (e.g. dclm_core_tasks.yaml)")
    bundle: str = Field(description="folder holding the config's task paths, relative to the manifest")
    baselines: str = Field("v2", description="which random-baseline version of the config Core uses")
    max_items: Optional[int] = Field(None, ge=1, description="cap per task for quick looks; Core is then "
                                                             "labelled as not comparable")


class EvalSection(Section):
    """Evaluation of each method's trained LM.

    `suite` scores a fixed task list (DCLM Core) whose core is reported with its name and baseline version;
    `tasks` are extra tasks, reported per task (they form the core only when there is no suite, labelled
    `core: ... (not DCLM Core)`). `seed`, when set, replaces every task's fewshot_random_seed (DCLM's eval
    --seed does the same).
    """

    tasks: list[TaskSource] = Field(default_factory=list)
    suite: Optional[EvalSuite] = None
    heldout_text: TextSetSource = TextSetSource()
    batch_size: int = Field(32, ge=1)
    seed: Optional[int] = Field(None, description="overrides every task's fewshot_random_seed when set")
    too_long: Literal["error", "skip"] = Field(
        "error", description="an item whose answer cannot fit the model's context: fail, or skip and count it")
    backend: Literal["gmates", "lm_eval"] = Field(
        "gmates", description="lm_eval: score the same task files through lm-eval-harness (extra 'lm_eval'; its "
                              "own few-shot sampler and encoding, gmates' metrics)")
    perplexity_prefix: Literal["tokenizer", "bos"] = Field(
        "tokenizer", description="tokenizer: texts with the tokenizer's special tokens (first token unscored "
                                 "without a BOS); bos: lm-eval's rolling log-likelihood (BOS/EOS in front)")

    @field_validator("tasks")
    @classmethod
    def _unique_tasks(cls, tasks: list[TaskSource]) -> list[TaskSource]:
        names = [t.name for t in tasks]
        if len(set(names)) != len(names):
            raise ValueError("task names must be unique")
        return tasks


class ReleaseSection(Section):
    method: str = "group_mates"
    name: str = Field("gmates-selection", pattern=_NAME_RE)
    license: str = "other"
    description: str = ""
    rows_per_shard: int = Field(50_000, ge=1)


class ExecutionSection(Section):
    """Where and how runs execute. None of it changes a result, so none of it enters a code version."""

    launcher: Literal["in_process", "instance", "warm"] = Field(
        "in_process", json_schema_extra=VOLATILE,
        description="in_process: `gmates sync` executes every run inside its own process, one after another; "
                    "instance: it submits runs through the Dagster instance's coordinator and launcher (dagster.yaml); "
                    "warm: it launches them into max_concurrent warm worker processes it starts once "
                    "(gmates_assets.warm.WarmRunLauncher)")
    max_concurrent: int = Field(2, ge=1, json_schema_extra=VOLATILE, description="runs in flight at once")
    executor: str = Field(
        "in_process", json_schema_extra=VOLATILE,
        description="executor inside a launched run: in_process (default: sync and the sensor make one run per "
                    "partition, so a run rarely has two steps to overlap and a step subprocess would only add a "
                    "process start), multiprocess, or module:attribute naming a Dagster ExecutorDefinition (e.g. "
                    "dagster_k8s:k8s_job_executor, dagster_celery:celery_executor); the module is imported, so a "
                    "manifest is trusted input, like a Makefile")
    executor_config: dict[str, Any] = Field(
        default_factory=dict, json_schema_extra=VOLATILE,
        description="the executor's config, given to every run of the job (sync's, the UI's, the sensor's), "
                    "e.g. {broker: redis://host:6379/0, backend: redis://host:6379/1} for the Celery executor")
    device: str = Field("auto", json_schema_extra=VOLATILE, description="auto (cuda when available), cpu, cuda, cuda:N")
    gpus: list[int] = Field(default_factory=list, json_schema_extra=VOLATILE,
                            description="GPU ids handed to concurrent runs round robin (run tag gmates/gpu)")


class Manifest(Section):
    name: str = Field(pattern=_NAME_RE)
    execution: ExecutionSection = ExecutionSection()
    demo: DemoSection = DemoSection()
    sources: SourcesSection
    tokenizer: TokenizerSection = TokenizerSection()
    encoder: EncoderSection = EncoderSection()
    probe: ProbeSection = ProbeSection()
    oracle: OracleSection = OracleSection()
    relational: RelationalSection = RelationalSection()
    bootstrap: BootstrapSection = BootstrapSection()
    clustering: ClusteringSection = ClusteringSection()
    selection: SelectionSection = SelectionSection()
    pretrain: PretrainSection = PretrainSection()
    eval: EvalSection = EvalSection()
    release: ReleaseSection = ReleaseSection()
    sampling: Literal["stable", "positional"] = Field(
        "stable", description="pool samples by a keyed hash of each document id (stable when the pool grows), or "
        "positional: the earlier seeded draw over document positions")

    @model_validator(mode="after")
    def _cross_section(self) -> Manifest:
        if self.release.method not in self.selection.methods:
            raise ValueError(
                f"release.method '{self.release.method}' is not one of selection.methods {self.selection.methods}"
            )
        if self.pretrain.init == "probe" and self.pretrain.model != self.probe.model:
            raise ValueError("pretrain.init 'probe' continues the probe model, so pretrain.model must equal "
                             "probe.model")
        if self.oracle.pool_size < self.oracle.rollout_length:
            raise ValueError("oracle.pool_size must be at least oracle.rollout_length")
        return self


# ------------------------------------------------------------------------------------ loading, errors
class LoadedManifest:
    """A validated manifest plus where it came from (paths in it are relative to its folder)."""

    def __init__(self, manifest: Manifest, path: Optional[Path], text: str):
        self.manifest, self.path, self.text = manifest, path, text
        self.base_dir = path.parent if path else Path.cwd()

    def resolve(self, relative: str) -> Path:
        candidate = Path(relative)
        return candidate if candidate.is_absolute() else (self.base_dir / candidate)

    def model_location(self, name: str) -> str:
        """A model or tokenizer setting as a loader takes it: a folder relative to the manifest (or absolute)
        when one exists there, otherwise the name unchanged (a hub id)."""
        local = self.resolve(name)
        return str(local) if local.is_dir() else name

    def where(self, dotted: str) -> str:
        """`file:line: dotted` of a field, for errors found after validation (e.g. while loading an executor)."""
        node = yaml.compose(self.text) if self.text else None
        line = _line_for(_node_lines(node), tuple(dotted.split("."))) if node is not None else None
        source = str(self.path) if self.path else "<string>"
        return f"{source}:{line}: {dotted}" if line else f"{source}: {dotted}"

    def with_manifest(self, manifest) -> LoadedManifest:
        """The same file seen through another manifest object (e.g. a view that records what is read)."""
        return LoadedManifest(manifest, self.path, self.text)


def _node_lines(node: yaml.Node, prefix: tuple = ()) -> dict[tuple, int]:
    """Dotted path -> 1-based line in the YAML text, for error messages."""
    lines = {prefix: node.start_mark.line + 1}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            lines.update(_node_lines(value_node, prefix + (str(key_node.value),)))
            lines.setdefault(prefix + (str(key_node.value),), key_node.start_mark.line + 1)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            lines.update(_node_lines(item, prefix + (index,)))
    return lines


def _line_for(lines: dict[tuple, int], loc: tuple) -> Optional[int]:
    for cut in range(len(loc), -1, -1):
        key = tuple(str(p) if not isinstance(p, int) else p for p in loc[:cut])
        if key in lines:
            return lines[key]
    return None


def _format_validation_error(err: ValidationError, source: str, lines: dict[tuple, int], document: str) -> str:
    problems = []
    for item in err.errors():
        loc = tuple(p for p in item["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        dotted = ".".join(str(p) for p in loc) or "(top level)"
        line = _line_for(lines, loc)
        where = f"{source}:{line}" if line else source
        if item["type"] == "extra_forbidden":
            what = "unknown key (not part of the manifest schema; check its spelling)"
        elif item["type"] == "missing":
            what = "required field is missing"
        elif isinstance(item.get("input"), dict):  # a whole section: the message says what is wrong
            what = item["msg"]
        else:
            what = f"{item['msg']} (got {item.get('input')!r})"
        problems.append(f"{where}: {dotted}: {what}")
    return f"invalid {document}:\n  " + "\n  ".join(problems)


# A manifest is a few hundred nodes; aliases may repeat a block, but a ~700-byte alias bomb expands to 9**9.
MAX_ALIAS_NODES = 100_000


class _ManifestLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (YAML would let the second silently win) and aliases that expand
    to more than MAX_ALIAS_NODES nodes or refer to themselves, naming the file and line."""

    def __init__(self, text: str, source: str):
        super().__init__(text)
        self.source = source
        self.alias_nodes = 0
        self._sizes: dict[int, int] = {}
        self._open_anchors: set[str] = set()
        self._path: list = []

    def _where(self, mark) -> str:
        return f"{self.source}:{mark.line + 1}"

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            if event.anchor in self._open_anchors:
                raise ManifestError(f"{self._where(event.start_mark)}: alias *{event.anchor} refers to the block "
                                    f"that contains it (a recursive alias); repeat the values instead")
            anchored = self.anchors.get(event.anchor)
            self.alias_nodes += _expanded_size(anchored, self._sizes) if anchored is not None else 0
            if self.alias_nodes > MAX_ALIAS_NODES:
                raise ManifestError(f"{self._where(event.start_mark)}: aliases expand to more than "
                                    f"{MAX_ALIAS_NODES:,} YAML nodes (an alias bomb?); a manifest needs far fewer, "
                                    f"repeat the values or remove the nested aliases")
            return super().compose_node(parent, index)
        self._path.append(_key_text(index) if index is not None and parent is not None else None)
        try:
            return super().compose_node(parent, index)
        finally:
            self._path.pop()

    def _composing(self, compose, anchor):
        if anchor is None:
            return compose(anchor)
        self._open_anchors.add(anchor)
        try:
            return compose(anchor)
        finally:
            self._open_anchors.discard(anchor)

    def compose_sequence_node(self, anchor):
        return self._composing(super().compose_sequence_node, anchor)

    def compose_mapping_node(self, anchor):
        node = self._composing(super().compose_mapping_node, anchor)
        seen: dict[str, yaml.Node] = {}
        for key_node, _value in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            first = seen.setdefault(key_node.value, key_node)
            if first is not key_node:
                dotted = ".".join(p for p in self._path if p is not None)
                field = f"{dotted}.{key_node.value}" if dotted else key_node.value
                raise ManifestError(f"{self._where(key_node.start_mark)}: {field}: duplicate key (first at "
                                    f"{self._where(first.start_mark)}); YAML would keep only the last one, remove "
                                    f"or merge one of them")
        return node


def _key_text(index) -> Optional[str]:
    """The path element for a child node: a mapping key's text, or a list position."""
    if isinstance(index, yaml.ScalarNode):
        return str(index.value)
    if isinstance(index, int):
        return str(index)
    return None


def _expanded_size(node: yaml.Node, sizes: dict[int, int]) -> int:
    """Nodes `node` stands for once every alias inside it is expanded (memoized: linear in the distinct nodes)."""
    if id(node) in sizes:
        return sizes[id(node)]
    size = 1
    if isinstance(node, yaml.SequenceNode):
        size += sum(_expanded_size(item, sizes) for item in node.value)
    elif isinstance(node, yaml.MappingNode):
        size += sum(_expanded_size(k, sizes) + _expanded_size(v, sizes) for k, v in node.value)
    sizes[id(node)] = size
    return size


def _compose_and_load(text: str, source: str) -> tuple[Optional[yaml.Node], Any]:
    loader = _ManifestLoader(text, source)
    try:
        node = loader.get_single_node()
        return node, (loader.construct_document(node) if node is not None else None)
    finally:
        loader.dispose()


def validate_yaml(model: type[BaseModel], text: str, source: str, document: str = "build manifest") -> Any:
    """YAML text validated as `model`; errors name the source, the line and the dotted field."""
    try:
        node, data = _compose_and_load(text, source)
    except yaml.YAMLError as exc:
        raise ManifestError(f"{source}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ManifestError(f"{source}: a {document} must be a YAML mapping at the top level")
    lines = _node_lines(node) if node is not None else {}
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ManifestError(_format_validation_error(exc, source, lines, document)) from None


def parse_manifest(text: str, source: str = "<string>", path: Optional[Path] = None) -> LoadedManifest:
    return LoadedManifest(validate_yaml(Manifest, text, source), path, text)


def read_yaml_text(path: Path, document: str = "build manifest") -> str:
    """The text of a YAML file; a folder, a missing file or bytes that are not UTF-8 name the file and why."""
    if path.is_dir():
        raise ManifestError(f"{path}: is a folder, not a file; name the {document} YAML file itself")
    if not path.is_file():
        raise ManifestError(f"{path}: {document} not found")
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        column = err.start - (data.rfind(b"\n", 0, err.start) + 1) + 1
        raise ManifestError(f"{path}: not UTF-8 text: byte 0x{data[err.start]:02x} at line {line}, column {column} "
                            f"({err.reason}); save the {document} as UTF-8") from None


def load_manifest(path: str | Path) -> LoadedManifest:
    path = Path(path)
    text = read_yaml_text(path)
    resolved = path.resolve()
    return parse_manifest(text, source=str(path), path=resolved)


# ------------------------------------------------------------------------------------------ fingerprints
def _semantic_dump(model: BaseModel) -> dict[str, Any]:
    """The values of a section that can change a result: volatile fields dropped, recursively."""
    out: dict[str, Any] = {}
    for name, field in type(model).model_fields.items():
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        if extra.get("volatile"):
            continue
        value = getattr(model, name)
        out[name] = _semantic_value(value)
    return out


def _semantic_value(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return _semantic_dump(value)
    if isinstance(value, (list, tuple)):
        return [_semantic_value(v) for v in value]
    if isinstance(value, dict):
        return {k: _semantic_value(v) for k, v in value.items()}
    return value


def section_value(manifest: Manifest, dotted: str) -> Any:
    value: Any = manifest
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


def fingerprint(manifest: Manifest, *sections: str) -> str:
    """Stable hash of the semantic values of the named (dotted) sections; independent of key order,
    float formatting and fields that cannot change a result."""
    if not sections:
        raise ValueError("fingerprint needs at least one section name")
    payload = {s: _semantic_value(section_value(manifest, s)) for s in sorted(set(sections))}
    return stable_hash(payload)


def section_names() -> list[str]:
    return [n for n in Manifest.model_fields if n != "name"]


# Seeds of training randomness: builds that differ only in these are replicates of one configuration.
REPLICATE_SEEDS = ("probe.seed", "oracle.seeds", "oracle.pool_seed", "relational.seed", "relational.split_seed",
                   "clustering.seed", "selection.seed", "pretrain.seed")


def replicate_identity(manifest: Manifest) -> dict[str, Any]:
    """{"configuration": fingerprint of every section but `release` with the replicate seeds blanked,
    "seeds": their values}; `gmates report` averages the builds of one configuration over their seeds."""
    blank = manifest
    for dotted in REPLICATE_SEEDS:
        section, name = dotted.split(".")
        blank = blank.model_copy(update={section: getattr(blank, section).model_copy(update={name: None})})
    sections = [s for s in section_names() if s != "release"]
    return {"configuration": fingerprint(blank, *sections),
            "seeds": {dotted: _semantic_value(section_value(manifest, dotted)) for dotted in REPLICATE_SEEDS}}
