"""Every bad input a hostile new user tried (issue 8) ends as one `alad: error:` line that names
the file (and line or field), with exit status 2: no traceback, and no silent acceptance.

One row per case: an id, the command (built on tiny in-test models and files), and what the
error line must say. Rows marked "accepted" were silently accepted before; the others were
tracebacks. The artifacts the rows damage (a phase-1 checkpoint, a saved model, an interrupted
phase-3 state) are built once for the module, through the CLI, and copied per row.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from conftest import (
    interrupt_on_call,
    tiny_cli_overrides,
    tiny_sentences,
    write_conllu,
    write_squad,
)
from safetensors.torch import save_file

import alad.phases.finetune as ft_mod
from alad.cli import main
from alad.config import load_settings

LATIN1 = "caf\xe9 city\n".encode("latin-1")  # é as one byte: not UTF-8


def _sets(pairs: list[str]) -> list[str]:
    return [arg for pair in pairs for arg in ("--set", pair)]


@dataclass
class Art:
    """The module's shared artifacts and the --set pairs that reproduce their config."""

    root: Path
    tiny: list[str]  # models, cache, runs_dir
    ner: list[str]  # + phase 3 on the toy NER files
    phase1: Path
    phase3: Path  # an interrupted phase-3 run: state/ after epoch 1, model/ of epoch 1


@pytest.fixture(scope="module")
def art(tiny_models, tmp_path_factory) -> Art:
    root = tmp_path_factory.mktemp("bad-inputs")
    tiny, ner = tiny_cli_overrides(root, tiny_models, phase3_epochs=2)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)  # no params.yaml here
        mp.setenv("ALAD_CACHE_HOME", str(root / "cache"))
        assert main(["align", "phase1", "-q", "--profile", "tiny", *_sets(tiny)]) == 0
        real = ft_mod._train_epoch
        dies_in_epoch_2 = interrupt_on_call(real, 2)
        mp.setattr(ft_mod, "_train_epoch", dies_in_epoch_2)
        with pytest.raises(KeyboardInterrupt):
            ft_mod.finetune(load_settings(None, "tiny", ner), out=root / "ner", progress=False)
    assert (root / "ner" / "state" / "state.pt").is_file()
    return Art(root, tiny, ner, root / "runs" / "phase1", root / "ner")


# -- ways to damage a file ----------------------------------------------------------------------


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def garbage(path: Path) -> None:
    path.write_bytes(b"\x8b\x02 certainly not what this file should be " * 8)


def rehash(folder: Path, name: str) -> None:
    """Update the manifest's checksum of `name` (if it has checksums): the damage is then seen
    by the check of the content itself, as in a folder written before checksums existed."""
    manifest = folder / "manifest.json"
    data = json.loads(manifest.read_text())
    if name in data.get("files", {}):
        data["files"][name] = hashlib.sha256((folder / name).read_bytes()).hexdigest()
        manifest.write_text(json.dumps(data))


def copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# -- the rows -----------------------------------------------------------------------------------


@dataclass
class Case:
    id: str
    build: Callable[[Art, Path], list[str]]  # (artifacts, a fresh folder) -> argv
    expect: str  # a piece of the error line
    names: str = ""  # another piece it must contain, e.g. the file name
    before: str = "traceback"  # what it did at 286efbe: "traceback" or "accepted"


def _file(tmp: Path, name: str, content: bytes | str) -> Path:
    path = tmp / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def _finetune(art: Art, *pairs: str) -> list[str]:
    return ["finetune", "-q", "--profile", "tiny", *_sets([*art.tiny, *pairs])]


Build = Callable[[Art, Path], list[str]]


def train_file(name: str, content: bytes | str, *pairs: str) -> Build:
    """`alad finetune` on a training file `name` holding `content`."""
    return lambda a, t: _finetune(a, f"phase3.train={_file(t, name, content)}", *pairs)


def squad_file(data: object) -> Build:
    return train_file("train.json", json.dumps({"version": "v2.0", "data": data}), *QA)


def one_question(context: object, qa: dict, *more: dict) -> Build:
    return squad_file([{"title": "t", "paragraphs": [{"context": context, "qas": [qa, *more]}]}])


