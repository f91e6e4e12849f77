"""Compression operators: layer pruning, dynamic INT8, the `name:op:op` spec syntax."""

from __future__ import annotations

import re

import pytest
import torch
from conftest import make_tiny_bert, make_tiny_mpnet
from torch import nn
from transformers import BertConfig, BertModel, MPNetConfig, MPNetModel

from alad.models.catalog import count_parameters, load_encoder
from alad.models.compress import (
    apply_ops,
    parameter_count,
    prune,
    quantize_int8,
    size_bytes,
    split_spec,
)

LAYERS = 3


def _bert(layers: int = LAYERS, seed: int = 0) -> BertModel:
    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=64,
        hidden_size=16,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
    )
    return BertModel(cfg, add_pooling_layer=False).eval()


def _mpnet(layers: int = LAYERS, seed: int = 0) -> MPNetModel:
    torch.manual_seed(seed)
    cfg = MPNetConfig(
        vocab_size=64,
        hidden_size=16,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=34,
        pad_token_id=1,
    )
    return MPNetModel(cfg, add_pooling_layer=False).eval()


BUILDERS = {"bert": _bert, "mpnet": _mpnet}


def _batch(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 64, (3, 9), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    mask[2, 3:] = 0
    return ids, mask


def _state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


@pytest.mark.parametrize("arch", sorted(BUILDERS))
@pytest.mark.parametrize("keep", [1, 2, LAYERS])
def test_prune_keeps_bottom_layers(arch, keep):
    model = BUILDERS[arch]()
    before = _state(model)
    pruned = prune(model, keep=keep)

    assert len(pruned.encoder.layer) == keep
    assert pruned.config.num_hidden_layers == keep
    for i in range(keep):  # layer i of the pruned model is layer i of the original
        orig, new = model.encoder.layer[i].state_dict(), pruned.encoder.layer[i].state_dict()
        assert orig.keys() == new.keys()
        for key in orig:
            assert torch.equal(orig[key], new[key]), f"layer {i} {key}"
    for key, value in model.embeddings.state_dict().items():
        assert torch.equal(pruned.embeddings.state_dict()[key], value)

    # the original is untouched: same layers, same config, same weights, not shared
    assert len(model.encoder.layer) == LAYERS
    assert model.config.num_hidden_layers == LAYERS
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert pruned.encoder.layer[0] is not model.encoder.layer[0]
    with torch.no_grad():
        pruned.encoder.layer[0].output.dense.weight.add_(1.0)
    assert torch.equal(model.encoder.layer[0].output.dense.weight, before[_dense_key(0)])


def _dense_key(i: int) -> str:
    return f"encoder.layer.{i}.output.dense.weight"


@pytest.mark.parametrize("arch", sorted(BUILDERS))
@pytest.mark.parametrize("keep", [1, 2])
def test_pruned_output_is_original_hidden_state_k(arch, keep):
    """Dropping the top layers: the pruned model's output is the original's k-th layer output."""
    model = BUILDERS[arch]()
    pruned = prune(model, keep=keep)
    ids, mask = _batch()
    with torch.no_grad():
        full = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        short = pruned(input_ids=ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(short, full.hidden_states[keep], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(short, full.last_hidden_state, atol=1e-3)


@pytest.mark.parametrize("keep", [0, -1, LAYERS + 1, 12])
def test_prune_rejects_out_of_range(keep):
    model = _bert()
    with pytest.raises(ValueError, match=rf"keep={keep}\b.*between 1 and {LAYERS}"):
        prune(model, keep=keep)
    assert len(model.encoder.layer) == LAYERS


def test_prune_rejects_unsupported_architecture():
    with pytest.raises(TypeError, match="Linear.*not supported"):
        prune(nn.Linear(3, 3), keep=1)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("mpnet-base:prune4:int8", ("mpnet-base", ["prune4", "int8"])),
        ("minilm-l6:int8", ("minilm-l6", ["int8"])),
        ("mpnet-base:int8:prune2", ("mpnet-base", ["int8", "prune2"])),  # order kept
        ("mpnet-base:prune12", ("mpnet-base", ["prune12"])),
        ("mpnet-base", ("mpnet-base", [])),
        ("prajjwal1/bert-tiny", ("prajjwal1/bert-tiny", [])),
        ("C:/x", ("C:/x", [])),
        ("C:/models/bert:prune2", ("C:/models/bert", ["prune2"])),
        ("hub:org/model:train", ("hub:org/model:train", [])),
        ("a:prune4:other", ("a:prune4:other", [])),  # only trailing ops are ops
        ("a:other:int8", ("a:other", ["int8"])),
        ("a:prunex", ("a:prunex", [])),
        ("a:int8x", ("a:int8x", [])),
        ("a:prune", ("a:prune", [])),
        ("int8", ("int8", [])),  # a bare name is never all ops
        ("prune4:int8", ("prune4", ["int8"])),
    ],
)
def test_split_spec(spec, expected):
    assert split_spec(spec) == expected


def test_apply_ops_unknown_op_errors():
    with pytest.raises(ValueError, match="unknown compression op 'fp4'"):
        apply_ops(_bert(), ["fp4"])


def test_apply_ops_in_order():
    model = apply_ops(_bert(), ["prune2", "int8"])
    assert model.config.num_hidden_layers == 2 and len(model.encoder.layer) == 2
    assert not any(type(m) is nn.Linear for m in model.modules())


def _linear_types(model: nn.Module) -> set[str]:
    return {type(m).__module__ + "." + type(m).__name__ for m in model.modules()}


def test_quantize_int8_counts_and_size():
    model = _bert()
    q = quantize_int8(model)
    n_linear = sum(type(m) is nn.Linear for m in model.modules())
    assert n_linear > 0
    assert not any(type(m) is nn.Linear for m in q.modules())  # every Linear was quantized
    assert any("quantized" in t for t in _linear_types(q))
    # the paper counts int8 weights as the parameters they were
    assert (
        parameter_count(q) == parameter_count(model) == sum(p.numel() for p in model.parameters())
    )
    assert size_bytes(model) == 4 * parameter_count(model)  # float32
    assert size_bytes(q) < size_bytes(model)
    # every int8 Linear weight is 1 byte instead of 4
    linear_weights = sum(m.weight.numel() for m in model.modules() if type(m) is nn.Linear)
    assert size_bytes(model) - size_bytes(q) == 3 * linear_weights
    # the original is left as it was
    assert sum(type(m) is nn.Linear for m in model.modules()) == n_linear


@pytest.mark.parametrize("arch", sorted(BUILDERS))
def test_quantize_int8_output_close_to_float(arch):
    model = BUILDERS[arch]()
    q = quantize_int8(model)
    ids, mask = _batch(seed=1)
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask).last_hidden_state
        got = q(input_ids=ids, attention_mask=mask).last_hidden_state
    assert got.shape == ref.shape
    cos = nn.functional.cosine_similarity(got, ref, dim=-1)[mask.bool()]
    assert cos.min() > 0.9
    assert not torch.equal(got, ref)  # it really is a different (quantized) computation


