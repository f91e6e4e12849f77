"""The Alignment Adapter (METHOD.md, "The adapter").

    python -c "from alad.adapter import AlignmentAdapter as A; print(A(384, 768, window=5))"

For token i the input is the concatenation R_C,i-k … R_C,i … R_C,i+k (k = n // 2, zeros outside
the sequence and at padding positions), fed to Linear(n·D_C -> H) -> GELU -> Linear(H -> D_L).
Linear over a concatenated window with shared weights *is* a 1-D convolution of kernel n with zero
padding k, so that is how it is computed: one conv kernel instead of materialising n copies of the
sequence. `Conv1d.weight[h, d, j]` equals the paper's `W1[h, j·D_C + d]` (see `concat_weight`).
"""

from __future__ import annotations

import torch
from torch import nn


class AlignmentAdapter(nn.Module):
    """Maps compressed-model token embeddings (D_C) onto the large model's space (D_L)."""

    def __init__(self, d_compressed: int, d_large: int, window: int = 5, hidden: int = 1280):
        super().__init__()
        if window < 1 or window % 2 == 0:
            raise ValueError(f"window must be odd and >= 1 (1, 3, 5, ...), got {window}")
        if min(d_compressed, d_large, hidden) < 1:
            raise ValueError(
                f"dimensions must be positive: d_compressed={d_compressed}, "
                f"d_large={d_large}, hidden={hidden}"
            )
        self.d_compressed, self.d_large = d_compressed, d_large
        self.window, self.hidden = window, hidden
        self.window_proj = nn.Conv1d(d_compressed, hidden, kernel_size=window, padding=window // 2)
        self.act = nn.GELU()
        self.out_proj = nn.Linear(hidden, d_large)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """`hidden_states` [B, T, D_C], `attention_mask` [B, T] (1 = real token) -> [B, T, D_L].

        Padding positions are zeroed on the way in (so a token never sees padding, whatever the
        batch) and on the way out (so nothing downstream can read garbage there).
        """
        if hidden_states.shape[-1] != self.d_compressed:
            raise ValueError(
                f"adapter expects D_C={self.d_compressed} features per token, got "
                f"{hidden_states.shape[-1]}: was it trained for another compressed model?"
            )
        mask = attention_mask.to(hidden_states.dtype).unsqueeze(-1)
        x = (hidden_states * mask).transpose(1, 2)  # [B, D_C, T]
        x = self.act(self.window_proj(x)).transpose(1, 2)  # [B, T, H]
        return self.out_proj(x) * mask

    def concat_weight(self) -> torch.Tensor:
        """The first layer as the paper writes it: W1 of shape [H, n·D_C] over the concatenation."""
        return self.window_proj.weight.permute(0, 2, 1).reshape(self.hidden, -1)

    @staticmethod
    def parameter_count(d_compressed: int, d_large: int, window: int, hidden: int) -> int:
        """n·D_C·H + H + H·D_L + D_L (METHOD.md)."""
        return window * d_compressed * hidden + hidden + hidden * d_large + d_large

    def describe(self) -> dict[str, int]:
        return {
            "d_compressed": self.d_compressed,
            "d_large": self.d_large,
            "window": self.window,
            "hidden": self.hidden,
        }
