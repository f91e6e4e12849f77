"""Export a saved model for deployment: a transformers folder, or one ONNX graph (fp32 or INT8).

    alad export runs/ner-alad-joint/model --format hf --out hf-ner
    alad export models:/alad-ner-minilm-l6@champion --format onnx --int8 --out onnx-ner

MODEL is a saved model folder (alad/aligned_model.py) or a registered version (`models:/...`,
downloaded by alad/store.py). `--format hf` writes AladForTokenClassification /
AladForQuestionAnswering (alad/hf.py) with `save_pretrained` and the tokenizer. `--format onnx`
traces encoder -> AlAd -> head into model.onnx (TorchScript exporter, opset 17, dynamic batch and
sequence axes; inputs input_ids and attention_mask: alad's models never see token type ids),
checks it against PyTorch on a batch of another shape (max abs difference, kept in the manifest;
above 1e-3 the export is refused), and with `--int8` quantizes its weights with onnxruntime
(`quantize_dynamic`, QInt8). alad/onnx_predict.py serves it without torch.

A model whose encoder is PyTorch dynamic int8 (an `:int8` compressed model: its folder names the
encoder, `encoder_spec`, instead of holding it) has no transformers format: `--format hf` refuses
it; `--format onnx --int8` exports its fp32 encoder and quantizes it with onnxruntime instead
(a different int8 rounding than PyTorch's: measure it with experiments/onnx_exactness.py).
"""

from __future__ import annotations

import json
import logging
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from alad.aligned_model import AlignedModel, load_model, phase3_config, read_manifest
from alad.atomic import checksums, replace_dir, tmp_dir, write_json
from alad.errors import UsageError
from alad.onnx_predict import FORMAT as ONNX_FORMAT
from alad.store import is_registry_uri, registered_model_folder

FORMATS = ("hf", "onnx")
OPSET = 17
MAX_ABS_DIFF = 1e-3  # fp32 graph vs PyTorch beyond this: the export is broken, refused
OUTPUTS = {"token": ["logits"], "span": ["start_logits", "end_logits"]}
INPUTS = ["input_ids", "attention_mask"]


def source_folder(model: str | Path) -> tuple[Path, str]:
    """(the saved model folder, what it was asked as): a folder, or a registered version."""
    if is_registry_uri(model):
        folder, pinned = registered_model_folder(str(model))
        return folder, pinned
    return Path(model), str(model)


def export_model(model: str | Path, fmt: str, out: Path, int8: bool = False) -> dict[str, Any]:
    """Write `model` to `out` in `fmt` ("hf" | "onnx"); returns what was written."""
    if fmt not in FORMATS:
        raise UsageError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
    if int8 and fmt != "onnx":
        raise UsageError("--int8 quantizes the ONNX graph: use it with --format onnx")
    check_out(Path(out))
    folder, source = source_folder(model)
    if fmt == "hf":
        return export_hf(folder, Path(out), source)
    return export_onnx(folder, Path(out), int8, source)


def check_out(out: Path) -> None:
    """`out` is replaced whole: refuse a non-empty folder that is not an earlier export."""
    if not out.exists():
        return
    if not out.is_dir():
        raise UsageError(f"--out {out}: exists and is not a folder")
    earlier = _json(out / "manifest.json").get("format") == ONNX_FORMAT or (
        _json(out / "config.json").get("model_type") == "alad"
    )
    if any(out.iterdir()) and not earlier:
        raise UsageError(
            f"--out {out}: a non-empty folder that is not an alad export; it would be replaced "
            "whole: give a new or empty folder"
        )


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _torch_int8(manifest: dict[str, Any]) -> str | None:
    """The encoder spec when the model's encoder is PyTorch dynamic int8, else None."""
    from alad.models.compress import split_spec

    spec = manifest.get("encoder_spec")
    return spec if spec and "int8" in split_spec(spec)[1] else None


