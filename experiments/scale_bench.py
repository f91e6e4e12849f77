"""Scaling on one machine: M_L extraction and phase-1 training throughput with P processes.

    experiments/scale_bench.sh               # P = 1 and 2 under torchrun; prints the table

Run by torchrun (one copy per rank): extracts mpnet-base features of N Wikipedia sentences into
a fresh shared cache (each rank every P-th shard), then trains phase 1 for 2 epochs (each rank
its rows of every batch). Rank 0 prints one JSON line: tokens/s of the extraction and of the
second epoch's training (the first includes the warm-up).
"""

import json
import os
import sys
import time
from pathlib import Path

import torch

from alad.cache import build_cache
from alad.config import load_settings
from alad.data.corpus import load_corpus, sample_split
from alad.models.catalog import load_encoder
from alad.phases.align import AlignData, run_alignment
from alad.runtime import barrier, init_distributed, is_main, rank_world, resolve_device
from alad.teacher import Teacher

texts, root = int(sys.argv[1]), Path(sys.argv[2])
init_distributed(resolve_device("cpu"))
rank, world = rank_world()
s = load_settings(params=None, overrides=["tracking.enabled=false", "phase1.epochs=2"])
compressed, large = load_encoder(s.models.compressed), load_encoder(s.models.large)
train, held = sample_split(load_corpus("wiki"), texts, 0.02, s.seed)
length, shard = s.models.max_length, 64  # small shards: P ranks share the work evenly

barrier()
t0 = time.perf_counter()
large_train = build_cache(large, train, length, root, shard, progress=False)
barrier()
extract_s = time.perf_counter() - t0
compressed_train = build_cache(compressed, train, length, root, shard, progress=False)
heldout = tuple(
    build_cache(e, held, length, root, shard, progress=False) for e in (compressed, large)
)
data = AlignData(compressed, Teacher.pretrained(large), (compressed_train, large_train), heldout)
result = run_alignment(s, "phase1", out=root / "ckpt", progress=False, data=data)
if is_main():
    tokens = large_train.num_tokens
    print(
        json.dumps(
            {
                "processes": world,
                "threads_per_process": torch.get_num_threads(),
                "texts": len(train),
                "tokens": tokens,
                "extract_tokens_per_s": round(tokens / extract_s, 1),
                "train_tokens_per_s": round(tokens / result.history[-1]["seconds"], 1),
                "heldout_mse": round(result.after["mse"], 6),
                "load1": os.getloadavg()[0],
            }
        )
    )
