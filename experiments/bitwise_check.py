"""Refactoring guard: run the tiny pipeline and a tiny sweep through the CLI and write a digest
of everything they computed (sha256 of every weight file, every metric except timings).

    python experiments/bitwise_check.py OUT.json            # in the tree before the change
    python experiments/bitwise_check.py OUT2.json           # in the tree after it
    python experiments/bitwise_check.py --compare OUT.json OUT2.json

Only the CLI is used (`python -m alad.cli` from the current directory), so the script runs
unchanged on both sides of a refactor that renames modules. Tiny models come from
tests/conftest.py (no downloads). Runs: the whole pipeline (phases 1-3, evaluation) for
NER alad-joint and POS alad-frozen, `alad finetune` for every other mode on POS, and a 2-cell
sweep (`alad sweep run`). About 2 minutes on 2 cores; the runs go to
$TMPDIR/alad-bitwise-check.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import yaml

ROOT = Path.cwd()
TIMING = {"seconds", "earlier_seconds", "finished", "machine", "git_commit", "wall_seconds",
          "train_seconds"}  # fmt: skip
# Paths and timestamps differ between two runs in two folders; they are not computed results.
VOLATILE = TIMING | {"model_dir", "checkpoint", "init", "run_id", "parent_run_id", "created"}


def _alad(*args: str, cwd: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "alad.cli", *args]
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"failed: {' '.join(args)}\n{done.stderr[-3000:]}")


def _clean(value):
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in sorted(value.items()) if k not in VOLATILE}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def _hashed(value):
    if isinstance(value, torch.Tensor):
        return hashlib.sha256(value.contiguous().cpu().numpy().tobytes()).hexdigest()
    if isinstance(value, dict):
        return {str(k): _hashed(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_hashed(v) for v in value]
    if isinstance(value, bytes):
        return hashlib.sha256(value).hexdigest()
    return value if isinstance(value, str | int | float | bool | type(None)) else repr(value)


def _digest(folder: Path) -> dict[str, object]:
    out: dict[str, object] = {}
    for path in sorted(folder.rglob("*")):
        rel = str(path.relative_to(folder))
        if not path.is_file() or "state" in path.parts or path.suffix in {".png", ".log"}:
            continue
        if path.suffix == ".pt":  # a resume state: tensors hashed, timings left out
            out[rel] = _clean(_hashed(torch.load(path, weights_only=False)))
        elif path.suffix in {".safetensors", ".bin"}:
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
        elif path.suffix == ".json" and path.name not in {"building.json"}:
            try:
                data = json.loads(path.read_text())
                if isinstance(data.get("files"), dict):  # trainer.pt's hash covers its timings
                    data["files"].pop("trainer.pt", None)
                out[rel] = _clean(data)
            except ValueError:
                out[rel] = "unreadable"
        elif path.suffix in {".md", ".txt", ".tsv", ".conllu"}:
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def run(out_json: Path) -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import (  # the test suite's tiny models and data
        make_tiny_bert,
        make_tiny_mpnet,
        tiny_sentences,
        write_bio,
        write_conllu,
    )

    # One fixed folder: paths are part of configs and cell keys, so both sides must use the same.
    work = Path(tempfile.gettempdir()) / "alad-bitwise-check"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    bert, mpnet = make_tiny_bert(work / "bert"), make_tiny_mpnet(work / "mpnet")
    (work / "corpus.txt").write_text("\n".join(tiny_sentences(80)) + "\n")
    ner = write_bio(work / "ner.tsv", 80, 7)
    pos = [write_conllu(work / f"{n}.conllu", k, s) for n, k, s in
           (("train", 40, 1), ("dev", 8, 2), ("test", 8, 3))]  # fmt: skip
    common = [
        "--profile", "tiny", "-q",
        "--set", f"models.compressed={bert}", "--set", f"models.large={mpnet}",
        "--set", f"phase1.corpus={work / 'corpus.txt'}",
        "--set", f"cache.dir={work / 'features'}", "--set", "tracking.enabled=false",
    ]  # fmt: skip
    env_params = ["--params", os.devnull]
    for name, task, mode, train in (
        ("pipe-ner-joint", "ner", "alad-joint", ner),
        ("pipe-pos-frozen", "pos", "alad-frozen", pos[0]),
    ):
        _alad("pipeline", "run", *env_params, *common,
              "--set", f"phase2.corpus={train}", "--set", f"phase3.task={task}",
              "--set", f"phase3.mode={mode}", "--set", f"phase3.train={train}",
              "--root", str(work / name), cwd=work)  # fmt: skip
    for mode in ("large", "compressed", "lora", "lora-alad"):
        init = ["--init", str(work / "pipe-pos-frozen" / "phase2")] if "alad" in mode else []
        _alad("finetune", *env_params, *common, "--task", "pos", "--mode", mode, *init,
              "--train", str(pos[0]), "--dev", str(pos[1]), "--test", str(pos[2]),
              "--out", str(work / f"ft-pos-{mode}"), cwd=work)  # fmt: skip
    grid = {
        "results": str(work / "sweep-results"),
        "runs": str(work / "sweep-runs"),
        "large": str(mpnet),
        "compressed": [str(bert)],
        "modes": ["compressed", "alad-frozen"],
        "window": 3,
        "seeds": [1],
        "set": {"models.max_length": 32, "adapter.hidden": 16, "phase1.max_texts": 48,
                "phase1.corpus": str(work / "corpus.txt"), "phase1.epochs": 1,
                "phase2.epochs": 1, "phase3.epochs": 1, "phase3.batch_size": 8,
                "cache.dir": str(work / "features"), "tracking.enabled": False},
        "tasks": {"pos": {"train": str(pos[0]), "dev": str(pos[1]), "test": str(pos[2])}},
    }  # fmt: skip
    (work / "grid.yaml").write_text(yaml.safe_dump(grid))
    _alad("sweep", "run", str(work / "grid.yaml"), "-q", cwd=work)
    digest = {
        name: _digest(work / name)
        for name in sorted(p.name for p in work.iterdir())
        if name.startswith(("pipe-", "ft-", "sweep-results"))
    }
    out_json.write_text(json.dumps(digest, indent=1, sort_keys=True))
    print(f"{out_json}: {sum(len(v) for v in digest.values())} files from {len(digest)} runs")


def compare(a: Path, b: Path) -> int:
    x, y = json.loads(a.read_text()), json.loads(b.read_text())
    diffs = []
    for run_name in sorted(set(x) | set(y)):
        fx, fy = x.get(run_name, {}), y.get(run_name, {})
        for f in sorted(set(fx) | set(fy)):
            if fx.get(f) != fy.get(f):
                diffs.append(f"{run_name}/{f}")
    n = sum(len(v) for v in x.values())
    if diffs:
        print(f"{len(diffs)} of {n} files differ:\n  " + "\n  ".join(diffs[:40]))
        return 1
    print(f"identical: {n} files (weights sha256, metrics, histories) in {len(x)} runs")
    return 0


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", nargs="?", type=Path)
    ap.add_argument("--compare", nargs=2, type=Path)
    args = ap.parse_args()
    if args.compare:
        sys.exit(compare(*args.compare))
    run(args.out)
