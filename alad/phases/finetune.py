"""Phase 3: task fine-tuning in one of the modes of alad/phases/modes.py, best epoch kept.

    alad finetune --task pos --mode alad-frozen --init runs/phase2 \
        --set phase3.train=../shared/data/pos_de/train.conllu \
        --set phase3.dev=../shared/data/pos_de/dev.conllu \
        --set phase3.test=../shared/data/pos_de/test.conllu

Output folder: `model/` (the best epoch by validation score, see alad/model.py), `state/`
(last epoch's weights + optimizer, to resume an interrupted run; removed when finished) and
`metrics.json` (history, best dev scores, test scores, size).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from alad.adapter import AlignmentAdapter
from alad.atomic import read_json, recover_all, write_json
from alad.cache import FrozenOutputs, feature_root, grouped_batches
from alad.checkpoint import check_fits, load_checkpoint, load_trainer_state, save_trainer_state
from alad.config import ConfigError, Phase3Config, Settings
from alad.heads import build_head
from alad.inference import predict_outputs
from alad.model import AlignedModel, save_model
from alad.models.catalog import Encoder, load_encoder
from alad.models.compress import split_spec
from alad.phases.align import NonFiniteLoss
from alad.phases.modes import MODES, ModeSpec
from alad.runtime import Runtime, barrier, is_main, rank_world
from alad.tasks import TASKS, Splits, Task, load_splits

log = logging.getLogger(__name__)


@dataclass
class FinetuneResult:
    model_dir: Path
    dev: dict[str, Any]
    test: dict[str, Any]
    history: list[dict[str, Any]]
    metrics_path: Path

    def summary(self) -> str:
        speed = f", speed-up {self.test['speedup']:.2f}x" if "speedup" in self.test else ""
        test = (
            f"test main {self.test['main']:.4f}; size {self.test['size_pct']:.1f}% of the "
            f"large model{speed}; "
            if self.test
            else ""
        )
        return f"best dev {self.dev['main']:.4f}; {test}model {self.model_dir}"


def _lora(encoder: torch.nn.Module, cfg: Phase3Config) -> torch.nn.Module:
    from peft import LoraConfig, get_peft_model

    names = {n.rsplit(".", 1)[-1] for n, _ in encoder.named_modules()}
    # Attention projections: BERT calls them query/value, MPNet q/v.
    targets = ["query", "value"] if "query" in names else ["q", "v"]
    config = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=0.1,
        target_modules=targets,
        bias="none",
    )
    return get_peft_model(encoder, config)


def build_model(
    settings: Settings,
    mode: ModeSpec,
    task: Task,
    labels: list[str],
    encoders: tuple[Encoder, Encoder],
) -> AlignedModel:
    """Encoder per mode, AlAd (from `phase3.init` or fresh), a fresh head."""
    cfg, a = settings.phase3, settings.adapter
    compressed, large = encoders
    encoder = large if mode.encoder == "large" else compressed
    if "int8" in split_spec(encoder.name)[1] and mode.encoder_training != "frozen":
        raise ConfigError(
            f"phase3.mode={cfg.mode}: an int8-quantized encoder cannot be trained; "
            "use mode alad-frozen with a :int8 compressed model"
        )
    torch.manual_seed(settings.seed)
    adapter = None
    if mode.adapter:
        adapter = AlignmentAdapter(compressed.dim, large.dim, a.window, a.hidden)
        if cfg.init is not None:
            if str(cfg.init).startswith(("models:/", "runs:/")):
                raise ConfigError(
                    f"phase3.init={cfg.init} is a registry URI: resolve it to a folder first "
                    "(alad.registry.resolve_adapter; `alad finetune` and the pipeline do)"
                )
            init = Path(cfg.init)
            ckpt = load_checkpoint(init)
            check_fits(ckpt.manifest, compressed.dim, large.dim, a.window, a.hidden, init)
            adapter.load_state_dict(ckpt.adapter.state_dict())
    elif cfg.init is not None:
        log.warning("phase3.init is ignored: mode %s has no adapter", cfg.mode)
    dim = large.dim if mode.adapter else encoder.dim
    head = build_head(task.head_kind, dim, max(2, len(labels)))
    model = encoder.model
    model.train()
    if mode.encoder_training == "frozen":
        model.requires_grad_(False)
    elif mode.encoder_training == "lora":
        model = _lora(model, cfg)
    else:
        model.requires_grad_(True)
    return AlignedModel(model, head, adapter)


def _no_decay(name: str, param: torch.nn.Parameter) -> bool:
    # Biases and LayerNorm weights (1-d tensors) are not decayed: the usual BERT/HF practice.
    return param.ndim < 2 or name.endswith(".bias")


def _param_groups(model: AlignedModel, mode: ModeSpec, cfg: Phase3Config, lr: float):
    """AdamW groups: (rest | LoRA | head) x (decay | no decay); empty groups dropped."""
    rates = {"rest": lr, "lora": mode.lora_lr, "head": cfg.head_lr or lr}
    groups: dict[tuple[str, bool], list[torch.nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        kind = "head" if name.startswith("head.") else "lora" if "lora_" in name else "rest"
        groups.setdefault((kind, _no_decay(name, p)), []).append(p)
    return [
        {
            "params": params,
            "lr": rates[kind],
            "weight_decay": 0.0 if no_decay or kind == "lora" else cfg.weight_decay,
        }
        for (kind, no_decay), params in sorted(groups.items())
    ]


def _save_state(out: Path, model: AlignedModel, optimizer, scheduler, info: dict) -> None:
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    weights = {k: v for k, v in model.state_dict().items() if k in trainable}
    # The RNG state too: dropout draws from it, so a resumed run continues the same stream.
    state = {
        "weights": weights,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": torch.get_rng_state(),
        **info,
    }
    save_trainer_state(out / "state", state)


def finetune(
    settings: Settings,
    out: Path | None = None,
    progress: bool = True,
    encoders: tuple[Encoder, Encoder] | None = None,
) -> FinetuneResult:
    """Train and keep the best epoch by validation score. Scoring the test split is
    evaluation's job (alad.phases.evaluate): the CLI and the pipeline stages run it after."""
    cfg = settings.phase3
    mode, task = MODES[cfg.mode], TASKS[cfg.task]
    out = out or settings.runs_dir / f"{cfg.task}-{cfg.mode}"
    metrics_path = out / "metrics.json"
    if is_main():
        recover_all(out)  # finish or undo a folder swap (model/, state/) that a kill interrupted
    barrier()
    run_key = {
        "phase3": cfg.model_dump(mode="json"),
        "models": settings.models.model_dump(),
        "adapter": settings.adapter.model_dump(),
        "seed": settings.seed,
    }
    if metrics_path.is_file():
        done = read_json(metrics_path)
        if done.get("run_key") == run_key and (out / "model" / "manifest.json").is_file():
            log.info("phase 3 already finished in %s; nothing to do", out)
            return FinetuneResult(
                out / "model", done["dev"], done.get("test", {}), done["history"], metrics_path
            )

    splits = load_splits(cfg, settings.seed)
    # The label set is the training split's, even when a subset is trained on: a subset is a
    # compute budget and must not turn rare gold labels at evaluation into errors.
    labels = task.labels(splits.train_all)
    task.check(splits.dev, labels, splits.sources["dev"])
    task.check(splits.test, labels, splits.sources["test"])
    encoders = encoders or (
        load_encoder(settings.models.compressed),
        load_encoder(settings.models.large),
    )
    runtime = Runtime.from_config(settings.runtime)
    model = build_model(settings, mode, task, labels, encoders).to(runtime.device)
    scaler = runtime.grad_scaler()
    tok = (encoders[1] if mode.encoder == "large" else encoders[0]).tokenizer
    pad_id = tok.pad_token_id or 0
    train_feats = task.encode(tok, splits.train, labels, cfg, True)
    dev_feats = task.encode(tok, splits.dev, labels, cfg, False)
    extract_seconds = _cache_frozen_outputs(
        settings, model, encoders[0], train_feats, dev_feats, pad_id, progress
    )
    epochs = cfg.epochs or task.epochs
    lr = cfg.lr or mode.lr
    optimizer = torch.optim.AdamW(_param_groups(model, mode, cfg, lr))
    steps = epochs * math.ceil(task.num_rows(train_feats) / cfg.batch_size)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * steps), steps)
    history: list[dict[str, Any]] = []
    best, start_epoch = -math.inf, 0
    state = load_trainer_state(out / "state")  # checksummed, weights_only: never runs code
    if state is not None and state.get("run_key") == run_key:
        model.load_state_dict(state["weights"], strict=False)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if "rng" in state:
            torch.set_rng_state(state["rng"])
        start_epoch, history, best = state["epoch"], state["history"], state["best"]
        log.info("resuming phase 3 after epoch %d from %s", start_epoch, out / "state")
    manifest = {
        "task": cfg.task,
        "mode": cfg.mode,
        "labels": labels,
        "compressed": settings.models.compressed,
        "large": settings.models.large,
        "encoder_name": (encoders[1] if mode.encoder == "large" else encoders[0]).name,
        "encoder_spec": (
            encoders[0].name
            if mode.encoder == "compressed" and "int8" in split_spec(encoders[0].name)[1]
            else None
        ),
        "max_length": cfg.window_tokens,
        "stride": cfg.stride,
        "n_best": cfg.n_best,
        "max_answer_length": cfg.max_answer_length,
        "null_threshold": cfg.null_threshold,
        "init": str(cfg.init) if cfg.init else None,
        "lr": lr,
        "lora_lr": mode.lora_lr if mode.encoder_training == "lora" else None,
        "epochs": epochs,
        "seed": settings.seed,
        "sources": splits.sources,
        "examples": {"train": len(splits.train), "dev": len(splits.dev), "test": len(splits.test)},
    }
    log.info(
        "phase 3: %s/%s, %d train rows, %d epochs, lr %g%s",
        cfg.task,
        cfg.mode,
        task.num_rows(train_feats),
        epochs,
        lr,
        f" (LoRA {mode.lora_lr:g})" if mode.encoder_training == "lora" else "",
    )

    for epoch in range(start_epoch, epochs):
        t0 = time.perf_counter()
        train_loss = _train_epoch(
            model,
            task,
            train_feats,
            optimizer,
            scheduler,
            cfg,
            pad_id,
            settings.seed,
            epoch,
            epochs,
            progress,
            runtime,
            scaler,
        )
        outputs = predict_outputs(model, task, dev_feats, cfg.batch_size * 2, pad_id, runtime)
        # Decoding settings tuned on dev (QA: the no-answer threshold) go with this epoch.
        tune = getattr(task, "tune", None)
        tuned = tune(splits.dev, dev_feats, outputs, cfg) if tune else {}
        dev_cfg = cfg.model_copy(update=tuned)
        dev = task.score(splits.dev, task.decode(splits.dev, dev_feats, outputs, labels, dev_cfg))
        dev.update(tuned)
        history.append(
            {
                "epoch": epoch + 1,
                "train_loss": train_loss,
                "dev_main": dev["main"],
                # epoch 1 pays for a frozen encoder's one extraction, as in phases 1-2
                "seconds": time.perf_counter() - t0 + (extract_seconds if epoch == 0 else 0.0),
            }
        )
        log.info(
            "epoch %d: train loss %.4f, dev %.4f (%.0fs)",
            epoch + 1,
            train_loss,
            dev["main"],
            history[-1]["seconds"],
        )
        improved = dev["main"] > best
        best = max(best, dev["main"])
        if is_main():  # under torchrun rank 0 writes (every rank holds the same weights)
            if improved:
                manifest_now = {**manifest, **tuned, "dev": dev, "best_epoch": epoch + 1}
                save_model(model, tok, manifest_now, out / "model")
            info = {"epoch": epoch + 1, "history": history, "best": best, "run_key": run_key}
            _save_state(out, model, optimizer, scheduler, info)
        barrier()

    dev_best = json.loads((out / "model" / "manifest.json").read_text())["dev"]
    if is_main():
        record = {"run_key": run_key, "history": history, "dev": dev_best}
        write_json({**record, "sources": splits.sources}, metrics_path)
        shutil.rmtree(out / "state", ignore_errors=True)
    barrier()
    return FinetuneResult(out / "model", dev_best, {}, history, metrics_path)


