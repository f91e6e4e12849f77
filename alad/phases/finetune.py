"""Phase 3: task fine-tuning in one of the modes of alad/modes.py, best epoch kept.

    alad finetune --task pos --mode alad-frozen --init runs/phase2 \
        --set phase3.train=../shared/data/pos_de/train.conllu \
        --set phase3.dev=../shared/data/pos_de/dev.conllu \
        --set phase3.test=../shared/data/pos_de/test.conllu

Output folder: `model/` (the best epoch by validation score, see alad/aligned_model.py), `state/`
(last epoch's weights + optimizer, to resume an interrupted run; removed when finished) and
`metrics.json` (history, best dev scores, test scores, size).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import get_linear_schedule_with_warmup

from alad import stopping
from alad.aligned_model import AlignedModel, save_model
from alad.atomic import read_json, write_json
from alad.cache import FrozenOutputs, feature_root, grouped_batches
from alad.checkpoint import (
    check_fits,
    load_checkpoint,
    load_trainer_state,
    new_adapter,
    save_trainer_state,
)
from alad.config import ConfigError, DistillConfig, Phase3Config, Settings
from alad.data import tagging
from alad.distill import TeacherLogits, teacher_logits, word_rows
from alad.errors import DataFormatError
from alad.heads import build_head
from alad.inference import predict_outputs
from alad.losses import distill_mix
from alad.models.catalog import Encoder, load_encoder
from alad.models.compress import split_spec
from alad.modes import MODES, ModeSpec
from alad.phases.recipe import (
    Recipe,
    no_rows_loss,
    optimizer_step,
    progress_bar,
    resume_state,
    run,
    run_key,
)
from alad.phases.slad import SladLoss, SladModel
from alad.probe import fit_softmax
from alad.runtime import Runtime, barrier, is_main, rank_world
from alad.tasks import TASKS, Splits, Task, load_splits
from alad.teacher import head_for

log = logging.getLogger(__name__)


@dataclass
class FinetuneResult:
    model_dir: Path
    dev: dict[str, Any]
    test: dict[str, Any]
    history: list[dict[str, Any]]
    metrics_path: Path
    earlier_seconds: float = 0.0  # of this phase 3, spent in processes before this one

    def summary(self) -> str:
        speed = f", speed-up {self.test['speedup']:.2f}x" if "speedup" in self.test else ""
        test = (
            f"test main {self.test['main']:.4f}; size {self.test['size_pct']:.1f}% of the "
            f"large model{speed}; "
            if self.test
            else ""
        )
        return f"best dev {self.dev['main']:.4f}; {test}model {self.model_dir}"


def _low_rank(
    encoder: torch.nn.Module, cfg: Phase3Config, mode: ModeSpec, steps: int | None
) -> torch.nn.Module:
    """LoRA (r, alpha) or AdaLoRA (phase3.adalora; its schedule needs the `steps` of
    phase 3) on the attention query/value projections of the frozen encoder."""
    from peft import AdaLoraConfig, LoraConfig, get_peft_model

    names = {n.rsplit(".", 1)[-1] for n, _ in encoder.named_modules()}
    # Attention projections: BERT calls them query/value, MPNet q/v.
    targets = ["query", "value"] if "query" in names else ["q", "v"]
    common = {"lora_alpha": cfg.lora_alpha, "lora_dropout": 0.1, "target_modules": targets}
    if mode.encoder_training == "lora":
        return get_peft_model(encoder, LoraConfig(r=cfg.lora_r, bias="none", **common))
    if not steps:
        raise ValueError("AdaLoRA needs the number of optimizer steps of phase 3 (steps=)")
    a = cfg.adalora
    config = AdaLoraConfig(
        init_r=a.init_r,
        target_r=a.target_r,
        tinit=int(a.tinit * steps),
        tfinal=int(a.tfinal * steps),
        deltaT=a.delta_t,
        total_step=steps,
        orth_reg_weight=a.orth_reg,
        bias="none",
        **common,
    )
    return get_peft_model(encoder, config)


def adalora_ranks(encoder: torch.nn.Module) -> dict[str, int] | None:
    """AdaLoRA: the rank each adapted matrix holds now (its budget allocation so far: init_r
    everywhere before the first one); None for any other encoder."""
    config = getattr(encoder, "peft_config", {}).get("default")
    if config is None or type(config).__name__ != "AdaLoraConfig":
        return None
    # rank_pattern: {name of a lora_E in the wrapped model: which of its init_r ranks stay}
    pattern = config.rank_pattern or {
        n: [True] * config.init_r
        for n, _ in encoder.base_model.model.named_parameters()
        if "lora_E.default" in n
    }
    return {n.replace(".lora_E.default", ""): int(sum(kept)) for n, kept in pattern.items()}


def adalora_penalty(encoder: torch.nn.Module, weight: float) -> torch.Tensor:
    """AdaLoRA's orthogonality regulariser: weight x the mean of ||P P^T - I||_F and
    ||Q^T Q - I||_F. peft adds it inside forward only when the model computes a loss from
    labels, which alad's encoder never does, so phase 3 adds it to its loss."""
    terms = []
    for name, p in encoder.named_parameters():
        if p.requires_grad and ("lora_A" in name or "lora_B" in name):
            cov = p @ p.T if "lora_A" in name else p.T @ p
            eye = torch.eye(cov.shape[0], device=cov.device, dtype=cov.dtype)
            terms.append(torch.linalg.norm(cov - eye, "fro"))
    return weight * torch.stack(terms).mean()


