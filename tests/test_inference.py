"""Inference below training (alad/inference.py): forward passes without the training code."""

from __future__ import annotations

import subprocess
import sys

import torch

from alad.aligned_model import AlignedModel
from alad.config import load_settings
from alad.data.readers import TaggedSentence
from alad.heads import build_head
from alad.inference import predict_outputs
from alad.models.catalog import load_encoder
from alad.tasks import TASKS


def test_serving_a_model_does_not_import_the_training_code():
    code = (
        "import sys, alad.pyfunc, alad.predict, alad.inference, alad.aligned_model\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('alad.phases'))\n"
        "assert not loaded, loaded\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


def test_predict_outputs_strips_padding_and_does_not_depend_on_the_batch(tiny_models):
    enc = load_encoder(str(tiny_models[0]))
    torch.manual_seed(0)
    model = AlignedModel(enc.model, build_head("token", enc.dim, 5))
    task = TASKS["pos"]
    cfg = load_settings(profile="tiny").phase3
    sents = [TaggedSentence(("w",) * n, ("X",) * n) for n in (2, 7, 4)]
    feats = task.encode(enc.tokenizer, sents, ["X"], cfg, False)
    pad = enc.tokenizer.pad_token_id or 0
    one = predict_outputs(model, task, feats, 1, pad)
    three = predict_outputs(model, task, feats, 3, pad)
    assert [o.shape[0] for o in one] == [len(ids) for ids in feats.input_ids]
    for a, b in zip(one, three, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
