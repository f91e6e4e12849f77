"""Benchmarks that print figures (never timed tests).

    alad bench align --texts 1000 --epochs 3
    alad bench latency [--compressed minilm-l6,minilm-l3,mpnet-base:prune4] [--k 5]
    alad bench latency --grid sweeps/adapter.yaml     # the grid's adapter shapes (H, rank)

`bench align`:
1. Cache effect: epoch 1 pays for running both frozen models (extraction) plus training; later
   epochs only read shards and train the adapter. Target: later epoch <= 10% of the first.
2. Extraction throughput of the large model (tokenise, forward, keep real tokens, fp16, write
   shards) vs a raw forward pass over the same length-sorted batches. Target: >= 0.8.

`bench latency`: Table 1's speed-up column. M_L, each M_C and each M_C + AlAd (n = 1, 3, 5),
all with the same token-classification head shape, on batches of 1 and 32 sequences of 128
random tokens, in one process; the models alternate round-robin and each keeps its best of k
(alad.timing.best_of). AlAd's weights are freshly initialised: values do not change its speed.
Writes results/latency.json (what `alad report` joins into Table 1) with the machine's facts.
With `--grid sweeps/adapter.yaml`: the grid's M_C and every adapter shape (n, H, rank) of its
cells instead, to results/latency-<grid name>.json; each AlAd row also has its overhead, its
time over its M_C's alone (what the report's overhead column and Pareto panel show).
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from alad.adapter import AlignmentAdapter
from alad.aligned_model import AlignedModel
from alad.atomic import ensure_writable_file, write_json
from alad.cache import build_cache, length_sorted_batches
from alad.config import ConfigError, Settings
from alad.data.corpus import load_corpus, sample_split
from alad.heads import TokenClassificationHead
from alad.models.catalog import Encoder, load_encoder
from alad.phases.align import AlignData, run_alignment
from alad.runtime import CPU, Runtime
from alad.teacher import Teacher
from alad.timing import best_of


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
            compressed,
            Teacher.pretrained(large),
            (caches[compressed.name], caches[large.name]),
            held_caches,
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


# ---------------------------------------------------------------------------------------------
# Latency: M_L vs M_C vs M_C + AlAd

DEFAULT_COMPRESSED = ("minilm-l6", "minilm-l3", "mpnet-base:prune4")
UPOS_LABELS = 17  # the head every model gets (POS's shape); a head is a small share of time


@dataclass(frozen=True)
class AdapterShape:
    """What decides an adapter's speed: window n, hidden width H, first-layer rank (None: full)."""

    window: int
    hidden: int
    rank: int | None = None

    @property
    def label(self) -> str:
        rank = f" r={self.rank}" if self.rank else ""
        return f"n={self.window} H={self.hidden}{rank}"


@dataclass
class Candidate:
    """One model to time: an encoder spec, optionally AlAd of some shape, and a task head."""

    encoder: str
    shape: AdapterShape | None  # None: no adapter
    role: str  # "large" | "compressed" | "alad"
    model: AlignedModel
    token_ids: torch.Tensor  # the encoder's ordinary (non-special) token ids

    @property
    def window(self) -> int | None:
        return self.shape.window if self.shape else None

    @property
    def params(self) -> int:
        """As evaluation counts them: encoder + adapter (a head is not part of "size")."""
        return self.model.encoder_parameters() + self.model.adapter_parameters()


def _ordinary_ids(encoder: Encoder) -> torch.Tensor:
    special = set(encoder.tokenizer.all_special_ids)
    return torch.tensor([i for i in range(encoder.model.config.vocab_size) if i not in special])


def candidates(
    large: Encoder,
    compressed: Sequence[Encoder],
    shapes: Sequence[AdapterShape],
    num_labels: int = UPOS_LABELS,
) -> list[Candidate]:
    """M_L, then per M_C: M_C alone and M_C + AlAd of each shape (all in eval mode)."""

    def make(enc: Encoder, shape: AdapterShape | None, role: str) -> Candidate:
        adapter = None
        if shape is not None:
            try:
                adapter = AlignmentAdapter(
                    enc.dim, large.dim, shape.window, shape.hidden, shape.rank
                )
            except ValueError as exc:  # e.g. a rank that is not lower-rank for this M_C
                raise ConfigError(f"AlAd {shape.label} on {enc.name}: {exc}") from None
        head = TokenClassificationHead(large.dim if shape else enc.dim, num_labels)
        model = AlignedModel(enc.model, head, adapter).eval()
        return Candidate(enc.name, shape, role, model, _ordinary_ids(enc))

    out = [make(large, None, "large")]
    for enc in compressed:
        out.append(make(enc, None, "compressed"))
        out += [make(enc, shape, "alad") for shape in shapes]
    return out


