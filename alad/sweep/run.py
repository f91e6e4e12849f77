"""Running cells: phases 1-2 shared once per alignment, phase 3 (or the zero-shot scoring), the
result file; claims so that runners sharing a filesystem run each cell once; the sweep loop
(cheapest first, time box) and the registration of each group's best seed.

    alad sweep run sweeps/table1.yaml [--task pos] [--max-cells 5] [--max-minutes 90]
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from alad import results, stopping
from alad.atomic import claim, ensure_writable_dir, write_json
from alad.cache import feature_root
from alad.config import ConfigError
from alad.results import NOT_IN_KEY
from alad.sweep.cell import Cell, cells
from alad.sweep.grid import Grid
from alad.sweep.progress import check_limits, plan
from alad.sweep.teachers import ensure_teacher, teacher_record, zero_shot

log = logging.getLogger("alad.sweep")  # one logger for the package: its lines name alad.sweep


def file_sha256(path: str | None) -> str | None:
    if not path or not Path(path).is_file():
        return None
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


class CellTaken(Exception):
    """Another runner holds this cell's claim, or finished the cell meanwhile: skip it."""


def check_outputs(grid: Grid, todo: list[Cell]) -> None:
    """Every place the cells `todo` write, checked before the first one runs (a place found
    unusable at a cell's end lost that cell's training)."""
    where = f"in {grid._source}"
    places = {grid.runs: ("sweep's run folder", f"set `runs:` {where} to a folder you can write")}
    if grid.alignments is not None:
        fix = f"set `alignments:` {where} to a folder you can write"
        places[grid.alignments] = ("store of phase-1 adapters", fix)
    for cell in todo:
        fix = f"set `results:` {where} to a folder you can write"
        places[cell.result_path.parent] = ("results folder", fix)
        fix = f"set cache.dir in the `set:` {where} to a folder you can write"
        places[feature_root(cell.settings.cache.dir)] = ("frozen-output cache", fix)
    for folder, (what, fix) in places.items():
        ensure_writable_dir(folder, what, fix)


@contextlib.contextmanager
def _one_runner(folder: Path) -> Iterator[None]:
    """The block runs in one runner at a time for `folder` (a shared alignment): the others
    wait for it, then only reload what it trained. Waiting stops on a stop request."""
    path = folder.with_name(f"{folder.name}.claim")
    said = False
    while (held := claim(path)) is None:
        if not said:
            log.info("%s: another runner trains it; waiting for it (%s)", folder, path)
            said = True
        if reason := stopping.requested():
            raise stopping.stop(reason, f"waiting for {folder}", folder)
        time.sleep(2)
    with held:
        yield


def align_cell(cell: Cell, upto: str = "phase2", progress: bool = False) -> dict[str, Any]:
    """Phases 1-2 (or phase 1 only) for the cell's (M_C, M_L, n[, task]): trained once, then
    only reloaded. The distributed flow runs each shared alignment as its own task first."""
    from alad.phases.align import run_alignment

    assert cell.align is not None
    if cell.waits_for:
        raise ConfigError(f"{cell.name}: its teacher is not chosen yet: waits for {cell.waits_for}")
    ensure_teacher(cell, progress)
    with _one_runner(cell.align_dir("phase1")):
        out = {"phase1": _phase1(cell, progress)}
    if upto == "phase2":
        init = cell.stored_phase1 or cell.align_dir("phase1")
        with _one_runner(cell.align_dir("phase2")):
            r = run_alignment(cell.align, "phase2", out=cell.align_dir("phase2"), init=init,
                              progress=progress)  # fmt: skip
        out["phase2"] = _alignment_record(cell, "phase2", r)
    return out


def _phase1(cell: Cell, progress: bool) -> dict[str, Any]:
    """Phase 1 of the cell, or its record from the committed store (no training, no features).
    Phase 2 always starts from the stored copy where there is a store, so a cell scores the
    same whichever machine trained phase 1."""
    from alad.checkpoint import export_adapter, load_checkpoint
    from alad.phases.align import run_alignment

    assert cell.align is not None
    stored = cell.stored_phase1
    if stored is not None and (stored / "manifest.json").is_file():
        record = load_checkpoint(stored).manifest.get("alignment")  # checksums verified
        if isinstance(record, dict):
            log.info("phase 1 of %s: the committed adapter %s", cell.group, stored)
            return record
        log.warning("%s: no alignment record in its manifest; training phase 1 again", stored)
    r = run_alignment(cell.align, "phase1", out=cell.align_dir("phase1"), progress=progress)
    record = _alignment_record(cell, "phase1", r)
    if stored is not None:
        export_adapter(r.checkpoint, stored, {"alignment": record})
        log.info("phase 1 adapter stored in %s (commit it: the next machine skips phase 1)", stored)
    return record


