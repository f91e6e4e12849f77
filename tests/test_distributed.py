"""Several processes under torchrun (gloo on CPU): the same results as one process.

Each test launches `python -m torch.distributed.run --standalone --nproc-per-node 2` on a small
script, as a user's `torchrun --nproc-per-node 2 alad ...` would."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import tiny_sentences
from safetensors.torch import load_file

from alad.cache import MANIFEST, build_cache
from alad.models.catalog import load_encoder

pytestmark = pytest.mark.integration


def torchrun(
    tmp_path: Path, script: str, *args: str, nproc: int = 2
) -> subprocess.CompletedProcess:
    path = tmp_path / "script.py"
    path.write_text(textwrap.dedent(script))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    cmd += [f"--nproc-per-node={nproc}", str(path), *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


EXTRACT = """
    import json, os, sys
    from pathlib import Path
    import torch
    import alad.cache as cache_mod
    from alad.models.catalog import load_encoder
    from alad.runtime import init_distributed, rank_world

    model, root, log = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    texts = json.loads(Path(sys.argv[4]).read_text())
    init_distributed(torch.device("cpu"))
    rank, world = rank_world()
    real = cache_mod.extract_shard
    def logged(encoder, chunk, *args):
        with log.open("a") as f:
            f.write(f"{rank} {texts.index(chunk[0])}\\n")
        return real(encoder, chunk, *args)
    cache_mod.extract_shard = logged
    cache = cache_mod.build_cache(load_encoder(model), texts, 32, root, shard_texts=10,
                                  progress=False)
    # one file per rank: two ranks printing at once can share a line of the joint stdout
    out = {"rank": rank, "world": world, "folder": str(cache.dir)}
    (log.parent / f"rank{rank}.json").write_text(json.dumps(out))
