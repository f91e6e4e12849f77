"""SLAD in phase 3 (mode `slad`): LoRA on M_C tied to LoRA on M_L, both trained together.

    alad finetune --task pos --mode slad --set models.compressed=minilm-l6 \
        --set models.large=mpnet-base --set phase3.distill.temperature=2

After "Shared LoRA Adapters for Task Specific Distillation" (arXiv 2605.29726; only its abstract
is public, README "SLAD" lists what is ours): the pre-trained M_L (models.large) and M_C each get
LoRA on the attention query/value projections (as mode `lora` configures it: phase3.lora_r,
lora_alpha, dropout 0.1) and a task head of their own, and are trained on

    L_task(teacher) + 2 * [alpha * T^2 * KL(teacher || student) + (1 - alpha) * L_task(student)]

(alad.losses; T and alpha from phase3.distill, else its defaults 2 and 0.5: at alpha 0.5 the
three terms weigh 1 / 1 / 1, the abstract's sum). The KL is on the scored positions (the first
sub-token of each word), the teacher reading each batch's words with its own tokenizer
(alad.distill.word_rows, the same matching as `kd`); the teacher's logits are not cached (it
trains) and are a constant of the KL (standard KD: the teacher learns from its task loss and,
through the shared weights, from the student's terms).

The tie: the student has no LoRA weights of its own. Student layer i (from 1) reads teacher
layer round(i * L_T / L_S) ("even": minilm-l6 layer i <-> mpnet-base layer 2i, minilm-l3 layer i
<-> 4i), and its LoRA factors are the first D_C rows / columns of that layer's: A_s = A_t[:, :D_C],
B_s = B_t[:D_C, :] (`TiedSlice`, a view: gradients of every loss land in the teacher's tensors;
teacher layers no student layer reads keep their LoRA to themselves). The saved model is the
student only (its LoRA merged, as `lora`'s); the resume state holds the teacher's LoRA and head
and the optimizer's moments, as every trainable weight of the training model.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from alad.aligned_model import AlignedModel
from alad.config import ConfigError
from alad.data import tagging
from alad.distill import TeacherRows
from alad.losses import distill_mix
from alad.runtime import Runtime
from alad.tasks import Task

# The attention projections LoRA adapts, by kind: BERT names them query/value, MPNet q/v.
_PROJECTIONS = {"query": "q", "q": "q", "value": "v", "v": "v"}


def even_layer_map(student_layers: int, teacher_layers: int) -> dict[int, int]:
    """0-based student layer -> 0-based teacher layer: student layer i (counting from 1) reads
    teacher layer i * L_T / L_S, rounded half up where L_S does not divide L_T."""
    if not 0 < student_layers <= teacher_layers:
        raise ConfigError(
            f"phase3.mode=slad maps each student layer to a teacher layer: the student has "
            f"{student_layers} layers, the teacher {teacher_layers}; models.compressed must "
            "not have more layers than models.large"
        )
    return {
        i - 1: (2 * i * teacher_layers + student_layers) // (2 * student_layers) - 1
        for i in range(1, student_layers + 1)
    }


class TiedSlice(nn.Module):
    """A LoRA factor of the student that is the top-left `shape` block of the teacher's
    (peft calls it as its lora_A / lora_B: `weight` and forward). The teacher's factor is a
    submodule, so the student's encoder holds the shared parameter: it trains (dropout on, no
    frozen-output cache) and a save merges the slice into the student's weights."""

    def __init__(self, source: nn.Linear, shape: tuple[int, int]):
        super().__init__()
        if any(s > t for s, t in zip(shape, source.weight.shape, strict=True)):
            raise ConfigError(
                f"phase3.mode=slad truncates the teacher's LoRA factors to the student's: "
                f"{tuple(shape)} does not fit in {tuple(source.weight.shape)}; models.compressed "
                "must not be wider than models.large, and both take phase3.lora_r"
            )
        self.source, self.shape = source, tuple(shape)

    @property
    def weight(self) -> torch.Tensor:
        return self.source.weight[: self.shape[0], : self.shape[1]]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight)


