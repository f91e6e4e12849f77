"""A levers grid aimed at better teachers (issue 20): variants, '@large' resolved to the task's
best-dev `large` seed and named by its key, its model rebuilt where missing, zero-shot cells."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import write_bio

from alad.atomic import write_json
from alad.config import ConfigError
from alad.report import load_results
from alad.results import NOT_IN_KEY
from alad.sweep import cells, load_grid, run_sweep

SPLITS = ("train", "dev", "test")

ROOT = Path(__file__).resolve().parents[1]


def _grid(tiny_grid: Path, large_seeds: list[int], **variants) -> Path:
    data = yaml.safe_load(tiny_grid.read_text())
    data.update(modes=["alad-frozen"], seeds=[1], large_seeds=large_seeds, variants=variants)
    tiny_grid.write_text(yaml.safe_dump(data))
    return tiny_grid


FINETUNED = {"set": {"phase2.teacher": "@large"}}
HEAD = {"set": {"phase2.teacher": "@large", "phase3.head_init": "teacher"}}
ZERO = {"set": {"phase2.teacher": "@large"}, "zero_shot": True}


def test_at_large_is_the_large_cell_with_the_best_dev_score_named_by_its_key(tiny_grid):
    plain = {"/".join(c.name.rsplit("/", 2)[1:]): c.key for c in cells(load_grid(tiny_grid))}
    path = _grid(tiny_grid, [1, 2], last={}, ft=FINETUNED, head=HEAD)
    grid = load_grid(path)
    every = cells(grid)
    waiting = [c for c in every if c.waits_for]
    assert {c.variant for c in waiting} == {"ft", "head"} and every[-len(waiting) :] == waiting
    assert waiting[0].waits_for.endswith("/large (0 of 2 seeds done)")
    last = next(c for c in every if c.variant == "last")
    assert last.key == plain["alad-frozen-n3/s1"]  # a variant without overrides: Table 1's cell
    large = {c.seed: c for c in every if c.mode == "large"}
    for seed, dev in ((1, 0.4), (2, 0.6)):
        write_json({"dev": {"main": dev}, "test": {"main": dev}}, large[seed].result_path)
    resolved = {c.variant: c for c in cells(grid) if c.variant}
    ft = resolved["ft"]
    assert ft.teacher.key == large[2].key and not ft.waits_for  # seed 2: the better dev
    assert ft.settings.phase2.teacher == str(large[2].model_dir)
    assert ft.align.phase2.teacher == str(large[2].model_dir)
    assert ft.settings.phase1.teacher is None  # phase 1 stays pre-trained: shared with `last`
    assert ft.align_dir("phase1") == resolved["last"].align_dir("phase1")
    assert ft.align_dir("phase2") != resolved["last"].align_dir("phase2")
    assert ft.align_dir("phase2") == resolved["head"].align_dir("phase2")
    # named by the large cell's key, not its folder: another runs folder, the same keys
    data = yaml.safe_load(path.read_text())
    data["runs"] = str(Path(data["runs"]) / "elsewhere")
    path.write_text(yaml.safe_dump(data))
    moved = {c.name: c for c in cells(load_grid(path))}
    assert moved[ft.name].settings.phase2.teacher != ft.settings.phase2.teacher
    assert moved[ft.name].key == ft.key
    assert moved[ft.name].align_dir("phase2").name == ft.align_dir("phase2").name
    # another best seed is another teacher: other keys
    write_json({"dev": {"main": 0.9}, "test": {"main": 0.1}}, large[1].result_path)
    again = {c.name: c for c in cells(load_grid(path))}
    assert again[ft.name].teacher.seed == 1 and again[ft.name].key != ft.key


def test_a_zero_shot_cells_timing_does_not_predict_trained_cells(tiny_grid):
    """A zero-shot cell's seconds are its (shared) phase 2, against a cost of scoring only: its
    seconds per unit of cost are ~100x a trained cell's, and must not set their ETA (it said
    15 h for a 30-min NER grid)."""
    from alad.sweep import Progress

    path = _grid(tiny_grid, [1], ft=FINETUNED, head=HEAD, zero=ZERO)
    every = cells(load_grid(path))
    large = next(c for c in every if c.mode == "large")
    write_json({"dev": {"main": 0.5}, "test": {"main": 0.5}}, large.result_path)
    every = cells(load_grid(path))
    zero = next(c for c in every if c.zero_shot)
    ft = [c for c in every if c.variant == "ft"]
    prog = Progress.of(every, "cpu")
    prog.finished(zero, 1000.0 * zero.cost)
    prog.finished(ft[0], 10.0 * ft[0].cost)
    other = next(c for c in prog.todo if c.group not in (zero.group, ft[0].group))
    assert not other.zero_shot and prog.predict(other) == pytest.approx(10.0 * other.cost)


def test_at_large_needs_large_cells_and_zero_shot_needs_a_task_model(tiny_grid):
    path = _grid(tiny_grid, [1], zero={"zero_shot": True})
    with pytest.raises(ConfigError, match="zero-shot cell needs an AlAd mode and a task model"):
        cells(load_grid(path))
    data = yaml.safe_load(path.read_text())
    data["variants"] = {"ft": FINETUNED}
    data["tasks"]["pos"]["large"] = False
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match="variant ft aims at '@large'.*runs none"):
        cells(load_grid(path))


def test_a_variant_can_have_its_own_seeds(tiny_grid):
    more = {"set": {"phase3.lr": 1e-3}, "seeds": [1, 2, 3]}
    every = cells(load_grid(_grid(tiny_grid, [1], last={}, more=more)))
    assert sorted(c.seed for c in every if c.variant == "more") == [1, 2, 3]
    assert [c.seed for c in every if c.variant == "last"] == [1]


def test_a_variant_can_override_its_set_per_task(tiny_grid):
    """`tasks: {task: {key: value}}` on top of `set`: e.g. the T and alpha each task chose on
    dev; a task the grid does not have is one error naming the variant and the task."""
    per_task = {
        "set": {"phase3.lr": 1e-3, "phase3.epochs": 2},
        "tasks": {"pos": {"phase3.lr": 1e-4}},
    }
    _grid(tiny_grid, [1], v=per_task)
    data = yaml.safe_load(tiny_grid.read_text())
    ner = {s: str(write_bio(tiny_grid.parent / f"{s}.tsv", 6, i)) for i, s in enumerate(SPLITS)}
    data["tasks"]["ner"] = ner
    tiny_grid.write_text(yaml.safe_dump(data))
    every = cells(load_grid(tiny_grid))
    lr = {c.task: c.settings.phase3.lr for c in every if c.variant == "v"}
    assert lr == {"pos": 1e-4, "ner": 1e-3}
    assert {c.settings.phase3.epochs for c in every if c.variant == "v"} == {2}
    with pytest.raises(ConfigError, match=r"variants\.v\.tasks\.qa: not a task of this grid"):
        load_grid(_grid(tiny_grid, [1], v={"tasks": {"qa": {"phase3.lr": 1e-4}}}))


def test_teacher_cells_run_after_their_large_cell_and_a_missing_teacher_is_rebuilt(tiny_grid):
    grid = load_grid(_grid(tiny_grid, [1], head=HEAD, zero=ZERO))
    ran = [cell.name for cell, _, _ in run_sweep(grid)]
    assert ran[0].endswith("/large/s1") and len(ran) == 3  # the teacher first, then its cells
    results = {r.record["cell"]["variant"]: r.record for r in load_results(grid.results)}
    large = next(c for c in cells(grid) if c.mode == "large")
    for variant in ("head", "zero"):
        assert results[variant]["teacher"]["key"] == large.key
        assert results[variant]["teacher"]["rebuilt"] is None
    zero = results["zero"]
    assert zero["cell"]["zero_shot"] and zero["history"] == [] and 0 <= zero["dev"]["main"] <= 1
    manifest = json.loads((Path(zero["model_dir"]) / "manifest.json").read_text())
    assert manifest["zero_shot"] and manifest["teacher_dir"] == str(large.model_dir)

    # a fresh machine: the committed results, no runs folder of the teacher
    committed = large.result_path.read_bytes()
    shutil.rmtree(large.out)
    head = next(c for c in cells(grid) if c.variant == "head")
    head.result_path.unlink()
    assert [cell.name for cell, _, _ in run_sweep(load_grid(tiny_grid))] == [head.name]
    assert (large.model_dir / "manifest.json").is_file()
    assert large.result_path.read_bytes() == committed  # its result is never rewritten
    rebuilt = json.loads(head.result_path.read_text())["teacher"]["rebuilt"]
    assert rebuilt["same"] and rebuilt["scores"] == rebuilt["committed"]  # CPU: bitwise


def test_a_variants_seeds_can_be_given_per_group(tiny_grid):
    """`seeds: {pattern: seeds}`: the groups a dev screen chose the variant for get more seeds;
    the others keep the grid's; the first matching pattern counts."""
    data = yaml.safe_load(tiny_grid.read_text())
    data.update(seeds=[1], modes=["compressed", "alad-frozen"])
    data["variants"] = {
        "a": {"set": {"phase3.lr": 1e-4}, "seeds": {"pos/*/alad-frozen": [1, 2, 3], "*": [4]}},
        "b": {"set": {"phase3.lr": 2e-4}, "seeds": {"ner/*": [1, 2]}},
    }
    tiny_grid.write_text(yaml.safe_dump(data, sort_keys=False))  # the patterns' order counts
    seeds: dict[tuple, list[int]] = {}
    for c in cells(load_grid(tiny_grid)):
        seeds.setdefault((c.mode, c.variant), []).append(c.seed)
    assert {g: sorted(s) for g, s in seeds.items()} == {
        ("large", None): [1],
        ("alad-frozen", "a"): [1, 2, 3],
        ("compressed", "a"): [4],
        ("alad-frozen", "b"): [1],  # no pattern matches POS: the grid's seeds
        ("compressed", "b"): [1],
    }