def _cache_frozen_outputs(
    settings: Settings,
    model: AlignedModel,
    compressed: Encoder,
    train_feats: Any,
    dev_feats: Any,
    pad_id: int,
    progress: bool,
) -> float:
    """Frozen M_C: extract its outputs for every train/dev row once; returns the seconds."""
    trains = any(p.requires_grad for p in model.encoder.parameters())
    if trains or not settings.phase3.cache_frozen:
        return 0.0
    t0 = time.perf_counter()
    outputs = FrozenOutputs(model.encoder, compressed.fingerprint, feature_root(settings.cache.dir))
    rows = list(train_feats.input_ids) + list(dev_feats.input_ids)
    for turn in ("main", "others"):  # rank 0 extracts and writes the file; the others read it
        if is_main() == (turn == "main"):
            outputs.fill(rows, settings.cache.extract_batch_size, pad_id, progress)
        barrier()
    model.frozen_outputs = outputs
    return time.perf_counter() - t0


def _epoch_order(feats: Any, cfg: Phase3Config, seed: int, epoch: int) -> list[int]:
    """Row order of one epoch, seeded by (seed, epoch). `group_by_length`: rows of similar
    length share a batch (drawn from random pools of 16 batches, batch order shuffled), which
    halves the padded tokens of a POS epoch (51k -> 26k at batch 16) without a fixed order."""
    rng = np.random.default_rng([seed, epoch])
    if not cfg.group_by_length:
        return rng.permutation(len(feats.input_ids)).tolist()
    batches = grouped_batches([len(r) for r in feats.input_ids], cfg.batch_size, rng)
    # Task.batches cuts the flat order every batch_size rows: the one short batch goes last.
    batches.sort(key=lambda b: len(b) < cfg.batch_size)
    return [int(i) for b in batches for i in b]


