"""Alignment phases 1 and 2 (METHOD.md, "Training: three phases").

    alad align phase1 --profile demo        # general text, lr 5e-4, a budget
    alad align phase2 --init runs/phase1    # the task's training text, 10 epochs, lr 1e-4

Both minimise the MSE between AlAd(R_C) and R_L over real tokens, with M_C and M_L frozen, so both
models run once per text (the frozen-output cache) and epochs only train the adapter. R_L is the
teacher's (alad/teacher.py): M_L pre-trained at its last layer, as in the paper, unless
`phaseN.teacher` / `phaseN.target_layer` name another model or hidden state.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F

from alad.adapter import AlignmentAdapter
from alad.cache import FeatureCache, build_cache, feature_root, paired_batches
from alad.checkpoint import (
    Checkpoint,
    check_adapter_config,
    check_fits,
    clear_checkpoints,
    has_checkpoints,
    load_checkpoint,
    new_adapter,
    quarantine_dir,
    save_checkpoint,
)
from alad.config import AlignPhaseConfig, Settings
from alad.data.corpus import load_corpus, sample_split
from alad.models.catalog import Encoder, load_encoder
from alad.models.tokens import check_token_alignment
from alad.phases.recipe import (
    Recipe,
    epoch_rng,
    no_rows_loss,
    optimizer_step,
    progress_bar,
    run,
    run_key,
)
from alad.runtime import Runtime, barrier, broadcast, is_main, rank_world
from alad.store import is_registry_uri, pin
from alad.teacher import Teacher, check_width, load_teacher

log = logging.getLogger(__name__)
Phase = Literal["phase1", "phase2"]


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
    teacher: Teacher  # the target: M_L pre-trained at its last layer unless configured
    train: tuple[FeatureCache, FeatureCache]
    heldout: tuple[FeatureCache, FeatureCache]

    @property
    def large(self) -> Encoder:
        """The encoder whose hidden state is the target (the teacher's)."""
        return self.teacher.encoder


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
    teacher = load_teacher(cfg.teacher, m.large, cfg.target_layer, where=phase)
    check_width(teacher, m.large, phase)
    compressed, large = load_encoder(m.compressed), teacher.encoder
    check_adapter_config(a, compressed.dim)  # before the extraction, not after it
    device = Runtime.from_config(settings.runtime).device
    for enc in (compressed, large):  # extraction on the device; shards are stored from the CPU
        if "int8" not in enc.name:  # dynamic int8 kernels are CPU-only
            enc.model.to(device)
    if init_manifest is not None:
        check_fits(init_manifest, compressed.dim, large.dim, a.window, a.hidden, init, a.rank)
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

    def cache(enc: Encoder, part: list[str], label: str, layer: int | None) -> FeatureCache:
        return build_cache(
            enc,
            part,
            m.max_length,
            feature_root(c.dir),
            c.shard_texts,
            c.extract_batch_size,
            label=f"{label} {enc.name}",
            progress=progress,
            layer=layer,
        )

    target = teacher.cache_layer  # the last layer: None, the key of the caches made before
    return AlignData(
        compressed,
        teacher,
        train=(cache(compressed, train, "train", None), cache(large, train, "train", target)),
        heldout=(
            cache(compressed, held, "held-out", None),
            cache(large, held, "held-out", target),
        ),
    )


def _share_of_mse(
    pred: torch.Tensor | None,
    target: torch.Tensor,
    mask: torch.Tensor,
    tokens: float,
    params: list[torch.nn.Parameter],
) -> torch.Tensor:
    """Mean squared error per feature over real tokens (padding never counts), as this rank's
    part of the global batch's (`tokens` real tokens in all; one process: the whole of it). A
    rank without rows still joins the gradient sum."""
    if pred is None:
        return no_rows_loss(params)
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
    key: dict[str, Any],
) -> dict[str, Any]:
    teacher = data.teacher
    return {
        "phase": phase,
        "compressed": data.compressed.name,
        # M_L: what the adapter's width and the size/speed accounting refer to; the target
        # itself is the teacher's, named below (M_L's last layer unless configured)
        "large": settings.models.large,
        "compressed_fingerprint": data.compressed.fingerprint,
        "large_fingerprint": teacher.encoder.fingerprint if teacher.spec is None else None,
        **teacher.describe(),
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
        "run_key": key,
        "config": settings.model_dump(mode="json"),
    }