def test_the_teacher_grid_shares_table1s_cells_and_phase1():
    table1 = {c.key: c for c in cells(load_grid(ROOT / "sweeps" / "table1.yaml"))}
    grid = load_grid(ROOT / "sweeps" / "teacher.yaml")
    every = cells(grid)
    by_variant: dict[str | None, list] = {}
    for c in every:
        by_variant.setdefault(c.variant, []).append(c)
    assert {k: len(v) for k, v in by_variant.items()} == {
        None: 6,  # large, seeds 13-15, POS and NER
        "last": 12,
        "layer9": 8,
        "finetuned": 12,  # the NER minilm-l3 dev winner: seeds 13-15 there
        "finetuned-head": 18,  # the POS and NER minilm-l6 frozen dev winner: seeds 13-15
        "zero-shot": 4,
    }
    for c in by_variant[None] + by_variant["last"]:
        assert c.key in table1 and c.result_path == table1[c.key].result_path
    stored = {c.align_dir("phase1") for c in table1.values() if c.align is not None}
    for c in by_variant["finetuned"] + by_variant["finetuned-head"] + by_variant["zero-shot"]:
        assert c.align_dir("phase1") in stored  # phase 1 stays Table 1's (committed adapter)
        assert c.teacher is not None and c.teacher.mode == "large" and c.teacher.task == c.task
        assert c.teacher.key in table1
    for c in by_variant["layer9"]:
        assert c.align_dir("phase1") not in stored and c.settings.phase1.target_layer == 9


