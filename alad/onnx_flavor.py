"""An ONNX export (alad/export.py) as an MLflow model of the ONNX flavor: tensors in, logits out.

    alad export models:/alad-ner-minilm-l6@champion --format onnx --int8 --out onnx-ner --register
    mlflow models serve -m "models:/alad-ner-minilm-l6-onnx-int8@champion" --env-manager local

MLflow's own flavor (`mlflow.onnx`): its pyfunc runs model.onnx in onnxruntime, so loading and
serving it run no alad code and need no torch. It takes what the graph takes, `input_ids` and
`attention_mask` (int64 [batch, sequence]), and answers with the graph's outputs (`logits`, or
`start_logits` / `end_logits`). The signature says so; the input example is the task's example
text, tokenized. Tokenizing and decoding stay with the caller: every other file of the export
(tokenizer.json, manifest.json with the labels, `id2label`, the QA decoding settings and the
checksums) travels as the flavor's extra files (`extra_files/` of the model), and the graph is
stored whole and unchanged (no external data: alad's graphs are far below protobuf's 2 GB), so
`OnnxPredictor(<the downloaded version>)` tags text and answers questions from it without torch,
as `alad predict` does. Served on onnxruntime's CPU provider, the one exports are checked on.
"""

from __future__ import annotations

import importlib.metadata
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from alad.onnx_predict import GRAPH, read_export_manifest
from alad.tasks import TASKS
from alad.tracking import flavor_metadata, logged_model

# What loading the flavor needs (MLflow's pyfunc for ONNX imports onnx and onnxruntime), pinned to
# what exported it; given explicitly, so MLflow does not load the model in a subprocess to guess.
SERVING_PACKAGES = ("mlflow", "onnx", "onnxruntime", "numpy", "pandas")


def pip_requirements() -> list[str]:
    return [f"{p}=={importlib.metadata.version(p)}" for p in SERVING_PACKAGES]


def signature(manifest: dict[str, Any]) -> Any:
    """int64 input_ids / attention_mask [batch, sequence] -> float32 logits [batch, sequence,
    labels] (a span head: start_logits, end_logits [batch, sequence])."""
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    ids = np.dtype("int64")
    inputs = Schema([TensorSpec(ids, (-1, -1), name) for name in manifest["inputs"]])
    shape = (-1, -1, len(manifest["labels"])) if manifest["head_kind"] == "token" else (-1, -1)
    outputs = Schema([TensorSpec(np.dtype("float32"), shape, n) for n in manifest["outputs"]])
    return ModelSignature(inputs=inputs, outputs=outputs)


def input_example(folder: Path, manifest: dict[str, Any]) -> dict[str, np.ndarray]:
    """The task's example (alad/tasks.py) tokenized as the export's tokenizer does."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tokenizer.enable_truncation(int(manifest["max_length"]))
    example = TASKS[manifest["task"]].input_example
    texts = [row for rows in example.values() for row in rows[:1]]  # text, or question + context
    encoding = tokenizer.encode(*texts)
    return {
        "input_ids": np.array([encoding.ids], dtype=np.int64),
        "attention_mask": np.array([encoding.attention_mask], dtype=np.int64),
    }


def log_onnx(client: Any, experiment_id: str, run_id: str, folder: Path) -> Any:
    """Save the export in `folder` with mlflow.onnx and log it as a LoggedModel of the run;
    returns the LoggedModel. The export's checksums are verified first."""
    import mlflow.onnx
    import onnx

    folder = Path(folder)
    manifest = read_export_manifest(folder)
    # every file but the graph (tokenizer, labels, decoding settings, checksums): with MLflow's
    # model.onnx (the same bytes) they are the export again, which OnnxPredictor reads
    extra = [str(folder / name) for name in sorted(manifest["files"]) if name != GRAPH]
    extra.append(str(folder / "manifest.json"))
    with (
        logged_model(client, experiment_id, run_id, "alad-onnx") as logged,
        tempfile.TemporaryDirectory() as tmp,
    ):
        local = Path(tmp) / "model"
        mlflow.onnx.save_model(
            onnx.load(str(folder / "model.onnx")),
            str(local),
            signature=signature(manifest),
            input_example=input_example(folder, manifest),
            pip_requirements=pip_requirements(),
            # the provider alad checks exports on (export: max abs diff vs PyTorch)
            onnx_execution_providers=["CPUExecutionProvider"],
            extra_files=extra,
            save_as_external_data=False,
            mlflow_model=flavor_metadata(logged, run_id),
        )
        client.log_model_artifacts(logged.model_id, str(local))
    return logged
