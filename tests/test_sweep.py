"""The Table-1 sweep on tiny models: cells, keys, resumption after an interruption."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml

from alad.atomic import write_json
from alad.config import ConfigError
from alad.errors import ResultError
from alad.report import load_results
from alad.sweep import (
    cells,
    load_grid,
    plan,
    register_best,
    run_cell,
    run_sweep,
)
from alad.tracking import Tracker


def test_grid_cells_and_keys(tiny_grid):
    grid = load_grid(tiny_grid)
    every = cells(grid)
    # large + compressed + alad-frozen, 2 seeds each
    assert sorted("/".join(c.name.rsplit("/", 2)[1:]) for c in every) == sorted(
        f"{m}/s{s}" for m in ("large", "compressed", "alad-frozen-n3") for s in (1, 2)
    )
    assert len({c.key for c in every}) == 6
    frozen = [c for c in every if c.mode == "alad-frozen"]
    # phases 1-2 are shared by the seeds of a mode: one folder each, whatever the seed
    assert len({c.align_dir("phase1") for c in frozen}) == 1
    assert len({c.align_dir("phase2") for c in frozen}) == 1
    # the key is a pure function of the config: reloading the grid gives the same keys
    assert [c.key for c in cells(load_grid(tiny_grid))] == [c.key for c in every]


def test_bad_grid_is_one_clear_error(tmp_path):
    path = tmp_path / "g.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "compressed": ["x"],
                "modes": ["warp"],
                "seeds": [1],
                "tasks": {"pos": {"train": "a", "test": "b"}},
            }
        )
    )
    with pytest.raises(ConfigError, match=r"g\.yaml: .*mode 'warp'"):
        load_grid(path)
    path.write_text(
        yaml.safe_dump(
            {
                "compressed": ["x"],
                "modes": ["compressed"],
                "seeds": [1],
                "tasks": {"pos": {"train": "a"}},
            }
        )
    )
    with pytest.raises(ConfigError, match=r"tasks\.pos\.test"):
        load_grid(path)


def test_a_bad_value_in_the_grids_set_names_the_grid_file(tiny_grid):
    grid = yaml.safe_load(tiny_grid.read_text())
    grid["set"]["phase3.epochs"] = 1000
    tiny_grid.write_text(yaml.safe_dump(grid))
    with pytest.raises(ConfigError, match=rf"\({tiny_grid}, task pos\): phase3\.epochs: .*100"):
        cells(load_grid(tiny_grid))


class Interrupted(Exception):
    pass


def test_sweep_skips_finished_cells_after_an_interruption(tiny_grid, tmp_path):
    grid = load_grid(tiny_grid)
    ran: list[str] = []

    def run_then_stop(cell):
        if len(ran) == 3:
            raise Interrupted  # as if the machine went away during the 4th cell
        ran.append(cell.key)
        return run_cell(cell)

    with pytest.raises(Interrupted):
        for _ in run_sweep(grid, run=run_then_stop):
            pass
    results = [r.record for r in load_results(grid.results)]
    assert sorted(r["key"] for r in results) == sorted(ran)
    first = {r["key"]: r["finished"] for r in results}

    rerun: list[str] = []

    def count(cell):
        rerun.append(cell.key)
        return run_cell(cell)

    lines = [line for _, _, line in run_sweep(load_grid(tiny_grid), run=count)]
    assert len(rerun) == 3 and not set(rerun) & set(ran)  # only the missing cells ran
    assert lines[-1].startswith("6/6 cells done")
    results = {r.record["key"]: r.record for r in load_results(grid.results)}
    assert len(results) == 6
    assert all(results[k]["finished"] == t for k, t in first.items())  # untouched
    frozen = next(r for r in results.values() if r["cell"]["mode"] == "alad-frozen")
    assert frozen["alignment"]["phase2"]["after"]["mse"] > 0
    assert frozen["data"]["train"] == 24 and frozen["data"]["test"] == 6
    assert 0 <= frozen["test"]["main"] <= 1
    assert list(run_sweep(load_grid(tiny_grid), run=count)) == []  # all done: nothing runs

    # the registry keeps one model per Table-1 cell: the seed with the best dev score
    tracker = Tracker(uri=f"sqlite:///{tmp_path}/mlflow.db", experiment="sweep-test")
    registered = register_best(grid, tracker)
    assert sorted(r["group"].rsplit("/", 1)[-1] for r in registered) == sorted(
        ["large", "compressed", "alad-frozen-n3"]
    )
    for r in registered:
        seeds = [x for x in results.values() if x["group"] == r["group"]]
        best = max(seeds, key=lambda x: x["dev"]["main"])
        tags = tracker.client.get_model_version(r["name"], r["version"]).tags
        assert tags["seed"] == str(best["cell"]["seed"]) and tags["seeds"] in ("1,2", "2,1")
    assert register_best(grid, tracker) == []  # each cell once


def test_a_time_box_ends_the_sweep_inside_a_cell_and_the_next_run_resumes_it(tiny_grid):
    grid = load_grid(tiny_grid)

    def late(cell):  # the box (about a second) ends while this cell trains
        time.sleep(1.5)
        return run_cell(cell)

    assert list(run_sweep(grid, max_minutes=0.02, run=late)) == []  # ends quietly
    assert not grid.results.exists()  # nothing finished ...
    assert len(list(grid.runs.rglob("state/state.pt"))) == 1  # ... one cell saved its state
    todo, prog = plan(grid)
    stopped = next(c for c in todo if (c.out / "state").is_dir())
    assert 0 < stopped.fraction_done() < 1  # its ETA counts only what is left
    assert all(c.fraction_done() == 0 for c in todo if c is not stopped)
    lines = [line for _, _, line in run_sweep(load_grid(tiny_grid))]
    assert lines[-1].startswith("6/6 cells done")
    assert not list(grid.runs.rglob("state/state.pt"))  # finished: no state is left behind


def test_corrupt_result_names_the_file(tiny_grid):
    grid = load_grid(tiny_grid)
    bad = grid.results / "pos" / "deadbeef0000.json"
    bad.parent.mkdir(parents=True)
    bad.write_text("{ half a file")
    with pytest.raises(ResultError, match="deadbeef0000.json"):
        load_results(grid.results)


ROOT = Path(__file__).resolve().parents[1]


def test_the_table1_grid_and_its_dvc_stages_agree():
    grid = load_grid(ROOT / "sweeps" / "table1.yaml")
    every = cells(grid)
    assert len({c.key for c in every}) == len(every)
    # phase 1 once per (M_C, n), shared by every task; phase 2 once per (M_C, n, task)
    adapters = [c for c in every if c.align is not None]
    assert len({c.align_dir("phase1") for c in adapters}) == len(
        {(c.compressed, c.window) for c in adapters}
    )
    assert len({c.align_dir("phase2") for c in adapters}) == len(
        {(c.compressed, c.window, c.task) for c in adapters}
    )
    stages = yaml.safe_load((ROOT / "sweeps" / "dvc.yaml").read_text())["stages"]
    assert stages["table1"]["foreach"] == list(grid.tasks)
    assert "sweeps/table1.yaml" in stages["table1"]["do"]["cmd"]
    (out,) = stages["table1"]["do"]["metrics"]
    assert out == {f"{grid.results}/${{item}}": {"cache": False, "persist": True}}


# Keys of the committed grid, from the code that produced results/table1/ (a cell's result is
# found by its key): a config change that alters them orphans every committed result. If this
# fails, a new config field entered the key: list it in alad.results.KEY_OMITTED_AT_DEFAULT if its
# default reproduces the earlier runs, else accept that the grid is rerun and update the pins.
PINNED = {
    # phase3.head_lr entered the POS/NER cells (the grid before it: results/table1-v1 at b58efae)
    "pos/minilm-l3/alad-frozen-n5/s13": ("69978c71f91a", "b83364178189", "76c5220fb4e1"),
    "pos/minilm-l6/alad-joint-n1/s13": ("3b03cd539f2d", "5e06f3f22be6", "853e3c3330e1"),
    "ner/mpnet-base:prune4/lora-alad-n5/s15": ("202233d82b21", "98006e99d488", "273985996d26"),
    "qa/minilm-l6/alad-joint-n5/s13": ("b7fc9527fa58", "65e7edffa89c", "437d069fe9b2"),  # QA budget
    "pos/mpnet-base/large/s14": ("2dcbfcf722dd", None, None),
}


def test_keys_of_the_committed_grid_do_not_move():
    grid = load_grid(Path(__file__).resolve().parents[1] / "sweeps" / "table1.yaml")
    found = {}
    for c in cells(grid):
        if c.name in PINNED:
            dirs = [
                c.align_dir(p).name.split("-", 1)[1] if c.align else None
                for p in ("phase1", "phase2")
            ]
            found[c.name] = (c.key, *dirs)
    assert found == PINNED


def test_a_field_listed_as_omitted_at_default_leaves_keys_alone(tiny_grid, monkeypatch):
    import alad.sweep.cell as sweep

    before = [c.key for c in cells(load_grid(tiny_grid))]
    listed = sweep.KEY_OMITTED_AT_DEFAULT
    monkeypatch.setattr(sweep, "KEY_OMITTED_AT_DEFAULT", {**listed, "phase3.epochs": 1})
    assert [c.key for c in cells(load_grid(tiny_grid))] != before  # the field left the key...
    monkeypatch.setattr(sweep, "KEY_OMITTED_AT_DEFAULT", {**listed, "phase3.epochs": 2})
    assert [c.key for c in cells(load_grid(tiny_grid))] == before  # ...only at that value


def test_only_selects_cells_by_shell_pattern_and_keeps_their_keys(tiny_grid):
    grid = load_grid(tiny_grid)
    every = {c.name: c.key for c in cells(grid)}
    large = cells(grid, only=["*/large/*"])
    assert {c.mode for c in large} == {"large"} and len(large) == 2
    assert all(every[c.name] == c.key for c in large)  # a part of the grid is the same cells
    both = cells(grid, only=["*/large/s1", "*/compressed/s2"])
    assert sorted(c.mode for c in both) == ["compressed", "large"]
    assert cells(grid, only=["nothing/*"]) == []


def test_a_committed_phase1_adapter_spares_a_fresh_machine_phase1(tiny_grid, tmp_path, monkeypatch):
    import alad.phases.align as align
    from alad.checkpoint import load_checkpoint
    from alad.sweep import align_cell

    data = yaml.safe_load(tiny_grid.read_text())
    data["alignments"] = str(tmp_path / "store")
    tiny_grid.write_text(yaml.safe_dump(data))
    cell = next(c for c in cells(load_grid(tiny_grid)) if c.mode == "alad-frozen")
    first = align_cell(cell)
    stored = load_checkpoint(cell.stored_phase1)
    assert stored.manifest["dtype"] == "float16" and stored.trainer_state is None
    assert stored.manifest["alignment"] == first["phase1"]
    trained = load_checkpoint(cell.align_dir("phase1")).adapter.state_dict()
    for name, weight in stored.adapter.state_dict().items():  # float32 again, rounded
        assert weight.dtype == trained[name].dtype
        assert (weight - trained[name]).abs().max() <= 1e-3 * trained[name].abs().max()

    # a fresh machine: no runs, no feature caches; only the committed store and the results
    import shutil

    shutil.rmtree(cell.grid.runs)
    shutil.rmtree(tmp_path / "features")
    phases: list[str] = []
    real = align.run_alignment
    monkeypatch.setattr(align, "run_alignment", lambda s, phase, **kw: (phases.append(phase),
                        real(s, phase, **kw))[1])  # fmt: skip
    again = align_cell(cell)
    assert phases == ["phase2"]  # phase 1 was not trained again
    assert not cell.align_dir("phase1").exists()
    assert again["phase1"] == first["phase1"]
    # phase 2 started from the stored copy both times, so it ends where it ended before
    assert again["phase2"]["after"] == pytest.approx(first["phase2"]["after"], rel=1e-5)

    # a damaged stored copy is an error naming the file, never a silent retrain
    (cell.stored_phase1 / "adapter.safetensors").write_bytes(b"junk")
    with pytest.raises(Exception, match="adapter.safetensors"):
        align_cell(cell)


def test_eta_is_not_inflated_by_the_cell_that_trained_phase1(tiny_grid):
    from alad.sweep import plan

    todo, prog = plan(load_grid(tiny_grid))
    a, b, c = todo[:3]
    prog.finished(a, 100.0 * a.cost)  # 100 s per unit of cost
    prog.finished(b, 100.0 * b.cost + 3600.0)  # the same, plus an hour of phase 1
    line = prog.finished(c, 100.0 * c.cost)
    for x in todo[3:]:
        assert prog.predict(x) == pytest.approx(100.0 * x.cost)
    remaining = sum(x.cost for x in todo[3:])
    assert line == f"3/6 cells done, ETA {100.0 * remaining / 3600:.1f} h"


def test_eta_predicts_a_cell_from_another_seed_of_its_group(tiny_grid):
    from alad.sweep import plan

    todo, prog = plan(load_grid(tiny_grid))
    large = [x for x in todo if x.mode == "large"]
    cheap = next(x for x in todo if x.mode != "large")
    prog.finished(cheap, 100.0 * cheap.cost)
    prog.finished(large[0], 7.0)  # far cheaper than its cost says: the group's own figure wins
    assert prog.predict(large[1]) == 7.0
    other = next(x for x in prog.todo if x.group not in (cheap.group, large[0].group))
    # a group with no measured seed: the task's median seconds per unit of cost
    rates = sorted([100.0, 7.0 / large[0].cost])
    assert prog.predict(other) == pytest.approx(other.cost * (rates[0] + rates[1]) / 2)


def test_eta_starts_from_the_committed_cells_timings(tiny_grid):
    from alad.sweep import plan

    grid = load_grid(tiny_grid)
    todo, prog = plan(grid)
    everything = sum(x.cost for x in todo)
    assert prog.line() == f"0/6 cells done, ETA {60.0 * everything / 3600:.1f} h"  # the prior
    first, second = todo[:2]
    write_json({"seconds": 50.0 * first.cost}, first.result_path)  # another machine's cell
    write_json({"key": second.key}, second.result_path)  # a result without a timing: skipped
    todo, prog = plan(grid)
    assert len(todo) == 4 and prog.predict(todo[-1]) == pytest.approx(50.0 * todo[-1].cost)
    remaining = sum(x.cost for x in todo)
    assert prog.line() == f"2/6 cells done, ETA {50.0 * remaining / 3600:.1f} h"


def test_eta_counts_timings_from_this_kind_of_device(tiny_grid):
    from alad.sweep import Progress, cells

    grid = load_grid(tiny_grid)
    every = cells(grid)
    group = every[0].group
    a, b, c = [x for x in every if x.group == group][:2] + [every[-1]]
    write_json({"seconds": 900.0, "machine": {"device": "cpu"}}, a.result_path)
    write_json({"seconds": 20.0, "machine": {"device": "cuda:0"}}, b.result_path)
    assert Progress.of(every, "cpu").predict(c) == pytest.approx(900.0 / a.cost * c.cost)
    assert Progress.of(every, "cuda").predict(c) == pytest.approx(20.0 / b.cost * c.cost)
    # no timing from this kind yet: every timing counts
    assert Progress.of(every, "mps").measured == [(a, 900.0), (b, 20.0)]


def test_the_adapter_grid_reuses_table1s_and_the_teacher_grids_cells_and_gives_each_shape_its_own_alignment():  # noqa: E501
    """sweeps/adapter.yaml: its `compressed` and `large` cells have Table 1's keys and its H=1280
    full-rank cells the teacher grid's finetuned-head keys (adapter.rank at its default None is
    outside every key), so they are done in results/table1 / results/teacher; every other shape
    is its own cell and its own phases 1-2, aimed at the same teacher."""
    table1 = {c.key: c for c in cells(load_grid(ROOT / "sweeps" / "table1.yaml"))}
    teacher = {c.key: c for c in cells(load_grid(ROOT / "sweeps" / "teacher.yaml"))}
    grid = load_grid(ROOT / "sweeps" / "adapter.yaml")
    every = cells(grid)
    assert len(every) == 2 * (3 + 3 + 8 * 3)  # per task: large, compressed, 8 shapes x 3 seeds
    shared = [c for c in every if c.key in table1]
    assert {(c.mode, c.variant) for c in shared} == {("large", None), ("compressed", "m-c")}
    assert len(shared) == 2 * 6
    h1280 = [c for c in every if c.variant == "h1280"]
    # the teacher grid seeded finetuned-head where it won on dev: POS (and NER seed 13 only)
    assert len(h1280) == 2 * 3
    assert {c.seed for c in h1280 if c.key in teacher} == {13, 14, 15}
    assert {(c.task, c.seed) for c in h1280 if c.key not in teacher} == {("ner", 14), ("ner", 15)}
    assert {teacher[c.key].variant for c in h1280 if c.key in teacher} == {"finetuned-head"}
    for c in shared:  # the same computation, so the same (committed) result file
        assert (ROOT / "results" / "table1" / c.task / f"{c.key}.json").is_file(), c.name
    pos = [c for c in h1280 if c.task == "pos"]  # POS's are committed; NER's run in the grid
    assert all((ROOT / "results" / "teacher" / "pos" / f"{c.key}.json").is_file() for c in pos)
    lean = [c for c in every if c.align and c.variant != "h1280"]
    # '@large' resolved: per task the teacher grid's teacher (the best-dev `large` cell's model)
    aimed = {(c.task, c.settings.phase2.teacher) for c in lean + h1280}
    assert aimed == {
        (c.task, teacher[c.key].settings.phase2.teacher) for c in h1280 if c.seed == 13
    }
    assert len(aimed) == 2 and all(t.endswith("/model") for _, t in aimed)
    assert {c.settings.phase3.head_init for c in lean + h1280} == {"teacher"}
    shapes = {(c.settings.adapter.hidden, c.settings.adapter.rank) for c in lean}
    assert len({c.align_dir("phase1") for c in lean}) == len(shapes) == 7
    assert len({c.align_dir("phase2") for c in lean}) == 7 * 2
    # a config dumped today says rank: null; Table 1's committed configs have no rank at all
    from alad.results import NOT_IN_KEY, cell_key

    base = h1280[0]
    config = base._named(base.settings.model_dump(mode="json", exclude=NOT_IN_KEY))
    assert config["adapter"]["rank"] is None
    old = {**config, "adapter": {k: v for k, v in config["adapter"].items() if k != "rank"}}
    assert cell_key(config, True) == cell_key(old, True) == base.key
    assert cell_key({**config, "adapter": {**config["adapter"], "rank": 64}}, True) != base.key
