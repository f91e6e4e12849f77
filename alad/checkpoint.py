"""Adapter checkpoints: safetensors weights + a JSON manifest, written atomically.

    alad align phase1 --out runs/phase1     # writes runs/phase1/epoch-0001/ ... and LATEST

A checkpoint folder `<out>/epoch-NNNN/` holds `adapter.safetensors`, `manifest.json` (models,
dimensions, window, hidden size, tokenizer, history) and `trainer.pt` (optimizer state, to resume).
It is built under a temporary name and renamed into place; then `<out>/LATEST` (one line: the
folder name) is replaced atomically. A crash at any point leaves the previous checkpoint current.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from alad.adapter import AlignmentAdapter
from alad.atomic import replace_dir, write_text

FORMAT = "alad-adapter/1"
LATEST = "LATEST"
KEEP = 2  # epoch folders kept besides the latest one's predecessor chain


class CheckpointError(ValueError):
    """A checkpoint is missing, incomplete, or does not fit the models it is used with."""


@dataclass
class Checkpoint:
    dir: Path
    manifest: dict[str, Any]
    adapter: AlignmentAdapter
    trainer_state: dict[str, Any] | None


def save_checkpoint(
    out: Path,
    name: str,
    adapter: AlignmentAdapter,
    manifest: dict[str, Any],
    trainer_state: dict[str, Any] | None = None,
) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    final = out / name
    tmp = out / f".{name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        state = {k: v.detach().contiguous() for k, v in adapter.state_dict().items()}
        save_file(state, tmp / "adapter.safetensors")
        full = {"format": FORMAT, **adapter.describe(), **manifest}
        (tmp / "manifest.json").write_text(json.dumps(full, indent=2, default=str))
        if trainer_state is not None:
            torch.save(trainer_state, tmp / "trainer.pt")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_dir(tmp, final)
    write_text(name + "\n", out / LATEST)
    _prune(out, keep=name)
    return final


def _prune(out: Path, keep: str) -> None:
    epochs = sorted(p for p in out.glob("epoch-*") if p.is_dir() and p.name != keep)
    for old in epochs[: max(0, len(epochs) - (KEEP - 1))]:
        shutil.rmtree(old, ignore_errors=True)


def clear_checkpoints(out: Path) -> None:
    """Forget a run of another config: its epochs must not mix with the new run's."""
    (out / LATEST).unlink(missing_ok=True)
    for old in out.glob("epoch-*"):
        shutil.rmtree(old, ignore_errors=True)


def latest(out: Path) -> Path | None:
    """The current checkpoint folder under `out`, `out` itself if it is one, or None."""
    if (out / "manifest.json").is_file():
        return out
    pointer = out / LATEST
    if not pointer.is_file():
        return None
    folder = out / pointer.read_text().strip()
    return folder if (folder / "manifest.json").is_file() else None


def load_checkpoint(path: Path, with_trainer_state: bool = False) -> Checkpoint:
    folder = latest(path)
    if folder is None:
        raise CheckpointError(
            f"{path}: no adapter checkpoint here (no manifest.json and no LATEST pointer); "
            "run `alad align phase1` first or check the path"
        )
    manifest = json.loads((folder / "manifest.json").read_text())
    if manifest.get("format") != FORMAT:
        raise CheckpointError(
            f"{folder}/manifest.json: format {manifest.get('format')!r}, expected {FORMAT}"
        )
    adapter = AlignmentAdapter(
        manifest["d_compressed"], manifest["d_large"], manifest["window"], manifest["hidden"]
    )
    adapter.load_state_dict(load_file(folder / "adapter.safetensors"))
    trainer = None
    if with_trainer_state and (folder / "trainer.pt").is_file():
        trainer = torch.load(folder / "trainer.pt", weights_only=False)
    return Checkpoint(folder, manifest, adapter, trainer)


def check_fits(
    manifest: dict[str, Any],
    d_compressed: int,
    d_large: int,
    window: int,
    hidden: int,
    source: Path,
) -> None:
    """An adapter only fits the models and window it was built for: say which field differs."""
    want = {"d_compressed": d_compressed, "d_large": d_large, "window": window, "hidden": hidden}
    diffs = [
        f"{k}: checkpoint {manifest.get(k)} vs requested {v}"
        for k, v in want.items()
        if manifest.get(k) != v
    ]
    if diffs:
        raise CheckpointError(
            f"{source}: adapter checkpoint does not fit ({'; '.join(diffs)}). "
            f"It was trained for {manifest.get('compressed')} -> {manifest.get('large')}."
        )
