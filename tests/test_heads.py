"""Task heads (alad/heads.py): shapes, and the initialisation the parity work depends on."""

from __future__ import annotations

import pytest
import torch

from alad.heads import SpanHead, TokenClassificationHead, build_head


def test_heads_are_initialised_as_hugging_face_does():
    """N(0, 0.02) weights, zero bias: PyTorch's default gave MPNet a random bias as large as its
    logits (README "Harness parity": test 77.0 -> 84.4 at seed 13)."""
    torch.manual_seed(0)
    head = TokenClassificationHead(768, 64)
    w = head.classifier.weight
    assert abs(float(w.std()) - 0.02) < 0.001 and abs(float(w.mean())) < 0.001
    assert torch.count_nonzero(head.classifier.bias) == 0


@pytest.mark.parametrize("kind,labels,last", [("token", 17, 17), ("span", 0, 2)])
def test_build_head_shapes(kind, labels, last):
    head = build_head(kind, 16, labels)
    assert isinstance(head, TokenClassificationHead if kind == "token" else SpanHead)
    assert head(torch.randn(3, 5, 16)).shape == (3, 5, last)
    assert build_head(kind, 16, labels).config() == head.config()  # what the saved model keeps
