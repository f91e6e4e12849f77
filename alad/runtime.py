"""Where tensors live and in which precision: the config's `runtime` section, in one place.

    alad finetune --task pos ... --set runtime.device=cuda --set runtime.precision=bf16

`runtime.device` is auto | cpu | cuda | cuda:N | mps (auto: the GPU when one is visible, under
torchrun the rank's own `cuda:$LOCAL_RANK`); `runtime.precision` is fp32 | bf16 | fp16 (autocast
for the forward passes; fp16 adds a gradient scaler, because its narrow range flushes small
gradients to zero). Nothing else in alad names a device: the phases, extraction, evaluation, the
benchmarks and the pyfunc ask `Runtime` to place models and batches. Caches and checkpoints are
always written from CPU tensors, so a cache made on a GPU is read on a CPU and back.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from alad.errors import AladError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class DeviceError(AladError, RuntimeError):
    """The configured device is not there; the message says what is visible instead."""


def local_rank() -> int:
    """This process's GPU slot on its node (torchrun sets LOCAL_RANK; 0 otherwise)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def rank_world() -> tuple[int, int]:
    """(rank, world size) of the process group; (0, 1) outside torchrun."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    """Only rank 0 writes checkpoints, MLflow runs and the registry."""
    return rank_world()[0] == 0


def barrier() -> None:
    """Every rank waits here for the others (a no-op in one process)."""
    if rank_world()[1] > 1:
        dist.barrier()


def broadcast(objects: list[Any]) -> None:
    """Rank 0's picklable `objects`, in place on every rank (a no-op in one process)."""
    if rank_world()[1] > 1:
        dist.broadcast_object_list(objects, src=0)


def init_distributed(device: torch.device) -> bool:
    """Join torchrun's process group (gloo on CPU, nccl on CUDA); False outside torchrun."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return True


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()


def resolve_device(spec: str = "auto") -> torch.device:
    """`runtime.device` -> a torch.device that exists here (or a DeviceError saying why not)."""
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank() % torch.cuda.device_count())
        return torch.device("mps" if _mps_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            built = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
            raise DeviceError(
                f"runtime.device={spec}: no CUDA device is visible (torch {torch.__version__}, "
                f"{built}); use runtime.device=auto or cpu, or install a CUDA build of torch"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(
                f"runtime.device={spec}: only {torch.cuda.device_count()} CUDA device(s) visible "
                "(cuda:0 ...); check CUDA_VISIBLE_DEVICES"
            )
    if device.type == "mps" and not _mps_available():
        raise DeviceError(f"runtime.device={spec}: MPS is not available on this machine")
    return device


@dataclass(frozen=True)
class Runtime:
    """A resolved device and precision; the one object that moves tensors and casts compute."""

    device: torch.device
    precision: str = "fp32"

    @classmethod
    def from_config(cls, runtime: Any) -> Runtime:
        """From the config's `runtime` section (anything with .device and .precision)."""
        return cls(resolve_device(runtime.device), runtime.precision)

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.precision]

    def autocast(self) -> contextlib.AbstractContextManager:
        """Forward passes in bf16/fp16 where that is safe (matmuls), fp32 elsewhere."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """Loss scaling for fp16 only; a disabled scaler passes steps straight through."""
        return torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")

    def move(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        """A batch's tensors on this device (other values as they are)."""
        return {
            k: v.to(self.device, non_blocking=True) if isinstance(v, torch.Tensor) else v
            for k, v in batch.items()
        }


CPU = Runtime(torch.device("cpu"))
