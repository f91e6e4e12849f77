"""AlignmentAdapter against METHOD.md "The adapter": the explicit concatenation formula,
independence from padding and batch composition, its size formula and its argument checks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from alad.adapter import AlignmentAdapter


def _explicit(adapter: AlignmentAdapter, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """METHOD.md literally: concatenate R_{i-k} .. R_{i+k} (zeros outside the sequence and at
    padding), W1 [H, n*D_C] + b1, GELU, then W2 + b2; padding outputs are zero."""
    batch, length, d_c = x.shape
    k = adapter.window // 2
    w1 = adapter.concat_weight()
    b1 = adapter.window_proj.bias
    out = torch.zeros(batch, length, adapter.d_large)
    for b in range(batch):
        for i in range(length):
            if not mask[b, i]:
                continue  # padding: output stays exactly zero
            pieces = []
            for j in range(i - k, i + k + 1):
                inside = 0 <= j < length and bool(mask[b, j])
                pieces.append(x[b, j] if inside else torch.zeros(d_c))
            concat = torch.cat(pieces)
            assert concat.shape == (adapter.window * d_c,)
            hidden = nn.functional.gelu(w1 @ concat + b1)
            out[b, i] = adapter.out_proj.weight @ hidden + adapter.out_proj.bias
    return out


@pytest.mark.parametrize("window", [1, 3, 5])
@pytest.mark.parametrize(("d_c", "d_l", "hidden"), [(6, 10, 16), (12, 5, 7)])
def test_matches_explicit_concatenation_formula(window, d_c, d_l, hidden):
    torch.manual_seed(window * 100 + d_c)
    adapter = AlignmentAdapter(d_c, d_l, window=window, hidden=hidden)
    x = torch.randn(2, 7, d_c)
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3])
    with torch.no_grad():
        got = adapter(x, mask)
        want = _explicit(adapter, x, mask)
    assert got.shape == (2, 7, d_l)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("window", [1, 3, 5])
def test_concat_weight_layout(window):
    """W1[h, j*D_C + d] == Conv1d.weight[h, d, j] (the docstring's stated correspondence)."""
    d_c, hidden = 4, 6
    adapter = AlignmentAdapter(d_c, 3, window=window, hidden=hidden)
    w1 = adapter.concat_weight()
    conv = adapter.window_proj.weight
    assert w1.shape == (hidden, window * d_c)
    for j in range(window):
        for d in range(d_c):
            assert torch.equal(w1[:, j * d_c + d], conv[:, d, j])


def _padded_batch(seqs: list[torch.Tensor], fill: float | None = None, seed: int = 0):
    """Right-pad sequences [T_i, D] into [B, T_max, D] with zeros, or with large garbage."""
    length = max(s.shape[0] for s in seqs)
    dim = seqs[0].shape[1]
    gen = torch.Generator().manual_seed(seed)
    if fill is None:
        x = torch.zeros(len(seqs), length, dim)
    else:
        x = fill * torch.randn(len(seqs), length, dim, generator=gen)
    mask = torch.zeros(len(seqs), length, dtype=torch.long)
    for b, s in enumerate(seqs):
        x[b, : s.shape[0]] = s
        mask[b, : s.shape[0]] = 1
    return x, mask


@pytest.mark.parametrize("window", [1, 3, 5])
@pytest.mark.parametrize("fill", [None, 1e4], ids=["zero-padding", "garbage-padding"])
def test_batch_and_padding_invariance(window, fill):
    torch.manual_seed(1)
    adapter = AlignmentAdapter(8, 12, window=window, hidden=24).eval()
    short = torch.randn(3, 8)
    others = [torch.randn(9, 8), torch.randn(5, 8)]
    with torch.no_grad():
        alone = adapter(short.unsqueeze(0), torch.ones(1, 3, dtype=torch.long))[0]
        for position in range(3):  # the short sentence at every position in the batch
            seqs = list(others)
            seqs.insert(position, short)
            x, mask = _padded_batch(seqs, fill=fill, seed=position)
            out = adapter(x, mask)
            torch.testing.assert_close(out[position, :3], alone, atol=1e-5, rtol=1e-5)
            for b, s in enumerate(seqs):  # padding outputs are exactly zero
                assert torch.count_nonzero(out[b, s.shape[0] :]) == 0


def test_garbage_in_padding_changes_nothing():
    """Same batch twice, padding filled with zeros vs huge random values: identical output."""
    torch.manual_seed(2)
    adapter = AlignmentAdapter(5, 7, window=5, hidden=11)
    seqs = [torch.randn(6, 5), torch.randn(2, 5), torch.randn(4, 5)]
    x_zero, mask = _padded_batch(seqs)
    x_junk, mask_junk = _padded_batch(seqs, fill=1e6, seed=3)
    assert torch.equal(mask, mask_junk)
    assert x_junk[1, 2:].abs().max() > 1e3  # the garbage really is there
    with torch.no_grad():
        torch.testing.assert_close(adapter(x_junk, mask), adapter(x_zero, mask), atol=0, rtol=0)


def test_bool_and_float_masks_agree():
    torch.manual_seed(3)
    adapter = AlignmentAdapter(4, 4, window=3, hidden=8)
    x = torch.randn(2, 5, 4)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    with torch.no_grad():
        ref = adapter(x, mask)
        torch.testing.assert_close(adapter(x, mask.bool()), ref)
        torch.testing.assert_close(adapter(x, mask.float()), ref)


def test_gradients_reach_both_layers_not_padding():
    torch.manual_seed(4)
    adapter = AlignmentAdapter(4, 6, window=3, hidden=8)
    x = torch.randn(2, 5, 4, requires_grad=True)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]])
    adapter(x, mask).pow(2).sum().backward()
    assert adapter.window_proj.weight.grad.abs().sum() > 0
    assert adapter.out_proj.weight.grad.abs().sum() > 0
    assert torch.count_nonzero(x.grad[1, 2:]) == 0  # padding inputs never influence the loss


