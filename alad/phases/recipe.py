"""The one training core of phases 1-3: a recipe with a fixed shape, and the loop that runs it.

    run(recipe)  =  outputs writable? -> recover the folder -> done already? -> setup -> resume
                    -> per epoch: train_epoch -> validate -> record + log -> save (rank 0)
                    -> finish

A phase is a `Recipe` subclass (alad/phases/align.py: phases 1-2, alad/phases/finetune.py:
phase 3) that fills in the steps; the loop, the resume state, the run key, seeding, the NaN
guard, the optimizer step under torchrun, stopping on request (alad/stopping.py: after the
epoch, phase 3 after the batch; from `announce` to `finish` a SIGTERM waits for that save point,
before it, during setup, it stops at once) and the progress bar live here, once.

Resume state (one format, every phase, built by `resume_state`): a dict of tensors and plain
data, `{"run_key", "epoch", "history", "rng", ...}` plus whatever the recipe adds (phase 3: the
trainable weights, the optimizer, the scheduler, and inside an epoch `partial`: the batches done
and their running loss, so that a long epoch is resumed from its last save, not its start).
Phases 1-2 keep it as `trainer.pt` inside each epoch's checkpoint (atomically with the adapter
it belongs to, alad/checkpoint.py), phase 3 as `state/state.pt`; both are read with
`weights_only=True` and checked against their checksums. A state whose run key differs from
the config's is never resumed from.
"""

from __future__ import annotations

import logging
import math
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from alad import stopping
from alad.atomic import ensure_writable_dir, recover_all
from alad.config import Settings, without_added_defaults
from alad.errors import AladError
from alad.runtime import barrier, is_main, rank_world

log = logging.getLogger(__name__)


class NonFiniteLoss(AladError, FloatingPointError):
    """The loss became NaN/inf; nothing was saved from the diverged step."""


def run_key(settings: Settings, section: str) -> dict[str, Any]:
    """What must match for a rerun to resume a run (or to take it as finished) rather than start
    over: the models, the adapter, the phase's own section of the config and the seed. Fields
    added later are left out at the default that reproduces earlier runs (ADDED_AT_DEFAULT), so
    a state saved before them still resumes."""
    phase = getattr(settings, section).model_dump(mode="json")
    return {
        "models": settings.models.model_dump(mode="json"),
        "adapter": without_added_defaults("adapter", settings.adapter.model_dump(mode="json")),
        "phase": without_added_defaults(section, phase),
        "seed": settings.seed,
    }


def epoch_rng(seed: int, epoch: int) -> np.random.Generator:
    """The generator that orders one epoch's batches: a resumed run replays the same order."""
    return np.random.default_rng([seed, epoch])


def progress_bar(total: int, epoch: int, epochs: int, unit: str, enabled: bool) -> tqdm:
    return tqdm(
        total=total, desc=f"epoch {epoch + 1}/{epochs}", unit=unit, disable=not enabled, leave=False
    )


def no_rows_loss(params: list[torch.nn.Parameter]) -> torch.Tensor:
    """A rank whose share of a batch is empty still joins the gradient sum (with zeros)."""
    return sum(p.sum() * 0.0 for p in params)


def optimizer_step(
    loss: torch.Tensor,
    params: list[torch.nn.Parameter],
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    where: str,
    clip: float | None = None,
    scheduler: Any = None,
) -> float:
    """One step on this rank's share of a batch; returns the whole batch's loss.

    Under torchrun each rank's loss is its share of the global batch's mean, so the sum of the
    ranks' losses (and gradients) is exactly the one-process loss (and gradient). A non-finite
    loss raises NonFiniteLoss before anything is updated; `where` says what to lower."""
    world = rank_world()[1]
    value = loss.detach().clone()
    if world > 1:
        dist.all_reduce(value)
    value_f = float(value)
    if not math.isfinite(value_f):
        raise NonFiniteLoss(f"loss is {value_f} at {where}")
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if world > 1:
        for p in params:
            dist.all_reduce(p.grad)
    if clip is not None:
        scaler.unscale_(optimizer)  # clip the true gradients (a no-op unless fp16)
        torch.nn.utils.clip_grad_norm_(params, clip)
    scaler.step(optimizer)
    scaler.update()
    if scheduler is not None:
        scheduler.step()
    return value_f


