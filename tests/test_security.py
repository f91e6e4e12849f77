"""No code runs from a checkpoint: a pickle payload planted in trainer.pt (phases 1-2) or
state.pt (phase 3) is refused with an error, and a run folder cannot point outside itself.

At 286efbe both files were read with `torch.load(..., weights_only=False)`, so the payload below
ran on the next `alad align` / `alad finetune` of that folder (run folders travel through
`dvc push/pull`, so a tampered remote reached this).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from alad.adapter import AlignmentAdapter
from alad.checkpoint import (
    CheckpointError,
    UnsafeCheckpoint,
    load_checkpoint,
    load_trainer_state,
    save_checkpoint,
    save_trainer_state,
)
from alad.cli import main


class Payload:
    """Unpickling this calls os.mkdir(marker): any code could run instead."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def plant(path: Path, marker: Path, fix_checksum: bool) -> None:
    """Replace a checkpoint file by a payload, as an attacker with write access would; with
    `fix_checksum` the manifest is updated too, so only the loader itself can stop it."""
    torch.save({"optimizer": Payload(marker)}, path)
    manifest = path.parent / "manifest.json"
    if fix_checksum:
        data = json.loads(manifest.read_text())
        data["files"][path.name] = hashlib.sha256(path.read_bytes()).hexdigest()
        manifest.write_text(json.dumps(data))


def _adapter() -> AlignmentAdapter:
    torch.manual_seed(0)
    return AlignmentAdapter(8, 12, window=3, hidden=16)


def test_payload_in_trainer_pt_is_refused_by_alad_align(tiny_models, tiny_corpus, tmp_path, capsys):
    c, lg = tiny_models
    args = ["--profile", "tiny", "-q", "--out", str(tmp_path / "run")]
    for pair in (
        f"models.compressed={c}",
        f"models.large={lg}",
        f"phase1.corpus={tiny_corpus}",
        f"cache.dir={tmp_path / 'features'}",
        "phase1.epochs=1",
    ):
        args += ["--set", pair]
    assert main(["align", "phase1", *args]) == 0
    marker = tmp_path / "PWNED"
    plant(tmp_path / "run" / "epoch-0001" / "trainer.pt", marker, fix_checksum=True)
    capsys.readouterr()
    assert main(["align", "phase1", *args]) == 2
    err = capsys.readouterr().err
    assert "alad: error:" in err and "trainer.pt: refused to load" in err and "posix" in err
    assert not marker.exists(), "the payload ran"
    # The test is real: the same file loaded the old way runs the payload.
    torch.load(tmp_path / "run" / "epoch-0001" / "trainer.pt", weights_only=False)
    assert marker.is_dir()


def test_payload_with_a_stale_checksum_is_never_loaded(tmp_path, caplog):
    """Without a matching checksum the file counts as damaged: the run falls back to the
    previous epoch (warned), and the payload is not even unpickled."""
    save_checkpoint(tmp_path, "epoch-0001", _adapter(), {}, {"optimizer": {}})
    save_checkpoint(tmp_path, "epoch-0002", _adapter(), {}, {"optimizer": {}})
    marker = tmp_path / "PWNED"
    plant(tmp_path / "epoch-0002" / "trainer.pt", marker, fix_checksum=False)
    ckpt = load_checkpoint(tmp_path, with_trainer_state=True)
    assert ckpt.dir == tmp_path / "epoch-0001" and "trainer.pt does not match" in caplog.text
    assert not marker.exists()


def test_payload_in_phase3_state_pt_is_refused(tmp_path):
    state = tmp_path / "state"
    save_trainer_state(state, {"weights": {"w": torch.ones(2)}, "rng": torch.get_rng_state()})
    assert torch.equal(load_trainer_state(state)["weights"]["w"], torch.ones(2))
    marker = tmp_path / "PWNED"
    plant(state / "state.pt", marker, fix_checksum=True)
    with pytest.raises(UnsafeCheckpoint, match=r"state\.pt: refused to load.*could run code"):
        load_trainer_state(state)
    assert not marker.exists()


def test_latest_cannot_point_outside_the_run_folder(tmp_path, caplog):
    elsewhere = save_checkpoint(tmp_path / "elsewhere", "epoch-0001", _adapter(), {})
    run = tmp_path / "run"
    save_checkpoint(run, "epoch-0001", _adapter(), {})
    (run / "LATEST").write_text("../elsewhere/epoch-0001\n")
    assert load_checkpoint(run).dir == run / "epoch-0001"
    assert "not an epoch folder of this run" in caplog.text
    shutil.rmtree(run / "epoch-0001")
    with pytest.raises(CheckpointError, match="no adapter checkpoint"):
        load_checkpoint(run)
    assert elsewhere.is_dir()


def test_manifest_cannot_name_files_outside_its_folder(tmp_path):
    folder = save_checkpoint(tmp_path, "epoch-0001", _adapter(), {})
    data = json.loads((folder / "manifest.json").read_text())
    data["files"]["../../etc/passwd"] = "0" * 64
    (folder / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="not a file of this folder"):
        load_checkpoint(folder)
