"""The knowledge-distillation loss on logits (Hinton et al. 2015), for any pair of models.

    alad finetune --mode kd --set phase3.distill.teacher=runs/pos-large/model ...

Written once, on plain [N, K] logit tensors (N distributions over K outcomes), so that every
user reads the same formula: phase 3's distillation (alad/distill.py and each task's `kd_sum`
in alad/tasks.py: K = labels at a scored position, or K = positions of a QA window) and later
SLAD's teacher -> student term. It matches ../shared/reference/hf_tokcls.py, the peer harness:
`F.kl_div(log_softmax(s / T), softmax(t / T), reduction="batchmean")` times T^2, mixed as
alpha * KD + (1 - alpha) * task loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per row n: T^2 * KL(softmax(teacher_n / T) || softmax(student_n / T)), shape [N].

    T^2 keeps the soft term's gradient on the scale of the hard loss's as T grows (Hinton et
    al.). An outcome the teacher gives probability 0 (a -inf logit: a QA position that is no
    answer candidate) adds 0, whatever the student's finite logit there."""
    if student.shape != teacher.shape:
        raise ValueError(
            f"student logits {tuple(student.shape)} and teacher logits {tuple(teacher.shape)} "
            "do not pair up: the teacher's targets belong to other rows"
        )
    t = temperature
    log_student = F.log_softmax(student.float() / t, dim=-1)
    target = F.softmax(teacher.float() / t, dim=-1)
    return t * t * F.kl_div(log_student, target, reduction="none").sum(-1)


def distill_mix(task_loss: torch.Tensor, kd: torch.Tensor, alpha: float) -> torch.Tensor:
    """alpha * kd + (1 - alpha) * task_loss: both means over the same terms."""
    return alpha * kd + (1.0 - alpha) * task_loss


__all__ = ["distill_mix", "soft_kl"]