def good_and_bad(write: Callable[[Path, int, int], Path], ext: str, add_bad, *pairs: str) -> Build:
    """`alad finetune` on valid toy train/dev/test files, the bad item added to `train`: wrong
    data must be refused even where the rest would train fine."""

    def build(art: Art, tmp: Path) -> list[str]:
        train, dev, test = (write(tmp / f"{n}.{ext}", 12, s) for s, n in enumerate(SPLITS, 1))
        add_bad({"train": train, "dev": dev, "test": test})
        return _finetune(art, *pairs, *(f"phase3.{n}={tmp / n}.{ext}" for n in SPLITS))

    return build


SPLITS = ("train", "dev", "test")


def squad_plus(qas: list[dict], context: str = "the king .", split: str = "train") -> Build:
    """Toy SQuAD files; `split` also gets a paragraph with `qas` (in `context`)."""

    def add(paths: dict[str, Path]) -> None:
        data = json.loads(paths[split].read_text())
        data["data"].append({"title": "x", "paragraphs": [{"context": context, "qas": qas}]})
        paths[split].write_text(json.dumps(data))

    return good_and_bad(write_squad, "json", add, *QA, "phase3.max_length=32")


def all_contexts_empty(paths: dict[str, Path]) -> None:
    data = json.loads(paths["test"].read_text())
    for article in data["data"]:
        for para in article["paragraphs"]:
            para["context"] = ""
            for qa in para["qas"]:
                qa.update(is_impossible=True, answers=[])
    paths["test"].write_text(json.dumps(data))


def conllu_upos(upos: str) -> Build:
    """Toy CoNLL-U files; train gets one more sentence whose word has UPOS `upos`."""
    line = "\t".join(["1", "king", "king", upos, "_", "_", "0", "_", "_", "_"])

    def add(paths: dict[str, Path]) -> None:
        with paths["train"].open("a") as f:
            f.write(f"# sent_id = bad\n{line}\n\n")

    return good_and_bad(write_conllu, "conllu", add, "phase3.task=pos")


def corpus_file(name: str, content: bytes | str) -> Build:
    """`alad align phase1` on a corpus file."""
    return lambda a, t: [
        *["align", "phase1", "-q", "--profile", "tiny"],
        *_sets([*a.tiny, f"phase1.corpus={_file(t, name, content)}"]),
    ]


def params_file(content: bytes | str, *args: str) -> Build:
    return lambda a, t: ["config", "show", *args, "--params", str(_file(t, "params.yaml", content))]


def phase2_from(damage: Callable[[Path], object]) -> Build:
    """`alad align phase2 --init <a copy of phase 1's epoch folder, damaged>`."""

    def build(art: Art, tmp: Path) -> list[str]:
        ckpt = copy(art.phase1 / "epoch-0001", tmp / "epoch-0001")
        damage(ckpt)
        return [
            *["align", "phase2", "-q", "--profile", "tiny", "--init", str(ckpt)],
            *_sets(art.tiny),
        ]

    return build


def resume_phase1(damage: Callable[[Path], object]) -> Build:
    """Rerun phase 1 on a copy of its run folder whose (only) epoch is damaged."""

    def build(art: Art, tmp: Path) -> list[str]:
        run = copy(art.phase1, tmp / "phase1")
        damage(run / "epoch-0001")
        return [
            *["align", "phase1", "-q", "--profile", "tiny", "--out", str(run)],
            *_sets(art.tiny),
        ]

    return build


def resume_phase3(damage: Callable[[Path], object]) -> Build:
    """Rerun the interrupted phase 3 on a copy whose state.pt is damaged."""

    def build(art: Art, tmp: Path) -> list[str]:
        run = copy(art.phase3, tmp / "ner")
        damage(run / "state" / "state.pt")
        return [*_finetune(art, *art.ner[len(art.tiny) :]), "--out", str(run)]

    return build


def predict(damage: Callable[[Path], object], *args: str) -> Build:
    """`alad predict` with a copy of the saved NER model, damaged."""

    def build(art: Art, tmp: Path) -> list[str]:
        model = copy(art.phase3 / "model", tmp / "model")
        damage(model)
        return ["predict", "-q", str(model), *args]

    return build


