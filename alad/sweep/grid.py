"""The sweep file's schema: a grid of tasks x compressed models x modes x window x seeds (+
named variants, a window ablation), validated when read.

    alad sweep list sweeps/table1.yaml            # load_grid reads it; a bad field is one error
"""

from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from alad.config import ConfigError, Integer, load_yaml_file
from alad.modes import MODES
from alad.tasks import TASKS


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TaskAxis(_Strict):
    """One task of the grid: its files, its config overrides and (optionally) narrower axes."""

    train: str = Field(description="Training file (relative paths: from the repository root).")
    dev: str | None = Field(None, description="Validation file (None: carved from train).")
    test: str = Field(description="Test file: scored once, never used for any choice.")
    set: dict[str, Any] = Field(
        default_factory=dict,
        description="Config overrides for this task, e.g. phase3.max_train_examples.",
    )
    seeds: list[Integer] | None = Field(None, description="None: the grid's seeds.")
    compressed: list[str] | None = Field(None, description="None: the grid's compressed models.")
    modes: list[str] | None = Field(None, description="None: the grid's modes.")
    large: bool = Field(True, description="Run the `large` baseline (M_L fine-tuned).")
    ablation: bool = Field(True, description="Run the grid's window ablation on this task.")


Window = Annotated[Integer, Field(ge=1)]  # 0 would be a cell without phases 1-2, named n=0


class Ablation(_Strict):
    compressed: str
    mode: str = "alad-joint"
    windows: list[Window] = Field(default_factory=lambda: [1, 3])


LARGE_TEACHER = "@large"  # a grid's phase1/2.teacher: the task's best-dev `large` cell's model
# Every such placeholder -> the M_L mode whose best-dev cell (of large_seeds) it names: `@probe`,
# M_L frozen + a trained linear head (the probed teacher of SLAD's abstract).
TEACHER_CELLS = {LARGE_TEACHER: "large", "@probe": "probe"}
# Where a variant may aim at it: AlAd's alignment target and phase 3's distillation teacher.
TEACHER_KEYS = ("phase1.teacher", "phase2.teacher", "phase3.distill.teacher")


def dotted(d: dict[str, Any]) -> dict[str, Any]:
    """{"phase3": {"lr": 1}} and {"phase3.lr": 1} alike -> {"phase3.lr": 1}."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update({f"{k}.{kk}": vv for kk, vv in dotted(v).items()})
        else:
            out[k] = v
    return out


class Variant(_Strict):
    """Named config overrides for AlAd cells (e.g. another teacher): every compressed model x
    mode of the grid is run once per variant, its group named `<task>/<M_C>/<mode>+<variant>`."""

    set: dict[str, Any] = Field(
        default_factory=dict,
        description="Overrides of this variant's cells. phase1.teacher / phase2.teacher / "
        f"phase3.distill.teacher '{LARGE_TEACHER}': the model of the task's `large` cell of this "
        "grid with the best dev score (all its seeds done; rebuilt first where its folder is "
        "not on this machine); '@probe': the same of the task's `probe` cells (M_L frozen + a "
        "linear head, run on large_seeds only when a variant aims at them).",
    )
    tasks: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Per-task overrides of this variant's cells, on top of `set` (e.g. the "
        "distillation T and alpha chosen on dev for each task): {task: {key: value}}.",
    )
    modes: list[str] | None = Field(None, description="None: the grid's (or the task's) modes.")
    seeds: list[int] | dict[str, list[int]] | None = Field(
        None,
        description="None: the task's or grid's seeds; e.g. [13, 14, 15] for the variant a "
        "seed-13 screen chose, or per group, {pattern: seeds} with shell patterns over "
        "`<task>/<M_C>/<mode>` (e.g. {'pos/*': [13, 14, 15], 'ner/minilm-l3/*': [13, 14, 15]}: "
        "the groups the screen chose this variant for; a group no pattern matches keeps the "
        "task's or grid's seeds, the first matching pattern counts). A zero-shot cell has no "
        "seed of its own: phases 1-2 use align_seed, so its seeds score the same.",
    )

    def set_of(self, task: str) -> dict[str, Any]:
        """This variant's overrides for one task's cells: `set`, then `tasks[task]` (dotted)."""
        return {**dotted(self.set), **dotted(self.tasks.get(task, {}))}

    def seeds_of(self, task: str, compressed: str, mode: str) -> list[int] | None:
        """This variant's seeds for one group (None: the task's or grid's)."""
        if not isinstance(self.seeds, dict):
            return self.seeds
        group = f"{task}/{compressed}/{mode}"
        return next((s for p, s in self.seeds.items() if fnmatch.fnmatchcase(group, p)), None)

    zero_shot: bool = Field(
        False,
        description="No phase 3: M_C + the phase-2 adapter + its teacher's task head "
        "(alad.teacher.compose_zero_shot), scored on dev and test. Needs a task-model teacher.",
    )


