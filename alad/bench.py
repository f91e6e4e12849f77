"""Benchmarks that print figures (never timed tests).

    alad bench align --texts 1000 --epochs 3

1. Cache effect: epoch 1 pays for running both frozen models (extraction) plus training; later
   epochs only read shards and train the adapter. Target: later epoch <= 10% of the first.
2. Extraction throughput of the large model (tokenise, forward, keep real tokens, fp16, write
   shards) vs a raw forward pass over the same length-sorted batches. Target: >= 0.8.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from alad.cache import build_cache, length_sorted_batches
from alad.config import Settings
from alad.data.corpus import load_corpus, sample_split
from alad.models.catalog import Encoder, load_encoder
from alad.phases.align import AlignData, run_alignment


@torch.no_grad()
def raw_forward_tokens_per_s(
    encoder: Encoder, texts: list[str], max_length: int, batch_size: int
) -> float:
    """Forward only, on the same length-sorted batches extraction uses, pre-tokenised."""
    lengths, batches = length_sorted_batches(encoder, texts, max_length, batch_size)
    tokens = sum(lengths)
    encoder.embed(*batches[-1][1:])  # warm-up: the first call pays one-off allocation costs
    t0 = time.perf_counter()
    for _, input_ids, mask in batches:
        encoder.embed(input_ids, mask)
    return tokens / (time.perf_counter() - t0)


def bench_align(settings: Settings, texts: int = 1000, epochs: int = 3) -> dict[str, float]:
    m, c = settings.models, settings.cache
    compressed, large = load_encoder(m.compressed), load_encoder(m.large)
    corpus = load_corpus(settings.phase1.corpus)
    train, held = sample_split(corpus, texts, settings.phase1.heldout_fraction, settings.seed)
    print(
        f"bench: {m.compressed} -> {m.large}, {len(train)} train texts, max_length "
        f"{m.max_length}, threads {torch.get_num_threads()}"
    )

    raw = raw_forward_tokens_per_s(large, train, m.max_length, c.extract_batch_size)
    with tempfile.TemporaryDirectory(prefix="alad-bench-") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        caches = {}
        for enc in (compressed, large):
            t = time.perf_counter()
            caches[enc.name] = build_cache(
                enc, train, m.max_length, root, c.shard_texts, c.extract_batch_size, progress=False
            )
            if enc is large:
                extract_tps = caches[enc.name].num_tokens / (time.perf_counter() - t)
        held_caches = (
            build_cache(compressed, held, m.max_length, root, progress=False),
            build_cache(large, held, m.max_length, root, progress=False),
        )
        extraction_s = time.perf_counter() - t0
        data = AlignData(
            compressed, large, (caches[compressed.name], caches[large.name]), held_caches
        )
        bench_settings = settings.model_copy(
            update={
                "phase1": settings.phase1.model_copy(update={"epochs": epochs}),
            }
        )
        result = run_alignment(
            bench_settings, "phase1", out=root / "ckpt", progress=False, data=data
        )
    seconds = [h["seconds"] for h in result.history]
    first = extraction_s + seconds[0]
    later = sum(seconds[1:]) / max(1, len(seconds) - 1)
    figures = {
        "tokens": caches[large.name].num_tokens,
        "extraction_s": extraction_s,
        "epoch1_s": first,
        "later_epoch_s": later,
        "later_over_first": later / first,
        "raw_forward_tokens_per_s": raw,
        "extraction_tokens_per_s": extract_tps,
        "extraction_over_raw": extract_tps / raw,
    }
    print(f"  tokens per epoch            {figures['tokens']:>10,}")
    print(f"  epoch 1 (extract + train)   {first:>10.1f} s   (extraction {extraction_s:.1f} s)")
    print(
        f"  later epoch (train only)    {later:>10.1f} s   -> {100 * later / first:.1f}% of "
        "epoch 1 (target <= 10%)"
    )
    print(f"  {m.large} raw forward    {raw:>10.0f} tokens/s")
    print(
        f"  {m.large} extraction     {extract_tps:>10.0f} tokens/s -> "
        f"{extract_tps / raw:.2f} of raw (target >= 0.8)"
    )
    return figures
