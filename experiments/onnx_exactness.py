"""How exact is an ONNX export of a real saved model: fp32 logits against PyTorch's (max abs
difference over every real token of a test set) and the score change of the INT8 graph.

    PYTHONPATH=$PWD python experiments/onnx_exactness.py runs/pos-alad-joint/model \\
        --test ../shared/data/pos/test.conllu [--max 2000] [--per-tensor] \\
        [--out results/onnx_exactness-pos.json]

MODEL is a saved model folder or `models:/...`. Exports it (alad/export.py) to fp32 and INT8
(INT8 with per-output-channel weight scales, as `alad export --int8`; with --per-tensor also
one scale per tensor) in a temporary folder,
encodes the test set once with the model's tokenizer (also checks that the ONNX predictor's
Rust tokenizer gives the same token ids), runs PyTorch and each graph over the same rows
(batches of 32, in order, as `alad predict`), and scores each with the task's metric. Prints
one JSON object: max_abs_diff (fp32: the issue's goal is <= 1e-4), the main score of each, the
change in points against PyTorch (goal for INT8: >= -0.5), and seconds per pass (one run each,
this machine; `alad bench latency` is the latency measurement). A model whose encoder is
PyTorch int8 has no fp32 graph: only INT8 is measured, against its PyTorch int8 model.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from alad.aligned_model import load_model, phase3_config
from alad.atomic import write_json
from alad.data import qa as qa_data
from alad.data import tagging
from alad.export import export_onnx, source_folder
from alad.inference import predict_outputs
from alad.onnx_predict import OnnxPredictor
from alad.tasks import TASKS


def onnx_token_ids(predictor: OnnxPredictor, task, examples, cfg) -> list[list[int]]:
    """The rows the torch-free predictor would encode, for the tokenization check."""
    if task.head_kind == "token":
        return tagging.encode_tagged(
            predictor.tokenizer, examples, None, cfg.window_tokens
        ).input_ids
    feats = qa_data.prepare_qa_features(
        predictor.tokenizer, examples, max_length=cfg.window_tokens, stride=cfg.stride
    )
    return feats.input_ids


def measure(args: argparse.Namespace) -> dict:
    folder, source = source_folder(args.model)
    model, tokenizer, manifest = load_model(folder)
    task, labels, cfg = TASKS[manifest["task"]], manifest["labels"], phase3_config(manifest)
    examples = task.read(args.test)[: args.max]
    feats = task.encode(tokenizer, examples, labels, cfg, False)
    pad = tokenizer.pad_token_id or 0

    def score(outputs) -> float:
        return float(
            task.score(examples, task.decode(examples, feats, outputs, labels, cfg))["main"]
        )

    t0 = time.perf_counter()
    reference = predict_outputs(model, task, feats, 32, pad)
    record = {
        "model": source, "test": args.test, "examples": len(examples), "rows": len(reference),
        "task": manifest["task"], "encoder_spec": manifest.get("encoder_spec"),
        "threads": torch.get_num_threads(), "seconds": {"torch": time.perf_counter() - t0},
        "main": {"torch": score(reference)}, "max_abs_diff": {}, "same_tokens": {},
    }  # fmt: skip
    variants = [("int8", True, True)] + (  # alad export --int8: per output channel
        [("int8_per_tensor", True, False)] if args.per_tensor else []
    )
    if not manifest.get("encoder_spec"):
        variants.insert(0, ("fp32", False, False))
    with tempfile.TemporaryDirectory() as tmp:
        for name, int8, per_channel in variants:
            out = Path(tmp) / name
            export_onnx(folder, out, int8, source, per_channel=per_channel)
            predictor = OnnxPredictor(out)
            record["same_tokens"][name] = (
                onnx_token_ids(predictor, task, examples, cfg) == feats.input_ids
            )
            t0 = time.perf_counter()
            outputs = [torch.from_numpy(o) for o in predictor.logits(feats.input_ids)]
            record["seconds"][name] = time.perf_counter() - t0
            record["max_abs_diff"][name] = max(
                float((a - b).abs().max()) for a, b in zip(outputs, reference, strict=True)
            )
            record["main"][name] = score(outputs)
            record["model_mb"] = {
                **record.get("model_mb", {}),
                name: (out / "model.onnx").stat().st_size / 2**20,
            }
    record["change_points"] = {
        k: 100 * (v - record["main"]["torch"]) for k, v in record["main"].items() if k != "torch"
    }
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="saved model folder or models:/<name>@<alias>")
    parser.add_argument("--test", required=True, help="the task's test file")
    parser.add_argument("--max", type=int, help="only the first N test examples")
    parser.add_argument(
        "--per-tensor", action="store_true", help="also INT8 with one weight scale per tensor"
    )
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args(argv)
    record = measure(args)
    print(json.dumps(record, indent=2))
    if args.out:  # atomic, its folder made
        write_json(record, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
