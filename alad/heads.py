"""Task heads on top of token embeddings: AlAd's output (D_L) or M_C directly (D_C, baselines).

alad finetune --task pos --mode alad-frozen     # builds a TokenClassificationHead(D_L, 17)
"""

from __future__ import annotations

import torch
from torch import nn

# Hugging Face's initialisation of a fresh task head (BertForTokenClassification, MPNet's and
# BERT's `initializer_range`): weight N(0, 0.02), bias 0. PyTorch's default (uniform with bound
# 1/sqrt(dim)) gives a random bias of up to ±0.036 at dim 768, as large as the logits of MPNet,
# whose outputs are small (norm ~3.3); at lr 5e-5 the head cannot move far enough to undo it.
# Measured in ../shared/reference/README.md: POS test accuracy 77.0 -> 84.4 for mpnet-base.
INIT_STD = 0.02


def init_linear(layer: nn.Linear, std: float = INIT_STD) -> nn.Linear:
    nn.init.normal_(layer.weight, mean=0.0, std=std)
    nn.init.zeros_(layer.bias)
    return layer


class TokenClassificationHead(nn.Module):
    """Dropout + Linear per token: POS tags or BIO entity tags."""

    def __init__(self, dim: int, num_labels: int, dropout: float = 0.1):
        super().__init__()
        self.dim, self.num_labels = dim, num_labels
        self.dropout = nn.Dropout(dropout)
        self.classifier = init_linear(nn.Linear(dim, num_labels))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(hidden))  # [B, T, num_labels]

    def config(self) -> dict[str, int]:
        return {"kind": "token", "dim": self.dim, "num_labels": self.num_labels}


class SpanHead(nn.Module):
    """Start/end logits per token for extractive QA; position 0 ([CLS]) stands for no answer."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self.qa_outputs = init_linear(nn.Linear(dim, 2))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.qa_outputs(hidden)  # [B, T, 2]: start, end

    def config(self) -> dict[str, int]:
        return {"kind": "span", "dim": self.dim, "num_labels": 2}


def build_head(kind: str, dim: int, num_labels: int) -> nn.Module:
    if kind == "token":
        return TokenClassificationHead(dim, num_labels)
    if kind == "span":
        return SpanHead(dim)
    raise ValueError(f"unknown head kind {kind!r}; expected 'token' or 'span'")
