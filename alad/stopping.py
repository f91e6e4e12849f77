"""Stopping on request: a SIGTERM stops at once, or, while training, at its next save point.

    timeout --signal=TERM 150m alad sweep run sweeps/table1.yaml   # `kill`, Slurm, Kubernetes too
    alad sweep run sweeps/table1.yaml --max-minutes 150              # the same box, from inside

A SIGTERM (what `timeout`, `kill`, batch schedulers and spot preemption send before they kill)
or the end of a time box (`deadline`) is a request, not a kill, while a run is inside a
`deferring()` section: the training loop and its saves (alad/phases/recipe.py), the feature
extraction of phases 1-2 and of a frozen phase 3 (alad/cache.py). There phase 3 finishes the
batch it is in, saves its resume state (as it does every `runtime.save_every_minutes`) and
raises `Stopped`; phases 1-2 stop after the epoch they are in, whose checkpoint is their resume
state, and their extraction after the shard it is in. Rerunning the same command resumes there,
so a box or a preemption loses nothing. Everywhere else (reading the config and the data,
loading models, a registry lookup, waiting on stdin, testing a saved model) nothing would be
lost, so a SIGTERM is honoured at once: it raises `Terminated` (a BaseException, like
KeyboardInterrupt, so that no `except Exception` swallows it), and the CLI exits 143 with one
line. A SIGTERM that arrives in a deferring section that ends without a save point asking
(the last epoch's save) is honoured when the section ends. The first SIGTERM puts the default
handler back: a second one kills at once. Under torchrun the ranks agree (a tiny all-reduce per
check), so every rank stops after the same batch.

The CLI installs the handler (`handle_sigterm`) for every command; `alad sweep run --max-minutes`
sets the deadline; without either nothing here changes what a run does.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.distributed as dist

from alad.runtime import rank_world

_deadline: float | None = None  # time.monotonic() after which a run stops at its next save point
_signalled: str | None = None  # the signal's name once one arrived
_deferring = 0  # how many deferring() sections are open, in any thread (a request waits for all)
_deferring_lock = threading.Lock()


class Stopped(Exception):
    """A run stopped on request (SIGTERM, a time box) after saving its resume state; `exit_code`
    is what the CLI returns (143 = 128 + SIGTERM, as if the signal had ended the process)."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.exit_code = 143 if reason == "SIGTERM" else 3


class Terminated(BaseException):
    """A SIGTERM outside any deferring section (module docstring): honoured at once. Nothing
    was in progress that a rerun would lose; `exit_code` 143 = 128 + SIGTERM."""

    exit_code = 143

    def __init__(self) -> None:
        super().__init__(
            "stopped by SIGTERM (no training step or save was in progress); rerun the same "
            "command to carry on from the last saved state"
        )


def requested() -> str | None:
    """Why this run should stop now ("SIGTERM", "the time box"), or None. Every rank gets the
    same answer: a request that reached one rank stops them all."""
    reason = _signalled or (
        "the time box" if _deadline is not None and time.monotonic() >= _deadline else None
    )
    if rank_world()[1] > 1:
        flag = torch.tensor([0 if reason is None else 1 if reason == "the time box" else 2])
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        reason = [None, "the time box", "SIGTERM"][int(flag)]
    return reason


def stop(reason: str, what: str, saved: Path) -> Stopped:
    """The exception that ends `what` (e.g. "phase 3 in epoch 1 after batch 24") for `reason`."""
    return Stopped(
        f"{what} stopped by {reason}; its state is saved in {saved}: rerun the same command "
        "to resume from there",
        reason,
    )


@contextlib.contextmanager
def deadline(minutes: float | None) -> Iterator[None]:
    """Within this block, runs stop at their next save point once `minutes` have passed."""
    global _deadline
    before = _deadline
    if minutes is not None:
        _deadline = time.monotonic() + 60 * minutes
    try:
        yield
    finally:
        _deadline = before


@contextlib.contextmanager
def deferring() -> Iterator[None]:
    """Within this block a SIGTERM is a request that the block's save points honour
    (`requested()`); one still pending when the outermost block ends raises `Terminated`."""
    global _deferring
    with _deferring_lock:
        _deferring += 1
    try:
        yield
    finally:
        with _deferring_lock:
            _deferring -= 1
            last = _deferring == 0
    if last and _signalled == "SIGTERM" and threading.current_thread() is threading.main_thread():
        raise Terminated


@contextlib.contextmanager
def handle_sigterm() -> Iterator[None]:
    """Within this block, a SIGTERM stops the run (see the module docstring). Only the main
    thread can take signals; elsewhere (a Prefect worker thread) this does nothing."""
    global _signalled
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_sigterm(signum: int, frame: object) -> None:
        global _signalled
        _signalled = "SIGTERM"
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second one kills
        if _deferring == 0:
            raise Terminated

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        _signalled = None