class Recipe(ABC):
    """One phase's steps. `run(recipe)` calls them in this order; a subclass sets `name`,
    `out`, `epochs`, `key` and fills in the rest. `stopped_by` may be set by `train_epoch`
    (a token or time budget) to end the phase after that epoch."""

    name: str
    out: Path
    epochs: int
    key: dict[str, Any]
    stopped_by: str = "epochs"
    history: list[dict[str, Any]]  # the finished epochs' records (the loop keeps it current)

    def outputs(self) -> dict[Path, tuple[str, str]]:
        """Every folder the phase writes in: {path: (what it holds, what to do if it cannot be
        written)}. `run` checks them all before anything else."""
        return {self.out: (f"{self.name} output folder", "pass another --out or runs_dir")}

    def finished_result(self) -> Any | None:
        """The result of a run of this config that already finished in `out`, else None."""
        return None

    @abstractmethod
    def setup(self) -> None:
        """Models, data, optimizer (and scheduler): everything an epoch needs."""

    def announce(self) -> None:
        """Log what is about to be trained. `run` calls it once training begins, inside the
        deferring section, so a SIGTERM after this line waits for the next save point."""
        return None

    @abstractmethod
    def saved_state(self) -> dict[str, Any] | None:
        """The newest resume state in `out` (see the module docstring), or None."""

    @abstractmethod
    def train_epoch(self, epoch: int) -> dict[str, float]:
        """One pass over the training data (0-based `epoch`); returns its train metrics."""

    @abstractmethod
    def validate(self, epoch: int) -> dict[str, Any]:
        """Held-out metrics after `epoch`, as history fields (plain numbers)."""

    @abstractmethod
    def save(self, state: dict[str, Any], finished: bool) -> None:
        """Write this epoch's outputs and resume `state` (rank 0 only)."""

    @abstractmethod
    def finish(self, history: list[dict[str, Any]]) -> Any:
        """The phase's result after the last epoch (every rank)."""

    # The optimizer (and for phase 3 the weights and the scheduler) in and out of the state.
    @abstractmethod
    def state_extra(self) -> dict[str, Any]: ...

    @abstractmethod
    def load_state_extra(self, state: dict[str, Any]) -> None: ...

    @abstractmethod
    def restarted(self) -> None:
        """A state of another config is in `out`: forget it (rank 0, after every rank read it)."""

    def log_epoch(self, record: dict[str, Any]) -> None:
        log.info("%s epoch %d: %s", self.name, record["epoch"], record)


def resume_state(recipe: Recipe, epoch: int, **more: Any) -> dict[str, Any]:
    """The resume state after `epoch` finished epochs (see the module docstring); `more` adds
    the recipe's own fields (`partial` inside an epoch)."""
    return {
        "run_key": recipe.key,
        "epoch": epoch,
        "history": recipe.history,
        "rng": torch.get_rng_state(),
        **recipe.state_extra(),
        **more,
    }


def _resume(recipe: Recipe) -> tuple[int, list[dict[str, Any]]]:
    state = recipe.saved_state()
    if state is None:
        return 0, []
    if state.get("run_key") != recipe.key:
        log.warning(
            "%s holds a %s run of a different config; starting over", recipe.out, recipe.name
        )
        barrier()  # every rank has read it before rank 0 clears it
        if is_main():
            recipe.restarted()
        return 0, []
    recipe.load_state_extra(state)
    if "rng" in state:  # dropout draws from it: a resumed run continues the same stream
        torch.set_rng_state(state["rng"])
    inside = f", batch {state['partial']['step']}" if state.get("partial") else ""
    log.info(
        "resuming %s after epoch %d%s from %s", recipe.name, state["epoch"], inside, recipe.out
    )
    return state["epoch"], list(state["history"])


def run(recipe: Recipe) -> Any:
    """Run (or resume, or recognise as finished) one phase: see the module docstring."""
    for folder, (what, fix) in recipe.outputs().items():  # before any work, not at its save
        ensure_writable_dir(folder, what, fix)
    if is_main():
        recover_all(recipe.out)  # finish or undo a folder swap that a kill interrupted
    barrier()
    done = recipe.finished_result()
    if done is not None:
        log.info("%s already finished in %s; nothing to do", recipe.name, recipe.out)
        return done
    recipe.setup()
    # From here a stop request waits for the next save point (alad/stopping.py); before it,
    # while loading models and data, a SIGTERM stops at once: nothing would be lost.
    with stopping.deferring():
        recipe.announce()
        return _train(recipe)


def _train(recipe: Recipe) -> Any:
    """Resume, then per epoch train -> validate -> record -> save, then finish."""
    start, history = _resume(recipe)
    recipe.history = history
    for epoch in range(start, recipe.epochs):
        t0 = time.perf_counter()
        train = recipe.train_epoch(epoch)
        seconds = time.perf_counter() - t0
        record = {"epoch": epoch + 1, **train, **recipe.validate(epoch)}
        record.setdefault("seconds", seconds)
        history.append(record)
        recipe.log_epoch(record)
        finished = recipe.stopped_by != "epochs" or epoch + 1 == recipe.epochs
        state = resume_state(recipe, epoch + 1)
        if is_main():  # under torchrun rank 0 writes (every rank holds the same weights)
            recipe.save(state, finished)
        barrier()
        if finished:
            break
        if reason := stopping.requested():  # SIGTERM or a time box: this epoch's save resumes
            raise stopping.stop(reason, f"{recipe.name} after epoch {epoch + 1}", recipe.out)
    return recipe.finish(history)