def lora_layers(encoder: nn.Module) -> dict[tuple[int, str], nn.Module]:
    """(0-based layer, "q" | "v") -> the peft LoRA layer on that attention projection."""
    out = {}
    for name, module in encoder.named_modules():
        found = re.search(r"\.layer\.(\d+)\..*\.(query|value|q|v)$", name)
        if found and hasattr(module, "lora_A"):
            out[(int(found[1]), _PROJECTIONS[found[2]])] = module
    return out


def tie(student: nn.Module, teacher: nn.Module, adapter: str = "default") -> dict[int, int]:
    """Make each student LoRA factor a slice of its mapped teacher layer's (module docstring);
    the student's own factors are dropped. Returns the layer map (0-based)."""
    mine, theirs = lora_layers(student), lora_layers(teacher)
    if not mine or not theirs:
        raise ValueError("tie() needs both encoders with peft LoRA on query/value")
    layer_map = even_layer_map(
        1 + max(i for i, _ in mine), 1 + max(i for i, _ in theirs)
    )  # fmt: skip
    for (i, kind), layer in mine.items():
        source = theirs[(layer_map[i], kind)]
        for factor in ("lora_A", "lora_B"):
            own = getattr(layer, factor)
            own[adapter] = TiedSlice(getattr(source, factor)[adapter], own[adapter].weight.shape)
    return layer_map


class SladModel(AlignedModel):
    """The student (encoder -> head: what is saved, served and scored) with the teacher it
    trains with (`teacher`: M_L + LoRA -> its own head). The teacher is a submodule, so its
    trainable weights are in the optimizer and the resume state like the student's."""

    def __init__(self, student: AlignedModel, teacher: AlignedModel):
        super().__init__(student.encoder, student.head, student.adapter)
        self.teacher = teacher
        self.layer_map = tie(student.encoder, teacher.encoder)


@dataclass
class SladLoss:
    """One batch's SLAD loss from the student's logits and task loss (module docstring).
    `rows`: the teacher's encoding of every training row's words, with their labels."""

    rows: TeacherRows
    pad_id: int
    temperature: float
    alpha: float

    def __call__(
        self,
        model: SladModel,
        task: Task,
        logits: torch.Tensor,
        student_loss: torch.Tensor,
        batch: dict[str, torch.Tensor],
        rows: list[int],
        terms: int,
        runtime: Runtime,
    ) -> torch.Tensor:
        """`rows`: the student rows of `batch`; `terms`: the loss terms of the whole batch (under
        torchrun each rank's share of the mean, as in phase 3's task loss). The teacher scores
        the same words as the student, so the teacher's task loss has as many terms."""
        order = self.rows.rows_of(rows)
        t_batch = runtime.move(next(task.batches(self.rows.feats, len(order), self.pad_id, order)))
        with runtime.autocast():
            t_logits = model.teacher(t_batch["input_ids"], t_batch["attention_mask"]).float()
        teacher_loss = task.loss_sum(t_logits, t_batch) / max(1, terms)
        targets = t_logits[t_batch["labels"] != tagging.IGNORE].detach()  # the KL's constant
        kd = task.kd_sum(logits, [targets], batch, self.temperature) / max(1, terms)
        return teacher_loss + 2.0 * distill_mix(student_loss, kd, self.alpha)

    def describe(self, model: SladModel, large: str) -> dict[str, Any]:
        """What the saved student's manifest records of its training."""
        return {
            "teacher": large,
            "temperature": self.temperature,
            "alpha": self.alpha,
            "loss": "L_task(teacher) + 2 * [alpha * T^2 * KL + (1 - alpha) * L_task(student)]",
            "layer_map": {str(s + 1): t + 1 for s, t in model.layer_map.items()},  # from 1
        }


__all__ = ["SladLoss", "SladModel", "TiedSlice", "even_layer_map", "lora_layers", "tie"]