@pytest.fixture(scope="module")
def tiny_bert_folder(tmp_path_factory):
    return make_tiny_bert(tmp_path_factory.mktemp("compress") / "bert", layers=2)


@pytest.mark.parametrize(
    ("suffix", "layers", "quantized"),
    [("", 2, False), (":prune1", 1, False), (":int8", 2, True), (":prune1:int8", 1, True)],
)
def test_load_encoder_applies_suffixes(tiny_bert_folder, suffix, layers, quantized):
    enc = load_encoder(str(tiny_bert_folder) + suffix)
    assert enc.name == str(tiny_bert_folder) + suffix
    assert enc.source == str(tiny_bert_folder)
    assert enc.num_layers == layers == len(enc.model.encoder.layer)
    assert enc.dim == 32
    assert (not any(type(m) is nn.Linear for m in enc.model.modules())) == quantized
    assert not enc.model.training
    ids = enc.tokenizer(["the city of music ."], return_tensors="pt")
    out = enc.embed(ids["input_ids"], ids["attention_mask"])
    assert out.shape == (1, ids["input_ids"].shape[1], 32)


@pytest.mark.parametrize("suffix", ["", ":prune1", ":int8", ":prune1:int8"])
def test_count_parameters_without_weights_matches_the_loaded_model(tiny_bert_folder, suffix):
    spec = str(tiny_bert_folder) + suffix
    assert count_parameters(spec) == load_encoder(spec).num_parameters


def test_count_parameters_of_mpnet(tmp_path):
    folder = make_tiny_mpnet(tmp_path / "mpnet")
    assert count_parameters(str(folder)) == load_encoder(str(folder)).num_parameters


def test_load_encoder_prune1_matches_first_layer(tiny_bert_folder):
    full = load_encoder(str(tiny_bert_folder))
    pruned = load_encoder(str(tiny_bert_folder) + ":prune1")
    ids = full.tokenizer(["the king was born in the north ."], return_tensors="pt")
    with torch.no_grad():
        states = full.model(**ids, output_hidden_states=True).hidden_states
    torch.testing.assert_close(
        pruned.embed(ids["input_ids"], ids["attention_mask"]), states[1], atol=1e-5, rtol=1e-5
    )
    assert pruned.num_parameters < full.num_parameters


def test_load_encoder_prune_too_many_layers(tiny_bert_folder):
    with pytest.raises(ValueError, match="between 1 and 2"):
        load_encoder(str(tiny_bert_folder) + ":prune3")


def test_int8_encoder_has_fingerprint(tiny_bert_folder):
    fp = load_encoder(str(tiny_bert_folder) + ":int8").fingerprint
    assert re.fullmatch(r"[0-9a-f]{16}", fp)


def test_fingerprint_tracks_weights(tmp_path):
    """Control for the int8 case below: a float model's fingerprint follows its weights."""
    folder = make_tiny_bert(tmp_path / "bert")
    before = load_encoder(str(folder)).fingerprint
    _bump_query_weight(folder)
    assert load_encoder(str(folder)).fingerprint != before


def test_int8_fingerprint_tracks_linear_weights(tmp_path):
    folder = make_tiny_bert(tmp_path / "bert")
    before = load_encoder(str(folder) + ":int8").fingerprint
    _bump_query_weight(folder)
    assert load_encoder(str(folder) + ":int8").fingerprint != before


def _bump_query_weight(folder):
    model = BertModel.from_pretrained(folder, add_pooling_layer=False)
    with torch.no_grad():
        model.encoder.layer[0].attention.self.query.weight.mul_(3.0)
    model.save_pretrained(folder)
