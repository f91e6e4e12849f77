"""Frozen-output cache: exact contents, resume after interruption, nothing half-written."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import interrupt_on_call, tiny_sentences

import alad.cache as cache_mod
from alad.cache import MANIFEST, build_cache, paired_batches
from alad.models.catalog import load_encoder


@pytest.fixture(scope="module")
def encoders(tiny_models):
    return load_encoder(str(tiny_models[0])), load_encoder(str(tiny_models[1]))


def test_cache_holds_each_texts_real_tokens_in_order(encoders, tmp_path):
    enc, _ = encoders
    texts = tiny_sentences(20, seed=3)
    cache = build_cache(enc, texts, 32, tmp_path, shard_texts=8, batch_size=3, progress=False)
    assert cache.num_shards == 3 and cache.num_texts == 20
    hidden, lengths = cache.shard(1)
    assert hidden.dtype == torch.float16 and len(lengths) == 8
    # text 8 (first of shard 1), embedded alone, must equal its cached rows
    batch = enc.tokenizer([texts[8]], return_tensors="pt")
    direct = enc.embed(batch["input_ids"], batch["attention_mask"])[0]
    assert int(lengths[0]) == direct.shape[0]
    torch.testing.assert_close(hidden[: lengths[0]].float(), direct, atol=2e-3, rtol=2e-3)
    assert cache.num_tokens == sum(len(enc.tokenizer(t)["input_ids"]) for t in texts)


def test_rebuild_after_interruption_reuses_finished_shards(encoders, tmp_path, monkeypatch):
    enc, _ = encoders
    texts = tiny_sentences(40, seed=4)
    real = cache_mod.extract_shard
    failing_on_third = interrupt_on_call(real, 3)
    calls = failing_on_third.calls
    monkeypatch.setattr(cache_mod, "extract_shard", failing_on_third)
    with pytest.raises(KeyboardInterrupt):
        build_cache(enc, texts, 32, tmp_path, shard_texts=10, progress=False)
    (folder,) = [p for p in tmp_path.iterdir() if p.is_dir()]  # beside it: its .lock
    assert not (folder / MANIFEST).exists(), "an interrupted cache must not look complete"
    assert sorted(p.name for p in folder.iterdir()) == [
        "building.json",
        "shard-00000.safetensors",
        "shard-00001.safetensors",
    ]
    calls.clear()
    cache = build_cache(enc, texts, 32, tmp_path, shard_texts=10, progress=False)
    assert len(calls) == 2, "only the two missing shards are extracted again"
    assert cache.num_texts == 40 and (folder / MANIFEST).is_file()


def test_a_stop_request_ends_extraction_after_a_shard_and_the_rerun_resumes(
    encoders, tmp_path, monkeypatch
):
    from alad import stopping

    enc, _ = encoders
    texts = tiny_sentences(30, seed=5)
    whole = build_cache(enc, texts, 32, tmp_path / "whole", shard_texts=10, progress=False)
    monkeypatch.setattr(stopping, "requested", lambda: "SIGTERM")  # arrives during shard 0
    with pytest.raises(stopping.Stopped, match="after shard 1 of 3 stopped by SIGTERM"):
        build_cache(enc, texts, 32, tmp_path / "stopped", shard_texts=10, progress=False)
    (folder,) = [p for p in (tmp_path / "stopped").iterdir() if p.is_dir()]
    assert sorted(p.name for p in folder.glob("shard-*")) == ["shard-00000.safetensors"]
    assert not (folder / MANIFEST).exists()
    monkeypatch.setattr(stopping, "requested", lambda: None)
    calls = []
    real = cache_mod.extract_shard
    monkeypatch.setattr(
        cache_mod, "extract_shard", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    resumed = build_cache(enc, texts, 32, tmp_path / "stopped", shard_texts=10, progress=False)
    assert len(calls) == 2  # shard 0 was kept
    for i in range(3):
        for a, b in zip(whole.shard(i), resumed.shard(i), strict=True):
            assert torch.equal(a, b)


def test_paired_batches_cover_every_text_once_in_a_seeded_order(encoders, tmp_path):
    c, lg = encoders
    texts = tiny_sentences(30, seed=5)
    cc = build_cache(c, texts, 32, tmp_path, shard_texts=7, progress=False)
    lc = build_cache(lg, texts, 32, tmp_path, shard_texts=7, progress=False)

    def epoch(seed):
        return [
            (x.shape, float(x.sum()), float(y.sum()))
            for x, y, _ in paired_batches(cc, lc, 4, np.random.default_rng(seed))
        ]

    assert epoch(1) == epoch(1)
    assert epoch(1) != epoch(2)
    n_texts = n_tokens = 0
    for x, y, mask in paired_batches(cc, lc, 4):
        assert x.shape[-1] == c.dim and y.shape[-1] == lg.dim
        assert torch.all(x[mask == 0] == 0) and torch.all(y[mask == 0] == 0)
        n_texts += x.shape[0]
        n_tokens += int(mask.sum())
    assert n_texts == 30 and n_tokens == cc.num_tokens


def test_misaligned_token_counts_are_an_error(encoders, tmp_path):
    c, lg = encoders
    cc = build_cache(c, ["the city ."], 32, tmp_path, progress=False)
    lc = build_cache(lg, ["the old city ."], 32, tmp_path, progress=False)
    with pytest.raises(ValueError, match="do not line up"):
        list(paired_batches(cc, lc, 2))


def test_empty_text_list_is_rejected(encoders, tmp_path):
    with pytest.raises(ValueError, match="empty"):
        build_cache(encoders[0], [], 32, tmp_path)


def test_partial_cache_of_another_shard_size_is_not_mixed_in(encoders, tmp_path, monkeypatch):
    """286efbe: interrupt, rerun with another cache.shard_texts: the old 10-text shards were
    reused as 7-text ones, the mix was marked complete, and every later run failed."""
    enc, lg = encoders
    texts = tiny_sentences(40, seed=6)
    real = cache_mod.extract_shard
    failing_on_third = interrupt_on_call(real, 3)
    monkeypatch.setattr(cache_mod, "extract_shard", failing_on_third)
    with pytest.raises(KeyboardInterrupt):
        build_cache(enc, texts, 32, tmp_path, shard_texts=10, progress=False)
    monkeypatch.setattr(cache_mod, "extract_shard", real)
    for size in (7, 10):  # the other size, then the interrupted one again: both complete
        cache = build_cache(enc, texts, 32, tmp_path, shard_texts=size, progress=False)
        large = build_cache(lg, texts, 32, tmp_path, shard_texts=size, progress=False)
        counts = [len(cache.shard(i)[1]) for i in range(cache.num_shards)]
        assert counts == [size] * (40 // size) + ([40 % size] if 40 % size else [])
        assert sum(x.shape[0] for x, _, _ in paired_batches(cache, large, 8)) == 40


def test_shards_of_an_unknown_extraction_are_extracted_again(encoders, tmp_path, caplog):
    enc, _ = encoders
    texts = tiny_sentences(20, seed=7)
    first = build_cache(enc, texts, 32, tmp_path, shard_texts=10, progress=False)
    (first.dir / MANIFEST).unlink()  # as if interrupted before the manifest ...
    (first.dir / "building.json").write_text('{"shard_texts": 3}')  # ... of another config
    again = build_cache(enc, texts, 32, tmp_path, shard_texts=10, progress=False)
    assert "another configuration" in caplog.text
    assert again.num_texts == 20 and again.num_shards == 2


def test_a_damaged_shard_is_a_clear_error(encoders, tmp_path):
    cache = build_cache(encoders[0], tiny_sentences(12, seed=8), 32, tmp_path, progress=False)
    shard = cache.dir / cache.manifest["shards"][0]
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(cache_mod.CacheError, match=r"damaged feature-cache shard.*delete"):
        cache.shard(0)
    rebuilt = build_cache(encoders[0], tiny_sentences(12, seed=8), 32, tmp_path, progress=False)
    assert len(rebuilt.shard(0)[1]) == 12  # the next build sees the size and extracts it again


def test_damaged_phase3_frozen_outputs_are_extracted_again(encoders, tmp_path, caplog):
    enc, _ = encoders
    rows = [enc.tokenizer(s)["input_ids"] for s in tiny_sentences(6, seed=9)]
    first = cache_mod.FrozenOutputs(enc.model, enc.fingerprint, tmp_path)
    first.fill(rows, batch_size=4, pad_id=0)
    (stored,) = (tmp_path / "phase3").iterdir()
    stored.write_bytes(stored.read_bytes()[:50])
    again = cache_mod.FrozenOutputs(enc.model, enc.fingerprint, tmp_path)
    again.fill(rows, batch_size=4, pad_id=0)
    assert "extracting them again" in caplog.text
    for key, value in first.memo.items():
        assert torch.equal(again.memo[key], value)


CONCURRENT_BUILD = """
import json, sys, time
from pathlib import Path
import alad.cache as cache_mod
from alad.models.catalog import load_encoder