METHOD_EXAMPLE = 5 * 128 * 1280 + 1280 + 1280 * 768 + 768  # = 1,804,288


@pytest.mark.parametrize(
    ("d_c", "d_l", "window", "hidden", "expected"),
    [
        (128, 768, 5, 1280, METHOD_EXAMPLE),
        (384, 768, 5, 1280, 5 * 384 * 1280 + 1280 + 1280 * 768 + 768),
        (32, 48, 3, 32, 3 * 32 * 32 + 32 + 32 * 48 + 48),
        (7, 3, 1, 5, 7 * 5 + 5 + 5 * 3 + 3),
    ],
)
def test_parameter_count_formula(d_c, d_l, window, hidden, expected):
    adapter = AlignmentAdapter(d_c, d_l, window=window, hidden=hidden)
    actual = sum(p.numel() for p in adapter.parameters())
    assert AlignmentAdapter.parameter_count(d_c, d_l, window, hidden) == expected
    assert actual == expected


def test_method_example_is_about_1_8m():
    assert METHOD_EXAMPLE == 1_804_288
    assert 1.7e6 < AlignmentAdapter.parameter_count(128, 768, 5, 1280) < 1.9e6


def test_describe_round_trips():
    adapter = AlignmentAdapter(10, 20, window=3, hidden=30)
    assert adapter.describe() == {"d_compressed": 10, "d_large": 20, "window": 3, "hidden": 30}
    rebuilt = AlignmentAdapter(**adapter.describe())
    assert [p.shape for p in rebuilt.parameters()] == [p.shape for p in adapter.parameters()]


@pytest.mark.parametrize("window", [0, -1, 2, 4, 6])
def test_bad_window_raises_with_value(window):
    with pytest.raises(ValueError, match=rf"window.*got {window}\b"):
        AlignmentAdapter(8, 8, window=window, hidden=8)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"d_compressed": 0}, "d_compressed=0"),
        ({"d_large": -3}, "d_large=-3"),
        ({"hidden": 0}, "hidden=0"),
    ],
)
def test_non_positive_dims_raise_with_value(kwargs, needle):
    args = {"d_compressed": 8, "d_large": 8, "window": 3, "hidden": 8} | kwargs
    with pytest.raises(ValueError, match=needle):
        AlignmentAdapter(**args)


def test_wrong_input_width_raises():
    adapter = AlignmentAdapter(8, 16, window=3, hidden=8)
    with pytest.raises(ValueError, match=r"D_C=8.*got 12"):
        adapter(torch.randn(1, 4, 12), torch.ones(1, 4))