def _alignment_record(cell: Cell, phase: str, r: Any) -> dict[str, Any]:
    return {
        "before": r.before,
        "after": r.after,
        "epochs": len(r.history),
        "history": r.history,
        "texts": getattr(cell.align, phase).max_texts,
        "corpus": getattr(cell.align, phase).corpus,
    }


def run_cell(cell: Cell, progress: bool = False) -> dict[str, Any]:
    """Fine-tune and test one cell (phases 1-2 first when it has an adapter; a zero-shot cell
    has no phase 3); write its result. Under the cell's claim: CellTaken if another runner
    holds it or has finished the cell."""
    held = claim(cell.claim_path)
    if held is None:
        raise CellTaken(f"{cell.name}: another runner is running it ({cell.claim_path})")
    with held:
        if cell.done:
            raise CellTaken(f"{cell.name}: another runner finished it ({cell.result_path})")
        return _run_cell(cell, progress)


def _run_cell(cell: Cell, progress: bool) -> dict[str, Any]:
    from alad.jobs import finetune_job
    from alad.provenance import git_commit, machine
    from alad.runtime import Runtime

    if cell.waits_for:
        raise ConfigError(f"{cell.name}: its teacher is not chosen yet: waits for {cell.waits_for}")
    # the teacher (of phases 1-2 or of the distillation, for cells without phases 1-2) first:
    # its rebuild is its own run, not this cell's time
    ensure_teacher(cell, progress)
    t0, load0 = time.perf_counter(), os.getloadavg()[0]
    settings, alignment = cell.settings, None
    if cell.align is not None:
        alignment = align_cell(cell, progress=progress)
        p3 = settings.phase3.model_copy(update={"init": str(cell.align_dir("phase2"))})
        settings = settings.model_copy(update={"phase3": p3})
    if cell.zero_shot:
        result = zero_shot(cell, settings)
    else:
        result = finetune_job(settings, out=cell.out, progress=progress)
    runtime, test = Runtime.from_config(settings.runtime), result.test
    manifest = json.loads((result.model_dir / "manifest.json").read_text())
    record = {
        "key": cell.key,
        "cell": {
            "task": cell.task,
            "compressed": cell.compressed,
            "large": settings.models.large,
            "mode": cell.mode,
            "window": cell.window,
            "seed": cell.seed,
            "variant": cell.variant,
            "zero_shot": cell.zero_shot,
        },
        "group": cell.group,
        "teacher": teacher_record(cell),
        "dev": result.dev,
        "test": {k: v for k, v in test.items() if k != "table_row"},
        "history": result.history,
        "best_epoch": manifest.get("best_epoch"),
        "alignment": alignment,
        "data": {
            **manifest.get("examples", {}),
            "sha256": {
                name: file_sha256(getattr(settings.phase3, name))
                for name in ("train", "dev", "test")
            },
        },
        "config": cell._named(cell.settings.model_dump(mode="json", exclude=NOT_IN_KEY)),
        # phase 3's seconds in earlier processes (a resumed cell) count; the wall clock misses them
        "seconds": round(time.perf_counter() - t0 + result.earlier_seconds, 1),
        "machine": machine(runtime.device, load0),
        "git_commit": git_commit(),
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "model_dir": str(result.model_dir),
    }
    write_json(record, cell.own_result_path)
    return record