def export_hf(folder: Path, out: Path, source: str) -> dict[str, Any]:
    """AladFor... (alad/hf.py) + its tokenizer, with save_pretrained."""
    from alad.hf import to_hf

    if spec := _torch_int8(read_manifest(folder)):
        raise UsageError(
            f"{folder}: its encoder is PyTorch dynamic int8 ({spec}), which has no transformers "
            "format; export it with --format onnx --int8"
        )
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # save_pretrained's "Writing model shards" bar
    model, tokenizer, manifest = load_model(folder)
    hf = to_hf(model, manifest)
    tmp = tmp_dir(out)
    try:
        hf.save_pretrained(tmp)
        save_tokenizer(tokenizer, manifest, tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_dir(tmp, out)
    return {"out": str(out), "format": "hf", "source": source, "class": type(hf).__name__}


def save_tokenizer(tokenizer: Any, manifest: dict[str, Any], folder: Path) -> None:
    """transformers' tokenizer files + tokenizer.json (the Rust tokenizer alad encodes with,
    without truncation or padding state). It returns no token type ids (alad/hf.py) and
    truncates at the model's window (`model_max_length`), as transformers' pipelines read it."""
    from tokenizers import Tokenizer

    # set where save_pretrained reads them too (the init arguments it writes back)
    for key, value in (
        ("model_input_names", ["input_ids", "attention_mask"]),
        ("model_max_length", int(manifest["max_length"])),
    ):
        setattr(tokenizer, key, value)
        tokenizer.init_kwargs[key] = value
    tokenizer.save_pretrained(folder)
    clean = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    clean.no_truncation()
    clean.no_padding()
    clean.save(str(folder / "tokenizer.json"))


class OnnxGraph(nn.Module):
    """AlignedModel with the outputs the ONNX graph names: logits, or start and end logits."""

    def __init__(self, model: AlignedModel, kind: str):
        super().__init__()
        self.model, self.kind = model, kind

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Any:
        logits = self.model(input_ids, attention_mask)
        if self.kind == "span":
            return logits[..., 0], logits[..., 1]
        return logits


def batch(tokenizer: Any, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    enc = tokenizer(texts, padding=True, return_tensors="pt", return_token_type_ids=False)
    return enc["input_ids"], enc["attention_mask"]


# Traced with padding in the batch: attention-mask code that is skipped for an unpadded batch
# must be in the graph. Checked on a batch of another shape: no shape may be baked in.
TRACE_TEXTS = ["alad exports the encoder, its adapter and the head", "one graph"]
CHECK_TEXTS = ["a", "the check batch has three rows of other lengths than the traced", "two b"]


def fp32_model(folder: Path) -> tuple[AlignedModel, Any, dict[str, Any]]:
    """The saved model in fp32 (an int8 encoder replaced by its fp32 original)."""
    model, tokenizer, manifest = load_model(folder)
    if spec := _torch_int8(manifest):
        from alad.models.catalog import load_encoder
        from alad.models.compress import split_spec

        base, ops = split_spec(spec)
        encoder = load_encoder(":".join([base, *(op for op in ops if op != "int8")])).model
        model = AlignedModel(encoder, model.head, model.adapter).eval()
    return model, tokenizer, manifest


def export_onnx(
    folder: Path, out: Path, int8: bool, source: str, per_channel: bool = True
) -> dict[str, Any]:
    """model.onnx (+ tokenizer files, manifest.json) in `out`; alad/onnx_predict.py serves it.
    `per_channel`: INT8 weight scales per output channel (the default; False: one per tensor,
    for experiments — on a real POS model it lost 1.66 points where per channel lost 0.47,
    experiments/results/onnx/)."""
    if (spec := _torch_int8(read_manifest(folder))) and not int8:
        raise UsageError(
            f"{folder}: its encoder is PyTorch dynamic int8 ({spec}), which ONNX cannot take as "
            "it is: add --int8 (its fp32 encoder, quantized by onnxruntime)"
        )
    model, tokenizer, manifest = fp32_model(folder)
    kind = manifest["head"]["kind"]
    tmp = tmp_dir(out)
    try:
        inputs = (batch(tokenizer, TRACE_TEXTS), batch(tokenizer, CHECK_TEXTS))
        diff = write_graph(model, kind, inputs, tmp / "model.onnx", int8, per_channel)
        save_tokenizer(tokenizer, manifest, tmp)
        written = onnx_manifest(manifest, tokenizer, int8, source, diff)
        if int8:
            written["per_channel"] = per_channel
        write_json({**written, "files": checksums(tmp)}, tmp / "manifest.json")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_dir(tmp, out)
    return {"out": str(out), **written}


def write_graph(
    model: AlignedModel,
    kind: str,
    inputs: tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    path: Path,
    int8: bool = False,
    per_channel: bool = True,
) -> dict[str, float]:
    """`model` (in memory, fp32, eval mode) as one ONNX graph at `path`, INT8 weights with
    `int8`: traced on inputs[0] (ids, mask; with padding), checked on inputs[1] (other shapes).
    Returns the max abs difference to PyTorch ("fp32", and "int8": the quantized graph's); an
    fp32 graph beyond MAX_ABS_DIFF is refused. `alad export` and `alad bench latency` use it."""
    graph = OnnxGraph(model, kind).eval()
    fp32 = path.with_name(f"{path.stem}-fp32.onnx") if int8 else path
    trace(graph, inputs[0], fp32, OUTPUTS[kind])
    diff = {"fp32": max_abs_diff(graph, fp32, inputs[1])}
    if diff["fp32"] > MAX_ABS_DIFF:
        raise RuntimeError(
            f"the ONNX graph's outputs differ from PyTorch's by {diff['fp32']:.2g} (over "
            f"{MAX_ABS_DIFF}): the export is broken for this model; please report it"
        )
    if int8:
        quantize(fp32, path, per_channel)
        diff["int8"] = max_abs_diff(graph, path, inputs[1])
        fp32.unlink()
    return diff


def trace(
    graph: nn.Module, inputs: tuple[torch.Tensor, ...], path: Path, outputs: list[str]
) -> None:
    """torch.onnx's TorchScript exporter (dynamo=False: the dynamo exporter needs onnxscript),
    every input and output with dynamic batch and sequence axes."""
    axes = {name: {0: "batch", 1: "sequence"} for name in [*INPUTS, *outputs]}
    with warnings.catch_warnings(), torch.no_grad():
        # tracer notes on Python conditions over shapes (constant for any batch) and the
        # exporter's own deprecation notice
        warnings.simplefilter("ignore")
        torch.onnx.export(
            graph,
            inputs,
            str(path),
            dynamo=False,
            input_names=INPUTS,
            output_names=outputs,
            dynamic_axes=axes,
            opset_version=OPSET,
            do_constant_folding=True,
        )


class _NoPreprocessingHint(logging.Filter):
    """onnxruntime logs a hint to run its quantization pre-processing first; on these graphs
    that pre-processing fails (its symbolic shape inference stops on the attention), so the hint
    would only mislead. Its quantizer also logs an INFO line per tensor it leaves in float
    (dozens per model, on the root logger): dropped too; its warnings stay."""

    def filter(self, record: logging.LogRecord) -> bool:
        quantizer = "onnxruntime" in record.pathname and "quantization" in record.pathname
        if quantizer and record.levelno < logging.WARNING:
            return False
        return "pre-processing before quantization" not in record.getMessage()


def quantize(fp32: Path, int8: Path, per_channel: bool = True) -> None:
    """onnxruntime dynamic quantization: int8 weights (QInt8; one scale per tensor, or per
    output channel), activations quantized at run time. Every op type it quantizes except Conv:
    the only Conv is AlAd's window layer, and onnxruntime's ConvInteger ran it slower than fp32
    Conv (adapter alone, 384 -> 768, n=5, H=1280, 8 x 128 tokens, 2 threads on a loaded CPU:
    236 ms vs 135 ms fp32, 115 ms with the Conv left fp32), so it stays fp32."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.registry import IntegerOpsRegistry

    hint = _NoPreprocessingHint()
    logging.getLogger().addFilter(hint)
    try:
        quantize_dynamic(
            str(fp32),
            str(int8),
            weight_type=QuantType.QInt8,
            per_channel=per_channel,
            op_types_to_quantize=[op for op in IntegerOpsRegistry if op != "Conv"],
        )
    finally:
        logging.getLogger().removeFilter(hint)


def run_onnx(path: Path, ids: torch.Tensor, mask: torch.Tensor) -> list[np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})


@torch.no_grad()
def max_abs_diff(graph: nn.Module, path: Path, inputs: tuple[torch.Tensor, torch.Tensor]) -> float:
    """Largest |ONNX - PyTorch| over the real (unpadded) tokens' outputs."""
    ids, mask = inputs
    expected = graph(ids, mask)
    expected = expected if isinstance(expected, tuple) else (expected,)
    real = mask.bool().numpy()
    return max(
        float(np.abs(got[real] - want.numpy()[real]).max())
        for got, want in zip(run_onnx(path, ids, mask), expected, strict=True)
    )


def onnx_manifest(
    manifest: dict[str, Any], tokenizer: Any, int8: bool, source: str, diff: dict[str, float]
) -> dict[str, Any]:
    """What alad/onnx_predict.py reads (and a person wants to know) about an export."""
    kind = manifest["head"]["kind"]
    cfg = phase3_config(manifest)
    return {
        "format": ONNX_FORMAT,
        "task": manifest["task"],
        "head_kind": kind,
        "labels": list(manifest["labels"]),
        "id2label": {str(i): lab for i, lab in enumerate(manifest["labels"])},
        "inputs": INPUTS,
        "outputs": OUTPUTS[kind],
        "int8": int8,
        "opset": OPSET,
        "pad_token_id": tokenizer.pad_token_id or 0,
        "unk_token": tokenizer.unk_token,
        "max_length": cfg.window_tokens,
        "stride": cfg.stride,
        "n_best": cfg.n_best,
        "max_answer_length": cfg.max_answer_length,
        "null_threshold": cfg.null_threshold,
        "max_abs_diff": diff,  # vs PyTorch fp32 on a check batch (int8: the quantized graph's)
        "source": {
            "model": source,
            "mode": manifest["mode"],
            "encoder_name": manifest["encoder_name"],
            "encoder_spec": manifest.get("encoder_spec"),
            "large": manifest["large"],
        },
    }
