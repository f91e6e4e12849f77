"""The Task registry's classes (alad/tasks.py), directly: the loss pieces data parallel needs."""

from __future__ import annotations

import pytest
import torch

from alad.data.tagging import IGNORE
from alad.tasks import TASKS


def test_token_loss_sum_over_count_is_the_mean_and_splits_across_ranks():
    torch.manual_seed(0)
    logits = torch.randn(4, 6, 5)
    labels = torch.randint(0, 5, (4, 6))
    labels[0, 3:] = IGNORE
    labels[2, 1:] = IGNORE
    batch = {"labels": labels}
    task = TASKS["ner"]
    mean = task.loss(logits, batch)
    count = task.loss_count(batch)
    assert count == int((labels != IGNORE).sum())
    torch.testing.assert_close(task.loss_sum(logits, batch) / count, mean)
    # two "ranks" holding rows 0::2 and 1::2: their shares add up to the batch mean
    shares = sum(task.loss_sum(logits[r::2], {"labels": labels[r::2]}) / count for r in range(2))
    torch.testing.assert_close(shares, mean)


def test_qa_loss_is_the_mean_of_start_and_end_cross_entropy():
    torch.manual_seed(1)
    logits = torch.randn(3, 7, 2)
    batch = {
        "input_ids": torch.ones(3, 7, dtype=torch.long),
        "attention_mask": torch.ones(3, 7, dtype=torch.long),
        "start": torch.tensor([0, 2, 5]),
        "end": torch.tensor([0, 3, 6]),
    }
    expected = (
        torch.nn.functional.cross_entropy(logits[..., 0], batch["start"])
        + torch.nn.functional.cross_entropy(logits[..., 1], batch["end"])
    ) / 2
    task = TASKS["qa"]
    torch.testing.assert_close(task.loss(logits, batch), expected)
    assert task.loss_count(batch) == 3


@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_task_brings_what_the_rest_of_alad_reads(name):
    task = TASKS[name]
    assert task.name == name and task.head_kind in ("token", "span")
    assert task.table_header.startswith("| model |") and task.columns and task.required
    assert task.main_name in [c[0] for c in task.columns]
    assert task.max_length > 0 and task.epochs > 0 and task.cost > 0 and task.input_example