def _init_adapter(settings: Settings, data: AlignData, init: Path | None) -> AlignmentAdapter:
    a = settings.adapter
    torch.manual_seed(settings.seed)
    adapter = new_adapter(data.compressed.dim, data.large.dim, a)
    if init is not None:
        ckpt = load_checkpoint(init)
        dims = (data.compressed.dim, data.large.dim)
        check_fits(ckpt.manifest, *dims, a.window, a.hidden, init, a.rank)
        adapter.load_state_dict(ckpt.adapter.state_dict())
        log.info("initialised from %s", ckpt.dir)
    return adapter


class AlignRecipe(Recipe):
    """Phases 1-2: the adapter alone trains (M_C, M_L frozen, their outputs cached), every
    epoch is a checkpoint `out/epoch-NNNN/` (adapter + manifest + resume state)."""

    def __init__(
        self,
        settings: Settings,
        phase: Phase,
        out: Path,
        init: Path | None,
        progress: bool,
        data: AlignData | None,
    ) -> None:
        self.settings, self.name, self.out, self.init = settings, phase, out, init
        self.cfg: AlignPhaseConfig = getattr(settings, phase)
        self.epochs, self.progress, self.data = self.cfg.epochs, progress, data
        self.key = run_key(settings, phase)
        if self.cfg.teacher is not None and is_registry_uri(self.cfg.teacher):
            # an alias moves: the version it names now decides whether a saved run is this one
            self.key["teacher_version"] = pin(self.cfg.teacher)
        self.tokens_seen, self.train_seconds, self._ckpt = 0, 0.0, None
        self.runtime = Runtime.from_config(settings.runtime)

    def setup(self) -> None:
        self.data = self.data or prepare_data(self.settings, self.name, self.progress, self.init)
        self.adapter = _init_adapter(self.settings, self.data, self.init).to(self.runtime.device)
        cfg = self.cfg
        self.optimizer = torch.optim.AdamW(
            self.adapter.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay
        )
        self.before = evaluate(self.adapter, self.data.heldout)

    def outputs(self) -> dict[Path, tuple[str, str]]:
        cache = feature_root(self.settings.cache.dir)
        fix = "set cache.dir (or ALAD_CACHE_HOME) to a folder you can write"
        return {**super().outputs(), cache: ("frozen-output cache", fix)}

    def _checkpoint(self) -> Checkpoint | None:
        """The newest intact checkpoint. A damaged newer one is skipped with a warning and, once
        every rank has read, moved aside by rank 0: kept as evidence, where the epoch trained
        again would have overwritten it."""
        if not has_checkpoints(self.out):
            return None
        ckpt = load_checkpoint(self.out, with_trainer_state=True)
        barrier()
        for damaged in ckpt.skipped if is_main() else []:
            if kept := quarantine_dir(damaged):
                log.warning("%s: damaged; moved aside to %s and kept", damaged, kept)
        return ckpt

    def finished_result(self) -> AlignResult | None:
        ckpt = self._ckpt = self._checkpoint()  # read (and checksummed) once per run
        m = ckpt.manifest if ckpt else {}
        if not (m.get("finished") and m.get("run_key") == self.key and ckpt.trainer_state):
            return None
        self.setup()
        self.adapter.load_state_dict(ckpt.adapter.state_dict())
        t = ckpt.trainer_state
        after = evaluate(self.adapter, self.data.heldout)
        return AlignResult(
            self.name,
            ckpt.dir,
            t["before"],
            after,
            m["history"],
            m["stopped_by"],
            t["train_seconds"],
        )

    def saved_state(self) -> dict[str, Any] | None:
        ckpt = self._ckpt
        if ckpt is None:
            return None
        self._resumed_weights = ckpt.adapter.state_dict()
        m = ckpt.manifest  # states written before the shared format keep these in the manifest
        if not ckpt.trainer_state:  # an adapter without its trainer state cannot be resumed
            return {"run_key": None}
        return {"run_key": m.get("run_key"), "epoch": m["epoch"], "history": m["history"],
                **ckpt.trainer_state}  # fmt: skip

    def load_state_extra(self, state: dict[str, Any]) -> None:
        self.adapter.load_state_dict(self._resumed_weights)
        self.optimizer.load_state_dict(state["optimizer"])
        self.before, self.tokens_seen = state["before"], state["tokens_seen"]
        self.train_seconds = state["train_seconds"]

    def state_extra(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "before": self.before,
            "tokens_seen": self.tokens_seen,
            "train_seconds": self.train_seconds,
        }

    def restarted(self) -> None:
        clear_checkpoints(self.out)

    def train_epoch(self, epoch: int) -> dict[str, float]:
        t0 = time.perf_counter()
        train_mse = _train_epoch(self, epoch)
        seconds = time.perf_counter() - t0
        self.train_seconds += seconds
        return {"train_mse": train_mse, "seconds": seconds, "tokens_seen": self.tokens_seen}

    def validate(self, epoch: int) -> dict[str, float]:
        metrics = evaluate(self.adapter, self.data.heldout)
        return {"heldout_mse": metrics["mse"], "heldout_cosine": metrics["cosine"]}

    def log_epoch(self, r: dict[str, Any]) -> None:
        log.info(
            "%s epoch %d: train MSE %.4f, held-out MSE %.4f, cosine %.3f (%.1fs)",
            self.name, r["epoch"], r["train_mse"], r["heldout_mse"], r["heldout_cosine"],
            r["seconds"],
        )  # fmt: skip

    def save(self, state: dict[str, Any], finished: bool) -> None:
        epoch, history = state["epoch"], state["history"]
        manifest = _manifest(
            self.settings, self.name, self.data, epoch, history, finished, self.stopped_by, self.key
        )
        save_checkpoint(self.out, f"epoch-{epoch:04d}", self.adapter, manifest, state)

    def finish(self, history: list[dict[str, Any]]) -> AlignResult:
        path = (
            self.out / f"epoch-{history[-1]['epoch']:04d}"
            if history
            else getattr(self._ckpt, "dir", None)
        )
        assert path is not None
        after = evaluate(self.adapter, self.data.heldout)
        return AlignResult(
            self.name, path, self.before, after, history, self.stopped_by, self.train_seconds
        )