def _result(cell, main: float) -> dict:
    scores = {"main": main, "accuracy": main, "f1_macro": main, "size_pct": 20.0}
    return {
        "key": cell.key,
        "cell": {
            "task": cell.task,
            "compressed": cell.compressed,
            "mode": cell.mode,
            "large": cell.settings.models.large,
            "window": cell.window,
            "seed": cell.seed,
            "variant": cell.variant,
        },
        "group": cell.group,
        "dev": {"main": main},
        "test": scores,
        "history": [{"epoch": 1, "dev_main": main}],
        "best_epoch": 1,
        "alignment": None,
        "data": {},
        # what run_cell stores: the config with an `@large` teacher named by its cell's key
        "config": cell._named(cell.settings.model_dump(mode="json", exclude=NOT_IN_KEY)),
        "seconds": 1.0,
        "machine": {},
        "git_commit": "test",
        "finished": "2026-12-06T00:00:00+00:00",
        "model_dir": str(cell.out / "model"),
    }


def test_a_grid_reuses_anothers_results_and_reports_its_variants_as_rows(tiny_grid, tmp_path):
    from alad.report import write_report

    table1 = load_grid(tiny_grid)
    for i, c in enumerate(cells(table1)):
        write_json(_result(c, 0.5 + i / 100), c.result_path)
    data = yaml.safe_load(tiny_grid.read_text())
    variants = {"last": {"modes": ["compressed", "alad-frozen"]}, "ft": FINETUNED}
    data.update(
        results=str(tmp_path / "levers"),
        reuse=[data["results"]],
        seeds=[1],
        large_seeds=[1, 2],
        modes=["alad-frozen"],
        variants=variants,
    )
    path = tmp_path / "levers.yaml"
    path.write_text(yaml.safe_dump(data))
    every = cells(load_grid(path))
    todo = [c for c in every if not c.done]
    assert [c.variant for c in todo] == ["ft"]  # the rest is the first grid's, by key
    assert all(c.result_path.parent.parent == table1.results for c in every if c.done)
    write_json(_result(todo[0], 0.9), todo[0].own_result_path)
    table = write_report(tmp_path / "levers", None, tmp_path / "out", path)["table"].read_text()
    assert "alad-frozen n=3 [ft]" in table and "| 90.0 ± — (1) |" in table
    # reused: rows under this grid's variant names, as if this grid had run them
    assert "| alad-frozen n=3 [last] |" in table and "large" in table


