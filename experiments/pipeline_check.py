"""Does `transformers.pipeline` on an `alad export --format hf` folder tag a real test set as
`alad predict` does? (issue 22: "checked once on a real POS model")

    PYTHONPATH=$PWD python experiments/pipeline_check.py runs/pos-alad-joint/model \\
        --test ../shared/data/pos_de/test.conllu [--max 500] [--out results/pipeline-pos.json]

MODEL is a saved token-task model folder or `models:/...`. Exports it to the HF format in a
temporary folder, joins each test sentence's words with spaces (the raw text a user would
send), tags it with alad's Predictor (what `alad predict` runs) and with
`transformers.pipeline("token-classification")` read word by word (alad.hf.pipeline_word_tags:
each word's tag is its first token's), and counts sentences that differ. Prints one
JSON object: `sentences_differ` counts sentences with a word tagged differently (should be 0);
a sentence longer than the model's window is truncated by the pipeline (alad windows it), so
its words past the window are counted in `words_the_pipeline_truncated`, not compared. The
gold tags are not used: this compares two runtimes of one model, not its accuracy
(experiments/onnx_exactness.py scores it).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

import alad  # noqa: F401  (registers AladConfig with the Auto classes)
from alad.aligned_model import read_manifest
from alad.atomic import write_json
from alad.export import export_model, source_folder
from alad.hf import pipeline_word_tags
from alad.predict import Predictor
from alad.tasks import TASKS


def measure(args: argparse.Namespace) -> dict:
    from transformers import pipeline

    folder, source = source_folder(args.model)
    task = TASKS[read_manifest(folder)["task"]]
    texts = [" ".join(s.words) for s in task.read(args.test)[: args.max]]
    t0 = time.perf_counter()
    want = Predictor(folder).tag(texts)
    seconds = {"alad": time.perf_counter() - t0}
    with tempfile.TemporaryDirectory() as tmp:
        export_model(folder, "hf", Path(tmp) / "hf")
        pipe = pipeline("token-classification", model=str(Path(tmp) / "hf"), device="cpu")
        t0 = time.perf_counter()
        got = [pipeline_word_tags(pipe, text) for text in texts]
        seconds["pipeline"] = time.perf_counter() - t0
        window = pipe.tokenizer.model_max_length
        long = [len(pipe.tokenizer(text)["input_ids"]) > window for text in texts]
    # a sentence past the window: the pipeline truncates it (its last words get None), alad
    # windows it; those are compared on the words the pipeline tagged
    differ = [
        i for i, (a, b) in enumerate(zip(want, got, strict=True))
        if [w for w, _ in a] != [w for w, _ in b]
        or any(x != y and y is not None for (_, x), (_, y) in zip(a, b, strict=True))
    ]  # fmt: skip
    untagged = [sum(t is None for _, t in s) for s in got]
    inside = sum(n for n, past in zip(untagged, long, strict=True) if not past)
    return {
        "model": source, "test": args.test, "sentences": len(texts),
        "words": sum(len(s) for s in want), "tags": len({t for s in want for _, t in s}),
        "window_tokens": window, "sentences_past_window": sum(long),
        "words_the_pipeline_truncated": sum(untagged),
        "untagged_outside_long_sentences": inside,
        "sentences_differ": len(differ), "first_differ": differ[:5],
        "threads": torch.get_num_threads(), "seconds": seconds,
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="saved token-task model folder or models:/<name>@<alias>")
    parser.add_argument("--test", required=True, help="the task's test file")
    parser.add_argument("--max", type=int, help="only the first N test sentences")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args(argv)
    record = measure(args)
    print(json.dumps(record, indent=2))
    if args.out:  # atomic, its folder made
        write_json(record, args.out)
    return 1 if record["sentences_differ"] or record["untagged_outside_long_sentences"] else 0


if __name__ == "__main__":
    sys.exit(main())
