"""The teacher a grid's variant aims at ('@large', '@probe': the best-dev seed of the task's M_L
cells), its model rebuilt where this machine lacks it (`rebuilt.json`), what a result records
about it, and the zero-shot cell (no phase 3: M_C + the phase-2 adapter + the teacher's head).

    alad sweep run sweeps/teacher.yaml            # ensure_teacher before every cell aimed at one
"""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING, Any

from alad.atomic import write_json
from alad.errors import ResultError

if TYPE_CHECKING:
    from alad.config import Settings
    from alad.sweep.cell import Cell

log = logging.getLogger("alad.sweep")  # one logger for the package: its lines name alad.sweep


def best_teacher(large: list[Cell]) -> tuple[Cell | None, str | None]:
    """The seed of M_L's cells (`large` or `probe`) with the best dev score (ties: the lowest
    seed), once every seed has a result (the choice must not move as seeds finish); else
    (None, what it waits for)."""
    done = [c for c in large if c.done]
    if len(done) < len(large):
        return None, f"{large[0].group} ({len(done)} of {len(large)} seeds done)"

    def dev(c: Cell) -> float:
        try:
            return float(json.loads(c.result_path.read_text())["dev"]["main"])
        except (OSError, ValueError, KeyError, TypeError):
            raise ResultError(
                f"{c.result_path}: no dev score (dev.main) to choose a teacher by"
            ) from None

    return max(large, key=lambda c: (dev(c), -c.seed)), None


def ensure_teacher(cell: Cell, progress: bool = False) -> None:
    """The model folder of the `large` cell `cell` aims at, re-trained into its place first
    where it is not on this machine (a fresh clone has only the committed result). Its committed
    result is never rewritten: the rebuild's scores go to `<its out>/rebuilt.json`, and every
    cell aimed at it records them (a GPU or another torch may draw other numbers)."""
    from filelock import FileLock

    from alad.jobs import finetune_job

    t = cell.teacher
    if t is None:
        return
    t.out.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{t.out}.lock"):  # cells on several workers: one rebuild
        if t.model_ready:
            return
        record = json.loads(t.result_path.read_text())
        where = (record.get("machine") or {}).get("device", "cpu")
        log.info(
            "teacher %s (%s): its model %s is not on this machine or its run is unfinished; "
            "training it first (its committed result took %.0f s on %s)",
            t.name,
            t.key,
            t.model_dir,
            record.get("seconds", float("nan")),
            where,
        )
        t0 = time.perf_counter()
        result = finetune_job(t.settings, out=t.out, progress=progress)
        scores = {"dev": result.dev["main"], "test": result.test["main"]}
        committed = {"dev": record["dev"]["main"], "test": record["test"]["main"]}
        rebuilt = {
            "scores": scores,
            "committed": committed,
            "same": scores == committed,
            "seconds": round(time.perf_counter() - t0, 1),
        }
        write_json(rebuilt, t.out / "rebuilt.json")
        if not rebuilt["same"]:
            log.warning(
                "teacher %s rebuilt with other scores than its committed result (%s vs %s): "
                "its cells use the rebuilt model and say so in their results",
                t.name,
                scores,
                committed,
            )


def teacher_record(cell: Cell) -> dict[str, Any] | None:
    """What a result says about the `large` (`probe`) cell its teacher is (None: not aimed at
    one)."""
    t = cell.teacher
    if t is None:
        return None
    record = json.loads(t.result_path.read_text())
    rebuilt = t.out / "rebuilt.json"
    return {
        "cell": t.name,
        "key": t.key,
        "dev": record["dev"]["main"],
        "test": record["test"]["main"],
        "rebuilt": json.loads(rebuilt.read_text()) if rebuilt.is_file() else None,
    }


def zero_shot(cell: Cell, settings: Settings) -> Any:
    """No phase 3: M_C + the cell's phase-2 adapter + its teacher's head, scored on dev and
    test (alad.teacher.compose_zero_shot), as a FinetuneResult without history."""
    from alad.evaluation import evaluate_model
    from alad.phases.finetune import FinetuneResult
    from alad.tasks import load_splits
    from alad.teacher import compose_zero_shot

    model_dir = compose_zero_shot(cell.align_dir("phase2"), cell.model_dir)
    cfg = settings.phase3
    splits = load_splits(cfg, settings.seed)
    dev = evaluate_model(model_dir, cfg.dev or splits.dev)
    test = evaluate_model(model_dir, cfg.test or splits.test)
    dev.pop("table_row", None)
    write_json({"dev": dev, "test": test}, cell.out / "metrics.json")
    return FinetuneResult(model_dir, dev, test, [], cell.out / "metrics.json")