def test_a_row_is_one_row_whether_its_seeds_were_reused_or_run_by_this_grid(tiny_grid, tmp_path):
    """sweeps/adapter.yaml's h1280 is the teacher grid's `finetuned-head`: seed 1 reused from a
    grid that named it otherwise, seed 2 run here; the report shows one row with both seeds,
    under this grid's name."""
    from alad.report import write_report

    table1 = load_grid(tiny_grid)
    for i, c in enumerate(cells(table1)):
        write_json(_result(c, 0.5 + i / 100), c.result_path)
    data = yaml.safe_load(tiny_grid.read_text())
    data.update(reuse=[data["results"]], seeds=[1, 2], large_seeds=[1], modes=["alad-frozen"])

    def grid(name: str, results: str) -> Path:
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump({**data, "results": results, "variants": {name: HEAD}}))
        return path

    first = cells(load_grid(grid("teacher", str(tmp_path / "teacher"))))
    seed1 = next(c for c in first if c.variant == "teacher" and c.seed == 1)
    write_json(_result(seed1, 0.8), seed1.own_result_path)
    data["reuse"] = [data["results"], str(tmp_path / "teacher")]
    path = grid("h1280", str(tmp_path / "adapter"))
    todo = [c for c in cells(load_grid(path)) if not c.done]
    assert [(c.variant, c.seed) for c in todo] == [("h1280", 2)]  # seed 1: by key, reused
    write_json(_result(todo[0], 0.9), todo[0].own_result_path)
    table = write_report(tmp_path / "adapter", None, tmp_path / "out", path)["table"].read_text()
    assert "| alad-frozen n=3 [h1280] | 85.0 ± 7.1 (2) |" in table
    assert "[teacher]" not in table


def test_a_teacher_still_training_is_not_ready(tiny_grid):
    """A `large` run stopped mid-training has a model folder (its best epoch so far) and a
    state/: cells must not align to it; the sweep resumes it as a rebuild first."""
    grid = load_grid(_grid(tiny_grid, [1], ft=FINETUNED))
    large = next(c for c in cells(grid) if c.mode == "large")
    write_json({"dev": {"main": 0.5}, "test": {"main": 0.5}}, large.result_path)
    grid = load_grid(tiny_grid)
    (large.model_dir).mkdir(parents=True)
    write_json({"format": "alad-model/1"}, large.model_dir / "manifest.json")
    (large.out / "state").mkdir()
    assert not large.model_ready
    from alad.sweep import Progress

    progress = Progress.of(cells(grid))
    assert list(progress.teachers_to_rebuild()) == [large.name]
    write_json({"run_key": "k", "dev": {"main": 0.5}}, large.out / "metrics.json")
    assert large.model_ready and progress.teachers_to_rebuild() == {}


KD = {"modes": ["kd"], "set": {"phase3.distill.teacher": "@large"}}