@torch.no_grad()
def measure_latency(
    models: Sequence[Candidate],
    batches: Sequence[int],
    tokens: int,
    k: int,
    seed: int = 0,
    runtime: Runtime = CPU,
) -> dict[tuple[int, int], float]:
    """Best-of-k seconds per (index into `models`, batch size) of one forward pass over a batch
    of `tokens` random ordinary tokens (full attention mask); everything alternates. On
    `runtime`'s device and precision; a GPU is synchronised so the time includes its work."""
    gen = torch.Generator().manual_seed(seed)
    device = runtime.device

    def forward(m: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> None:
        with runtime.autocast():
            m(ids, mask)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    calls = {}
    for i, cand in enumerate(models):
        cand.model.to(device)
        for batch in batches:
            pick = torch.randint(len(cand.token_ids), (batch, tokens), generator=gen)
            ids = cand.token_ids[pick].to(device)
            mask = torch.ones(batch, tokens, dtype=torch.long, device=device)
            calls[(i, batch)] = lambda m=cand.model, ids=ids, mask=mask: forward(m, ids, mask)
    return best_of(calls, k)


def latency_rows(
    models: Sequence[Candidate], seconds: dict[tuple[int, int], float], tokens: int
) -> list[dict[str, Any]]:
    """One row per (model, batch): ms per batch, tokens/s, speed-up and size vs M_L (models[0]);
    an AlAd row also its shape and its overhead: its time / its M_C's alone (1.30: AlAd costs
    30 % of M_C's time)."""
    large = models[0]
    alone = {(c.encoder, b): s for (i, b), s in seconds.items() if (c := models[i]).shape is None}
    rows = []
    for (i, batch), s in seconds.items():
        cand = models[i]
        row = {
            "model": cand.encoder,
            "role": cand.role,
            "window": cand.window,
            "batch": batch,
            "tokens": tokens,
            "ms_per_batch": 1000 * s,
            "tokens_per_s": batch * tokens / s,
            "speedup": seconds[(0, batch)] / s,
            "params": cand.params,
            "size_pct": 100.0 * cand.params / large.params,
        }
        if cand.shape is not None:
            row.update(hidden=cand.shape.hidden, rank=cand.shape.rank)
            row["overhead"] = s / alone[(cand.encoder, batch)]
        rows.append(row)
    return rows


def format_latency(rows: list[dict[str, Any]]) -> str:
    lines = [
        f"{'model':34s} {'batch':>5s} {'ms/batch':>9s} {'tokens/s':>9s} "
        f"{'speed-up':>8s} {'overhead':>8s} {'params':>12s} {'size %':>7s}"
    ]
    for r in sorted(rows, key=lambda r: r["batch"]):  # stable: M_L, then each M_C, +AlAd shapes
        label = r["model"]
        if r["window"]:
            label += f" + AlAd {AdapterShape(r['window'], r['hidden'], r['rank']).label}"
        over = f"{r['overhead']:>7.2f}x" if r.get("overhead") else f"{'-':>8s}"
        lines.append(
            f"{label:34s} {r['batch']:>5d} {r['ms_per_batch']:>9.1f} {r['tokens_per_s']:>9.0f} "
            f"{r['speedup']:>7.2f}x {over} {r['params']:>12,d} {r['size_pct']:>7.1f}"
        )
    return "\n".join(lines)


def bench_latency(
    large: str = "mpnet-base",
    compressed: Sequence[str] = DEFAULT_COMPRESSED,
    windows: Sequence[int] = (1, 3, 5),
    batches: Sequence[int] = (1, 32),
    tokens: int = 128,
    k: int = 5,
    hidden: int = 1280,
    out: Path | None = Path("results/latency.json"),
    runtime: Runtime = CPU,
    rank: int | None = None,
    shapes: Sequence[AdapterShape] | None = None,
    grid: str | None = None,
) -> dict[str, Any]:
    """Time every candidate in this process, print the table, write `out` (atomically).
    AlAd's shapes: `shapes` (e.g. a sweep grid's variants, `grid` naming it), else one per
    window of width `hidden` and first-layer `rank`."""
    from alad.provenance import git_commit, machine

    if out is not None:  # before the minutes of timing, not after them
        ensure_writable_file(out, "latency results", "pass another --out")
    shapes = list(shapes) if shapes else [AdapterShape(n, hidden, rank) for n in windows]
    load_before = os.getloadavg()
    models = candidates(load_encoder(large), [load_encoder(c) for c in compressed], shapes)
    print(
        f"bench latency: {len(models)} models x batches {list(batches)} x {tokens} tokens, "
        f"best of {k}, {torch.get_num_threads()} threads, load {load_before[0]:.2f}"
    )
    seconds = measure_latency(models, batches, tokens, k, runtime=runtime)
    rows = latency_rows(models, seconds, tokens)
    load_after = os.getloadavg()
    widths = {s.hidden for s in shapes}
    report = {
        "large": large,
        "compressed": list(compressed),
        "windows": sorted({s.window for s in shapes}),
        "hidden": widths.pop() if len(widths) == 1 else None,  # rows name each one's H
        "shapes": [{"window": s.window, "hidden": s.hidden, "rank": s.rank} for s in shapes],
        **({"grid": grid} if grid else {}),
        "head": f"token classification, {UPOS_LABELS} labels",
        "tokens": tokens,
        "k": k,
        "rows": rows,
        "machine": {
            **machine(runtime.device),
            "precision": runtime.precision,
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in load_after],
        },
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
    }
    print(format_latency(rows))
    print(f"load average (1 min) {load_before[0]:.2f} before, {load_after[0]:.2f} after")
    if out is not None:
        write_json(report, Path(out))
        print(f"wrote {out}")
    return report