def as_qa_model(model: Path) -> None:
    """Turn the saved NER model into an (untrained) QA model: a span head, task qa."""
    manifest = json.loads((model / "manifest.json").read_text())
    dim = manifest["head"]["dim"]
    head = {"qa_outputs.weight": torch.zeros(2, dim), "qa_outputs.bias": torch.zeros(2)}
    save_file(head, model / "head.safetensors")
    span = {"kind": "span", "dim": dim, "num_labels": 2}
    manifest.update(task="qa", labels=[], head=span, stride=8)
    (model / "manifest.json").write_text(json.dumps(manifest))
    rehash(model, "head.safetensors")


def other_adapter(folder: Path) -> None:
    """An adapter.safetensors of another shape (hidden 16 instead of 32), checksum updated."""
    from alad.adapter import AlignmentAdapter

    wrong = AlignmentAdapter(32, 48, window=3, hidden=16).state_dict()
    save_file({k: v.contiguous() for k, v in wrong.items()}, folder / "adapter.safetensors")
    rehash(folder, "adapter.safetensors")


def keep(folder: Path) -> None:
    """No damage: the model is fine, the request is not."""


def drop_key(key: str) -> Callable[[Path], None]:
    def damage(folder: Path) -> None:
        data = json.loads((folder / "manifest.json").read_text())
        del data[key]
        (folder / "manifest.json").write_text(json.dumps(data))

    return damage


def in_(name: str, damage: Callable[[Path], None], then_rehash: bool = False):
    """Apply `damage` to the file `name` of a folder (and update its checksum)."""

    def apply(folder: Path) -> None:
        damage(folder / name)
        if then_rehash:
            rehash(folder, name)

    return apply


QA = ("phase3.task=qa", "phase3.stride=8")
Q = {"id": "q1", "question": "who ?", "answers": [{"text": "king", "answer_start": 4}]}
NULL_TEXT = "\n".join([*(json.dumps({"text": s}) for s in tiny_sentences(8)), '{"text": null}'])
LONG_QUESTION = ("--question", "who " * 60, "--context", "the king .")