def test_a_kd_variant_distils_from_the_best_large_cell_rebuilt_where_missing(tiny_grid):
    grid = load_grid(_grid(tiny_grid, [1], kd=KD))
    (kd,) = (c for c in cells(grid) if c.variant == "kd")
    assert kd.waits_for and kd.window is None  # no adapter: no phases 1-2
    ran = [cell.name for cell, _, _ in run_sweep(grid)]
    large = next(c for c in cells(grid) if c.mode == "large")
    (kd,) = (c for c in cells(grid) if c.variant == "kd")
    assert ran == [large.name, kd.name]
    assert kd.settings.phase3.distill.teacher == str(large.model_dir)
    record = json.loads(kd.result_path.read_text())
    assert record["teacher"]["key"] == large.key
    # named by the large cell's key, not its folder: the same key on any machine
    assert record["config"]["phase3"]["distill"]["teacher"] == f"@large:{large.key}"
    manifest = json.loads((Path(record["model_dir"]) / "manifest.json").read_text())
    assert manifest["distill"]["teacher_dir"] == str(large.model_dir)
    # a fresh machine: the teacher's model is rebuilt before the kd cell runs
    shutil.rmtree(large.out)
    kd.result_path.unlink()
    assert [cell.name for cell, _, _ in run_sweep(load_grid(tiny_grid))] == [kd.name]
    assert large.model_ready
    assert json.loads(kd.result_path.read_text())["teacher"]["rebuilt"]["same"]


def test_at_large_for_every_cell_would_make_large_distil_from_itself(tiny_grid):
    data = yaml.safe_load(_grid(tiny_grid, [1]).read_text())
    data["set"]["phase3.distill.teacher"] = "@large"
    tiny_grid.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match="`large` cells included.*set it in a variant"):
        cells(load_grid(tiny_grid))


PROBED = {"modes": ["kd"], "set": {"phase3.distill.teacher": "@probe"}}


def test_at_probe_is_the_best_dev_probe_cell_which_runs_only_when_aimed_at(tiny_grid):
    assert not any(c.mode == "probe" for c in cells(load_grid(_grid(tiny_grid, [1, 2], kd=KD))))
    grid = load_grid(_grid(tiny_grid, [1, 2], kd=KD, probed=PROBED))
    every = cells(grid)
    probe = {c.seed: c for c in every if c.mode == "probe"}
    assert sorted(probe) == [1, 2] and {c.compressed for c in probe.values()} == {grid.large}
    (probed,) = (c for c in every if c.variant == "probed")
    assert probed.waits_for.endswith("/probe (0 of 2 seeds done)")
    for seed, dev in ((1, 0.7), (2, 0.3)):
        write_json({"dev": {"main": dev}, "test": {"main": dev}}, probe[seed].result_path)
    resolved = {c.variant: c for c in cells(grid) if c.variant}
    probed = resolved["probed"]
    assert probed.teacher.key == probe[1].key and not probed.waits_for  # seed 1: better dev
    assert probed.settings.phase3.distill.teacher == str(probe[1].model_dir)
    config = probed._named(probed.settings.model_dump(mode="json", exclude=NOT_IN_KEY))
    assert config["phase3"]["distill"]["teacher"] == f"@probe:{probe[1].key}"
    assert resolved["kd"].waits_for.endswith("/large (0 of 2 seeds done)")  # its own teacher
    mixed = {"set": {"phase2.teacher": "@large", "phase3.distill.teacher": "@probe"}}
    with pytest.raises(ConfigError, match=r"aims at \['@large', '@probe'\]: a cell has one"):
        cells(load_grid(_grid(tiny_grid, [1], mixed=mixed)))


def test_a_probed_teacher_runs_first_and_is_rebuilt_where_missing(tiny_grid):
    grid = load_grid(_grid(tiny_grid, [1], probed=PROBED))
    ran = [cell.name for cell, _, _ in run_sweep(grid, only=["*/probe/*", "*+probed/*"])]
    (probe,) = (c for c in cells(grid) if c.mode == "probe")
    (probed,) = (c for c in cells(grid) if c.variant == "probed")
    assert ran == [probe.name, probed.name]
    assert json.loads(probed.result_path.read_text())["teacher"]["key"] == probe.key
    shutil.rmtree(probe.out)  # a fresh machine: the committed result, no model folder
    probed.result_path.unlink()
    assert [cell.name for cell, _, _ in run_sweep(load_grid(tiny_grid))][-1] == probed.name
    assert probe.model_ready
    assert json.loads(probed.result_path.read_text())["teacher"]["rebuilt"]["same"]