def build_model(
    settings: Settings,
    mode: ModeSpec,
    task: Task,
    labels: list[str],
    encoders: tuple[Encoder, Encoder],
    steps: int | None = None,
) -> AlignedModel:
    """Encoder per mode, AlAd (from `phase3.init` or fresh), a fresh head. `steps`: phase 3's
    optimizer steps (AdaLoRA's schedule)."""
    cfg, a = settings.phase3, settings.adapter
    compressed, large = encoders
    encoder = large if mode.encoder == "large" else compressed
    if "int8" in split_spec(encoder.name)[1] and mode.encoder_training != "frozen":
        raise ConfigError(
            f"phase3.mode={cfg.mode}: an int8-quantized encoder cannot be trained; "
            "use mode alad-frozen with a :int8 compressed model"
        )
    torch.manual_seed(settings.seed)
    adapter, ckpt = None, None
    if mode.adapter:
        adapter = new_adapter(compressed.dim, large.dim, a)
        if cfg.init is not None:
            if str(cfg.init).startswith(("models:/", "runs:/")):
                raise ConfigError(
                    f"phase3.init={cfg.init} is a registry URI: resolve it to a folder first "
                    "(alad.registry.resolve_adapter; `alad finetune` and the pipeline do)"
                )
            init = Path(cfg.init)
            ckpt = load_checkpoint(init)
            dims = (compressed.dim, large.dim)
            check_fits(ckpt.manifest, *dims, a.window, a.hidden, init, a.rank)
            adapter.load_state_dict(ckpt.adapter.state_dict())
    elif cfg.init is not None:
        log.warning("phase3.init is ignored: mode %s has no adapter", cfg.mode)
    dim = large.dim if mode.adapter else encoder.dim
    # drawn either way, so that the rest of phase 3 sees the same random stream
    head = build_head(task.head_kind, dim, max(2, len(labels)))
    if cfg.head_init == "teacher":
        if ckpt is None:
            raise ConfigError(
                "phase3.head_init=teacher: the head comes from the teacher of the adapter that "
                "phase3.init names, and phase3.init is not set"
            )
        head = head_for(ckpt.manifest, ckpt.dir, cfg.task, labels, dim)
    model = encoder.model
    model.train()
    if mode.encoder_training == "frozen":
        model.requires_grad_(False)
    elif mode.low_rank:
        model = _low_rank(model, cfg, mode, steps)
    else:
        model.requires_grad_(True)
    if mode.joint_teacher:  # SLAD: M_L + LoRA + its own head; the student's LoRA tied to it
        t_head = build_head(task.head_kind, large.dim, max(2, len(labels)))
        teacher = AlignedModel(_low_rank(large.model.train(), cfg, mode, steps), t_head)
        return SladModel(AlignedModel(model, head, adapter), teacher)
    return AlignedModel(model, head, adapter)