def run_sweep(
    grid: Grid,
    tasks: list[str] | None = None,
    max_cells: int | None = None,
    max_minutes: float | None = None,
    progress: bool = False,
    run: Callable[[Cell], dict[str, Any]] | None = None,
    only: list[str] | None = None,
) -> Iterator[tuple[Cell, dict[str, Any], str]]:
    """Run the missing cells, cheapest first; yields (cell, result, progress line) per cell.

    Stops before starting a cell once `max_cells` ran. `max_minutes` is a time box (a
    session's): when it ends, the cell in progress saves its state and stops (alad/stopping.py)
    and the sweep ends; the next run resumes that cell where it stopped. A SIGTERM stops the
    same way and raises `Stopped`. A cell another runner holds (or finishes meanwhile) is
    skipped: see `run_cell`."""
    check_limits(max_cells, max_minutes)
    todo, prog = plan(grid, tasks, only)
    check_outputs(grid, todo)
    log.info("%s; %d to run", prog.line(), len(todo))
    ran = 0
    with stopping.deadline(max_minutes):
        for cell in todo:
            if max_cells is not None and ran >= max_cells:
                break
            if reason := stopping.requested():
                if reason != "the time box":
                    raise stopping.stop(reason, "the sweep", grid.results)
                break
            if cell.waits_for:  # last in the order: its `large` cells may have run meanwhile
                cell = _resolved(grid, cell)
                if cell.waits_for:
                    log.info("%s waits for %s; not run", cell.name, cell.waits_for)
                    continue
            if cell.done:  # finished by another runner meanwhile
                continue
            t0 = time.perf_counter()
            try:
                record = (run or (lambda c: run_cell(c, progress)))(cell)
            except CellTaken as exc:
                log.info("%s; skipping it", exc)
                continue
            except stopping.Stopped as exc:
                if exc.reason != "the time box":
                    raise
                log.info("the time box (%g min) ended: %s", max_minutes, exc)
                break
            ran += 1
            seconds = time.perf_counter() - t0
            if isinstance(record, dict) and "seconds" in record:  # without a teacher's rebuild
                seconds = float(record["seconds"])
            line = prog.finished(cell, seconds)
            log.info("%s finished (%.0f s); %s", cell.name, seconds, line)
            yield cell, record, line


def _resolved(grid: Grid, cell: Cell) -> Cell:
    """`cell` built again from the grid, its teacher chosen if its `large` seeds are done now."""
    return next(c for c in cells(grid, [cell.task]) if c.name == cell.name)


def register_best(grid: Grid, tracker: Any, tasks: list[str] | None = None) -> list[dict]:
    """The registry keeps one model per Table-1 cell: for every cell whose seeds all have a
    result, the seed with the best dev score is registered (as a version of
    `alad-<task>-<M_C>`, tagged with the cell and its seeds' test mean) and goes through the
    promotion gate. A cell registered before (tag `alad.sweep_cell`) or whose best model folder
    is not on this machine is skipped; the results stay the record either way."""
    from alad.provenance import git_commit
    from alad.registry import Gate, Registry, model_name

    registry = Registry(tracker)

    groups: dict[str, list[Cell]] = {}
    for cell in cells(grid, tasks):
        groups.setdefault(cell.group, []).append(cell)
    done: list[dict] = []
    for group, members in sorted(groups.items()):
        if not all(c.done for c in members):
            continue
        records = [results.read_result(c.result_path) for c in members]  # validated
        best = max(records, key=lambda r: r["dev"]["main"])
        model_dir = Path(best["model_dir"])
        name = model_name(best["cell"]["task"], best["cell"]["compressed"])
        tag = f"{group}@{best['key']}"
        found = tracker.client.search_model_versions(f"name = '{name}'")
        if any(v.tags.get("alad.sweep_cell") == tag for v in found):
            continue
        if not (model_dir / "manifest.json").is_file():
            log.warning(
                "%s: best seed's model %s is not on this machine; not registered", group, model_dir
            )
            continue
        tests = [r["test"]["main"] for r in records]
        lineage = {
            "alad.sweep_cell": tag,
            "mode": best["cell"]["mode"],
            "window": str(best["cell"]["window"]),
            "seed": str(best["cell"]["seed"]),
            "seeds": ",".join(str(r["cell"]["seed"]) for r in records),
            "test_mean": f"{sum(tests) / len(tests):.4f}",
            "git_commit": git_commit(),
        }
        metrics = {k: v for k, v in best["dev"].items() if isinstance(v, int | float)}
        published = registry.publish(
            model_dir, metrics, lineage, Gate("main"), None,
            task=best["cell"]["task"], compressed=best["cell"]["compressed"],
        )  # fmt: skip
        done.append(
            {
                "group": group,
                "name": published.name,
                "version": published.version,
                "promoted": published.promoted,
                "reason": published.reason,
            }
        )
    return done