def test_the_kd_levers_and_baselines_grids_reuse_table1s_cells_and_each_other():
    table1 = {c.key for c in cells(load_grid(ROOT / "sweeps" / "table1.yaml"))}
    kd = cells(load_grid(ROOT / "sweeps" / "kd.yaml"))
    count: dict[str | None, int] = {}
    for c in kd:
        count[c.variant or c.mode] = count.get(c.variant or c.mode, 0) + 1
    levers = [f"t{t}-a{a}" for t in (1, 2, 4) for a in ("05", "09")]
    assert count == {
        "large": 6, "probe": 6, "ref": 2, "probe-t1-a05": 2, "probe-t2-a05": 2,
        **dict.fromkeys(levers, 2),
    }  # fmt: skip
    for c in kd:
        if c.mode == "large" or c.variant == "ref":
            assert c.key in table1 and c.seed in ((13, 14, 15) if c.mode == "large" else (13,))
        elif c.mode == "kd":
            assert c.compressed == "minilm-l6" and c.seed == 13
            d = c.settings.phase3.distill
            if c.variant.startswith("probe"):  # the best-dev probe cell, once all 3 are in
                waits = c.teacher is None and "/mpnet-base/probe (" in (c.waits_for or "")
                assert waits or c.teacher.mode == "probe"
            else:
                assert c.teacher.mode == "large" and c.teacher.key in table1
            assert (f"t{d.temperature:g}-a{d.alpha:g}".replace("0.", "0")) in c.variant
    base = cells(load_grid(ROOT / "sweeps" / "baselines.yaml"))
    count = {}
    for c in base:
        count[c.variant] = count.get(c.variant, 0) + 1
    assert count == {
        None: 9, "table1": 48, "finetuned-head": 24, "kd": 12, "alad-kd": 12, "slad": 12,
        "adalora": 12,
    }  # fmt: skip
    assert all(c.key in table1 for c in base if c.variant in (None, "table1") and c.mode != "probe")
    # the probed teacher (NER's kd): the levers grid's own probe cells
    probes = {c.key for c in base if c.mode == "probe"}
    assert len(probes) == 3 and probes <= {c.key for c in kd if c.mode == "probe"}
    # AlAd with the teacher issue's recipe: the teacher grid's own cells (reused, not rerun)
    teacher = {c.key for c in cells(load_grid(ROOT / "sweeps" / "teacher.yaml"))
               if c.variant == "finetuned-head"}  # fmt: skip
    assert teacher and teacher <= {c.key for c in base if c.variant == "finetuned-head"}
    # each task's T and alpha (per task, in the variants' `tasks:`): kd's seed-13 cell is the
    # levers' cell of those values (reused), and AlAd + KD and SLAD distil with the same
    chosen = {
        c.task: (c.settings.phase3.distill.temperature, c.settings.phase3.distill.alpha)
        for c in base if c.mode == "kd"
    }  # fmt: skip
    levers_of = {
        (c.task, c.settings.phase3.distill.temperature, c.settings.phase3.distill.alpha,
         c.teacher and c.teacher.mode): c.key
        for c in kd if c.mode == "kd"
    }  # fmt: skip
    for c in base:
        d = c.settings.phase3.distill
        if c.variant in ("kd", "alad-kd", "slad"):
            assert (d.temperature, d.alpha) == chosen[c.task], c.name
        if c.mode == "kd" and c.seed == 13 and c.compressed == "minilm-l6":
            assert c.key == levers_of[(c.task, d.temperature, d.alpha, c.teacher.mode)]
        if c.variant == "alad-kd":  # the task's better AlAd recipe: POS the teacher issue's
            pos = c.task == "pos"
            assert (c.settings.phase3.head_init == "teacher") == pos
            assert (c.settings.phase2.teacher is not None) == pos
        if c.mode == "slad":
            assert c.settings.phase3.distill.teacher is None and c.teacher is None
            assert c.settings.phase3.lora_lr == 1e-2, c.name  # peft-lr's choice (README)
    # SLAD's rate was screened in sweeps/peft-lr.yaml: its POS seed-13 cells are that grid's
    screened = {c.key for c in cells(load_grid(ROOT / "sweeps" / "peft-lr.yaml"))
                if c.variant == "slad-lr1e-2"}  # fmt: skip
    assert len(screened) == 2
    slad13 = {c.key for c in base if c.mode == "slad" and c.seed == 13 and c.task == "pos"}
    assert screened == slad13
