"""The Task registry's classes (alad/tasks.py), directly: the loss pieces data parallel needs."""

from __future__ import annotations

import pytest
import torch
from test_metrics import NER_GOLD, NER_PRED, POS_GOLD, POS_PRED, SQUAD_GOLD, SQUAD_PRED

from alad.data.tagging import IGNORE
from alad.metrics import ner_metrics, pos_metrics, size_and_speed, squad_v2_metrics
from alad.tasks import TASKS, table_header, table_row


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


def test_table_row_pos_ner_qa():
    pos = {**pos_metrics(POS_GOLD, POS_PRED), **size_and_speed(11, 110, 0.5, 1.2)}
    # accuracy 4/6 -> 66.7, macro 7/12 -> 58.3, size 10.0, speed-up 2.40
    row = table_row("Tiny + AlAd", pos, "pos")
    assert row == "| Tiny + AlAd | 66.7 | 58.3 | 10.0 | 2.40 |"
    # NER: micro 0.5 -> 50.0, macro 1/3 -> 33.3, no size/speed -> "–"
    ner = ner_metrics(NER_GOLD, NER_PRED)
    assert table_row("m|x", ner, "ner") == "| m\\|x | 50.0 | 33.3 | – | – |"
    # QA already in percent: 33.33 / 44.44 -> "33.3 / 44.4"
    qa = squad_v2_metrics(SQUAD_GOLD, SQUAD_PRED)
    assert table_row("m", qa, "qa") == "| m | 33.3 / 44.4 | – | – |"
    # every row has as many cells as its header
    for task, metrics in (("pos", pos), ("ner", ner), ("qa", qa)):
        header = table_header(task).splitlines()[0]
        assert table_row("m", metrics, task).count(" | ") == header.count(" | ")


def test_table_row_errors():
    with pytest.raises(ValueError, match="unknown task"):
        table_row("m", {}, "parsing")
    with pytest.raises(ValueError, match="f1_macro"):
        table_row("m", {"accuracy": 0.9}, "pos")
