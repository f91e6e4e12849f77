"""AlignmentAdapter against METHOD.md "The adapter": the explicit concatenation formula,
independence from padding and batch composition, its size formula and its argument checks;
the low-rank first layer (adapter.rank, issue 22): shapes, size, rank, saved and loaded."""

from __future__ import annotations

from pathlib import Path

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
    b1 = adapter.first_bias()
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


# ---------------------------------------------------------------------------------------------
# A low-rank first layer: n·D_C -> r -> H (two linear maps, no nonlinearity between)


@pytest.mark.parametrize("window", [1, 3, 5])
@pytest.mark.parametrize(("d_c", "d_l", "hidden", "rank"), [(6, 10, 16, 4), (12, 5, 7, 2)])
def test_low_rank_matches_the_concatenation_formula_with_w1_of_rank_r(window, d_c, d_l, hidden,
                                                                       rank):  # fmt: skip
    torch.manual_seed(window * 10 + rank)
    adapter = AlignmentAdapter(d_c, d_l, window=window, hidden=hidden, rank=rank)
    assert adapter.window_proj.weight.shape == (rank, d_c, window)  # V: n·D_C -> r, no bias
    assert adapter.window_proj.bias is None
    assert adapter.rank_proj.weight.shape == (hidden, rank)  # U: r -> H, with b1
    w1 = adapter.concat_weight()
    assert w1.shape == (hidden, window * d_c)
    assert torch.linalg.matrix_rank(w1.detach()) <= rank
    x = torch.randn(2, 7, d_c)
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3])
    with torch.no_grad():
        torch.testing.assert_close(adapter(x, mask), _explicit(adapter, x, mask), atol=1e-5,
                                   rtol=1e-5)  # fmt: skip


@pytest.mark.parametrize(
    ("d_c", "d_l", "window", "hidden", "rank", "expected"),
    [  # n·D_C·r + r·H (in place of n·D_C·H) + H + H·D_L + D_L
        (384, 768, 5, 1280, 64, 1920 * 64 + 64 * 1280 + 1280 + 1280 * 768 + 768),
        (384, 768, 5, 512, 128, 1920 * 128 + 128 * 512 + 512 + 512 * 768 + 768),
        (8, 5, 3, 16, 2, 24 * 2 + 2 * 16 + 16 + 16 * 5 + 5),
    ],
)
def test_low_rank_parameter_count_and_multiply_adds(d_c, d_l, window, hidden, rank, expected):
    adapter = AlignmentAdapter(d_c, d_l, window=window, hidden=hidden, rank=rank)
    assert sum(p.numel() for p in adapter.parameters()) == expected
    assert AlignmentAdapter.parameter_count(d_c, d_l, window, hidden, rank) == expected
    full = AlignmentAdapter.parameter_count(d_c, d_l, window, hidden)
    assert expected < full
    # per token: the weights' multiply-adds, biases left out
    n_dc = window * d_c
    assert (
        AlignmentAdapter.multiply_adds(d_c, d_l, window, hidden, rank)
        == rank * (n_dc + hidden) + hidden * d_l
    )
    assert AlignmentAdapter.multiply_adds(d_c, d_l, window, hidden) == n_dc * hidden + hidden * d_l


def test_minilm_l6_adapter_costs_what_issue_22_says():
    """3.4 M multiply-adds per token at n=5, H=1280 (minilm-l6 -> mpnet-base); H=512, r=64:
    under a sixth of it."""
    full = AlignmentAdapter.multiply_adds(384, 768, 5, 1280)
    assert full == 3_440_640
    assert AlignmentAdapter.multiply_adds(384, 768, 5, 512, 64) < full / 6


def test_full_rank_keeps_its_tensors_and_manifest():
    """rank=None is the paper's layer with the tensors (and manifest) adapters always had."""
    adapter = AlignmentAdapter(4, 6, window=3, hidden=8, rank=None)
    assert sorted(adapter.state_dict()) == [
        "out_proj.bias", "out_proj.weight", "window_proj.bias", "window_proj.weight",
    ]  # fmt: skip
    assert "rank" not in adapter.describe()
    low = AlignmentAdapter(4, 6, window=3, hidden=8, rank=2)
    assert low.describe()["rank"] == 2
    assert sorted(low.state_dict()) == [
        "out_proj.bias", "out_proj.weight", "rank_proj.bias", "rank_proj.weight",
        "window_proj.weight",
    ]  # fmt: skip
    rebuilt = AlignmentAdapter(**low.describe())
    assert [p.shape for p in rebuilt.parameters()] == [p.shape for p in low.parameters()]


@pytest.mark.parametrize(
    ("d_c", "window", "hidden", "rank", "needle"),
    [
        (8, 3, 16, 16, r"rank=16 is not lower-rank.*at most 16"),  # r = H
        (8, 3, 16, 20, r"rank=20 is not lower-rank"),  # r > H
        (2, 3, 16, 6, r"n·D_C=6 to H=16.*at most 6"),  # r = n·D_C < H
        (8, 3, 16, 0, r"whole number >= 1"),
        (8, 3, 16, -2, r"whole number >= 1"),
    ],
)
def test_a_rank_that_is_not_lower_rank_is_refused(d_c, window, hidden, rank, needle):
    with pytest.raises(ValueError, match=needle):
        AlignmentAdapter(d_c, 5, window=window, hidden=hidden, rank=rank)


