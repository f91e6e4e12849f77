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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
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


RUNTIMES = ("torch", "onnx", "onnx-int8")


def check_runtimes(runtimes: Sequence[str], runtime: Runtime) -> list[str]:
    """The runtimes to time, torch first (the reference every ratio is taken against)."""
    unknown = [r for r in runtimes if r not in RUNTIMES]
    if unknown or not runtimes:
        raise ConfigError(
            f"--runtime {','.join(runtimes)}: expected a comma-separated list of "
            f"{', '.join(RUNTIMES)}"
        )
    onnx = [r for r in runtimes if r != "torch"]
    if onnx and runtime.device.type != "cpu":
        raise ConfigError(
            f"--runtime {','.join(onnx)}: onnxruntime is timed on the CPU, so torch must be too: "
            "set runtime.device=cpu (or time torch alone on the GPU)"
        )
    return [r for r in RUNTIMES if r in runtimes]


def _torch_int8(encoder: str) -> bool:
    from alad.models.compress import split_spec

    return "int8" in split_spec(encoder)[1]


def onnx_session(cand: Candidate, folder: Path, int8: bool, threads: int, gen: torch.Generator):
    """`cand.model` as the ONNX graph `alad export` writes (alad/export.py write_graph: traced
    with padding, checked against PyTorch; INT8: onnxruntime dynamic quantization), in an
    onnxruntime session on the CPU with `threads` intra-op threads (torch's), one inter-op
    thread, no spinning."""
    import onnxruntime as ort

    from alad.export import write_graph

    def rows(n: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        ids = cand.token_ids[torch.randint(len(cand.token_ids), (n, width), generator=gen)]
        mask = torch.ones(n, width, dtype=torch.long)
        mask[-1, width // 2 :] = 0  # padding: the mask's path must be in the traced graph
        return ids, mask

    path = folder / f"{len(list(folder.iterdir()))}{'-int8' if int8 else ''}.onnx"
    write_graph(cand.model.cpu(), "token", (rows(2, 16), rows(3, 24)), path, int8)
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    # Idle threads sleep instead of spinning after a run: spinning ones would take the CPU from
    # the next model timed (the calls alternate). Conservative for ONNX: spinning is, if
    # anything, faster for small batches.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _caller(
    name: str, cand: Candidate, runtime: Runtime, folder: Path, gen: torch.Generator
) -> Callable[[torch.Tensor, torch.Tensor], Callable[[], Any]]:
    """(ids, mask) -> a call that runs `cand` on them under `name` (inputs placed beforehand:
    on the device for torch, as numpy arrays for onnxruntime, so only the model is timed)."""
    if name == "torch":
        model, device = cand.model.to(runtime.device), runtime.device

        def forward(ids: torch.Tensor, mask: torch.Tensor) -> None:
            with runtime.autocast():
                model(ids, mask)
            if device.type == "cuda":
                torch.cuda.synchronize(device)

        return lambda ids, mask: partial(forward, ids.to(device), mask.to(device))
    threads = torch.get_num_threads()
    session = onnx_session(cand, folder, name == "onnx-int8", threads, gen)
    return lambda ids, mask: partial(
        session.run, None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}
    )


@torch.no_grad()
def measure_latency(
    models: Sequence[Candidate],
    batches: Sequence[int],
    tokens: int,
    k: int,
    seed: int = 0,
    runtime: Runtime = CPU,
    runtimes: Sequence[str] = ("torch",),
) -> dict[tuple[str, int, int], float]:
    """Best-of-k seconds per (runtime, index into `models`, batch size) of one forward pass over
    a batch of `tokens` random ordinary tokens (full attention mask); every model under every
    runtime alternates with all others. torch: on `runtime`'s device and precision (a GPU is
    synchronised so the time includes its work). onnx / onnx-int8: the model exported to ONNX
    (fp32 / INT8 weights) in onnxruntime on the CPU, given the same inputs; a model whose encoder
    is PyTorch int8 has no ONNX graph of its own and is timed in torch only."""
    gen = torch.Generator().manual_seed(seed)
    inputs = {}
    for i, cand in enumerate(models):
        for batch in batches:
            pick = torch.randint(len(cand.token_ids), (batch, tokens), generator=gen)
            inputs[(i, batch)] = (cand.token_ids[pick], torch.ones(batch, tokens, dtype=torch.long))
    calls = {}
    with tempfile.TemporaryDirectory(prefix="alad-bench-onnx-") as tmp:
        for name in runtimes:
            for i, cand in enumerate(models):
                if name != "torch" and _torch_int8(cand.encoder):
                    continue
                caller = _caller(name, cand, runtime, Path(tmp), gen)
                for batch in batches:
                    calls[(name, i, batch)] = caller(*inputs[(i, batch)])
        return best_of(calls, k)


def latency_rows(
    models: Sequence[Candidate], seconds: dict[tuple[str, int, int], float], tokens: int
) -> list[dict[str, Any]]:
    """One row per (runtime, model, batch): ms per batch, tokens/s, speed-up vs M_L (models[0])
    in the same runtime, size vs M_L; an AlAd row also its shape and its overhead: its time / its
    M_C's alone in the same runtime (1.30: AlAd costs 30 % of M_C's time). A row of another
    runtime than torch also its speed-up over the same model in torch (`speedup_vs_torch`) and
    over M_L in torch (`speedup_vs_large_torch`): what deploying it through ONNX gains."""
    large = models[0]
    alone = {
        (rt, c.encoder, b): s for (rt, i, b), s in seconds.items() if (c := models[i]).shape is None
    }
    rows = []
    for (rt, i, batch), s in seconds.items():
        cand = models[i]
        row = {
            "model": cand.encoder,
            "role": cand.role,
            "runtime": rt,
            "window": cand.window,
            "batch": batch,
            "tokens": tokens,
            "ms_per_batch": 1000 * s,
            "tokens_per_s": batch * tokens / s,
            "speedup": seconds[(rt, 0, batch)] / s,
            "params": cand.params,
            "size_pct": 100.0 * cand.params / large.params,
        }
        if cand.shape is not None:
            row.update(hidden=cand.shape.hidden, rank=cand.shape.rank)
            row["overhead"] = s / alone[(rt, cand.encoder, batch)]
        if rt != "torch":
            for key, ref in (("speedup_vs_torch", i), ("speedup_vs_large_torch", 0)):
                if ("torch", ref, batch) in seconds:
                    row[key] = seconds[("torch", ref, batch)] / s
        rows.append(row)
    return rows


