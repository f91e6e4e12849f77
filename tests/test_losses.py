"""The distillation loss against a hand computation (plain `math`, no torch), with each task's
masking: token tasks on the scored positions only, QA over a window's answer candidates."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from alad.losses import distill_mix, soft_kl
from alad.tasks import TASKS


def _softmax(xs: list[float], t: float) -> list[float]:
    m = max(x / t for x in xs)
    e = [math.exp(x / t - m) for x in xs]
    return [v / sum(e) for v in e]


def _kl(student: list[float], teacher: list[float], t: float) -> float:
    """T^2 * sum_k p_k (log p_k - log q_k), p = softmax(teacher / T), q = softmax(student / T)."""
    p, q = _softmax(teacher, t), _softmax(student, t)
    return t * t * sum(pk * (math.log(pk) - math.log(qk)) for pk, qk in zip(p, q, strict=True))


def _ce(logits: list[float], gold: int) -> float:
    return -math.log(_softmax(logits, 1.0)[gold])


S = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]]
T = [[2.0, 1.0, 0.0], [1.0, 1.0, 1.5]]


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
def test_soft_kl_is_the_hand_computed_t_squared_kl_per_row(temperature):
    got = soft_kl(torch.tensor(S), torch.tensor(T), temperature)
    want = [_kl(s, t, temperature) for s, t in zip(S, T, strict=True)]
    assert got.tolist() == pytest.approx(want, rel=1e-6)
    assert soft_kl(torch.tensor(T), torch.tensor(T), temperature).abs().max() < 1e-6  # KL(p||p)
    with pytest.raises(ValueError, match="do not pair up"):
        soft_kl(torch.tensor(S), torch.tensor(T[:1]), temperature)


def test_token_task_distils_on_the_scored_positions_only():
    # one sentence of 4 positions; only positions 1 and 3 are first sub-tokens (labels 0 and 2)
    rows = [[9.0, 9.0, -9.0], S[0], [-5.0, 7.0, 7.0], S[1]]
    logits = torch.tensor([rows])
    batch = {"labels": torch.tensor([[-100, 0, -100, 2]])}
    teacher = [torch.tensor(T)]  # the row's two scored words, in order
    task, t, alpha = TASKS["pos"], 2.0, 0.3
    kd = task.kd_sum(logits, teacher, batch, t) / task.loss_count(batch)
    loss = distill_mix(task.loss(logits, batch), kd, alpha)
    hand_kd = (_kl(S[0], T[0], t) + _kl(S[1], T[1], t)) / 2
    hand_ce = (_ce(S[0], 0) + _ce(S[1], 2)) / 2
    assert float(kd) == pytest.approx(hand_kd, rel=1e-6)
    assert float(loss) == pytest.approx(alpha * hand_kd + (1 - alpha) * hand_ce, rel=1e-6)
    # the peer harness's formula (../shared/reference/hf_tokcls.py, KDTrainer.compute_loss)
    mask = batch["labels"] != -100
    sl, tl = logits[mask], torch.tensor(T)
    ref_kl = F.kl_div(F.log_softmax(sl / t, -1), F.softmax(tl / t, -1), reduction="batchmean")
    ref = alpha * t**2 * ref_kl + (1 - alpha) * F.cross_entropy(sl, batch["labels"][mask])
    assert float(loss) == pytest.approx(float(ref), rel=1e-6)


def test_qa_distils_start_and_end_over_the_answer_candidates_of_each_window():
    # 5 positions: [CLS]=0, a question token=1 (no candidate: teacher -inf), context 2-3,
    # padding=4; student logits there must not count
    start, end = [0.5, 9.0, 1.5, -0.5, 9.0], [1.0, -9.0, 0.0, 2.0, 9.0]
    t_start, t_end = [1.0, -math.inf, 0.0, 2.0], [0.0, -math.inf, 1.0, 1.0]
    logits = torch.tensor([list(zip(start, end, strict=True))])
    teacher = [torch.tensor(list(zip(t_start, t_end, strict=True)))]
    batch = {"attention_mask": torch.tensor([[1, 1, 1, 1, 0]]), "input_ids": torch.zeros(1, 5)}
    t = 2.0
    got = TASKS["qa"].kd_sum(logits, teacher, batch, t) / TASKS["qa"].loss_count(batch)
    keep = [0, 2, 3]
    hand = (
        _kl([start[i] for i in keep], [t_start[i] for i in keep], t)
        + _kl([end[i] for i in keep], [t_end[i] for i in keep], t)
    ) / 2
    assert float(got) == pytest.approx(hand, rel=1e-5)