CASES = [
    # -- files that are not UTF-8
    Case(
        "conllu-not-utf8",
        train_file("t.conllu", LATIN1, "phase3.task=pos"),
        "not UTF-8",
        "t.conllu",
    ),
    Case("bio-not-utf8", train_file("t.tsv", LATIN1, "phase3.task=ner"), "not UTF-8", "t.tsv"),
    Case("squad-not-utf8", train_file("t.json", LATIN1, *QA), "not UTF-8", "t.json"),
    Case("corpus-txt-not-utf8", corpus_file("c.txt", LATIN1), "not UTF-8", "c.txt"),
    Case("corpus-jsonl-not-utf8", corpus_file("c.jsonl", LATIN1), "not UTF-8", "c.jsonl"),
    Case("params-not-utf8", params_file(b"seed: 3  # caf\xe9\n"), "not UTF-8", "params.yaml"),
    # -- SQuAD structure
    Case("squad-data-not-a-list", squad_file({"x": 1}), "need {'data': [", "train.json"),
    Case(
        "squad-missing-context", squad_file([{"paragraphs": [{"qas": [Q]}]}]), "].context", "train"
    ),
    Case("squad-missing-id", one_question("the king .", {**Q, "id": None}), "qas[0].id", "train"),
    Case(
        "squad-answer-start-string",
        one_question("the king .", {**Q, "answers": [{"text": "king", "answer_start": "4"}]}),
        "answer_start: expected an integer",
        "train.json",
    ),
    Case("squad-context-number", one_question(42, Q), "context: expected a string", "train.json"),
    # -- requests a model cannot serve, a --set value that is not YAML
    Case(
        "qa-question-too-long", predict(as_qa_model, *LONG_QUESTION), "question alone is too long"
    ),
    Case("set-unclosed-list", lambda a, t: ["config", "show", "--set", "k=[1"], "not valid YAML"),
    Case(
        "predict-tagger-with-question",
        predict(keep, "--question", "who ?", "--context", "a"),
        "does not answer",
    ),
    Case("predict-qa-model-with-text", predict(as_qa_model, "the king ."), "does not tag text"),
    # -- damaged checkpoints, phase-3 states and model folders (11), adapters of another shape
    Case("ckpt-adapter-truncated", phase2_from(in_("adapter.safetensors", truncate)), "adapter."),
    Case(
        "ckpt-adapter-garbage",
        phase2_from(in_("adapter.safetensors", garbage, then_rehash=True)),
        "not a readable safetensors file",
        "adapter.safetensors",
    ),
    Case("ckpt-manifest-not-json", phase2_from(in_("manifest.json", truncate)), "manifest.json:"),
    Case("ckpt-manifest-no-key", phase2_from(drop_key("d_compressed")), "'d_compressed'"),
    Case("ckpt-trainer-truncated", resume_phase1(in_("trainer.pt", truncate)), "trainer.pt"),
    Case(
        "ckpt-trainer-garbage",
        resume_phase1(in_("trainer.pt", garbage, then_rehash=True)),
        "refused to load",
        "trainer.pt",
    ),
    Case("state-truncated", resume_phase3(truncate), "state.pt", "to start over"),
    Case("state-garbage", resume_phase3(garbage), "state.pt", "to start over"),
    Case("model-manifest-not-json", predict(in_("manifest.json", truncate), "a"), "manifest.json:"),
    Case("model-head-truncated", predict(in_("head.safetensors", truncate), "a"), "head."),
    Case(
        "model-encoder-truncated",
        predict(in_("encoder/model.safetensors", truncate), "a"),
        "encoder/model.safetensors",
    ),
    Case("ckpt-adapter-wrong-shape", phase2_from(other_adapter), "shape (16, 32, 3)", "adapter."),
    Case("model-adapter-wrong-shape", predict(other_adapter, "a"), "shape (16, 32, 3)", "adapter."),
    # -- wrong data that was silently accepted
    Case(
        "squad-duplicate-ids",
        squad_plus([{**Q, "id": "q3"}]),
        "'q3' is used twice",
        "train.json",
        before="accepted",
    ),
    Case(
        "squad-negative-answer-start",
        squad_plus([{**Q, "id": "neg", "answers": [{"text": "king", "answer_start": -6}]}]),
        "answer_start -6 does not point",
        "train.json",
        before="accepted",
    ),
    Case(
        "squad-empty-contexts",
        good_and_bad(write_squad, "json", all_contexts_empty, *QA),
        "context is empty",
        "test.json",
        before="accepted",
    ),
    Case(
        "conllu-upos-underscore",
        conllu_upos("_"),
        "no UPOS tag",
        "train.conllu:",
        before="accepted",
    ),
    Case("conllu-upos-empty", conllu_upos(""), "no UPOS tag", "train.conllu:", before="accepted"),
    Case("jsonl-text-null", corpus_file("c.jsonl", NULL_TEXT), "c.jsonl:9", before="accepted"),
    Case(
        "params-invalid-under-profile",
        params_file("phase1:\n  epochs: -3\n", "--profile", "tiny"),
        "phase1.epochs",
        "params.yaml",
        before="accepted",
    ),
    Case(
        "params-duplicate-key",
        params_file("phase1:\n  epochs: 2\n  lr: 0.1\n  epochs: 3\n"),
        "'epochs' appears twice",
        "params.yaml",
        before="accepted",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_clear_error_line(case, art, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no params.yaml here
    argv = case.build(art, tmp_path)
    capsys.readouterr()
    assert main(argv) == 2, f"{case.id}: accepted (exit 0) instead of an error"
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("alad: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert case.expect in lines[0] and case.names in lines[0], lines[0]


def test_served_model_tags_empty_text_as_nothing_and_answers_a_bad_request_with_400(art):
    """`mlflow models serve` answered an empty text with HTTP 400 and a stack trace."""
    import pandas as pd
    from mlflow.exceptions import MlflowException

    from alad.pyfunc import AladPyfunc

    class Context:
        artifacts = {"model": str(art.phase3 / "model")}

    model = AladPyfunc()
    model.load_context(Context())
    out = model.predict(None, pd.DataFrame({"text": ["", "the king", None, "   "]}))
    assert out[0] == [] and out[2] == [] and out[3] == []
    assert [t["word"] for t in out[1]] == ["the", "king"]
    with pytest.raises(MlflowException) as info:
        model.predict(None, pd.DataFrame({"sentence": ["the king"]}))
    assert info.value.get_http_status_code() == 400 and "no column 'text'" in info.value.message