def _no_decay(name: str, param: torch.nn.Parameter) -> bool:
    # Biases and LayerNorm weights (1-d tensors) are not decayed: the usual BERT/HF practice.
    return param.ndim < 2 or name.endswith(".bias")


def lora_rate(cfg: Phase3Config, mode: ModeSpec) -> float:
    """The LoRA / AdaLoRA weights' learning rate: phase3.lora_lr, else the mode's."""
    return cfg.lora_lr or mode.lora_lr


def _param_groups(model: AlignedModel, mode: ModeSpec, cfg: Phase3Config, lr: float):
    """AdamW groups: (rest | LoRA | head) x (decay | no decay); empty groups dropped."""
    rates = {"rest": lr, "lora": lora_rate(cfg, mode), "head": cfg.head_lr or lr}
    groups: dict[tuple[str, bool], list[torch.nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        head = name.startswith(("head.", "teacher.head."))  # SLAD's teacher has one too
        kind = "head" if head else "lora" if "lora_" in name else "rest"
        groups.setdefault((kind, _no_decay(name, p)), []).append(p)
    return [
        {
            "params": params,
            "lr": rates[kind],
            "weight_decay": 0.0 if no_decay or kind == "lora" else cfg.weight_decay,
        }
        for (kind, no_decay), params in sorted(groups.items())
    ]


class FinetuneRecipe(Recipe):
    """Phase 3: one mode's model trained on the task, the best epoch by dev score kept in
    `out/model/`, the resume state in `out/state/`, `out/metrics.json` when finished."""

    def __init__(
        self,
        settings: Settings,
        out: Path,
        progress: bool,
        encoders: tuple[Encoder, Encoder] | None,
        test: Callable[[Path], dict[str, Any]] | None = None,
    ) -> None:
        self.settings, self.cfg, self.out, self.progress = settings, settings.phase3, out, progress
        self.test = test
        self.mode, self.task = MODES[self.cfg.mode], TASKS[self.cfg.task]
        self.name, self.key, self.encoders = "phase 3", run_key(settings, "phase3"), encoders
        self.epochs = self.cfg.epochs or self.task.epochs
        self.lr, self.best, self.metrics_path = (
            self.cfg.lr or self.mode.lr,
            -math.inf,
            out / "metrics.json",
        )
        self.runtime = Runtime.from_config(settings.runtime)
        self.save_every = settings.runtime.save_every_minutes
        self.partial: dict[str, Any] | None = None  # where a resumed epoch continues
        self.earlier_seconds = 0.0

    def outputs(self) -> dict[Path, tuple[str, str]]:
        frozen = self.mode.encoder_training == "frozen" and self.cfg.cache_frozen
        if not frozen and not self._cached_teacher:
            return super().outputs()
        cache = feature_root(self.settings.cache.dir)
        fix = "set cache.dir (or ALAD_CACHE_HOME) to a folder you can write"
        what = "frozen-output cache" if frozen else "teacher-logit cache"
        return {**super().outputs(), cache: (what, fix)}

    def finished_result(self) -> FinetuneResult | None:
        if not self.metrics_path.is_file():
            return None
        done = read_json(self.metrics_path)
        if done.get("run_key") != self.key or not (self.out / "model" / "manifest.json").is_file():
            return None
        if self.test is not None and not isinstance(done.get("test"), dict):
            # trained but never tested (a run that failed in its test before the test was part
            # of `finish`): not finished; its state is gone, so it is trained again
            log.warning("%s: phase 3 was never tested; running it again", self.out)
            return None
        test, history = done.get("test", {}), done["history"]
        earlier = sum(h.get("seconds", 0.0) for h in history)
        return FinetuneResult(
            self.out / "model", done["dev"], test, history, self.metrics_path, earlier
        )

    def setup(self) -> None:
        cfg, task, settings = self.cfg, self.task, self.settings
        self.splits = splits = load_splits(cfg, settings.seed)
        _check_not_empty(splits, cfg)  # before any model is loaded or anything is written
        # The label set is the training split's, even when a subset is trained on: a subset is
        # a compute budget and must not turn rare gold labels at evaluation into errors.
        self.labels = task.labels(splits.train_all)
        task.check(splits.dev, self.labels, splits.sources["dev"])
        task.check(splits.test, self.labels, splits.sources["test"])
        m = settings.models
        encoders = self.encoders or (load_encoder(m.compressed), load_encoder(m.large))
        self.encoders = encoders
        self.tok = (encoders[1] if self.mode.encoder == "large" else encoders[0]).tokenizer
        self.pad_id = self.tok.pad_token_id or 0
        self.train_feats = task.encode(self.tok, splits.train, self.labels, cfg, True)
        if task.num_rows(self.train_feats) == 0:
            raise DataFormatError(
                f"{cfg.train}: phase 3 would train on 0 rows: none of its {len(splits.train)} "
                "examples gives a training row; check the file's answers and phase3.max_length"
            )
        self.dev_feats = task.encode(self.tok, splits.dev, self.labels, cfg, False)
        self.steps_per_epoch = math.ceil(task.num_rows(self.train_feats) / cfg.batch_size)
        steps = self.epochs * self.steps_per_epoch
        self.model = build_model(settings, self.mode, task, self.labels, encoders, steps)
        self.model.to(self.runtime.device)
        self.scaler = self.runtime.grad_scaler()
        self.extract_seconds = _cache_frozen_outputs(
            settings, self.model, encoders[1] if self.mode.encoder == "large" else encoders[0],
            self.train_feats, self.dev_feats, self.pad_id, self.progress,
        )  # fmt: skip
        if self.mode.fits_head:
            t0 = time.perf_counter()
            _fit_head(self)
            self.extract_seconds += time.perf_counter() - t0
        self.targets = self._teacher_targets()
        self.slad = self._slad_loss()
        self.optimizer = torch.optim.AdamW(_param_groups(self.model, self.mode, cfg, self.lr))
        warmup = int(cfg.warmup_ratio * steps)
        self.scheduler = get_linear_schedule_with_warmup(self.optimizer, warmup, steps)
        self.manifest = _model_manifest(self)

    def _teacher_targets(self) -> TeacherLogits | None:
        """phase3.distill: the teacher's logits of every training row, from the cache or
        computed once (its seconds count as epoch 1's, as a frozen encoder's extraction)."""
        d, settings = self.cfg.distill, self.settings
        if not self._cached_teacher:
            return None
        t0 = time.perf_counter()
        targets = teacher_logits(
            d.teacher, self.task, self.splits.train, self.train_feats, self.tok, self.labels,
            self.splits.sources["train"], feature_root(settings.cache.dir), self.runtime,
            self.cfg.window_tokens, settings.cache.extract_batch_size,
        )  # fmt: skip
        self.extract_seconds += time.perf_counter() - t0
        return targets

    @property
    def _cached_teacher(self) -> bool:
        """phase3.distill with a fixed teacher (not SLAD's, which trains: nothing to cache)."""
        return self.cfg.distill is not None and not self.mode.joint_teacher

    def _slad_loss(self) -> SladLoss | None:
        """Mode slad: the teacher's encoding of every training row's words, with their labels
        (its task loss), and T, alpha (phase3.distill's, else its defaults)."""
        if not self.mode.joint_teacher:
            return None
        tok, d = self.encoders[1].tokenizer, self.cfg.distill or DistillConfig()
        label2id = {label: i for i, label in enumerate(self.labels)}
        who = f"phase3.mode=slad (teacher {self.settings.models.large})"
        rows = word_rows(
            tok, self.splits.train, self.train_feats, self.cfg.window_tokens, who, label2id
        )
        return SladLoss(rows, tok.pad_token_id or 0, d.temperature, d.alpha)

    def announce(self) -> None:
        cfg, task, d = self.cfg, self.task, self.cfg.distill
        log.info(
            "phase 3: %s/%s, %d train rows, %d epochs, lr %g%s%s", cfg.task, cfg.mode,
            task.num_rows(self.train_feats), self.epochs, self.lr,
            f" (LoRA {lora_rate(cfg, self.mode):g})" if self.mode.low_rank else "",
            f", distilling from {d.teacher} (T {d.temperature:g}, alpha {d.alpha:g})"
            if self.targets is not None else "",
        )  # fmt: skip
        if self.slad:
            log.info(
                "phase 3: SLAD with %s (T %g, alpha %g), student layer -> teacher layer %s",
                self.settings.models.large, self.slad.temperature, self.slad.alpha,
                self.slad.describe(self.model, "")["layer_map"],
            )  # fmt: skip

    def saved_state(self) -> dict[str, Any] | None:
        return load_trainer_state(self.out / "state")  # checksummed, weights_only: runs no code

    def load_state_extra(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["weights"], strict=False)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.best = state["best"]
        self.partial = state.get("partial")
        if "adalora" in state:  # its importance scores and ranks so far: the budget goes on
            _set_allocator_state(self.model.encoder, state["adalora"])
        self.earlier_seconds = sum(h.get("seconds", 0.0) for h in state["history"])
        self.earlier_seconds += self.partial["seconds"] if self.partial else 0.0

    def state_extra(self) -> dict[str, Any]:
        trainable = {n for n, p in self.model.named_parameters() if p.requires_grad}
        weights = {k: v for k, v in self.model.state_dict().items() if k in trainable}
        extra = {"adalora": _allocator_state(self.model.encoder)} if self._adalora else {}
        return {
            "weights": weights,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "best": self.best,
            **extra,
        }

    @property
    def _adalora(self) -> bool:
        return self.mode.encoder_training == "adalora"

    def restarted(self) -> None:
        shutil.rmtree(self.out / "state", ignore_errors=True)

    def train_epoch(self, epoch: int) -> dict[str, float]:
        partial, self.partial = self.partial, None
        # an epoch resumed from a save inside it counts the seconds spent before the stop
        self._t0 = time.perf_counter() - (partial["seconds"] if partial else 0.0)
        record = {"train_loss": _train_epoch(self, epoch, partial)}
        if self._adalora:  # the budget as it shrinks: the sum of every matrix's rank
            record["adalora_rank"] = sum(adalora_ranks(self.model.encoder).values())
        return record

    def save_inside_epoch(self, epoch: int, step: int, total: float, count: int) -> None:
        """The resume state after batch `step` of `epoch` (rank 0): a rerun skips those batches
        and continues with the same weights, optimizer, schedule, loss sum and dropout stream."""
        seconds = time.perf_counter() - self._t0
        partial = {"step": step, "loss_total": total, "count": count, "seconds": seconds}
        state = resume_state(self, epoch, partial=partial)
        save_trainer_state(self.out / "state", state, self._progress(epoch, step, seconds))
        log.info("phase 3: saved the state inside epoch %d after batch %d", epoch + 1, step)

    def validate(self, epoch: int) -> dict[str, float]:
        cfg, task, splits, feats = self.cfg, self.task, self.splits, self.dev_feats
        bs = cfg.batch_size * 2
        outputs = predict_outputs(self.model, task, feats, bs, self.pad_id, self.runtime)
        # Decoding settings tuned on dev (QA: the no-answer threshold) go with this epoch.
        tune = getattr(task, "tune", None)
        self.tuned = tune(splits.dev, feats, outputs, cfg) if tune else {}
        dev_cfg = cfg.model_copy(update=self.tuned)
        self.dev = task.score(
            splits.dev, task.decode(splits.dev, feats, outputs, self.labels, dev_cfg)
        )
        self.dev.update(self.tuned)
        self.improved = self.dev["main"] > self.best
        self.best = max(self.best, self.dev["main"])
        # epoch 1 pays for a frozen encoder's one extraction, as in phases 1-2
        extract = self.extract_seconds if epoch == 0 else 0.0
        return {"dev_main": self.dev["main"], "seconds": time.perf_counter() - self._t0 + extract}

    def log_epoch(self, r: dict[str, Any]) -> None:
        log.info(
            "epoch %d: train loss %.4f, dev %.4f (%.0fs)",
            r["epoch"], r["train_loss"], r["dev_main"], r["seconds"],
        )  # fmt: skip

    def save(self, state: dict[str, Any], finished: bool) -> None:
        if self.improved:
            best = {**self.manifest, **self.tuned, "dev": self.dev, "best_epoch": state["epoch"]}
            if self._adalora:  # the ranks this epoch's weights hold
                best["adalora"]["ranks"] = adalora_ranks(self.model.encoder)
            save_model(self.model, self.tok, best, self.out / "model")
        save_trainer_state(self.out / "state", state, self._progress(state["epoch"], 0, 0.0))

    def _progress(self, epoch: int, step: int, seconds: float) -> dict[str, Any]:
        """How far the run is, for the state's manifest (`saved_progress`): `epoch` epochs and
        `step` batches of the next done, `seconds` into that epoch."""
        earlier = sum(h.get("seconds", 0.0) for h in self.history)
        steps = math.ceil(self.task.num_rows(self.train_feats) / self.cfg.batch_size)
        return {
            "epoch": epoch,
            "epochs": self.epochs,
            "step": step,
            "steps": steps,
            "seconds": round(earlier + seconds, 1),
        }

    def finish(self, history: list[dict[str, Any]]) -> FinetuneResult:
        """Test the saved model (with `test`), then mark the run finished: metrics.json
        written, state/ removed. A test that fails leaves the run unfinished, its state/ after
        the last epoch kept: the rerun trains nothing and only tests again."""
        dev_best = json.loads((self.out / "model" / "manifest.json").read_text())["dev"]
        # the training model, its optimizer and cached outputs are done with: their memory
        # goes before the test loads the saved model
        del self.model, self.optimizer, self.scheduler, self.train_feats, self.dev_feats
        self.targets = self.slad = None  # the teacher's logits; SLAD's teacher rows
        test = self.test(self.out / "model") if self.test is not None else {}
        if is_main():
            record = {"run_key": self.key, "history": history, "dev": dev_best}
            record.update({"sources": self.splits.sources, **({"test": test} if test else {})})
            write_json(record, self.metrics_path)
            shutil.rmtree(self.out / "state", ignore_errors=True)
        barrier()
        return FinetuneResult(
            self.out / "model", dev_best, test, history, self.metrics_path, self.earlier_seconds
        )


def _model_manifest(r: FinetuneRecipe) -> dict[str, Any]:
    """What the saved model's manifest.json says about how it was made (alad/aligned_model.py)."""
    cfg, mode, (compressed, large) = r.cfg, r.mode, r.encoders
    int8 = mode.encoder == "compressed" and "int8" in split_spec(compressed.name)[1]
    return {
        "task": cfg.task,
        "mode": cfg.mode,
        "labels": r.labels,
        "compressed": r.settings.models.compressed,
        "large": r.settings.models.large,
        "encoder_name": (large if mode.encoder == "large" else compressed).name,
        "encoder_spec": compressed.name if int8 else None,
        "max_length": cfg.window_tokens,
        "stride": cfg.stride,
        "n_best": cfg.n_best,
        "max_answer_length": cfg.max_answer_length,
        "null_threshold": cfg.null_threshold,
        "init": str(cfg.init) if cfg.init else None,
        "head_init": cfg.head_init,
        "lr": r.lr,
        "lora_lr": lora_rate(cfg, mode) if mode.low_rank else None,
        "adalora": cfg.adalora.model_dump() if mode.encoder_training == "adalora" else None,
        "distill": (
            {**r.targets.teacher.describe(), **cfg.distill.model_dump(exclude={"teacher"})}
            if r.targets is not None
            else None
        ),
        **({"slad": r.slad.describe(r.model, r.settings.models.large)} if r.slad else {}),
        "epochs": r.epochs,
        "seed": r.settings.seed,
        "sources": r.splits.sources,
        "examples": {k: len(getattr(r.splits, k)) for k in ("train", "dev", "test")},
    }


def finetune(
    settings: Settings,
    out: Path | None = None,
    progress: bool = True,
    encoders: tuple[Encoder, Encoder] | None = None,
    test: Callable[[Path], dict[str, Any]] | None = None,
) -> FinetuneResult:
    """Train and keep the best epoch by validation score. Scoring the test split is
    evaluation's job (alad.evaluation): `test(model_dir)` returns its report, which becomes
    part of the finished run (alad.jobs.finetune_job passes it); without it nothing is tested."""
    cfg = settings.phase3
    out = out or settings.runs_dir / f"{cfg.task}-{cfg.mode}"
    return run(FinetuneRecipe(settings, out, progress, encoders, test))


def _check_not_empty(splits: Splits, cfg: Phase3Config) -> None:
    """Phase 3 on 0 training examples trained nothing and saved a model anyway, and an empty
    dev or test split failed only after training (issue 24): both refused before any work."""
    carved = [name for name in ("dev", "test") if getattr(cfg, name) is None]
    if not splits.train:
        why, fix = "it holds none", "give a training file with examples"
        if carved and (splits.dev or splits.test):
            names = " and ".join(carved) + (" splits" if len(carved) > 1 else " split")
            why = f"all its examples went to the {names} carved from it (QA: whole articles)"
            files = " and ".join(f"a phase3.{name} file" for name in carved)
            fix = f"give {files}, or a training file with more examples"
        raise DataFormatError(f"{cfg.train}: phase 3 would train on 0 examples: {why}; {fix}")
    for name, use in (("dev", "choose the best epoch"), ("test", "score the model")):
        if not getattr(splits, name):
            raise DataFormatError(
                f"{splits.sources[name]}: no {name} examples, and phase 3 needs them to {use}; "
                f"give a phase3.{name} file with examples"
            )


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


@torch.no_grad()
def _fit_head(r: FinetuneRecipe) -> None:
    """A `fits_head` mode (`probe`): the head's classifier starts from the converged linear
    probe of the frozen encoder's outputs at the scored positions (each word's first sub-token)
    of every training row, fitted as `alad probe` fits a layer (alad.probe.fit_softmax); the
    epochs then train it as any head. Token tasks; a span head (QA) starts fresh."""
    model, task = r.model, r.task
    if task.head_kind != "token":
        log.warning("phase 3: mode %s fits token heads only; the QA head starts fresh", r.cfg.mode)
        return
    model.eval()
    xs, ys = [], []
    rows = list(range(task.num_rows(r.train_feats)))
    for batch in task.batches(r.train_feats, r.cfg.batch_size, r.pad_id, rows):
        batch = r.runtime.move(batch)
        keep = batch["labels"] != tagging.IGNORE
        xs.append(model.embed(batch["input_ids"], batch["attention_mask"])[keep].float().cpu())
        ys.append(batch["labels"][keep].cpu())
    x, y = torch.cat(xs), torch.cat(ys)
    classifier = model.head.classifier
    with torch.random.fork_rng(devices=[]):  # the rest of phase 3 sees the same random stream
        linear = fit_softmax(x, y, classifier.out_features)
    classifier.weight.copy_(linear.weight)
    classifier.bias.copy_(linear.bias)
    accuracy = 100 * float((linear(x).argmax(-1) == y).float().mean())
    log.info(
        "phase 3: the head fitted as a linear probe on %d training words (train accuracy %.1f %%)",
        len(y), accuracy,
    )  # fmt: skip
    model.train()


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


def _train_epoch(r: FinetuneRecipe, epoch: int, partial: dict[str, Any] | None = None) -> float:
    """One pass in the order of `_epoch_order`; returns the mean batch loss. `partial` (a save
    inside this epoch): its batches are skipped and its loss sum carried on. Rank 0 saves the
    resume state every `runtime.save_every_minutes`, and on a stop request (SIGTERM, a time box:
    alad/stopping.py) after the batch it is in, before `Stopped` ends the run."""
    model, cfg, task, feats = r.model, r.cfg, r.task, r.train_feats
    model.train()
    order = _epoch_order(feats, cfg, r.settings.seed, epoch)
    start = partial["step"] if partial else 0
    total, count = (partial["loss_total"], partial["count"]) if partial else (0.0, 0)
    bar = progress_bar(len(order), epoch, r.epochs, "row", r.progress)
    rank, world = rank_world()
    trainable = [p for p in model.parameters() if p.requires_grad]
    saved = time.perf_counter()
    for step, batch in enumerate(task.batches(feats, cfg.batch_size, r.pad_id, order)):
        if step < start:  # done before the stop; the order is the same (seeded by epoch)
            bar.update(len(batch["input_ids"]))
            continue
        rows = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]  # Task.batches' cut
        loss = _step_loss(r, batch, rows, rank, world, trainable)
        where = (
            f"epoch {epoch + 1}, step {step}: phase 3 diverged; lower phase3.lr (now {r.lr}); "
            "the best model so far is kept"
        )
        value = optimizer_step(
            loss, trainable, r.optimizer, r.scaler, where, clip=1.0, scheduler=r.scheduler
        )
        if r._adalora:  # after the update, before the next zero_grad (peft's contract):
            # importance scores from this step's gradients, ranks pruned on the schedule
            model.encoder.base_model.update_and_allocate(epoch * r.steps_per_epoch + step + 1)
        total, count = total + value, count + 1
        bar.update(len(batch["input_ids"]))
        bar.set_postfix(loss=f"{total / count:.4f}")
        stop = stopping.requested()  # SIGTERM or the end of a time box: save, then stop
        due = r.save_every and time.perf_counter() - saved >= 60 * r.save_every
        if stop or due:
            if is_main():
                r.save_inside_epoch(epoch, step + 1, total, count)
            saved = time.perf_counter()
            if stop:
                barrier()
                where = f"phase 3 in epoch {epoch + 1} after batch {step + 1}"
                raise stopping.stop(stop, where, r.out / "state")
    bar.close()
    return total / max(1, count)


def _step_loss(
    r: FinetuneRecipe,
    batch: dict[str, torch.Tensor],
    rows: list[int],
    rank: int,
    world: int,
    trainable: list[torch.nn.Parameter],
) -> torch.Tensor:
    """The batch's mean loss; under torchrun this rank's rows' share of it (rows rank::world;
    the shares sum to the mean). One process computes exactly `task.loss` of the batch, mixed
    with the distillation term on `rows`' teacher logits when phase3.distill is set (alpha *
    KD + (1 - alpha) * task, both means over the task loss's terms), or SLAD's loss with its
    teacher (alad/phases/slad.py), + AdaLoRA's penalty."""
    model, task, runtime, d = r.model, r.task, r.runtime, r.cfg.distill
    terms = task.loss_count(batch)  # of the whole batch, before it is split
    if world > 1:
        batch = {k: v[rank::world] for k, v in batch.items()}
        rows = rows[rank::world]
    if len(batch["input_ids"]) == 0:
        loss = no_rows_loss(trainable)  # no rows, but still in the gradient sum
    else:
        batch = runtime.move(batch)
        with runtime.autocast():
            logits = model(batch["input_ids"], batch["attention_mask"]).float()
        if world == 1:
            loss = task.loss(logits, batch)
        else:
            loss = task.loss_sum(logits, batch) / max(1, terms)
        if r.targets is not None:
            kd = task.kd_sum(logits, r.targets.rows(rows), batch, d.temperature) / max(1, terms)
            loss = distill_mix(loss, kd, d.alpha)
        if r.slad is not None:  # + the teacher's forward, task loss and the KL (SLAD)
            loss = r.slad(model, task, logits, loss, batch, rows, terms, runtime)
    if r._adalora:  # a term of the weights, not of the rows: each rank adds its share
        loss = loss + adalora_penalty(model.encoder, r.cfg.adalora.orth_reg) / world
    return loss


def _allocator_state(encoder: torch.nn.Module) -> dict[str, Any]:
    """AdaLoRA's budget state (importance averages, ranks so far), for the resume state."""
    allocator = encoder.base_model.rankallocator
    return {
        "ipt": allocator.ipt,
        "exp_avg_ipt": allocator.exp_avg_ipt,
        "exp_avg_unc": allocator.exp_avg_unc,
        "rank_pattern": encoder.peft_config["default"].rank_pattern,
    }


def _set_allocator_state(encoder: torch.nn.Module, state: dict[str, Any]) -> None:
    allocator = encoder.base_model.rankallocator
    device = next(encoder.parameters()).device
    for name in ("ipt", "exp_avg_ipt", "exp_avg_unc"):
        setattr(allocator, name, {k: v.to(device) for k, v in state[name].items()})
    encoder.peft_config["default"].rank_pattern = state["rank_pattern"]


__all__ = ["FinetuneResult", "Splits", "build_model", "finetune"]
