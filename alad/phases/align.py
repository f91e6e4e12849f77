"""Alignment phases 1 and 2 (METHOD.md, "Training: three phases").

    alad align phase1 --profile demo        # general text, lr 5e-4, a budget
    alad align phase2 --init runs/phase1    # the task's training text, 10 epochs, lr 1e-4

Both minimise the MSE between AlAd(R_C) and R_L over real tokens, with M_C and M_L frozen, so both
models run once per text (the frozen-output cache) and epochs only train the adapter.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm.auto import tqdm

from alad.adapter import AlignmentAdapter
from alad.atomic import recover_all
from alad.cache import FeatureCache, build_cache, feature_root, paired_batches
from alad.checkpoint import (
    check_fits,
    clear_checkpoints,
    has_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from alad.config import AlignPhaseConfig, Settings
from alad.data.corpus import load_corpus, sample_split
from alad.errors import AladError
from alad.models.catalog import Encoder, load_encoder
from alad.models.tokens import check_token_alignment
from alad.runtime import Runtime, barrier, broadcast, is_main, rank_world

log = logging.getLogger(__name__)
Phase = Literal["phase1", "phase2"]


class NonFiniteLoss(AladError, FloatingPointError):
    """The loss became NaN/inf; nothing was saved from the diverged step."""


@dataclass
class AlignResult:
    """What a phase produced: the checkpoint, held-out metrics before/after, per-epoch history."""

    phase: Phase
    checkpoint: Path
    before: dict[str, float]
    after: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)
    stopped_by: str = "epochs"
    seconds: float = 0.0

    def summary(self) -> str:
        b, a = self.before, self.after
        return (
            f"{self.phase}: held-out MSE {b['mse']:.4f} -> {a['mse']:.4f} "
            f"(predict-the-mean baseline {a['baseline_mse']:.4f}), cosine {b['cosine']:.3f} -> "
            f"{a['cosine']:.3f}; {len(self.history)} epoch(s), stopped by {self.stopped_by}; "
            f"checkpoint {self.checkpoint}"
        )


@dataclass
class AlignData:
    compressed: Encoder
    large: Encoder
    train: tuple[FeatureCache, FeatureCache]
    heldout: tuple[FeatureCache, FeatureCache]


def prepare_data(
    settings: Settings,
    phase: Phase,
    progress: bool = True,
    init: Path | None = None,
) -> AlignData:
    """Models, corpus sample, token-alignment check and the four frozen-output caches.

    Everything that can be wrong (an init checkpoint that does not fit, mismatched tokenizers)
    is checked before the expensive extraction starts."""
    cfg: AlignPhaseConfig = getattr(settings, phase)
    m, a = settings.models, settings.adapter
    init_manifest = load_checkpoint(init).manifest if init is not None else None
    compressed, large = load_encoder(m.compressed), load_encoder(m.large)
    device = Runtime.from_config(settings.runtime).device
    for enc in (compressed, large):  # extraction on the device; shards are stored from the CPU
        if "int8" not in enc.name:  # dynamic int8 kernels are CPU-only
            enc.model.to(device)
    if init_manifest is not None:
        check_fits(init_manifest, compressed.dim, large.dim, a.window, a.hidden, init)
    texts = load_corpus(cfg.corpus)
    train, held = sample_split(texts, cfg.max_texts, cfg.heldout_fraction, settings.seed)
    check_token_alignment(
        compressed.tokenizer,
        large.tokenizer,
        train + held,
        m.max_length,
        source=f"{phase}.corpus={cfg.corpus}",
    )
    c = settings.cache

    def cache(enc: Encoder, part: list[str], label: str) -> FeatureCache:
        return build_cache(
            enc,
            part,
            m.max_length,
            feature_root(c.dir),
            c.shard_texts,
            c.extract_batch_size,
            label=f"{label} {enc.name}",
            progress=progress,
        )

    return AlignData(
        compressed,
        large,
        train=(cache(compressed, train, "train"), cache(large, train, "train")),
        heldout=(cache(compressed, held, "held-out"), cache(large, held, "held-out")),
    )


def _share_of_mse(
    pred: torch.Tensor | None,
    target: torch.Tensor,
    mask: torch.Tensor,
    tokens: float,
    adapter: torch.nn.Module,
) -> torch.Tensor:
    """Mean squared error per feature over real tokens (padding never counts), as this rank's
    part of the global batch's (`tokens` real tokens in all; one process: the whole of it). A
    rank without rows still joins the gradient sum."""
    if pred is None:
        return sum(p.sum() * 0.0 for p in adapter.parameters())
    m = mask.unsqueeze(-1)
    return ((pred.float() - target) ** 2 * m).sum() / (tokens * pred.shape[-1])


@torch.no_grad()
def evaluate(
    adapter: AlignmentAdapter, caches: tuple[FeatureCache, FeatureCache], batch_size: int = 64
) -> dict[str, float]:
    """Held-out MSE, mean token cosine, and the MSE of always predicting the mean R_L."""
    adapter.eval()
    device = next(adapter.parameters()).device
    sq = cos = tokens = 0.0
    sum_y = sum_y2 = None
    for x, y, mask in paired_batches(*caches, batch_size=batch_size):
        x, y, mask = x.to(device), y.to(device), mask.to(device)
        with torch.no_grad():
            pred = adapter(x, mask)
        real = mask.bool()
        p, t = pred[real], y[real]
        sq += float(((p - t) ** 2).sum())
        cos += float(F.cosine_similarity(p, t, dim=-1).sum())
        tokens += float(real.sum())
        sum_y = t.sum(0) if sum_y is None else sum_y + t.sum(0)
        sum_y2 = (t**2).sum(0) if sum_y2 is None else sum_y2 + (t**2).sum(0)
    dim = adapter.d_large
    variance = float((sum_y2 / tokens - (sum_y / tokens) ** 2).sum()) / dim
    return {
        "mse": sq / (tokens * dim),
        "cosine": cos / tokens,
        "baseline_mse": variance,
        "tokens": tokens,
    }


def _manifest(
    settings: Settings,
    phase: Phase,
    data: AlignData,
    epoch: int,
    history: list[dict[str, float]],
    finished: bool,
    stopped_by: str,
) -> dict[str, Any]:
    return {
        "phase": phase,
        "compressed": data.compressed.name,
        "large": data.large.name,
        "compressed_fingerprint": data.compressed.fingerprint,
        "large_fingerprint": data.large.fingerprint,
        "tokenizer": data.compressed.source,
        "max_length": settings.models.max_length,
        "epoch": epoch,
        "finished": finished,
        "stopped_by": stopped_by,
        "history": history,
        # lineage: what the adapter was aligned on (the registry tags versions with it)
        "data": {
            "corpus": str(getattr(settings, phase).corpus),
            "train_texts": data.train[0].num_texts,
            "train_tokens": data.train[0].num_tokens,
            "train_hash": data.train[0].manifest["texts_hash"],
            "heldout_texts": data.heldout[0].num_texts,
            "heldout_hash": data.heldout[0].manifest["texts_hash"],
        },
        "run_key": _run_key(settings, phase),
        "config": settings.model_dump(mode="json"),
    }


def _run_key(settings: Settings, phase: Phase) -> dict[str, Any]:
    """What must match for a rerun to resume this run rather than start over."""
    return {
        "models": settings.models.model_dump(mode="json"),
        "adapter": settings.adapter.model_dump(mode="json"),
        "phase": getattr(settings, phase).model_dump(mode="json"),
        "seed": settings.seed,
    }


def _init_adapter(settings: Settings, data: AlignData, init: Path | None) -> AlignmentAdapter:
    a = settings.adapter
    torch.manual_seed(settings.seed)
    adapter = AlignmentAdapter(data.compressed.dim, data.large.dim, a.window, a.hidden)
    if init is not None:
        ckpt = load_checkpoint(init)
        check_fits(ckpt.manifest, data.compressed.dim, data.large.dim, a.window, a.hidden, init)
        adapter.load_state_dict(ckpt.adapter.state_dict())
        log.info("initialised from %s", ckpt.dir)
    return adapter


def run_alignment(
    settings: Settings,
    phase: Phase,
    out: Path | None = None,
    init: Path | None = None,
    progress: bool = True,
    data: AlignData | None = None,
) -> AlignResult:
    """Train (or resume) one alignment phase; returns metrics and the checkpoint path."""
    cfg: AlignPhaseConfig = getattr(settings, phase)
    out = out or settings.runs_dir / phase
    data = data or prepare_data(settings, phase, progress, init)
    runtime = Runtime.from_config(settings.runtime)
    adapter = _init_adapter(settings, data, init).to(runtime.device)
    optimizer = torch.optim.AdamW(adapter.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    start_epoch, history, tokens_seen, train_seconds = 0, [], 0, 0.0
    before = evaluate(adapter, data.heldout)

    if is_main():  # only rank 0 writes; the others wait, then read the same folder
        recover_all(out)  # a kill between the two renames of a checkpoint swap
    barrier()
    previous = None
    if has_checkpoints(out):  # the newest intact checkpoint; a damaged one is skipped, warned
        ckpt = load_checkpoint(out, with_trainer_state=True)
        previous = ckpt.dir
        if ckpt.manifest.get("run_key") == _run_key(settings, phase) and ckpt.trainer_state:
            adapter.load_state_dict(ckpt.adapter.state_dict())
            optimizer.load_state_dict(ckpt.trainer_state["optimizer"])
            start_epoch, history = ckpt.manifest["epoch"], ckpt.manifest["history"]
            before = ckpt.trainer_state["before"]
            tokens_seen = ckpt.trainer_state["tokens_seen"]
            train_seconds = ckpt.trainer_state["train_seconds"]
            if ckpt.manifest["finished"]:
                log.info("%s already finished at %s; nothing to do", phase, ckpt.dir)
                return AlignResult(
                    phase,
                    ckpt.dir,
                    before,
                    evaluate(adapter, data.heldout),
                    history,
                    ckpt.manifest["stopped_by"],
                    train_seconds,
                )
            log.info("resuming %s after epoch %d from %s", phase, start_epoch, ckpt.dir)
        else:
            log.warning("%s holds a checkpoint of a different config; starting over", out)
            barrier()  # every rank has read it before rank 0 clears it
            if is_main():
                clear_checkpoints(out)

    stopped_by, path = "epochs", previous
    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        train_mse, stopped_by, tokens_seen = _train_epoch(
            adapter,
            optimizer,
            data.train,
            cfg,
            settings.seed,
            epoch,
            tokens_seen,
            train_seconds,
            progress,
            runtime,
        )
        seconds = time.perf_counter() - t0
        train_seconds += seconds
        metrics = evaluate(adapter, data.heldout)
        history.append(
            {
                "epoch": epoch + 1,
                "train_mse": train_mse,
                "heldout_mse": metrics["mse"],
                "heldout_cosine": metrics["cosine"],
                "seconds": seconds,
                "tokens_seen": tokens_seen,
            }
        )
        log.info(
            "%s epoch %d: train MSE %.4f, held-out MSE %.4f, cosine %.3f (%.1fs)",
            phase,
            epoch + 1,
            train_mse,
            metrics["mse"],
            metrics["cosine"],
            seconds,
        )
        finished = stopped_by != "epochs" or epoch + 1 == cfg.epochs
        state = {
            "optimizer": optimizer.state_dict(),
            "before": before,
            "tokens_seen": tokens_seen,
            "train_seconds": train_seconds,
        }
        manifest = _manifest(settings, phase, data, epoch + 1, history, finished, stopped_by)
        path = out / f"epoch-{epoch + 1:04d}"
        if is_main():
            path = save_checkpoint(out, path.name, adapter, manifest, state)
        barrier()
        if finished:
            break
    assert path is not None
    return AlignResult(
        phase, path, before, evaluate(adapter, data.heldout), history, stopped_by, train_seconds
    )


def _train_epoch(
    adapter: AlignmentAdapter,
    optimizer: torch.optim.Optimizer,
    caches: tuple[FeatureCache, FeatureCache],
    cfg: AlignPhaseConfig,
    seed: int,
    epoch: int,
    tokens_seen: int,
    seconds_before: float,
    progress: bool,
    runtime: Runtime,
) -> tuple[float, str, int]:
    """One pass in a seeded order (seed, epoch): a resumed run replays the same batches."""
    adapter.train()
    rng = np.random.default_rng([seed, epoch])
    total, weight, t0 = 0.0, 0.0, time.perf_counter()
    bar = tqdm(
        total=caches[0].num_texts,
        desc=f"epoch {epoch + 1}/{cfg.epochs}",
        unit="text",
        disable=not progress,
        leave=False,
    )
    scaler = runtime.grad_scaler()
    rank, world = rank_world()
    for step, (x, y, mask) in enumerate(paired_batches(*caches, cfg.batch_size, rng)):
        # Data parallel (torchrun): every rank draws the same global batch and trains on its
        # rows rank::world; its loss is its share of the global batch's mean, and summing the
        # ranks' gradients gives exactly the one-process gradient of that batch.
        n = float(mask.sum())
        x, y, mask = x[rank::world], y[rank::world], mask[rank::world]
        x, y, mask = x.to(runtime.device), y.to(runtime.device), mask.to(runtime.device)
        with runtime.autocast():
            pred = adapter(x, mask) if len(x) else None
        loss = _share_of_mse(pred, y, mask, n, adapter)
        if world > 1:
            loss_all = loss.detach().clone()
            dist.all_reduce(loss_all)
            loss_value = float(loss_all)
        else:
            loss_value = loss.item()
        if not math.isfinite(loss_value):
            raise NonFiniteLoss(
                f"loss is {loss_value} at epoch {epoch + 1}, step {step}: training diverged. "
                f"Lower the learning rate (now {cfg.lr}); the last good checkpoint is kept."
            )
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if world > 1:
            for p in adapter.parameters():
                dist.all_reduce(p.grad)  # sum of the ranks' shares = the global batch's gradient
        scaler.step(optimizer)
        scaler.update()
        total, weight, tokens_seen = total + loss_value * n, weight + n, tokens_seen + int(n)
        bar.update(len(x) * world)
        bar.set_postfix(mse=f"{total / weight:.4f}")
        if cfg.budget_tokens is not None and tokens_seen >= cfg.budget_tokens:
            bar.close()
            return total / weight, "token budget", tokens_seen
        if cfg.budget_minutes is None:
            continue
        elapsed = [seconds_before + time.perf_counter() - t0]
        broadcast(elapsed)  # rank 0's clock decides, so every rank stops at the same step
        if elapsed[0] >= cfg.budget_minutes * 60:
            bar.close()
            return total / weight, "time budget", tokens_seen
    bar.close()
    return total / weight, "epochs", tokens_seen


def phase1_pretrain(
    settings: Settings, out: Path | None = None, progress: bool = True
) -> AlignResult:
    """Phase 1: task-independent alignment on general text (default: packaged Wikipedia)."""
    return run_alignment(settings, "phase1", out=out, progress=progress)


def phase2_task_align(
    settings: Settings, init: Path | None = None, out: Path | None = None, progress: bool = True
) -> AlignResult:
    """Phase 2: the same objective on the task's training text, starting from phase 1."""
    return run_alignment(settings, "phase2", out=out, init=init, progress=progress)
