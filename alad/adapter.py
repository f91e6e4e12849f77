"""The Alignment Adapter (METHOD.md, "The adapter").

    python -c "from alad.adapter import AlignmentAdapter as A; print(A(384, 768, window=5))"

For token i the input is the concatenation R_C,i-k … R_C,i … R_C,i+k (k = n // 2, zeros outside
the sequence and at padding positions), fed to Linear(n·D_C -> H) -> GELU -> Linear(H -> D_L).
Linear over a concatenated window with shared weights *is* a 1-D convolution of kernel n with zero
padding k, so that is how it is computed: one conv kernel instead of materialising n copies of the
sequence. `Conv1d.weight[h, d, j]` equals the paper's `W1[h, j·D_C + d]` (see `concat_weight`).

A leaner adapter (`rank` r, issue 22): the first layer factorised as Linear(n·D_C -> r) ->
Linear(r -> H), no nonlinearity between them, so W1 = U·V has rank ≤ r. V is the window conv
(kernel n, r output channels, no bias: a bias there would only add U·b to the next one), U a
Linear(r -> H) with the bias b1. Per token this costs n·D_C·r + r·H multiply-adds instead of
n·D_C·H. `rank=None` is the paper's full layer, with the same tensors as before.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

log = logging.getLogger(__name__)


class AlignmentAdapter(nn.Module):
    """Maps compressed-model token embeddings (D_C) onto the large model's space (D_L)."""

    def __init__(
        self,
        d_compressed: int,
        d_large: int,
        window: int = 5,
        hidden: int = 1280,
        rank: int | None = None,
    ):
        super().__init__()
        if window < 1 or window % 2 == 0:
            raise ValueError(f"window must be odd and >= 1 (1, 3, 5, ...), got {window}")
        if min(d_compressed, d_large, hidden) < 1:
            raise ValueError(
                f"dimensions must be positive: d_compressed={d_compressed}, "
                f"d_large={d_large}, hidden={hidden}"
            )
        check_rank(rank, window * d_compressed, hidden)
        self.d_compressed, self.d_large = d_compressed, d_large
        self.window, self.hidden, self.rank = window, hidden, rank
        pad = window // 2
        if rank is None:  # the paper's layer: n·D_C -> H in one
            self.window_proj = nn.Conv1d(d_compressed, hidden, kernel_size=window, padding=pad)
            self.rank_proj: nn.Linear | None = None
        else:  # n·D_C -> r -> H, linear: W1 = rank_proj.weight @ window_proj (as [r, n·D_C])
            self.window_proj = nn.Conv1d(
                d_compressed, rank, kernel_size=window, padding=pad, bias=False
            )
            self.rank_proj = nn.Linear(rank, hidden)
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
        x = self.window_proj(x)  # [B, H, T] (low rank: [B, r, T])
        if self.rank_proj is None:
            x = self.act(x).transpose(1, 2)  # [B, T, H]
        else:
            x = self.act(self.rank_proj(x.transpose(1, 2)))  # [B, T, H]
        return self.out_proj(x) * mask

    def concat_weight(self) -> torch.Tensor:
        """The first layer as the paper writes it: W1 of shape [H, n·D_C] over the concatenation
        (for a low-rank adapter the product U·V, of rank ≤ r)."""
        first = self.window_proj.weight
        w = first.permute(0, 2, 1).reshape(first.shape[0], -1)
        return w if self.rank_proj is None else self.rank_proj.weight @ w

    def first_bias(self) -> torch.Tensor:
        """b1, the first layer's bias (H values)."""
        layer = self.window_proj if self.rank_proj is None else self.rank_proj
        assert layer.bias is not None
        return layer.bias

    @staticmethod
    def parameter_count(
        d_compressed: int, d_large: int, window: int, hidden: int, rank: int | None = None
    ) -> int:
        """n·D_C·H + H + H·D_L + D_L (METHOD.md); low rank: n·D_C·r + r·H in place of n·D_C·H."""
        first = (
            window * d_compressed * hidden
            if rank is None
            else rank * (window * d_compressed + hidden)
        )
        return first + hidden + hidden * d_large + d_large

    @staticmethod
    def multiply_adds(
        d_compressed: int, d_large: int, window: int, hidden: int, rank: int | None = None
    ) -> int:
        """Multiply-adds per token of the two (three) weight matrices; biases, GELU and the
        mask are left out (a few H per token). E.g. minilm-l6 -> mpnet-base, n=5, H=1280: 3.4 M."""
        n_dc = window * d_compressed
        first = n_dc * hidden if rank is None else rank * (n_dc + hidden)
        return first + hidden * d_large

    def describe(self) -> dict[str, int]:
        """The shape a manifest records; `rank` only when set, so a full-rank adapter's
        manifest is exactly what it was before low rank existed."""
        shape = {
            "d_compressed": self.d_compressed,
            "d_large": self.d_large,
            "window": self.window,
            "hidden": self.hidden,
        }
        return shape if self.rank is None else {**shape, "rank": self.rank}


def check_rank(rank: int | None, concat_dim: int, hidden: int) -> None:
    """A rank r must make the first layer lower-rank: 1 <= r < min(n·D_C, H). At
    r >= min(n·D_C, H) the product U·V can be any [H, n·D_C] matrix, the paper's layer with
    more weights and more multiply-adds; that is refused rather than silently built (use
    `adapter.rank: null` for the full layer)."""
    if rank is None:
        return
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"adapter.rank must be a whole number >= 1 or null, got {rank!r}")
    if rank >= min(concat_dim, hidden):
        raise ValueError(
            f"adapter.rank={rank} is not lower-rank: the first layer maps n·D_C={concat_dim} "
            f"to H={hidden} features, so its rank is at most {min(concat_dim, hidden)}; choose "
            f"a rank below {min(concat_dim, hidden)}, or adapter.rank: null for the full layer"
        )
    if rank * (concat_dim + hidden) >= concat_dim * hidden:
        # still a rank constraint (a regulariser), but no saving: said, not refused
        log.warning(
            "adapter.rank=%d: the factorised first layer (%d x (%d + %d) weights) is not smaller "
            "than the full one (%d x %d); ranks below %d make it leaner",
            rank, rank, concat_dim, hidden, concat_dim, hidden,
            -(-concat_dim * hidden // (concat_dim + hidden)),
        )  # fmt: skip