def _train_epoch(
    model: AlignedModel,
    task: Task,
    feats: Any,
    optimizer,
    scheduler,
    cfg: Phase3Config,
    pad_id: int,
    seed: int,
    epoch: int,
    epochs: int,
    progress: bool,
    runtime: Runtime,
    scaler: torch.amp.GradScaler,
) -> float:
    model.train()
    order = _epoch_order(feats, cfg, seed, epoch)
    total, count = 0.0, 0
    bar = tqdm(
        total=len(order),
        desc=f"epoch {epoch + 1}/{epochs}",
        unit="row",
        disable=not progress,
        leave=False,
    )
    rank, world = rank_world()
    trainable = [p for p in model.parameters() if p.requires_grad]
    for step, batch in enumerate(task.batches(feats, cfg.batch_size, pad_id, order)):
        rows = len(batch["input_ids"])
        loss = _step_loss(model, task, batch, runtime, rank, world, trainable)
        value = loss.detach().clone()
        if world > 1:
            dist.all_reduce(value)  # the whole batch's loss: the sum of the ranks' shares
        if not math.isfinite(float(value)):
            raise NonFiniteLoss(
                f"phase 3 loss is {float(value)} at epoch {epoch + 1}, step "
                f"{step}: lower phase3.lr; the best model so far is kept"
            )
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if world > 1:
            for p in trainable:
                dist.all_reduce(p.grad)  # summed shares = the whole batch's gradient
        scaler.unscale_(optimizer)  # clip the true gradients (a no-op unless fp16)
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        total, count = total + float(value), count + 1
        bar.update(rows)
        bar.set_postfix(loss=f"{total / count:.4f}")
    bar.close()
    return total / max(1, count)


def _step_loss(
    model: AlignedModel,
    task: Task,
    batch: dict[str, torch.Tensor],
    runtime: Runtime,
    rank: int,
    world: int,
    trainable: list[torch.nn.Parameter],
) -> torch.Tensor:
    """The batch's mean loss; under torchrun this rank's rows' share of it (rows rank::world;
    the shares sum to the mean). One process computes exactly `task.loss` of the batch."""
    if world == 1:
        batch = runtime.move(batch)
        with runtime.autocast():
            logits = model(batch["input_ids"], batch["attention_mask"])
        return task.loss(logits.float(), batch)
    terms = task.loss_count(batch)  # of the whole batch, before it is split
    mine = runtime.move({k: v[rank::world] for k, v in batch.items()})
    if len(mine["input_ids"]) == 0:
        return sum(p.sum() * 0.0 for p in trainable)  # no rows, but still in the gradient sum
    with runtime.autocast():
        logits = model(mine["input_ids"], mine["attention_mask"])
    return task.loss_sum(logits.float(), mine) / max(1, terms)


__all__ = ["FinetuneResult", "Splits", "build_model", "finetune"]
