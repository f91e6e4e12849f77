"""Compression operators that make a compressed model M_C out of any encoder.

    alad models info mpnet-base:prune4 --reference mpnet-base

Written as a suffix on a model name (`name:prune4`, `name:int8`, `name:prune4:int8`), so any
catalog name, hub id or folder can be compressed the same way. A new operator is one function
plus one line in OPERATORS.
"""

from __future__ import annotations

import copy
import re
import warnings
from collections.abc import Callable

import torch
from torch import nn


def _layer_list(model: nn.Module) -> nn.ModuleList:
    encoder = getattr(model, "encoder", None)
    layers = getattr(encoder, "layer", None)
    if not isinstance(layers, nn.ModuleList):
        raise TypeError(
            f"cannot prune {type(model).__name__}: expected `model.encoder.layer` "
            "(BERT, MPNet, RoBERTa, ...); this architecture is not supported"
        )
    return layers


def prune(model: nn.Module, keep: int) -> nn.Module:
    """Keep the bottom `keep` transformer layers (drop the top ones), on a copy.

    The paper's ASC baseline is a 4-layer pruned BERT-base. Dropping the *top* layers is the
    strongest of the simple strategies in Sajjad et al. ("On the effect of dropping layers of
    pre-trained transformer models", 2023): lower layers hold general features, and the
    fine-tuning that follows re-learns the task-specific top. Embeddings stay as they are.
    """
    layers = _layer_list(model)
    if not 1 <= keep <= len(layers):
        raise ValueError(
            f"prune keep={keep}: must be between 1 and {len(layers)} (the model's layers)"
        )
    pruned = copy.deepcopy(model)
    kept = _layer_list(pruned)
    del kept[keep:]
    pruned.config.num_hidden_layers = keep
    return pruned


def quantize_int8(model: nn.Module) -> nn.Module:
    """Post-training dynamic INT8 quantization of every Linear layer (weights int8, CPU)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization deprecation notice
        from torch.ao.quantization import quantize_dynamic

        return quantize_dynamic(copy.deepcopy(model).eval(), {nn.Linear}, dtype=torch.qint8)


def _quantized_weights(model: nn.Module) -> list[torch.Tensor]:
    """Weights and biases hidden in packed int8 Linear layers (not in `parameters()`)."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantizedLinear

    out = []
    for module in model.modules():
        if isinstance(module, DynamicQuantizedLinear):
            out.append(module.weight())
            if module.bias() is not None:
                out.append(module.bias())
    return out


def parameter_count(model: nn.Module) -> int:
    """Parameters as the paper counts them; int8 Linear weights count as the float ones did."""
    tensors = [*model.parameters(), *_quantized_weights(model)]
    return sum(t.numel() for t in tensors)


def size_bytes(model: nn.Module) -> int:
    """Bytes of the weights as stored (int8 weights count one byte each)."""
    tensors = [*model.parameters(), *_quantized_weights(model)]
    return sum(t.numel() * t.element_size() for t in tensors)


# suffix regex -> operator taking (model, match). Order of suffixes is the order applied.
OPERATORS: dict[str, Callable[[nn.Module, re.Match[str]], nn.Module]] = {
    r"prune(\d+)": lambda m, g: prune(m, int(g.group(1))),
    r"int8": lambda m, g: quantize_int8(m),
}


def split_spec(spec: str) -> tuple[str, list[str]]:
    """'mpnet-base:prune4:int8' -> ('mpnet-base', ['prune4', 'int8']); unknown suffixes stay."""
    parts = spec.split(":")
    ops: list[str] = []
    while len(parts) > 1 and any(re.fullmatch(p, parts[-1]) for p in OPERATORS):
        ops.insert(0, parts.pop())
    return ":".join(parts), ops


def apply_ops(model: nn.Module, ops: list[str]) -> nn.Module:
    for op in ops:
        for pattern, fn in OPERATORS.items():
            match = re.fullmatch(pattern, op)
            if match:
                model = fn(model, match)
                break
        else:  # split_spec only keeps known ops; this guards direct callers
            raise ValueError(f"unknown compression op {op!r}; known: prune<k>, int8")
    return model
