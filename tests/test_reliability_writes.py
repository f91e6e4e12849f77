"""Issue 24, the classes about writing: check before working, nothing half-made, one run per
cell, quarantine instead of overwrite. One row (or test) per example the issue found.

Where the issue is about the CLI, the CLI is a black box: a real `alad` process (its own
interpreter, no params.yaml in its folder) must exit with status 2 and print exactly one
`alad: error:` line naming the place, no traceback, and must have trained nothing. At 8ba5cf2
every row of CLI_CASES trained first and then died with an OSError traceback (the trained
model lost), except the QA row, which trained a model on 0 rows and reported it as finished.

These tests run as root here, and a chmod-read-only folder is writable to root: the rows that
need one are skipped under root (the rows with a path under a file, /dev/null/x or /proc
exercise the same check and fail for root too).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from conftest import tiny_cli_overrides, train_tiny_model, write_bio, write_squad

import alad.jobs as jobs_mod
import alad.phases.finetune as ft_mod
import alad.sweep.run as sweep_mod
from alad import stopping
from alad.atomic import CLAIM_STALE_SECONDS, OutputError, claim, ensure_writable_dir
from alad.checkpoint import clear_checkpoints, load_checkpoint
from alad.config import load_settings
from alad.jobs import finetune_job
from alad.phases.align import run_alignment
from alad.report import load_results
from alad.sweep import cells, load_grid, run_sweep

ROOT = Path(__file__).resolve().parents[1]
AS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
NEEDS_NON_ROOT = pytest.mark.skipif(
    AS_ROOT,
    reason="running as root: a chmod-read-only folder is writable to root (the rows with a "
    "path under a file, /dev/null/x and /proc cover the same check)",
)


def _sets(pairs: list[str]) -> list[str]:
    return [arg for pair in pairs for arg in ("--set", pair)]


@dataclass
class Art:
    """Files every CLI row uses, built once for the module."""

    root: Path
    tiny: list[str]  # --set pairs: models, corpus, cache, runs_dir, one phase-1 epoch
    ner: list[str]  # + phase 3 on the toy NER files
    model: Path  # a saved NER model, for `alad evaluate`
    test: Path  # its test file
    a_file: Path  # a regular file, where folders are expected
    read_only: Path  # a chmod-555 folder (writable to root)
    qa_one_article: Path  # a SQuAD file of one article: carving dev takes it whole
    qa_test: Path


@pytest.fixture(scope="module")
def art(tiny_models, tmp_path_factory) -> Art:
    root = tmp_path_factory.mktemp("writes")
    tiny, ner = tiny_cli_overrides(root, tiny_models, phase3_epochs=1)
    (root / "trained").mkdir()
    model = train_tiny_model(root / "trained", tiny_models)
    a_file = root / "a-file"
    a_file.write_text("not a folder\n")
    read_only = root / "read-only"
    read_only.mkdir()
    read_only.chmod(0o555)
    qa = write_squad(root / "qa-one-article.json", 6, 1)
    return Art(root, tiny, ner, model, root / "test.tsv", a_file, read_only, qa,
               write_squad(root / "qa-test.json", 4, 2))  # fmt: skip


def alad(argv: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """`alad ARGV` in a process of its own, importing this checkout's alad."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ALAD_CACHE_HOME": str(cwd / "cache")}
    return subprocess.run(
        [sys.executable, "-m", "alad.cli", *argv, "-q"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _grid_with_results_in(art: Art, tmp: Path, tiny_grid: Path) -> list[str]:
    grid = yaml.safe_load(tiny_grid.read_text())
    grid["results"] = str(art.a_file)
    path = tmp / "grid.yaml"
    path.write_text(yaml.safe_dump(grid))
    return ["sweep", "run", str(path)]


@dataclass
class Case:
    id: str
    argv: Callable[[Art, Path], list[str]]  # (artifacts, a fresh folder) -> the command
    names: Callable[[Art, Path], Path]  # the place the error line must name
    says: str  # a piece of the error line: why, or what to do


def _finetune(art: Art, *more: str) -> list[str]:
    return ["finetune", "--profile", "tiny", *_sets(art.ner), *more]


def _align(art: Art, *more: str) -> list[str]:
    return ["align", "phase1", "--profile", "tiny", *_sets(art.tiny), *more]


def _evaluate(art: Art, *more: str) -> list[str]:
    return ["evaluate", str(art.model), "--test", str(art.test), "--profile", "tiny", *more]


CLI_CASES = [
    # -- check before working: each trained first and lost the model at its first save
    Case("finetune-out-read-only",
         lambda a, t: _finetune(a, "--out", str(a.read_only / "ner")),
         lambda a, t: a.read_only / "ner", "Permission denied"),
    Case("align-out-read-only",
         lambda a, t: _align(a, "--out", str(a.read_only / "p1")),
         lambda a, t: a.read_only / "p1", "Permission denied"),
    Case("finetune-out-under-a-file",
         lambda a, t: _finetune(a, "--out", str(a.a_file / "ner")),
         lambda a, t: a.a_file / "ner", "is a file"),
    Case("finetune-out-is-a-file",
         lambda a, t: _finetune(a, "--out", str(a.a_file)),
         lambda a, t: a.a_file, "pass another --out"),
    Case("align-out-under-a-file",
         lambda a, t: _align(a, "--out", str(a.a_file / "p1")),
         lambda a, t: a.a_file / "p1", "is a file"),
    Case("align-out-in-proc",
         lambda a, t: _align(a, "--out", "/proc/alad-test/p1"),
         lambda a, t: Path("/proc/alad-test/p1"), "pass another --out"),
    Case("runs-dir-under-dev-null",
         lambda a, t: _align(a, "--set", "runs_dir=/dev/null/x"),
         lambda a, t: Path("/dev/null/x/phase1"), "/dev/null is not a folder"),
    Case("cache-read-only",
         lambda a, t: _finetune(a, "--set", f"cache.dir={a.read_only / 'f'}", "--out", str(t)),
         lambda a, t: a.read_only / "f", "cache.dir"),
    Case("cache-under-a-file",
         lambda a, t: _align(a, "--set", f"cache.dir={a.a_file / 'f'}", "--out", str(t)),
         lambda a, t: a.a_file / "f", "cache.dir"),
    Case("evaluate-json-read-only",
         lambda a, t: _evaluate(a, "--json", str(a.read_only / "r.json")),
         lambda a, t: a.read_only / "r.json", "--json"),
    Case("evaluate-json-under-a-file",
         lambda a, t: _evaluate(a, "--json", str(a.a_file / "r.json")),
         lambda a, t: a.a_file / "r.json", "--json"),
    Case("evaluate-json-is-a-folder",
         lambda a, t: _evaluate(a, "--json", str(t)),
         lambda a, t: t, "it is a folder"),
    Case("evaluate-predictions-read-only",
         lambda a, t: _evaluate(a, "--predictions", str(a.read_only / "p")),
         lambda a, t: a.read_only / "p", "--predictions"),
    Case("evaluate-predictions-under-a-file",
         lambda a, t: _evaluate(a, "--predictions", str(a.a_file / "p")),
         lambda a, t: a.a_file / "p", "--predictions"),
    Case("report-out-under-a-file",
         lambda a, t: ["report", "--results", str(t), "--out", str(a.a_file / "r")],
         lambda a, t: a.a_file / "r", "pass another --out"),
    Case("pipeline-root-under-a-file",
         lambda a, t: ["stage", "prepare", "--profile", "tiny", *_sets(a.ner),
                       "--root", str(a.a_file / "pipe")],
         lambda a, t: a.a_file / "pipe", "--root"),
    # -- nothing half-made: trained two empty epochs, saved a model, called it finished
    Case("qa-train-all-carved-into-dev",
         lambda a, t: ["finetune", "--profile", "tiny", *_sets(a.tiny), *_sets([
             "phase3.task=qa", "phase3.mode=compressed", "phase3.stride=8", "phase3.epochs=1",
             f"phase3.train={a.qa_one_article}", f"phase3.test={a.qa_test}"]),
             "--out", str(t / "qa")],
         lambda a, t: a.qa_one_article, "0 examples"),
]  # fmt: skip
READ_ONLY = {c.id for c in CLI_CASES if "read-only" in c.id}


@pytest.mark.parametrize(
    "case",
    [pytest.param(c, marks=[NEEDS_NON_ROOT] if c.id in READ_ONLY else []) for c in CLI_CASES],
    ids=[c.id for c in CLI_CASES],
)
def test_cli_refuses_before_working(case, art, tmp_path):
    done = alad(case.argv(art, tmp_path), cwd=tmp_path)
    errors = [line for line in done.stderr.splitlines() if line.startswith("alad: error:")]
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert len(errors) == 1, done.stderr[-3000:]
    assert str(case.names(art, tmp_path)) in errors[0] and case.says in errors[0], errors[0]
    # nothing trained: no epoch logged, no checkpoint or model folder anywhere it could go
    assert " epoch 1" not in done.stderr, done.stderr[-3000:]
    for place in (tmp_path, art.root / "runs", art.read_only):
        made = [p for p in place.rglob("*") if p.name in ("model", "epoch-0001", "state")]
        assert not made, made


def test_a_grid_whose_results_is_a_file_runs_no_cell(art, tmp_path, tiny_grid):
    done = alad(_grid_with_results_in(art, tmp_path, tiny_grid), cwd=tmp_path)
    errors = [line for line in done.stderr.splitlines() if line.startswith("alad: error:")]
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert len(errors) == 1 and f"{art.a_file}/pos" in errors[0], errors
    assert "`results:`" in errors[0] and str(tmp_path / "grid.yaml") in errors[0]
    runs = Path(yaml.safe_load(tiny_grid.read_text())["runs"])
    assert not runs.exists() or not list(runs.rglob("model")), "no cell ran"


def test_the_check_tries_for_real_and_creates_nothing(tmp_path):
    missing = tmp_path / "a" / "b"
    assert ensure_writable_dir(missing, "thing", "fix") == missing
    assert not (tmp_path / "a").exists(), "a command that then fails leaves no empty folders"
    assert list(tmp_path.iterdir()) == [], "the probe file is removed"
    with pytest.raises(OutputError, match=r"/dev/null/x: cannot write the thing there .*; fix"):
        ensure_writable_dir(Path("/dev/null/x"), "thing", "fix")


# -- nothing half-made: a run whose test failed is not finished --------------------------------


def test_a_rerun_after_a_failed_test_only_tests_again(tiny_settings, tmp_path, monkeypatch):
    """At 8ba5cf2 a failure in the test (after training) left model/ and metrics.json, and the
    rerun said "already finished" and failed the same way until the folder was deleted."""
    s = load_settings(None, "tiny", _ner_pairs(tiny_settings, tmp_path))
    out = tmp_path / "ner"
    real_evaluate, trained = jobs_mod.evaluate_model, []

    def broken(*args, **kwargs):
        raise OSError("the disk went away during the test")

    monkeypatch.setattr(jobs_mod, "evaluate_model", broken)
    real_train = ft_mod._train_epoch
    monkeypatch.setattr(
        ft_mod, "_train_epoch", lambda r, e, p=None: trained.append(e) or real_train(r, e, p)
    )
    with pytest.raises(OSError, match="disk went away"):
        finetune_job(s, out=out, progress=False)
    assert trained == [0, 1]
    assert not (out / "metrics.json").exists(), "nothing a rerun takes for finished"
    assert (out / "state" / "state.pt").is_file(), "the trained state is kept"

    monkeypatch.setattr(jobs_mod, "evaluate_model", real_evaluate)
    result = finetune_job(s, out=out, progress=False)
    assert trained == [0, 1], "the rerun trains nothing"
    assert result.test["main"] >= 0 and "table_row" in result.test
    assert json.loads((out / "metrics.json").read_text())["test"]["main"] == result.test["main"]
    assert not (out / "state").exists()

    # a metrics.json without test scores (what a failed run left before) is not finished
    record = json.loads((out / "metrics.json").read_text())
    (out / "metrics.json").write_text(json.dumps({k: v for k, v in record.items() if k != "test"}))
    finetune_job(s, out=out, progress=False)
    assert trained == [0, 1, 0, 1], "trained again, since its state is gone"


def _ner_pairs(tiny_settings, tmp_path: Path) -> list[str]:
    m = tiny_settings.models
    return [
        f"models.compressed={m.compressed}",
        f"models.large={m.large}",
        f"cache.dir={tmp_path / 'features'}",
        "phase3.task=ner",
        "phase3.mode=compressed",
        f"phase3.train={write_bio(tmp_path / 'train.tsv', 30, 1)}",
        f"phase3.dev={write_bio(tmp_path / 'dev.tsv', 8, 2)}",
        f"phase3.test={write_bio(tmp_path / 'test.tsv', 8, 3)}",
        "phase3.epochs=2",
    ]


# -- one run per cell ---------------------------------------------------------------------------


def test_two_sweeps_run_every_cell_exactly_once(tiny_grid, tmp_path):
    """At 8ba5cf2 two `alad sweep run` on a 6-cell grid ran 12 cells (same results)."""
    grid = yaml.safe_load(tiny_grid.read_text())
    grid["tasks"]["pos"]["large"] = False  # 4 cells: compressed and alad-frozen, 2 seeds each
    tiny_grid.write_text(yaml.safe_dump(grid))
    reference = {**grid, "results": str(tmp_path / "ref-results"), "runs": str(tmp_path / "ref")}
    (tmp_path / "ref.yaml").write_text(yaml.safe_dump(reference))

    env = {**os.environ, "PYTHONPATH": str(ROOT), "ALAD_CACHE_HOME": str(tmp_path / "cache")}
    argv = [sys.executable, "-m", "alad.cli", "sweep", "run", str(tiny_grid), "-q"]
    both = [
        subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]  # fmt: skip
    errs = [p.communicate(timeout=600)[1] for p in both]
    assert [p.returncode for p in both] == [0, 0], [err[-3000:] for err in errs]
    log = "".join(errs)
    runs = [line for line in log.splitlines() if "alad.sweep:" in line and " finished (" in line]
    every = cells(load_grid(tiny_grid))
    assert len(every) == 4 and len(runs) == 4, runs  # every cell once, by either process
    assert sorted(line.split(" finished (")[0].rsplit(" ", 1)[-1] for line in runs) == sorted(
        c.name for c in every
    )
    results = {r.record["key"]: r.record for r in load_results(Path(grid["results"]))}
    assert set(results) == {c.key for c in every}
    assert not list(Path(grid["runs"]).rglob("*.claim")), "every claim is released"

    one = {rec["key"]: rec for _, rec, _ in run_sweep(load_grid(tmp_path / "ref.yaml"))}
    for key, rec in results.items():  # the same results as one process
        assert rec["test"]["main"] == one[key]["test"]["main"], key
        assert rec["dev"]["main"] == one[key]["dev"]["main"], key


def _fake_cell_run(ran: list[str]) -> Callable:
    def run(cell, progress=False):
        ran.append(cell.key)
        if cell.seed == 99:
            raise stopping.Stopped("stopped", "SIGTERM")
        record = {"key": cell.key, "test": {"main": 0.5}, "seconds": 1.0}
        cell.result_path.parent.mkdir(parents=True, exist_ok=True)
        cell.result_path.write_text(json.dumps(record))
        return record

    return run


def test_a_claimed_cell_is_skipped_and_claims_are_released(tiny_grid, monkeypatch):
    grid = load_grid(tiny_grid)
    every = cells(grid)
    ran: list[str] = []
    monkeypatch.setattr(sweep_mod, "_run_cell", _fake_cell_run(ran))
    held = claim(every[0].claim_path)  # another runner (here: this process) is running it
    assert held is not None and claim(every[0].claim_path) is None
    lines = list(run_sweep(grid))
    assert sorted(ran) == sorted(c.key for c in every[1:]) and len(lines) == 5
    assert [c.claim_path.exists() for c in every] == [True] + [False] * 5
    held.release()
    assert not every[0].claim_path.exists()
    assert [c.key for c, _, _ in run_sweep(grid)] == [every[0].key]


def test_a_claim_is_released_on_a_stop_and_on_an_error(tiny_grid, monkeypatch):
    grid = yaml.safe_load(tiny_grid.read_text())
    grid["seeds"] = [99]  # the fake run stops by SIGTERM
    tiny_grid.write_text(yaml.safe_dump(grid))
    ran: list[str] = []
    monkeypatch.setattr(sweep_mod, "_run_cell", _fake_cell_run(ran))
    with pytest.raises(stopping.Stopped):
        list(run_sweep(load_grid(tiny_grid)))
    monkeypatch.setattr(sweep_mod, "_run_cell", lambda c, p=False: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        list(run_sweep(load_grid(tiny_grid)))
    assert len(ran) == 1 and not list(Path(grid["runs"]).rglob("*.claim"))


def _dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


@pytest.mark.parametrize("how", ["dead-pid-on-this-host", "untouched-too-long", "live"])
def test_a_stale_claim_is_taken_over_with_a_warning(how, tmp_path, caplog):
    import socket

    path = tmp_path / "cell.claim"
    pid = _dead_pid() if how == "dead-pid-on-this-host" else os.getpid()
    host = socket.gethostname() if how != "untouched-too-long" else "another-machine"
    path.write_text(json.dumps({"pid": pid, "host": host, "time": "then", "nonce": "x"}))
    if how == "untouched-too-long":
        old = path.stat().st_mtime - CLAIM_STALE_SECONDS - 60
        os.utime(path, (old, old))
    with caplog.at_level(logging.WARNING, logger="alad.atomic"):
        taken = claim(path)
    if how == "live":
        assert taken is None and json.loads(path.read_text())["nonce"] == "x"
        return
    assert taken is not None and json.loads(path.read_text())["pid"] == os.getpid()
    assert "stale claim" in caplog.text and str(path) in caplog.text
    taken.release()
    assert not path.exists() and [p.name for p in tmp_path.iterdir()] == []


# -- quarantine instead of overwrite ------------------------------------------------------------


def test_a_tampered_epoch_is_kept_aside_and_named(tiny_settings, tmp_path, caplog):
    s = tiny_settings.model_copy(
        update={"phase1": tiny_settings.phase1.model_copy(update={"epochs": 3})}
    )
    out = tmp_path / "phase1"
    run_alignment(s, "phase1", out=out, progress=False)
    weights = out / "epoch-0003" / "adapter.safetensors"
    tampered = weights.read_bytes()[:-8] + b"tampered"
    weights.write_bytes(tampered)
    with caplog.at_level(logging.WARNING):
        result = run_alignment(s, "phase1", out=out, progress=False)
    kept = [p for p in out.iterdir() if p.name.startswith("epoch-0003.damaged-")]
    assert len(kept) == 1, list(out.iterdir())
    assert (kept[0] / "adapter.safetensors").read_bytes() == tampered, "the evidence is kept"
    assert str(kept[0]) in caplog.text and "using" in caplog.text
    assert result.checkpoint == out / "epoch-0003"
    assert load_checkpoint(out).dir == out / "epoch-0003"  # trained again, intact
    clear_checkpoints(out)  # what a run of another config does first: epochs only
    assert [p.name for p in out.iterdir() if p.is_dir()] == [kept[0].name]