class Grid(_Strict):
    """A sweep file (e.g. sweeps/table1.yaml)."""

    _source: str = PrivateAttr("the sweep file")  # its path, for errors
    name: str = "table1"
    results: Path = Field(Path("results/table1"), description="Committed result JSONs.")
    runs: Path = Field(Path("runs/sweep"), description="Checkpoints and models (not committed).")
    alignments: Path | None = Field(
        None,
        description="Committed store of finished phase-1 adapters (half precision): a fresh "
        "machine starts phase 2 from it instead of re-running phase 1. None: no store.",
    )
    large: str = "mpnet-base"
    compressed: list[str] = Field(min_length=1)
    modes: list[str] = Field(min_length=1)
    window: Window = 5
    seeds: list[Integer] = Field(min_length=1)
    align_seed: Integer = Field(
        13, description="Seed of phases 1-2 (trained once, shared by seeds)."
    )
    ablation: Ablation | None = None
    set: dict[str, Any] = Field(default_factory=dict, description="Overrides for every cell.")
    tasks: dict[str, TaskAxis] = Field(min_length=1)
    variants: dict[str, Variant] | None = Field(
        None, description="Named override sets of the AlAd cells (None: one, unnamed: Table 1)."
    )
    large_seeds: list[int] | None = Field(
        None, description="Seeds of the `large` cells (None: the task's or grid's seeds)."
    )
    reuse: list[Path] = Field(
        default_factory=list,
        description="Other grids' committed results: a cell whose key has a result there is "
        "done (the same key is the same computation), e.g. Table 1's cells in a levers grid.",
    )

    @model_validator(mode="after")
    def _known_names(self) -> Grid:
        for task in self.tasks:
            if task not in TASKS:
                raise ValueError(f"tasks.{task}: unknown task; choose from {sorted(TASKS)}")
        for name, variant in (self.variants or {}).items():
            for task in variant.tasks:
                if task not in self.tasks:
                    raise ValueError(
                        f"variants.{name}.tasks.{task}: not a task of this grid; choose from "
                        f"{sorted(self.tasks)}"
                    )
        modes = [*self.modes, *(m for t in self.tasks.values() for m in t.modes or [])]
        modes += [m for v in (self.variants or {}).values() for m in v.modes or []]
        if self.ablation:
            modes.append(self.ablation.mode)
        grid_modes = [m for m, spec in MODES.items() if spec.encoder == "compressed"]
        for mode in modes:
            if mode not in grid_modes:
                raise ValueError(
                    f"mode {mode!r}: choose from {grid_modes} "
                    "(`large` runs once per task by itself: tasks.<task>.large)"
                )
        return self


def load_grid(path: Path) -> Grid:
    """A sweep file, read as params.yaml is (`load_yaml_file`: size cap, no duplicate keys, no
    aliases) and validated; every problem is one ConfigError naming the file and the field."""
    data = load_yaml_file(Path(path), "sweep file") or {}
    try:
        if not isinstance(data, dict):
            raise TypeError(f"expected a mapping at the top level, got {type(data).__name__}")
        grid = Grid(**data)
        grid._source = str(path)
        return grid
    except (TypeError, ValidationError) as exc:
        errors = (
            exc.errors() if isinstance(exc, ValidationError) else [{"loc": (), "msg": str(exc)}]
        )
        where = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or '(top)'}: {e['msg'].removeprefix('Value error, ')}"
            for e in errors
        )
        raise ConfigError(f"{path}: {where}") from None
