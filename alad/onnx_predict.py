"""Serve an ONNX export without torch or transformers: onnxruntime + tokenizers + numpy.

    alad export runs/ner-alad-joint/model --format onnx --int8 --out onnx-ner
    python -c "from alad.onnx_predict import OnnxPredictor as P
               print(P('onnx-ner').tag(['Empire State Building is in New York']))"
    python -c "from alad.onnx_predict import OnnxPredictor as P
               print(P('onnx-qa').answer([('Who?', 'The king was born in 1990.')]))"
    python -c "import mlflow; from alad.onnx_predict import OnnxPredictor as P
               d = mlflow.artifacts.download_artifacts('models:/alad-ner-minilm-l6-onnx@champion')
               print(P(d).tag(['Empire State Building is in New York']))"

Tags text and answers questions exactly as `alad predict` does: the same word splitting and
request handling (alad/text_predictor.py), the same windows and first-sub-token labels
(alad/data/tagging.py), the same QA windows and span decoding (alad/data/qa.py), with the same
tokenizer (the export's tokenizer.json is the saved model's, serialized) called through
`RustTokenizer`, which makes the calls transformers' fast tokenizers make. Only the logits come
from onnxruntime instead of PyTorch (fp32: within 1e-4 of them, tests/test_export.py).

The folder (alad/export.py writes it): model.onnx (inputs input_ids, attention_mask; outputs
`logits`, or `start_logits` / `end_logits`; batch and sequence axes dynamic), tokenizer.json (+
transformers' tokenizer files), manifest.json (format alad-onnx/1: task, labels, the decoding
settings, sha256 of every file, checked on load as for a saved model folder). A registered ONNX
version (alad/onnx_flavor.py) holds the same files in MLflow's layout; the predictor reads both.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from alad.atomic import read_folder_manifest, verify_checksums, verify_manifest_files
from alad.data import qa as qa_data
from alad.data import tagging
from alad.data.records import QAExample, TaggedSentence
from alad.errors import AladError
from alad.text_predictor import TextPredictor

FORMAT = "alad-onnx/1"
BATCH_SIZE = 32  # rows per session run, as alad predict batches them
# What loading and using an export reads from its manifest (checked up front: one error naming
# the key, not a KeyError deep inside)
REQUIRED = (
    "task",
    "head_kind",
    "labels",
    "outputs",
    "pad_token_id",
    "max_length",
    "stride",
    "n_best",
    "max_answer_length",
    "null_threshold",
)


class OnnxFolderError(AladError, ValueError):
    """An ONNX export folder is missing, incomplete or damaged."""


class Encoded(dict):
    """What transformers' BatchEncoding gives alad's encoders: the lists by key, plus
    `word_ids(i)` / `sequence_ids(i)` of row i."""

    def __init__(self, encodings: list[Any], sample: list[int], offsets: bool, overflow: bool):
        super().__init__(
            input_ids=[e.ids for e in encodings],
            attention_mask=[e.attention_mask for e in encodings],
            token_type_ids=[e.type_ids for e in encodings],
        )
        if offsets:
            self["offset_mapping"] = [e.offsets for e in encodings]
        if overflow:
            self["overflow_to_sample_mapping"] = sample
        self.encodings = encodings

    def word_ids(self, i: int) -> list[int | None]:
        return self.encodings[i].word_ids

    def sequence_ids(self, i: int) -> list[int | None]:
        return self.encodings[i].sequence_ids


class RustTokenizer:
    """A `tokenizers.Tokenizer` behind the part of a transformers fast tokenizer's interface
    that alad's encoders call (`__call__`, `num_special_tokens_to_add`, `unk_token`), with the
    backend settings transformers sets for those calls (truncation per call, no padding)."""

    is_fast = True  # offsets and sequence ids come from the Rust tokenizer (QA needs them)

    def __init__(self, backend: Any, unk_token: str | None):
        self.backend, self.unk_token = backend, unk_token

    def num_special_tokens_to_add(self, pair: bool = False) -> int:
        return self.backend.num_special_tokens_to_add(pair)

    def __call__(
        self,
        text: Sequence[Any],
        text_pair: Sequence[str] | None = None,
        *,
        add_special_tokens: bool = True,
        is_split_into_words: bool = False,
        truncation: bool | str = False,
        max_length: int | None = None,
        stride: int = 0,
        return_overflowing_tokens: bool = False,
        return_offsets_mapping: bool = False,
        padding: bool = False,
    ) -> Encoded:
        if padding:
            raise ValueError("RustTokenizer does not pad (alad's encoders never ask it to)")
        if truncation:
            strategy = "longest_first" if truncation is True else str(truncation)
            self.backend.enable_truncation(
                max_length, stride=stride, strategy=strategy, direction="right"
            )
        else:
            self.backend.no_truncation()
        self.backend.no_padding()
        batch = list(zip(text, text_pair, strict=True)) if text_pair is not None else list(text)
        encodings = self.backend.encode_batch(
            batch, add_special_tokens=add_special_tokens, is_pretokenized=is_split_into_words
        )
        flat, sample = [], []
        for i, encoding in enumerate(encodings):
            rows = [encoding, *(encoding.overflowing if return_overflowing_tokens else [])]
            flat.extend(rows)
            sample.extend([i] * len(rows))
        return Encoded(flat, sample, return_offsets_mapping, return_overflowing_tokens)


GRAPH = "model.onnx"
MLFLOW_EXTRA = "extra_files"  # where MLflow's ONNX flavor keeps the export's other files


def export_files(folder: Path) -> Path:
    """The folder of an export's manifest.json and tokenizer: the export folder itself, or, for
    a registered ONNX version as MLflow downloads it (alad/onnx_flavor.py: the graph as its
    model.onnx, every other file of the export under extra_files/), its extra_files/."""
    extra = folder / MLFLOW_EXTRA
    return (
        extra if (folder / "MLmodel").is_file() and (extra / "manifest.json").is_file() else folder
    )


def read_export_manifest(folder: Path) -> dict[str, Any]:
    """The export's manifest.json, its keys and its files' checksums checked (in either layout
    of `export_files`: the graph is model.onnx of `folder`)."""
    files = export_files(folder)
    path = files / "manifest.json"
    if not path.is_file():
        raise OnnxFolderError(f"{folder}: not an alad ONNX export (no manifest.json)")
    manifest = read_folder_manifest(path, FORMAT, OnnxFolderError, REQUIRED)
    if files == folder:
        verify_manifest_files(folder, manifest, OnnxFolderError)
        return manifest
    listed = dict(manifest.get("files") or {})
    graph = {GRAPH: listed.pop(GRAPH, "")}
    verify_manifest_files(files, {**manifest, "files": listed}, OnnxFolderError)
    if problem := verify_checksums(folder, graph):
        raise OnnxFolderError(f"{folder}: {problem}")
    return manifest


class OnnxPredictor(TextPredictor):
    """Loads an ONNX export once; answers many calls (`tag`, `answer`). `folder`: an export, or a
    registered ONNX version downloaded by MLflow (`export_files`). `threads`: onnxruntime's
    intra-op threads (default: onnxruntime's choice, one per core)."""

    def __init__(self, folder: Path | str, threads: int | None = None):
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.folder = Path(folder)
        self.manifest = m = read_export_manifest(self.folder)
        self.task_name, self.head_kind = m["task"], m["head_kind"]
        backend = Tokenizer.from_file(str(export_files(self.folder) / "tokenizer.json"))
        self.tokenizer = RustTokenizer(backend, m.get("unk_token"))
        self.pre_tokenizer = backend.pre_tokenizer
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(
            str(self.folder / GRAPH), options, providers=["CPUExecutionProvider"]
        )

    def logits(self, rows: Sequence[Sequence[int]]) -> list[np.ndarray]:
        """Per row of token ids: its outputs [tokens, labels] (span: [tokens, 2] = start, end),
        padding stripped; rows run in batches of BATCH_SIZE, in order, as alad predict runs
        them."""
        pad = int(self.manifest["pad_token_id"])
        out: list[np.ndarray] = []
        for s in range(0, len(rows), BATCH_SIZE):
            chunk = rows[s : s + BATCH_SIZE]
            width = max(len(r) for r in chunk)
            ids = np.full((len(chunk), width), pad, dtype=np.int64)
            mask = np.zeros((len(chunk), width), dtype=np.int64)
            for i, r in enumerate(chunk):
                ids[i, : len(r)] = r
                mask[i, : len(r)] = 1
            results = self.session.run(
                self.manifest["outputs"], {"input_ids": ids, "attention_mask": mask}
            )
            logits = results[0] if len(results) == 1 else np.stack(results, axis=-1)
            out.extend(logits[i, : len(r)] for i, r in enumerate(chunk))
        return out

    def tag_words(self, words: list[tuple[str, ...]]) -> list[list[str]]:
        sentences = [TaggedSentence(w, ()) for w in words]
        feats = tagging.encode_tagged(self.tokenizer, sentences, None, self.manifest["max_length"])
        outputs = self.logits(feats.input_ids)
        return tagging.decode_tags(feats, outputs, self.manifest["labels"], len(sentences))

    def answer_examples(self, examples: list[QAExample]) -> dict[str, str]:
        m = self.manifest
        feats = qa_data.prepare_qa_features(
            self.tokenizer, examples, max_length=m["max_length"], stride=m["stride"]
        )
        outputs = self.logits(feats.input_ids)
        predictions, _ = qa_data.postprocess_qa(
            examples,
            feats,
            [o[:, 0] for o in outputs],
            [o[:, 1] for o in outputs],
            n_best=m["n_best"],
            max_answer_length=m["max_answer_length"],
            null_threshold=m["null_threshold"],
        )
        return predictions