def _label(r: dict[str, Any]) -> str:
    label = r["model"]
    if r["window"]:
        label += f" + AlAd {AdapterShape(r['window'], r['hidden'], r['rank']).label}"
    return label


def format_latency(rows: list[dict[str, Any]]) -> str:
    lines = [
        f"{'model':34s} {'runtime':9s} {'batch':>5s} {'ms/batch':>9s} {'tokens/s':>9s} "
        f"{'speed-up':>8s} {'overhead':>8s} {'params':>12s} {'size %':>7s}"
    ]
    # stable: per batch, each runtime's M_L, then each M_C and its AlAd shapes
    for r in sorted(rows, key=lambda r: r["batch"]):
        over = f"{r['overhead']:>7.2f}x" if r.get("overhead") else f"{'-':>8s}"
        lines.append(
            f"{_label(r):34s} {r.get('runtime', 'torch'):9s} {r['batch']:>5d} "
            f"{r['ms_per_batch']:>9.1f} {r['tokens_per_s']:>9.0f} {r['speedup']:>7.2f}x {over} "
            f"{r['params']:>12,d} {r['size_pct']:>7.1f}"
        )
    return "\n".join(lines)


# The issue-22 deployment goal for minilm-l6 + AlAd under onnx-int8 (batch 32 x 128)
GOAL_VS_TORCH, GOAL_VS_LARGE_TORCH = 2.0, 12.0


def format_deployment(rows: list[dict[str, Any]], torch_label: str) -> str:
    """Each ONNX row against PyTorch: the same model, and M_L (the deployment ratios)."""
    onnx = [r for r in rows if r.get("runtime", "torch") != "torch" and r["role"] != "large"]
    if not onnx:
        return ""
    lines = [
        f"ONNX vs {torch_label} (goal for minilm-l6 + AlAd under onnx-int8: >= "
        f"{GOAL_VS_TORCH:g}x the same model, >= {GOAL_VS_LARGE_TORCH:g}x M_L):",
        f"{'model':34s} {'runtime':9s} {'batch':>5s} {'x same model':>12s} {'x M_L':>8s}",
    ]
    for r in sorted(onnx, key=lambda r: r["batch"]):
        same, large = r.get("speedup_vs_torch"), r.get("speedup_vs_large_torch")
        lines.append(
            f"{_label(r):34s} {r['runtime']:9s} {r['batch']:>5d} "
            + (f"{same:>11.2f}x" if same else f"{'-':>12s}")
            + (f" {large:>7.2f}x" if large else f" {'-':>8s}")
        )
    return "\n".join(lines)


def onnx_facts(threads: int) -> dict[str, Any]:
    """How the ONNX rows were made and run (the JSON's `onnx`)."""
    import onnxruntime

    from alad.export import OPSET

    return {
        "onnxruntime": onnxruntime.__version__,
        "provider": "CPUExecutionProvider",
        "intra_op_num_threads": threads,  # = torch's threads
        "inter_op_num_threads": 1,
        "opset": OPSET,
        "int8": "onnxruntime quantize_dynamic, QInt8 weights, one scale per output channel",
    }


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
    runtimes: Sequence[str] = ("torch",),
) -> dict[str, Any]:
    """Time every candidate in this process, print the table, write `out` (atomically).
    AlAd's shapes: `shapes` (e.g. a sweep grid's variants, `grid` naming it), else one per
    window of width `hidden` and first-layer `rank`. `runtimes`: torch, onnx, onnx-int8."""
    from alad.provenance import git_commit, machine

    runtimes = check_runtimes(runtimes, runtime)
    if out is not None:  # before the minutes of timing, not after them
        ensure_writable_file(out, "latency results", "pass another --out")
    shapes = list(shapes) if shapes else [AdapterShape(n, hidden, rank) for n in windows]
    load_before = os.getloadavg()
    models = candidates(load_encoder(large), [load_encoder(c) for c in compressed], shapes)
    threads = torch.get_num_threads()
    print(
        f"bench latency: {len(models)} models x runtimes {','.join(runtimes)} x batches "
        f"{list(batches)} x {tokens} tokens, best of {k}, {threads} threads, load "
        f"{load_before[0]:.2f}"
        + (
            f"; onnxruntime: intra_op_num_threads = torch's {threads}"
            if runtimes[-1] != "torch"
            else ""
        )
    )
    seconds = measure_latency(models, batches, tokens, k, runtime=runtime, runtimes=runtimes)
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
        "runtimes": runtimes,
        **({"onnx": onnx_facts(threads)} if runtimes[-1] != "torch" else {}),
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
    if deployment := format_deployment(rows, f"PyTorch {runtime.precision}"):
        print(deployment)
    print(f"load average (1 min) {load_before[0]:.2f} before, {load_after[0]:.2f} after")
    if out is not None:
        write_json(report, Path(out))
        print(f"wrote {out}")
    return report
