"""Reliability, second round (issue 24), what alad reads: every file it reads back or is given is
validated and bounded, and a bad one ends as one `alad: error:` line naming the file and the
field (exit status 2, no traceback), never a traceback or a silent acceptance.

One row per example of the issue, with what happened before (at 8ba5cf2):
- CLI rows run `python -m alad.cli` as a black box, in a fresh process each (all of them at
  once, in a few threads, when the module starts); `alad report` rows also check that `--out`
  is left exactly as it was.
- Library rows (manifests, SQuAD) call the reader and check the error and its message.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from safetensors.torch import save_file

from alad.adapter import AlignmentAdapter
from alad.checkpoint import CheckpointError, load_checkpoint, load_trainer_state, save_checkpoint
from alad.data.readers import read_squad
from alad.errors import DataFormatError, ResultError
from alad.report import write_report
from alad.results import read_latency, read_result

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = sorted(
    p
    for folder in ("results/table1", "results/teacher", "experiments/results/lora-epoch1")
    for p in (ROOT / folder).rglob("*.json")
)
OLD_OUT = {"table1.md": b"the old table\n", "pareto.png": b"old plot", "curves.png": b"old curves"}


def _base_result() -> dict[str, Any]:
    """A committed NER result with phases 1-2 (every field of a result is filled)."""
    for path in COMMITTED:
        record = json.loads(path.read_text())
        if record["cell"]["task"] == "ner" and record["alignment"]:
            return record
    raise AssertionError("no committed NER result with an alignment record")


def at(dotted: str, value: Any) -> Callable[[dict], None]:
    """A damage: set the field `dotted` (list items by index) to `value`."""

    def damage(record: dict) -> None:
        *parents, leaf = dotted.split(".")
        node: Any = record
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        node[int(leaf) if isinstance(node, list) else leaf] = value

    return damage


def _forge_key(record: dict) -> None:
    record["key"] = "0123456789ab"  # and the file is named after it


def _forge_config(record: dict) -> None:
    record["config"]["phase3"]["lr"] = 0.5  # the key stays: it no longer is the config's hash


# ---------------------------------------------------------------------------------------------
# The CLI rows


@dataclass(frozen=True)
class Case:
    id: str
    before: str  # at 8ba5cf2
    build: Callable[[Path], list[str]]  # writes the case's files under a folder -> argv
    needles: tuple[str, ...]  # what the error line names ("{d}": the case's folder)
    report_out: bool = False  # an `alad report` row: its --out must be left untouched


def _report(d: Path, latency: Path | None = None) -> list[str]:
    out = d / "out"
    out.mkdir()
    for name, data in OLD_OUT.items():
        (out / name).write_bytes(data)
    return [
        "report",
        "--results", d / "results",
        "--latency", latency or d / "no-latency.json",
        "--out", out,
        "--grid", d / "no-grid.yaml",
    ]  # fmt: skip


def result_case(
    id: str, damage: Callable[[dict], None], needle: str, before: str, name: str | None = None
) -> Case:
    """`alad report` on a results folder with one damaged result (named after its key unless
    `name` is given)."""

    def build(d: Path) -> list[str]:
        record = _base_result()
        damage(record)
        path = d / "results" / "ner" / (name or f"{record['key']}.json")
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(record))  # NaN and Infinity as Python's json writes them
        return _report(d)

    return Case(id, before, build, (f"{{d}}/results/ner/{name or ''}", needle), report_out=True)


def _folder_named_json(d: Path) -> list[str]:
    (d / "results" / "ner" / "x.json").mkdir(parents=True)
    return _report(d)


def _latency_speedup_fast(d: Path) -> list[str]:
    data = json.loads((ROOT / "results" / "latency.json").read_text())
    data["rows"][0]["speedup"] = "fast"
    (d / "latency.json").write_text(json.dumps(data))
    shutil.copytree(COMMITTED[0].parent.parent, d / "results")
    return _report(d, d / "latency.json")


def _write(name: str, text: str | bytes, *argv: str) -> Callable[[Path], list[str]]:
    """A case that writes one file (its path replaces "{f}" in argv)."""

    def build(d: Path) -> list[str]:
        path = d / name
        path.write_bytes(text.encode() if isinstance(text, str) else text)
        return [a.replace("{f}", str(path)) for a in argv]

    return build


def _folder(*argv: str) -> Callable[[Path], list[str]]:
    def build(d: Path) -> list[str]:
        (d / "folder.yaml").mkdir()
        return [a.replace("{f}", str(d / "folder.yaml")) for a in argv]

    return build


def _laughs(indent: str = "") -> str:
    """A YAML "billion laughs": 9 levels of 9 aliases each, ~4e8 strings once expanded."""
    lines = [f'{indent}l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, 10):
        lines.append(f"{indent}l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]")
    return "\n".join(lines) + "\n"


GRID = """\
results: results
runs: runs
compressed: [minilm-l6]
modes: [compressed, alad-frozen]
window: {window}
seeds: {seeds}
set: {set}
tasks:
  pos:
    train: train.conllu
    test: test.conllu