def run_alignment(
    settings: Settings,
    phase: Phase,
    out: Path | None = None,
    init: Path | None = None,
    progress: bool = True,
    data: AlignData | None = None,
) -> AlignResult:
    """Train (or resume) one alignment phase; returns metrics and the checkpoint path."""
    out = out or settings.runs_dir / phase
    return run(AlignRecipe(settings, phase, out, init, progress, data))


def _train_epoch(r: AlignRecipe, epoch: int) -> float:
    """One pass in a seeded order (seed, epoch): a resumed run replays the same batches."""
    adapter, cfg, runtime, caches = r.adapter, r.cfg, r.runtime, r.data.train
    adapter.train()
    total, weight, t0 = 0.0, 0.0, time.perf_counter()
    bar = progress_bar(caches[0].num_texts, epoch, cfg.epochs, "text", r.progress)
    scaler, params = runtime.grad_scaler(), list(adapter.parameters())
    rank, world = rank_world()
    rng = epoch_rng(r.settings.seed, epoch)
    for step, (x, y, mask) in enumerate(paired_batches(*caches, cfg.batch_size, rng)):
        # Data parallel (torchrun): every rank draws the same global batch and trains on its
        # rows rank::world; its loss is its share of the global batch's mean.
        n = float(mask.sum())
        x, y, mask = (t[rank::world].to(runtime.device) for t in (x, y, mask))
        with runtime.autocast():
            pred = adapter(x, mask) if len(x) else None
        loss = _share_of_mse(pred, y, mask, n, params)
        where = (
            f"epoch {epoch + 1}, step {step}: training diverged. Lower the learning rate "
            f"(now {cfg.lr}); the last good checkpoint is kept"
        )
        value = optimizer_step(loss, params, r.optimizer, scaler, where)
        total, weight, r.tokens_seen = total + value * n, weight + n, r.tokens_seen + int(n)
        bar.update(len(x) * world)
        bar.set_postfix(mse=f"{total / weight:.4f}")
        if _out_of_budget(r, cfg, time.perf_counter() - t0):
            break
    bar.close()
    return total / weight


def _out_of_budget(r: AlignRecipe, cfg: AlignPhaseConfig, seconds: float) -> bool:
    """A token or time budget spent: the phase ends after this step (`r.stopped_by` says why)."""
    if cfg.budget_tokens is not None and r.tokens_seen >= cfg.budget_tokens:
        r.stopped_by = "token budget"
        return True
    if cfg.budget_minutes is None:
        return False
    elapsed = [r.train_seconds + seconds]
    broadcast(elapsed)  # rank 0's clock decides, so every rank stops at the same step
    if elapsed[0] >= cfg.budget_minutes * 60:
        r.stopped_by = "time budget"
        return True
    return False
