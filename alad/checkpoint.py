"""Adapter checkpoints: safetensors weights + a JSON manifest with checksums, written atomically.

    alad align phase1 --out runs/phase1     # writes runs/phase1/epoch-0001/ ... and LATEST

A checkpoint folder `<out>/epoch-NNNN/` holds `adapter.safetensors`, `trainer.pt` (optimizer
state, to resume) and `manifest.json` (models, dimensions, window, hidden size, tokenizer,
history, and the sha256 of every other file). It is built under a temporary name and renamed into
place; then `<out>/LATEST` (one line: the folder name) is replaced atomically. A crash at any
point leaves the previous checkpoint current.

Loading verifies the checksums. Loading a run folder takes the checkpoint LATEST names; if it is
missing or damaged, the newest intact epoch folder, with a warning (never a silent restart, and
never pruning what is intact); a run that resumes from there first renames each damaged folder
to `epoch-NNNN.damaged-<UTC time>` and keeps it (`quarantine_dir`). `trainer.pt` is read with
`weights_only=True`: tensors and plain data only, so a planted pickle cannot run code (it is
refused with an error).
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import shutil
import warnings
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from alad.adapter import AlignmentAdapter, check_rank
from alad.atomic import (
    MAX_MANIFEST_BYTES,
    checksums,
    read_folder_manifest,
    read_json,
    read_text,
    recover_all,
    replace_dir,
    tmp_dir,
    verify_manifest_files,
    write_json,
    write_text,
)
from alad.config import AdapterConfig, ConfigError
from alad.errors import AladError, DataFormatError

log = logging.getLogger(__name__)

FORMAT = "alad-adapter/1"
LATEST = "LATEST"
KEEP = 2  # epoch folders kept: the newest and the one before it
_EPOCH = re.compile(r"^epoch-(\d{4,})$")


class CheckpointError(AladError, ValueError):
    """A checkpoint is missing, damaged, or does not fit the models it is used with."""


class UnsafeCheckpoint(CheckpointError):
    """A checkpoint file holds more than tensors and plain data: loading it could run code."""


@dataclass
class Checkpoint:
    dir: Path
    manifest: dict[str, Any]
    adapter: AlignmentAdapter
    trainer_state: dict[str, Any] | None
    skipped: list[Path] = field(default_factory=list)  # damaged newer folders passed over


def _write_folder(
    final: Path,
    state: dict[str, torch.Tensor],
    manifest: dict[str, Any],
    trainer_state: dict[str, Any] | None = None,
) -> Path:
    """Build a checkpoint folder (weights, optional trainer state, manifest with the checksums
    of the other files) under a temporary name and rename it to `final`."""
    tmp = tmp_dir(final)
    try:
        save_file(state, tmp / "adapter.safetensors")
        if trainer_state is not None:
            torch.save(trainer_state, tmp / "trainer.pt")
        write_json({**manifest, "files": checksums(tmp)}, tmp / "manifest.json")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return replace_dir(tmp, final)


def save_checkpoint(
    out: Path,
    name: str,
    adapter: AlignmentAdapter,
    manifest: dict[str, Any],
    trainer_state: dict[str, Any] | None = None,
) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in adapter.state_dict().items()}
    full = {"format": FORMAT, **adapter.describe(), **manifest}
    final = _write_folder(out / name, state, full, trainer_state)
    write_text(name + "\n", out / LATEST)
    _prune(out, keep=name)
    return final


def export_adapter(
    source: Path, dest: Path, extra: dict[str, Any], dtype: torch.dtype = torch.float16
) -> Path:
    """A standalone copy of the adapter checkpoint at `source` (weights only, as `dtype`; no
    trainer state, so it cannot be resumed, only used as an init) at `dest`, its manifest
    extended by `extra`. Half precision halves what a committed copy adds to git; loading casts
    back to float32 (a relative rounding of ~5e-4 per weight)."""
    ckpt = load_checkpoint(source)
    state = {k: v.detach().to(dtype).contiguous() for k, v in ckpt.adapter.state_dict().items()}
    keep = {k: v for k, v in ckpt.manifest.items() if k != "files"}
    return _write_folder(dest, state, {**keep, **extra, "dtype": str(dtype).removeprefix("torch.")})


def _epoch(name: str) -> int | None:
    m = _EPOCH.match(name)
    return int(m.group(1)) if m else None


def _epoch_dirs(out: Path) -> list[Path]:
    """Epoch folders under `out`, newest first."""
    found = [p for p in out.glob("epoch-*") if p.is_dir() and _epoch(p.name) is not None]
    return sorted(found, key=lambda p: _epoch(p.name) or 0, reverse=True)


def _prune(out: Path, keep: str) -> None:
    """Delete epochs *older* than `keep` (just written, so intact) beyond the KEEP newest.
    Newer folders (from a run that fell back past a damaged epoch) are left to be overwritten."""
    newest = _epoch(keep)
    if newest is None:
        return
    older = [p for p in _epoch_dirs(out) if (_epoch(p.name) or 0) < newest]
    for old in older[KEEP - 1 :]:
        shutil.rmtree(old, ignore_errors=True)


def clear_checkpoints(out: Path) -> None:
    """Forget a run of another config: its epochs must not mix with the new run's (damaged
    epochs kept aside by `quarantine_dir` stay)."""
    (out / LATEST).unlink(missing_ok=True)
    for old in _epoch_dirs(out):
        shutil.rmtree(old, ignore_errors=True)


def has_checkpoints(out: Path) -> bool:
    """Whether `out` is a checkpoint, or a run folder with a LATEST pointer or epoch folders."""
    return (out / "manifest.json").is_file() or (out / LATEST).is_file() or bool(_epoch_dirs(out))


def _candidates(out: Path) -> list[Path]:
    """The folder LATEST names first, then every epoch folder, newest first."""
    names: list[str] = []
    pointer = out / LATEST
    if pointer.is_file():
        try:
            name = read_text(pointer).strip()
        except DataFormatError:
            name = ""
        if _epoch(name) is not None:
            names.append(name)
        else:
            log.warning("%s: names %r, not an epoch folder of this run; ignored", pointer, name)
    names += [p.name for p in _epoch_dirs(out)]
    return [out / n for n in dict.fromkeys(names)]


def latest(out: Path) -> Path | None:
    """The checkpoint folder `load_checkpoint(out)` would use, or None if there is none."""
    return load_checkpoint(out).dir if has_checkpoints(out) else None


def load_checkpoint(path: Path, with_trainer_state: bool = False) -> Checkpoint:
    """The checkpoint at `path` (a checkpoint folder, or a run folder: see the module docstring).
    Every problem is a CheckpointError naming the file. The damaged newer folders skipped on
    the way are in `.skipped` (a run resuming from this one moves them aside: `quarantine_dir`)."""
    if (path / "manifest.json").is_file() or _epoch(path.name) is not None:
        return _load_folder(path, with_trainer_state)
    recover_all(path)  # a checkpoint swap that a kill interrupted
    candidates = _candidates(path) if path.is_dir() else []
    if not candidates:
        raise CheckpointError(
            f"{path}: no adapter checkpoint here (no manifest.json and no LATEST pointer); "
            "run `alad align phase1` first or check the path"
        )
    problems: list[tuple[Path, str]] = []
    for folder in candidates:
        try:
            ckpt = _load_folder(folder, with_trainer_state)
        except UnsafeCheckpoint:
            raise
        except CheckpointError as exc:
            problems.append((folder, str(exc)))
            continue
        for _, problem in problems:
            log.warning("skipping a damaged checkpoint: %s; using %s instead", problem, folder)
        ckpt.skipped = [damaged for damaged, _ in problems]
        return ckpt
    raise CheckpointError(
        f"{path}: no intact checkpoint ({'; '.join(p for _, p in problems)}); nothing was "
        f"deleted: move the folder aside (or delete it) to start this phase over"
    )


def quarantine_dir(folder: Path) -> Path | None:
    """Rename the damaged `folder` to `<name>.damaged-<UTC time>` beside it and return the new
    path; None if it is not there (e.g. LATEST named a missing folder). Renamed, it is no
    longer an epoch folder: never loaded, pruned, cleared or overwritten, so the evidence of
    the damage (a bad disk, a tampered copy) survives the run that trains the epoch again."""
    if not folder.is_dir():
        return None
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    aside = folder.with_name(f"{folder.name}.damaged-{stamp}")
    n = 1
    while aside.exists():
        n += 1
        aside = folder.with_name(f"{folder.name}.damaged-{stamp}-{n}")
    try:
        os.rename(folder, aside)
    except FileNotFoundError:  # another process moved it first
        return None
    return aside


def _load_folder(folder: Path, with_trainer_state: bool) -> Checkpoint:
    path = folder / "manifest.json"
    if not path.is_file():
        what = "missing" if not folder.exists() else "missing (an incomplete checkpoint)"
        raise CheckpointError(f"{path}: {what}")
    manifest = read_folder_manifest(path, FORMAT, CheckpointError)
    verify_manifest_files(folder, manifest, CheckpointError)
    adapter = adapter_from(manifest, path)
    load_weights(adapter, folder / "adapter.safetensors")
    trainer = None
    if with_trainer_state and (folder / "trainer.pt").is_file():
        trainer = load_torch(folder / "trainer.pt")
        if not isinstance(trainer, dict):
            raise CheckpointError(f"{folder / 'trainer.pt'}: expected a dict of trainer state")
    return Checkpoint(folder, manifest, adapter, trainer)


def adapter_from(describe: dict[str, Any], source: Path) -> AlignmentAdapter:
    """An untrained AlignmentAdapter of the shape `describe` (a manifest) gives. `rank` is
    optional: manifests without it (every adapter before low rank) are full-rank."""
    keys = ("d_compressed", "d_large", "window", "hidden")
    missing = [k for k in keys if k not in describe]
    if missing:
        raise CheckpointError(f"{source}: no {missing[0]!r} (the adapter's shape) in it")
    values = [describe[k] for k in keys]
    rank = describe.get("rank")
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in [*values, rank or 1]):
        shape = {**dict(zip(keys, values, strict=True)), "rank": rank}
        raise CheckpointError(f"{source}: adapter shape {shape} must be whole numbers")
    try:
        return AlignmentAdapter(*values, rank=rank)
    except ValueError as exc:
        raise CheckpointError(f"{source}: {exc}") from None


def check_adapter_config(a: AdapterConfig, d_compressed: int) -> None:
    """What the config alone cannot check, once M_C's width is known: adapter.rank below n·D_C
    (a ConfigError naming the field, raised before any expensive work)."""
    try:
        check_rank(a.rank, a.window * d_compressed, a.hidden)
    except ValueError as exc:
        raise ConfigError(f"{exc} (M_C's width D_C={d_compressed}, n={a.window})") from None


def new_adapter(d_compressed: int, d_large: int, a: AdapterConfig) -> AlignmentAdapter:
    """An untrained AlignmentAdapter of the configured shape (window, hidden, rank)."""
    check_adapter_config(a, d_compressed)
    return AlignmentAdapter(d_compressed, d_large, a.window, a.hidden, a.rank)


def load_weights(module: nn.Module, path: Path) -> None:
    """Load a safetensors file into `module`. A damaged file, or a tensor missing, extra or of
    another shape than the module (built from the manifest) has, is a CheckpointError."""
    if not path.is_file():
        raise CheckpointError(f"{path}: missing")
    try:
        state = load_file(path)
    except Exception as exc:  # safetensors raises its own SafetensorError for damaged files
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None
    want = module.state_dict()
    for key, tensor in want.items():
        if key not in state:
            raise CheckpointError(f"{path}: no tensor {key!r}")
        if tuple(state[key].shape) != tuple(tensor.shape):
            raise CheckpointError(
                f"{path}: tensor {key!r} has shape {tuple(state[key].shape)}, but manifest.json "
                f"describes a model whose {key!r} is {tuple(tensor.shape)}"
            )
    extra = sorted(set(state) - set(want))
    if extra:
        raise CheckpointError(f"{path}: unexpected tensor {extra[0]!r}")
    module.load_state_dict(state)


def load_torch(path: Path) -> Any:
    """`torch.load` of tensors and plain data only (`weights_only=True`): an object that would
    run code when unpickled is refused, and a damaged file is an error naming it."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about pickle protocols it will refuse
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        reason = next((ln for ln in lines if "GLOBAL" in ln or "Unsupported" in ln), lines[-1])
        raise UnsafeCheckpoint(
            f"{path}: refused to load: it is not tensors and plain data only ({reason}), and "
            "unpickling it could run code. It is damaged or was tampered with: do not use "
            "checkpoints from a source you do not trust; delete this one to start over"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        first = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise CheckpointError(f"{path}: damaged or not a PyTorch file ({first})") from None


def save_trainer_state(
    folder: Path, state: dict[str, Any], progress: dict[str, Any] | None = None
) -> Path:
    """`folder`/state.pt (tensors and plain data) + manifest.json with its checksum, swapped
    into place atomically: what phase 3 needs to resume. `progress` (how far the run is: see
    `saved_progress`) goes into the manifest, readable without loading the state."""
    tmp = tmp_dir(folder)
    try:
        torch.save(state, tmp / "state.pt")
        extra = {"progress": progress} if progress else {}
        write_json({"files": checksums(tmp), **extra}, tmp / "manifest.json")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return replace_dir(tmp, folder)


def saved_progress(folder: Path) -> dict[str, Any] | None:
    """How far the run whose resume state is in `folder` got, from its manifest alone (the
    state may be gigabytes): {"epoch": epochs done, "epochs", "step": batches done in the next
    epoch, "steps": batches per epoch, "seconds": spent so far}; None without one."""
    try:
        progress = read_json(folder / "manifest.json", max_bytes=MAX_MANIFEST_BYTES).get("progress")
    except (OSError, DataFormatError, AttributeError):
        return None
    return progress if isinstance(progress, dict) else None


def load_trainer_state(folder: Path) -> dict[str, Any] | None:
    """What `save_trainer_state` wrote, checked; None if there is none. A damaged or unsafe
    file is an error (there is no older state to fall back to) that says how to start over."""
    recover_all(folder.parent)
    path = folder / "state.pt"
    if not path.is_file():
        return None
    hint = f"delete {folder} to start over"
    data: Any = None
    manifest = folder / "manifest.json"  # absent in states written before checksums
    if manifest.is_file():
        try:
            data = read_json(manifest, max_bytes=MAX_MANIFEST_BYTES)
        except DataFormatError as exc:
            raise CheckpointError(f"{exc}; {hint}") from None
        if not isinstance(data, dict):
            raise CheckpointError(f"{manifest}: expected a JSON object; {hint}")
    try:
        verify_manifest_files(folder, data, CheckpointError)
    except CheckpointError as exc:
        raise CheckpointError(f"{exc}; {hint}") from None
    try:
        state = load_torch(path)
    except UnsafeCheckpoint:
        raise
    except CheckpointError as exc:
        raise CheckpointError(f"{exc}; {hint}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a dict of trainer state; {hint}")
    return state


def check_fits(
    manifest: dict[str, Any],
    d_compressed: int,
    d_large: int,
    window: int,
    hidden: int,
    source: Path,
    rank: int | None = None,
) -> None:
    """An adapter only fits the models and shape it was built for: say which field differs
    (a manifest without `rank` is a full-rank adapter)."""
    want = {
        "d_compressed": d_compressed,
        "d_large": d_large,
        "window": window,
        "hidden": hidden,
        "rank": rank,
    }
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