"""


def grid(window: str = "3", seeds: str = "[1, 2]", set: str = "{}", extra: str = "") -> str:
    return GRID.format(window=window, seeds=seeds, set=set) + extra


SET_LAUGHS = "\n" + _laughs("  ")
CASES = [
    # Reading back what alad itself wrote
    result_case("nan-score", at("test.main", math.nan), "test.main", "accepted; report written"),
    result_case("inf-score", at("test.accuracy", math.inf), "test.accuracy", "accepted"),
    result_case("1e308-score", at("test.f1_macro", 1e308), "test.f1_macro", "accepted"),
    result_case("history-type", at("history.0.dev_main", "high"), "history.0.dev_main", "accepted"),
    result_case("history-not-a-list", at("history", "x"), "history", "AttributeError traceback"),
    result_case("seconds-type", at("seconds", "long"), "seconds", "ValueError traceback"),
    result_case("machine-type", at("machine", ["vm"]), "machine", "AttributeError traceback"),
    result_case("data-type", at("data.train", "many"), "data.train", "accepted"),
    result_case("data-not-an-object", at("data", "x"), "data", "AttributeError traceback"),
    result_case("alignment-type", at("alignment", "yes"), "alignment", "AttributeError traceback"),
    result_case(
        "alignment-cosine-type",
        at("alignment.phase2.after.cosine", "high"),
        "alignment.phase2.after.cosine",
        "accepted",
    ),
    result_case("dev-type", at("dev", [0.5]), "dev", "accepted"),
    result_case("seed-true", at("cell.seed", True), "cell.seed", "accepted"),
    result_case("main-500-percent", at("test.main", 5.0), "test.main", "accepted"),
    result_case("window-negative", at("cell.window", -3), "cell.window", "accepted"),
    result_case("name-is-not-key", lambda r: None, "key", "accepted", name="0a0a0a0a0a0a.json"),
    result_case("forged-key", _forge_key, "key", "accepted", name="0123456789ab.json"),
    result_case("forged-config", _forge_config, "key", "accepted"),
    Case(
        "folder-named-x.json",
        "IsADirectoryError traceback",
        _folder_named_json,
        ("{d}/results/ner/x.json", "folder"),
        report_out=True,
    ),  # fmt: skip
    Case(
        "latency-speedup-fast",
        "accepted; report written",
        _latency_speedup_fast,
        ("{d}/latency.json", "rows.0.speedup"),
        report_out=True,
    ),  # fmt: skip
    # Files that are not what they claim
    Case(
        "params-dev-zero",
        "reads without bound (16 GB in 50 s)",
        lambda d: ["config", "show", "--params", "/dev/zero"],
        ("/dev/zero", "1 MiB"),
    ),  # fmt: skip
    Case(
        "params-alias-bomb",
        "MemoryError after a minute",
        _write(
            "params.yaml", _laughs() + "phase1: {epochs: 1}\n", "config", "show", "--params", "{f}"
        ),
        ("{d}/params.yaml", "aliases"),
    ),  # fmt: skip
    Case(
        "grid-set-alias-bomb",
        "MemoryError after a minute",
        _write("grid.yaml", grid(set=SET_LAUGHS), "sweep", "list", "{f}"),
        ("{d}/grid.yaml", "aliases"),
    ),  # fmt: skip
    Case(
        "grid-binary",
        "UnicodeDecodeError traceback",
        _write("grid.yaml", bytes(range(256)) * 4, "sweep", "list", "{f}"),
        ("{d}/grid.yaml", "not UTF-8"),
    ),  # fmt: skip
    Case(
        "grid-utf16",
        "UnicodeDecodeError traceback",
        _write("grid.yaml", grid().encode("utf-16"), "sweep", "list", "{f}"),
        ("{d}/grid.yaml", "UTF-16"),
    ),  # fmt: skip
    Case(
        "grid-directory",
        "IsADirectoryError traceback",
        _folder("sweep", "list", "{f}"),
        ("{d}/folder.yaml", "folder"),
    ),  # fmt: skip
    Case(
        "params-directory",
        "IsADirectoryError traceback",
        _folder("config", "show", "--params", "{f}"),
        ("{d}/folder.yaml", "folder"),
    ),  # fmt: skip
    # Silent acceptance
    Case(
        "params-flow-mapping-duplicate",
        "accepted, last wins",
        _write(
            "params.yaml", "phase1: {epochs: 2, epochs: 3}\n", "config", "show", "--params", "{f}"
        ),
        ("{d}/params.yaml", "'epochs' appears twice"),
    ),  # fmt: skip
    Case(
        "grid-duplicate-key",
        "accepted, last wins",
        _write("grid.yaml", grid(extra="seeds: [3]\n"), "sweep", "list", "{f}"),
        ("{d}/grid.yaml", "'seeds' appears twice"),
    ),  # fmt: skip
    Case(
        "set-epochs-true",
        "accepted as 1",
        lambda d: ["config", "show", "--set", "phase1.epochs=true"],
        ("phase1.epochs", "boolean"),
    ),  # fmt: skip
    Case(
        "grid-seeds-true",
        "accepted as seed 1",
        _write("grid.yaml", grid(seeds="[true, 2]"), "sweep", "list", "{f}"),
        ("{d}/grid.yaml", "seeds.0", "boolean"),
    ),  # fmt: skip
    Case(
        "grid-window-0",
        "an AlAd cell without phases 1-2, recorded as window 0",
        _write("grid.yaml", grid(window="0"), "sweep", "list", "{f}"),
        ("{d}/grid.yaml", "window"),
    ),  # fmt: skip
    Case(
        "max-cells-negative",
        "ran nothing, exit 0",
        _write("grid.yaml", grid(), "sweep", "run", "{f}", "--max-cells", "-1"),
        ("--max-cells", "-1"),
    ),  # fmt: skip
    Case(
        "max-minutes-negative",
        "ran nothing, exit 0",
        _write("grid.yaml", grid(), "sweep", "run", "{f}", "--max-minutes", "-1"),
        ("--max-minutes", "-1"),
    ),  # fmt: skip
]


def _env(base: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALAD_")}
    return {**env, "PYTHONPATH": str(ROOT), "ALAD_CACHE_HOME": str(base / "cache"),
            "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}  # fmt: skip


def run_alad(argv: list[Any], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "alad.cli", *map(str, argv)],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


@pytest.fixture(scope="module")
def ran(tmp_path_factory) -> dict[str, tuple[Path, subprocess.CompletedProcess]]:
    """Every CLI row, each in its own folder (also the working directory: no params.yaml)."""
    base = tmp_path_factory.mktemp("reliability-reads")
    env = _env(base)

    def one(case: Case) -> tuple[Path, subprocess.CompletedProcess]:
        d = base / case.id
        d.mkdir()
        return d, run_alad(case.build(d), d, env)

    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(zip([c.id for c in CASES], pool.map(one, CASES), strict=True))


def assert_one_error_line(proc: subprocess.CompletedProcess, *needles: str) -> str:
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("alad: error:")]
    assert proc.returncode == 2 and len(lines) == 1, (proc.returncode, proc.stderr)
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_a_bad_input_is_one_error_line_naming_the_file_and_the_field(ran, case):
    d, proc = ran[case.id]
    assert_one_error_line(proc, *(n.replace("{d}", str(d)) for n in case.needles))
    if case.report_out:  # nothing of the report was written, nothing old was replaced
        assert {p.name: p.read_bytes() for p in (d / "out").iterdir()} == OLD_OUT
        assert not [p for p in d.iterdir() if p.name.startswith(".out.")]


# ---------------------------------------------------------------------------------------------
# What was committed still reads, and the report is all or nothing


def test_every_committed_result_and_the_latency_file_validate():
    assert len(COMMITTED) >= 117 + 10  # Table 1's (36 of them moved to lora-epoch1) + teacher
    for path in COMMITTED:
        assert read_result(path)["key"] == path.stem
    assert read_latency(ROOT / "results" / "latency.json")["rows"]


def test_a_report_that_fails_while_plotting_leaves_out_untouched(tmp_path, monkeypatch):
    """Before: pareto.png was already replaced when a later step failed."""
    import alad.plots

    results = tmp_path / "results"
    shutil.copytree(COMMITTED[0].parent, results / COMMITTED[0].parent.name)
    out = tmp_path / "out"
    out.mkdir()
    for name, data in OLD_OUT.items():
        (out / name).write_bytes(data)

    def broken(*args, **kwargs):
        raise RuntimeError("the plot failed")

    monkeypatch.setattr(alad.plots, "plot_curves", broken)
    with pytest.raises(RuntimeError, match="the plot failed"):
        write_report(results, None, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == OLD_OUT
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "results"]  # no build left
    monkeypatch.undo()
    paths = write_report(results, None, out)
    assert all(paths[k].read_bytes() != OLD_OUT[paths[k].name] for k in paths)


def test_a_result_over_the_size_cap_is_refused_unread(tmp_path, monkeypatch):
    import alad.results

    monkeypatch.setattr(alad.results, "MAX_RESULT_BYTES", 1000)
    path = tmp_path / COMMITTED[0].name
    shutil.copy(COMMITTED[0], path)
    with pytest.raises(ResultError, match=rf"{path}: larger than 1,000 bytes"):
        read_result(path)


# ---------------------------------------------------------------------------------------------
# Manifests without a checksum list (before: loaded unchecked, a bit-flipped file scored)


def _drop_files(folder: Path) -> None:
    manifest = json.loads((folder / "manifest.json").read_text())
    del manifest["files"]
    (folder / "manifest.json").write_text(json.dumps(manifest))


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))


def test_a_checkpoint_without_checksums_is_refused_unless_allowed(tmp_path, monkeypatch, caplog):
    folder = save_checkpoint(tmp_path, "epoch-0001", AlignmentAdapter(8, 12, 3, 16), {})
    _drop_files(folder)
    _flip_last_byte(folder / "adapter.safetensors")  # nothing could notice
    with pytest.raises(CheckpointError, match=r"manifest\.json: no 'files' checksum list"):
        load_checkpoint(folder)
    monkeypatch.setenv("ALAD_ALLOW_UNCHECKED", "1")
    assert load_checkpoint(folder).dir == folder
    assert "loading it unchecked (ALAD_ALLOW_UNCHECKED=1)" in caplog.text


def test_a_weights_file_missing_from_the_checksum_list_is_refused(tmp_path):
    folder = save_checkpoint(tmp_path, "epoch-0001", AlignmentAdapter(8, 12, 3, 16), {})
    save_file({}, folder / "extra.safetensors")
    with pytest.raises(CheckpointError, match="extra.safetensors is not in its 'files'"):
        load_checkpoint(folder)


def test_a_resume_state_without_a_manifest_is_refused(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    import torch

    torch.save({"epoch": 1}, state / "state.pt")
    with pytest.raises(CheckpointError, match=r"no 'files' checksum list.*delete .*state"):
        load_trainer_state(state)


@pytest.fixture(scope="module")
def model_folder(tiny_models, tmp_path_factory) -> Path:
    """A saved NER model folder of the tiny in-test BERT, as phase 3 saves one."""
    from transformers import AutoTokenizer

    from alad.aligned_model import AlignedModel, save_model
    from alad.heads import build_head
    from alad.models.catalog import load_hf_encoder

    compressed, large = tiny_models
    labels = ["O", "B-PER", "I-PER"]
    model = AlignedModel(load_hf_encoder(str(compressed)), build_head("token", 32, len(labels)))
    manifest = {
        "task": "ner", "mode": "compressed", "labels": labels, "large": str(large),
        "compressed": str(compressed), "encoder_name": str(compressed), "encoder_spec": None,
        "max_length": 32, "stride": 8, "n_best": 20, "max_answer_length": 30,
        "null_threshold": 0.0,
    }  # fmt: skip
    out = tmp_path_factory.mktemp("model") / "model"
    return save_model(model, AutoTokenizer.from_pretrained(compressed), manifest, out)


def test_a_model_without_checksums_is_refused_unless_allowed(model_folder, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(model_folder, model)
    env = _env(tmp_path)
    assert run_alad(["predict", model, "the king was born"], tmp_path, env).returncode == 0
    _drop_files(model)
    _flip_last_byte(model / "head.safetensors")  # a bit-flipped head: scored as valid before
    proc = run_alad(["predict", model, "the king was born"], tmp_path, env)
    assert_one_error_line(proc, f"{model}/manifest.json", "'files'", "ALAD_ALLOW_UNCHECKED=1")
    allowed = run_alad(
        ["predict", model, "the king was born"], tmp_path, {**env, "ALAD_ALLOW_UNCHECKED": "1"}
    )
    assert allowed.returncode == 0 and "loading it unchecked" in allowed.stderr


# ---------------------------------------------------------------------------------------------
# Task data


def test_a_squad_question_said_answerable_without_answers_is_refused(tmp_path):
    """Before: read as an unanswerable question."""
    question = {"id": "q-7", "question": "When?", "is_impossible": False, "answers": []}
    data = {
        "data": [{"title": "t", "paragraphs": [{"context": "Born in 1990.", "qas": [question]}]}]
    }
    path = tmp_path / "squad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(DataFormatError, match=rf"{path}: .*'q-7'.*is_impossible is false"):
        read_squad(path)
    del question["is_impossible"]  # SQuAD 1.1 / `squad_v2` exports: no answers = unanswerable
    path.write_text(json.dumps(data))
    assert read_squad(path)[0].is_impossible
