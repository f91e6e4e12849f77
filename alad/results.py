"""What alad writes as a record and reads back later: a sweep cell's result and the latency file.

    alad report     # reads every results/table1/<task>/<key>.json and results/latency.json

A cell's result (`alad.sweep.run_cell` writes it) and `alad bench latency`'s JSON are read
through strict, frozen schemas: the types of every field, finite numbers (no NaN, no infinity,
nothing beyond 1e15 in magnitude), scores in their range (`main` a fraction; POS/NER scores
fractions, QA's percentages: `Task.scores`, `Task.score_max`), a cell's `window` null or >= 1 and
null exactly when its mode has no adapter, its `cell` the same as its `config`, its `key` the
hash of that config (the one `alad.sweep.Cell.key` computes) and its file named `<key>.json`.
A file that fails is one ResultError naming the file and the field. The record itself is
returned as written (a dict): readers see exactly what was committed.

The cell key lives here, below the sweep and the report, so that both compute it the same way.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    ValidationError,
    field_validator,
    model_validator,
)

from alad.atomic import read_json
from alad.config import ADDED_AT_DEFAULT
from alad.errors import DataFormatError, ResultError
from alad.modes import MODES
from alad.tasks import TASKS

# A result JSON is tens of kilobytes (NER's per-type scores are the bulk), latency.json a few:
# anything beyond this is not one of them, and is refused before it is read into memory.
MAX_RESULT_BYTES = 16 * 2**20
# No number alad records comes near this (parameters ~1e8, tokens seen ~1e9); a larger one is
# damage, and would overflow the report's sums and plots.
MAX_MAGNITUDE = 1e15

FIX_RESULT = "fix or delete the file (`alad sweep run` reruns a cell without a result)"
FIX_LATENCY = "rerun `alad bench latency`"


# ---------------------------------------------------------------------------------------------
# The cell key: the hash of the part of a resolved config that decides what a cell computes

# Sections that say where things go, not what is computed: outside every key.
NOT_IN_KEY = {"runs_dir", "cache", "tracking", "profile"}

# Config fields added after cells were committed whose default reproduces the earlier runs
# exactly: left out of keys while at that default, so committed results stay valid (a new
# field changes every key otherwise; tests/test_sweep.py pins the keys of sweeps/table1.yaml).
# Never list a field whose default changes what is computed: its new cells would be taken for
# the old ones. Dotted path -> the default that is omitted.
KEY_OMITTED_AT_DEFAULT: dict[str, Any] = {
    "runtime.precision": "fp32",
    # the teacher (phase1/2.teacher, target_layer, phase3.head_init), listed once in
    # alad.config because the run keys that decide a resume leave them out too
    **ADDED_AT_DEFAULT,
}


def config_hash(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:12]


def key_config(
    config: dict[str, Any], omitted: dict[str, Any] = KEY_OMITTED_AT_DEFAULT
) -> dict[str, Any]:
    """The part of a dumped config (`Settings.model_dump(mode="json", exclude=NOT_IN_KEY)`, as
    a result stores it) that decides what a run computes; `config` itself is left unchanged."""
    config = copy.deepcopy(config)
    for name in NOT_IN_KEY:
        config.pop(name, None)
    runtime = config.get("runtime", {})
    runtime.pop("device", None)  # where, not what (the result names the machine)
    runtime.pop("save_every_minutes", None)  # when state is saved: resumes are bitwise exact
    for dotted, default in omitted.items():
        *parents, leaf = dotted.split(".")
        section = config
        for part in parents:
            section = section.get(part, {})
        if section.get(leaf, object()) == default:
            section.pop(leaf)
    for name in [k for k, v in config.items() if v == {}]:
        config.pop(name)  # a section whose every field was omitted
    return config


def cell_key(
    config: dict[str, Any],
    adapter: bool,
    omitted: dict[str, Any] = KEY_OMITTED_AT_DEFAULT,
    zero_shot: bool = False,
) -> str:
    """A sweep cell's key from its dumped config; `adapter`: whether its mode has one (phases
    1-2 and the adapter's shape are in the key only then); `zero_shot`: a cell without phase 3
    (M_C + adapter + the teacher's head)."""
    config = key_config(config, omitted)
    config.get("phase3", {}).pop("init", None)  # a local path; the phase-2 config is in the key
    if not adapter:  # phases 1-2 do not shape a cell without an adapter
        for name in ("phase1", "phase2", "adapter"):
            config.pop(name, None)
    if zero_shot:
        config["zero_shot"] = True
    return config_hash(config)


# ---------------------------------------------------------------------------------------------
# Field types


class Problem(ValueError):
    """A check that fails on a part of a field (or across fields): `field` is the dotted path
    below where pydantic found it, so the message names the exact key."""

    def __init__(self, field: str, problem: str, value: Any = ...):
        super().__init__(f"{field}: {problem}")
        self.field, self.problem, self.value = field, problem, value


def _number(value: Any, lo: float, hi: float, field: str = "") -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Problem(field, f"expected a number, got {value!r}"[:80])
    if not lo <= value <= hi:  # also false for NaN
        raise Problem(field, f"must be a finite number in [{lo:g}, {hi:g}]", value)
    return value


def _metric(value: Any) -> Any:
    """One value of a metrics object: a finite number, a string, null, or a per-class table
    ({class: {precision, recall, f1: fractions, support: a count}})."""
    if value is None or isinstance(value, str):
        return value
    if not isinstance(value, dict):
        return _number(value, -MAX_MAGNITUDE, MAX_MAGNITUDE)
    for name, row in value.items():
        if not isinstance(row, dict):
            raise Problem(name, f"expected an object, got {type(row).__name__}", row)
        for key, x in row.items():
            if key == "support":
                if isinstance(x, bool) or not isinstance(x, int) or x < 0:
                    raise Problem(f"{name}.{key}", "expected a count (a whole number >= 0)", x)
            else:
                _number(x, 0.0, 1.0, f"{name}.{key}")
    return value


class _Schema(BaseModel):
    model_config = ConfigDict(strict=True, frozen=True, extra="forbid", allow_inf_nan=False)


Finite = Annotated[float, Field(ge=-MAX_MAGNITUDE, le=MAX_MAGNITUDE)]
NonNegative = Annotated[float, Field(ge=0, le=MAX_MAGNITUDE)]
Positive = Annotated[float, Field(gt=0, le=MAX_MAGNITUDE)]
Fraction = Annotated[float, Field(ge=0, le=1)]
Count = Annotated[int, Field(ge=0)]  # strict: true/false are not counts
Whole = Annotated[int, Field(ge=1)]
Name = Annotated[str, Field(min_length=1)]
Metrics = dict[str, Annotated[Any, PlainValidator(_metric)]]


class CellId(_Schema):
    task: Name
    compressed: Name
    large: Name
    mode: Name
    window: Whole | None  # None: the mode has no adapter
    seed: Count
    variant: str | None = None  # a grid variant (e.g. another teacher), alad.sweep.Variant
    zero_shot: bool = False  # no phase 3: M_C + the phase-2 adapter + the teacher's head

    @field_validator("task")
    @classmethod
    def _task(cls, v: str) -> str:
        if v not in TASKS:
            raise Problem("", f"{v!r} is not one of {sorted(TASKS)}")
        return v

    @field_validator("mode")
    @classmethod
    def _mode(cls, v: str) -> str:
        if v not in MODES:
            raise Problem("", f"{v!r} is not one of {tuple(MODES)}")
        return v


class Epoch(_Schema):
    """One epoch of phase 3's history."""

    epoch: Whole
    dev_main: Fraction
    train_loss: Finite | None = None
    seconds: NonNegative | None = None
    adalora_rank: Whole | None = None  # mode adalora: the ranks its matrices hold in all


class AlignmentScores(_Schema):
    mse: NonNegative
    cosine: Annotated[float, Field(ge=-1, le=1)]
    baseline_mse: NonNegative | None = None
    tokens: NonNegative | None = None


class AlignmentPhase(_Schema):
    before: AlignmentScores | None = None
    after: AlignmentScores
    epochs: Count | None = None
    history: list[dict[str, Finite]] = []
    texts: Count | None = None
    corpus: str | None = None


class Alignment(_Schema):
    phase1: AlignmentPhase | None = None
    phase2: AlignmentPhase | None = None


class Data(_Schema):
    """Examples per split and the sha256 (16 hex digits) of each split's file."""

    train: Count | None = None
    dev: Count | None = None
    test: Count | None = None
    sha256: dict[str, str | None] = {}


class Machine(_Schema):
    """`alad.provenance.machine` (+ the latency benchmark's load averages and precision)."""

    host: str | None = None
    cpus: Count | None = None
    torch_threads: Count | None = None
    platform: str | None = None
    torch: str | None = None
    device: str | None = None
    gpu: str | None = None
    precision: str | None = None
    load1_start: NonNegative | None = None
    load1_end: NonNegative | None = None
    loadavg_before: Annotated[list[NonNegative], Field(min_length=1)] | None = None
    loadavg_after: Annotated[list[NonNegative], Field(min_length=1)] | None = None


# ---------------------------------------------------------------------------------------------
# A cell's result


class CellResult(_Schema):
    """`results/<task>/<key>.json`, as `alad.sweep.run_cell` writes it."""

    key: Annotated[str, Field(pattern=r"^[0-9a-f]{12}$")]
    cell: CellId
    group: str
    teacher: dict[str, Any] | None = None  # the `large` cell an AlAd cell was aimed at
    dev: Metrics
    test: Metrics
    history: list[Epoch]
    best_epoch: Whole | None
    alignment: Alignment | None
    data: Data
    config: dict[str, Any]
    seconds: NonNegative
    machine: Machine
    git_commit: str
    finished: str
    model_dir: str

    @model_validator(mode="after")
    def _consistent(self) -> CellResult:
        for problem in (*self._score_problems(), *self._cell_problems()):
            raise problem
        return self

    def _score_problems(self) -> Iterator[Problem]:
        task = TASKS[self.cell.task]
        for split, metrics in (("dev", self.dev), ("test", self.test)):
            need = ("main", *task.required) if split == "test" else ("main",)
            for key in need:
                if metrics.get(key) is None:
                    yield Problem(f"{split}.{key}", "missing (a score every result has)")
            for key in ("main", *task.scores):
                if metrics.get(key) is not None:
                    hi = 1.0 if key == "main" else task.score_max
                    try:
                        _number(metrics[key], 0.0, hi, f"{split}.{key}")
                    except Problem as exc:
                        yield exc
        try:
            datetime.fromisoformat(self.finished)
        except ValueError:
            yield Problem("finished", "expected an ISO 8601 time", self.finished)

    def _cell_problems(self) -> Iterator[Problem]:
        c = self.cell
        if MODES[c.mode].adapter != (c.window is not None):
            need = "a window (>= 1)" if MODES[c.mode].adapter else "null: it has no adapter"
            yield Problem("cell.window", f"mode {c.mode} needs {need}", c.window)
        n = f"-n{c.window}" if c.window else ""
        variant = f"+{c.variant}" if c.variant else ""
        if self.group != f"{c.task}/{c.compressed}/{c.mode}{n}{variant}":
            yield Problem("group", f"does not match its cell ({c.task}/{c.compressed}/...)")
        config = self.config
        section = {k: v if isinstance(v, dict) else {} for k, v in config.items()}
        stated = {
            "task": ("phase3.task", section.get("phase3", {}).get("task")),
            "mode": ("phase3.mode", section.get("phase3", {}).get("mode")),
            "compressed": ("models.compressed", section.get("models", {}).get("compressed")),
            "large": ("models.large", section.get("models", {}).get("large")),
            "seed": ("seed", config.get("seed")),
        }
        if c.window is not None:
            stated["window"] = ("adapter.window", section.get("adapter", {}).get("window"))
        for name, (where, value) in stated.items():
            if value != getattr(c, name) or type(value) is not type(getattr(c, name)):
                yield Problem(f"config.{where}", f"differs from cell.{name}", value)
        expected = cell_key(config, adapter=c.window is not None, zero_shot=c.zero_shot)
        if self.key != expected:
            yield Problem("key", f"is not the hash of its config ({expected})", self.key)


def describe(exc: ValidationError) -> str:
    """The first problem of a failed validation as `field: what is wrong (got value)`."""
    errors = exc.errors()
    e = errors[0]
    where = [str(p) for p in e["loc"]]
    cause = (e.get("ctx") or {}).get("error")
    if isinstance(cause, Problem):
        where += [cause.field] if cause.field else []
        what, value = cause.problem, cause.value
    else:
        what, value = e["msg"], e.get("input", ...)
    field = ".".join(where) or "(top)"
    if e["type"] == "missing" or what.startswith("missing"):
        text = f"{field} {'missing' if e['type'] == 'missing' else what}"
    else:
        got = repr(value)
        got = got if len(got) <= 60 else got[:57] + "..."
        text = f"{field}: {what}" + (f" (got {got})" if value is not ... else "")
    more = len(errors) - 1
    return text + (f" (and {more} more problem{'s' * (more > 1)})" if more else "")


def _read_object(path: Path, fix: str) -> dict[str, Any]:
    try:
        record = read_json(path, "valid JSON", MAX_RESULT_BYTES)
    except DataFormatError as exc:
        raise ResultError(f"{exc}; {fix}") from None
    if not isinstance(record, dict):
        raise ResultError(f"{path}: expected a JSON object, got {type(record).__name__}; {fix}")
    return record


def read_result(path: Path) -> dict[str, Any]:
    """A cell's result JSON, validated (CellResult, and named `<key>.json`); the record as
    written. Any problem is a ResultError naming the file and the field."""
    path = Path(path)
    record = _read_object(path, FIX_RESULT)
    try:
        CellResult.model_validate(record)
    except ValidationError as exc:
        raise ResultError(f"{path}: {describe(exc)}; {FIX_RESULT}") from None
    if path.name != f"{record['key']}.json":
        raise ResultError(
            f"{path}: key: the file of the result {record['key']!r} must be named "
            f"{record['key']}.json; {FIX_RESULT}"
        )
    return record


# ---------------------------------------------------------------------------------------------
# The latency file


class LatencyRow(_Schema):
    model: Name
    window: Whole | None
    batch: Whole
    ms_per_batch: Positive
    speedup: Positive
    role: str | None = None
    tokens: Whole | None = None
    tokens_per_s: Positive | None = None
    params: Count | None = None
    size_pct: NonNegative | None = None
    hidden: Whole | None = None  # AlAd rows: H (files before shapes: the file's `hidden`)
    rank: Whole | None = None  # AlAd rows: the first layer's rank (None: full)
    overhead: Positive | None = None  # AlAd rows: its time / its M_C's alone (same runtime)
    # what ran it (alad/bench.py RUNTIMES); rows written before runtimes were torch's
    runtime: Literal["torch", "onnx", "onnx-int8"] = "torch"
    speedup_vs_torch: Positive | None = None  # ONNX rows: the same model's torch time / its own
    speedup_vs_large_torch: Positive | None = None  # ONNX rows: M_L's torch time / its own


class AdapterShapeRecord(_Schema):
    window: Whole
    hidden: Whole
    rank: Whole | None = None


class Latency(_Schema):
    """results/latency.json, as `alad bench latency` writes it."""

    large: Name
    rows: Annotated[list[LatencyRow], Field(min_length=1)]
    compressed: list[str] | None = None
    windows: list[Whole] | None = None
    hidden: Whole | None = None
    shapes: list[AdapterShapeRecord] | None = None
    grid: str | None = None  # the sweep grid whose adapter shapes were timed
    head: str | None = None
    tokens: Whole | None = None
    k: Whole | None = None
    runtimes: list[Literal["torch", "onnx", "onnx-int8"]] | None = None
    onnx: dict[str, Any] | None = None  # how the ONNX rows were made and run (bench.onnx_facts)
    machine: Machine | None = None
    date: str | None = None
    git_commit: str | None = None


def read_latency(path: Path) -> dict[str, Any]:
    """`alad bench latency`'s JSON, validated (Latency); the data as written."""
    data = _read_object(Path(path), FIX_LATENCY)
    try:
        Latency.model_validate(data)
    except ValidationError as exc:
        raise ResultError(f"{path}: {describe(exc)}; {FIX_LATENCY}") from None
    return data


__all__ = [
    "MAX_RESULT_BYTES",
    "NOT_IN_KEY",
    "KEY_OMITTED_AT_DEFAULT",
    "CellResult",
    "Latency",
    "cell_key",
    "config_hash",
    "key_config",
    "read_latency",
    "read_result",
]