"""


def test_two_ranks_extract_disjoint_shards_into_the_cache_one_process_makes(tiny_models, tmp_path):
    texts = tiny_sentences(45, seed=6)
    (tmp_path / "texts.json").write_text(json.dumps(texts))
    log = tmp_path / "calls.log"
    torchrun(
        tmp_path,
        EXTRACT,
        str(tiny_models[0]),
        str(tmp_path / "dist"),
        str(log),
        str(tmp_path / "texts.json"),
    )
    outs = [json.loads(p.read_text()) for p in sorted(tmp_path.glob("rank*.json"))]
    assert sorted(o["rank"] for o in outs) == [0, 1] and {o["world"] for o in outs} == {2}
    # shard k (texts 10k..) extracted once, by rank k % 2
    calls = sorted(tuple(map(int, line.split())) for line in log.read_text().splitlines())
    assert calls == [(0, 0), (0, 20), (0, 40), (1, 10), (1, 30)]
    (folder,) = {Path(o["folder"]) for o in outs}
    single = build_cache(
        load_encoder(str(tiny_models[0])),
        texts,
        32,
        tmp_path / "one",
        shard_texts=10,
        progress=False,
    )
    ours, theirs = (json.loads((f / MANIFEST).read_text()) for f in (folder, single.dir))
    assert ours["shards"] == theirs["shards"] and ours["num_tokens"] == theirs["num_tokens"]
    for name in ours["shards"]:
        a, b = load_file(folder / name), load_file(single.dir / name)
        assert torch.equal(a["lengths"], b["lengths"])
        torch.testing.assert_close(a["hidden"], b["hidden"], atol=2e-3, rtol=2e-3)


def _phase1_args(tiny_models, corpus, out, cache):
    compressed, large = tiny_models
    return [
        "align", "phase1", "--profile", "tiny", "-q",
        "--set", f"models.compressed={compressed}", "--set", f"models.large={large}",
        "--set", f"phase1.corpus={corpus}", "--set", "phase1.max_texts=60",
        "--set", "phase1.batch_size=8", "--set", "phase1.epochs=2",
        "--set", f"cache.dir={cache}", "--set", "tracking.enabled=false",
        "--out", str(out),
    ]  # fmt: skip


def test_two_gloo_ranks_train_the_adapter_one_process_trains(tiny_models, tiny_corpus, tmp_path):
    """Same global batch (8), two ranks of 4 rows each: the same adapter within float noise."""
    from alad.checkpoint import load_checkpoint
    from alad.cli import main

    one = tmp_path / "one"
    assert main(_phase1_args(tiny_models, tiny_corpus, one, tmp_path / "c1")) == 0
    script = "import sys\nfrom alad.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    two = tmp_path / "two"
    torchrun(tmp_path, script, *_phase1_args(tiny_models, tiny_corpus, two, tmp_path / "c2"))
    a, b = load_checkpoint(one), load_checkpoint(two)
    assert a.manifest["epoch"] == b.manifest["epoch"] == 2
    sa, sb = a.adapter.state_dict(), b.adapter.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        torch.testing.assert_close(sa[key], sb[key], atol=1e-5, rtol=1e-4)
    # and they did move: not two copies of the initial weights
    assert a.manifest["history"][-1]["train_mse"] < a.manifest["history"][0]["train_mse"]


NO_DROPOUT = (
    "import sys, torch\n"
    "torch.nn.Dropout.forward = lambda self, x: x  # the two runs then differ only by the split\n"
    "from alad.cli import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


def test_two_gloo_ranks_finetune_the_model_one_process_finetunes(
    tiny_settings, tiny_models, tmp_path, monkeypatch
):
    from conftest import write_conllu
    from safetensors.torch import load_file as load

    from alad.cli import main

    data = [write_conllu(tmp_path / f"{n}.conllu", k, s) for n, k, s in (("t", 40, 1), ("d", 8, 2))]
    compressed, large = tiny_models

    def args(out: Path) -> list[str]:
        return [
            "finetune", "--profile", "tiny", "-q", "--task", "pos", "--mode", "alad-joint",
            "--compressed", str(compressed), "--large", str(large), "--train", str(data[0]),
            "--dev", str(data[1]), "--test", str(data[1]), "--epochs", "2",
            "--set", "phase3.batch_size=8", "--set", f"cache.dir={tmp_path / 'c'}",
            "--out", str(out),
        ]  # fmt: skip

    monkeypatch.setattr(torch.nn.Dropout, "forward", lambda self, x: x)
    assert main(args(tmp_path / "one")) == 0
    monkeypatch.undo()
    torchrun(tmp_path, NO_DROPOUT, *args(tmp_path / "two"))
    for name in ("adapter.safetensors", "head.safetensors"):
        a, b = (load(tmp_path / run / "model" / name) for run in ("one", "two"))
        for key in a:
            torch.testing.assert_close(a[key], b[key], atol=1e-4, rtol=1e-3)
    one, two = (json.loads((tmp_path / r / "metrics.json").read_text()) for r in ("one", "two"))
    assert [h["train_loss"] for h in one["history"]] == pytest.approx(
        [h["train_loss"] for h in two["history"]], rel=1e-4
    )


KILLED_IN_EPOCH_3 = (
    "import sys\n"
    "import alad.phases.align as align\n"
    "real = align._train_epoch\n"
    "def dies(*a, **k):\n"
    "    if a[1] == 2:  # epoch index 2: the third epoch, after two checkpoints\n"
    "        raise SystemExit(3)  # as if the job were killed\n"
    "    return real(*a, **k)\n"
    "align._train_epoch = dies\n"
    "from alad.cli import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


def test_a_killed_two_process_run_resumes_to_the_uninterrupted_result(
    tiny_models, tiny_corpus, tmp_path
):
    from alad.checkpoint import load_checkpoint

    script = "import sys\nfrom alad.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    three = ["--set", "phase1.epochs=3"]
    torchrun(
        tmp_path, script, *_phase1_args(tiny_models, tiny_corpus, straight, tmp_path / "c"), *three
    )
    path = tmp_path / "killed.py"
    path.write_text(KILLED_IN_EPOCH_3)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    args = [*_phase1_args(tiny_models, tiny_corpus, resumed, tmp_path / "c"), *three]
    killed = subprocess.run([*cmd, str(path), *args], capture_output=True, text=True, timeout=600)
    assert killed.returncode != 0
    assert load_checkpoint(resumed).manifest["epoch"] == 2  # what survived the kill
    torchrun(tmp_path, script, *args)  # the same command again: resumes at epoch 3
    a, b = load_checkpoint(straight), load_checkpoint(resumed)
    assert a.manifest["epoch"] == b.manifest["epoch"] == 3
    for key, value in a.adapter.state_dict().items():
        torch.testing.assert_close(value, b.adapter.state_dict()[key], atol=1e-6, rtol=1e-5)