model, root, log, barrier = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4])
texts = json.loads(sys.argv[5])
real = cache_mod.extract_shard
def logged(*args, **kwargs):
    with log.open("a") as f:
        f.write("shard\\n")
    time.sleep(0.2)  # a slow extraction: the other process arrives while this one works
    return real(*args, **kwargs)
cache_mod.extract_shard = logged
enc = load_encoder(model)
barrier.with_name(barrier.name + sys.argv[6]).touch()
while len(list(barrier.parent.glob(barrier.name + "*"))) < 2:
    time.sleep(0.01)
cache = cache_mod.build_cache(enc, texts, 32, root, shard_texts=10, progress=False)
print(json.dumps(cache.manifest))
"""


def test_two_processes_building_one_cache_extract_each_shard_once(tiny_models, tmp_path):
    """Sweep cells on several Dask workers may need the same features at the same moment."""
    import json
    import subprocess
    import sys

    texts = tiny_sentences(30, seed=5)
    log, barrier = tmp_path / "calls.log", tmp_path / "go"
    args = [str(tiny_models[0]), str(tmp_path / "features"), str(log), str(barrier)]
    children = [
        subprocess.Popen(
            [sys.executable, "-c", CONCURRENT_BUILD, *args, json.dumps(texts), me],
            stdout=subprocess.PIPE,
            text=True,
        )
        for me in ("a", "b")
    ]
    manifests = [json.loads(c.communicate(timeout=300)[0]) for c in children]
    assert [c.returncode for c in children] == [0, 0]
    assert manifests[0] == manifests[1] and len(manifests[0]["shards"]) == 3
    assert log.read_text().count("shard") == 3  # without the lock: up to 6, shards overwritten