def test_a_rank_without_savings_is_built_with_a_warning(caplog):
    """n·D_C = H = 16: r = 8 is lower-rank, but 8·(16 + 16) weights are as many as 16·16."""
    with caplog.at_level("WARNING", logger="alad.adapter"):
        AlignmentAdapter(16, 4, window=1, hidden=16, rank=8)
    assert "ranks below 8 make it leaner" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="alad.adapter"):
        AlignmentAdapter(16, 4, window=1, hidden=16, rank=7)
    assert caplog.text == ""


def test_low_rank_adapter_checkpoint_round_trip(tmp_path):
    """Saved and loaded through the checkpoint format: same shape, bitwise the same weights;
    a phase that asks for another rank is told which field differs."""
    from alad.checkpoint import CheckpointError, check_fits, load_checkpoint, save_checkpoint

    torch.manual_seed(5)
    adapter = AlignmentAdapter(8, 6, window=3, hidden=16, rank=4)
    save_checkpoint(tmp_path / "run", "epoch-0001", adapter, {"compressed": "c", "large": "l"})
    ckpt = load_checkpoint(tmp_path / "run")
    assert ckpt.manifest["rank"] == 4 and ckpt.adapter.rank == 4
    for name, weight in adapter.state_dict().items():
        assert torch.equal(ckpt.adapter.state_dict()[name], weight), name
    check_fits(ckpt.manifest, 8, 6, 3, 16, tmp_path, rank=4)
    with pytest.raises(CheckpointError, match="rank: checkpoint 4 vs requested None"):
        check_fits(ckpt.manifest, 8, 6, 3, 16, tmp_path)


def test_low_rank_aligned_model_save_load_round_trip(tiny_models, tmp_path):
    """The deployable folder (manifest.json's `adapter` with its rank): reloaded, the same
    logits."""
    from transformers import AutoTokenizer

    from alad.aligned_model import AlignedModel, load_model, save_model
    from alad.heads import TokenClassificationHead
    from alad.models.catalog import load_hf_encoder

    compressed, _ = tiny_models
    torch.manual_seed(6)
    encoder = load_hf_encoder(str(compressed))
    adapter = AlignmentAdapter(32, 48, window=3, hidden=16, rank=4)
    model = AlignedModel(encoder, TokenClassificationHead(48, 5), adapter).eval()
    manifest = {"task": "ner", "mode": "alad-frozen", "labels": list("OABCD"), "large": "l",
                "encoder_name": str(compressed), "max_length": 32}  # fmt: skip
    folder = save_model(model, AutoTokenizer.from_pretrained(compressed), manifest,
                        tmp_path / "model")  # fmt: skip
    loaded, _, saved = load_model(folder)
    assert saved["adapter"] == {"d_compressed": 32, "d_large": 48, "window": 3, "hidden": 16,
                                "rank": 4}  # fmt: skip
    assert loaded.adapter.rank == 4 and loaded.adapter_parameters() == model.adapter_parameters()
    ids = torch.randint(5, 30, (2, 9))
    mask = torch.ones(2, 9, dtype=torch.long)
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids, mask), model(ids, mask), atol=0, rtol=0)


COMMITTED = sorted(
    (Path(__file__).resolve().parents[1] / "results" / "align").glob("phase1-*/manifest.json")
)


@pytest.mark.parametrize("manifest", COMMITTED, ids=lambda p: p.parent.name)
def test_committed_phase1_adapters_still_load(manifest):
    """results/align's adapters load at their shape and fit only it: Table 1's (written before
    ranks existed: no `rank` in their manifests) as full-rank adapters of the paper's size, the
    adapter grid's low-rank ones (`rank` in the manifest) as n·D_C -> r -> H."""
    from alad.checkpoint import CheckpointError, check_fits, load_checkpoint

    ckpt = load_checkpoint(manifest.parent)
    m = ckpt.manifest
    rank = m.get("rank")
    assert ckpt.adapter.rank == rank and (rank is None or 0 < rank < m["hidden"])
    shape = (m["d_compressed"], m["d_large"], m["window"], m["hidden"])
    assert sum(p.numel() for p in ckpt.adapter.parameters()) == AlignmentAdapter.parameter_count(
        *shape, rank
    )
    check_fits(m, *shape, manifest.parent, rank=rank)
    other = 64 if rank is None else None
    with pytest.raises(CheckpointError, match=f"rank: checkpoint {rank} vs requested {other}"):
        check_fits(m, *shape, manifest.parent, rank=other)


def test_the_committed_adapters_are_there():
    assert len(COMMITTED) >= 6  # Table 1's phase-1 adapters (fp16) in results/align
