"""Frozen-output cache for alignment phases 1-2.

    alad bench align        # shows the effect: later epochs read shards instead of running models

M_C and M_L (or another teacher) are frozen in phases 1 and 2, so their token embeddings for a
text never change (METHOD.md, "Training"). They are computed once per (model weights, tokenizer,
texts, max length, shard size; and the hidden state, when it is not the last) and stored as
fp16 safetensors shards of `shard_texts` texts: `hidden` [tokens, D] holds the real
(non-padding) tokens of the shard's texts back to back and `lengths` [texts] says how many each
text has. Only one shard is in memory at a time, so a corpus larger than RAM streams.

Layout: <root>/<model fingerprint>-<texts hash>-L<max_length>-S<shard_texts>-<tokenizer hash>
[-h<layer>]/{shard-00000.safetensors, ..., manifest.json}. Each shard is renamed into place when
complete; manifest.json (the full key, shard sizes) is written last and is what marks the cache
complete. An interrupted extraction resumes at the first missing shard, but only if
`building.json` shows it was the same configuration; shards of another one are deleted, never
mixed in. A stop request (SIGTERM, a time box: alad/stopping.py) takes effect after the shard
in progress.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from filelock import FileLock
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch.nn.utils.rnn import pad_sequence
from tqdm.auto import tqdm

from alad import stopping
from alad.atomic import write_json
from alad.errors import AladError
from alad.models.catalog import Encoder
from alad.models.packaged import cache_home
from alad.runtime import barrier, broadcast, rank_world

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
BUILDING = "building.json"  # the key of an extraction under way (absent once complete)
FORMAT = 2  # 2: the key names the tokenizer and the shard size


class CacheError(AladError, ValueError):
    """A finished cache shard cannot be read; the message says which folder to delete."""


def feature_root(configured: Path | None) -> Path:
    """`cache.dir` if set, else $ALAD_CACHE_HOME/features."""
    return (configured or cache_home() / "features").expanduser()


def texts_hash(texts: Sequence[str]) -> str:
    h = hashlib.sha256()
    for text in texts:
        h.update(text.encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class FeatureCache:
    """A complete cache folder; `shard(i)` loads one shard."""

    dir: Path
    manifest: dict

    @property
    def num_shards(self) -> int:
        return len(self.manifest["shards"])

    @property
    def num_tokens(self) -> int:
        return int(self.manifest["num_tokens"])

    @property
    def num_texts(self) -> int:
        return int(self.manifest["num_texts"])

    def shard(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(hidden [tokens, D] fp16, lengths [texts] int64) of shard i."""
        path = self.dir / self.manifest["shards"][i]
        try:
            tensors = load_file(path)
            hidden, lengths = tensors["hidden"], tensors["lengths"].long()
        except Exception as exc:  # safetensors raises its own error type for a damaged file
            raise CacheError(
                f"{path}: damaged feature-cache shard ({exc}); delete {self.dir} (or run "
                "`make clean-cache`) and rerun: it is extracted again"
            ) from None
        if int(lengths.sum()) != hidden.shape[0]:
            raise CacheError(f"{path}: damaged feature-cache shard; delete {self.dir} and rerun")
        return hidden, lengths


def atomic_save(
    tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None
) -> None:
    """A safetensors file written under a temporary name, then renamed into place."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    save_file(tensors, tmp, metadata=metadata)
    os.replace(tmp, path)


def length_sorted_batches(
    encoder: Encoder, texts: Sequence[str], max_length: int, batch_size: int
) -> tuple[list[int], list[tuple[list[int], torch.Tensor, torch.Tensor]]]:
    """Tokenise, then batch texts of similar length (least padding): (lengths, batches of
    (row indices, input_ids, attention_mask))."""
    ids = encoder.tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]
    lengths = [len(x) for x in ids]
    order = sorted(range(len(ids)), key=lengths.__getitem__)
    batches = []
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        padded = encoder.tokenizer.pad({"input_ids": [ids[i] for i in rows]}, return_tensors="pt")
        batches.append((rows, padded["input_ids"], padded["attention_mask"]))
    return lengths, batches


@torch.no_grad()
def extract_shard(
    encoder: Encoder,
    texts: Sequence[str],
    max_length: int,
    batch_size: int,
    layer: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Embed `texts` (the last layer, or hidden state `layer`); keep each text's real tokens
    only, as fp16, in the original text order."""
    lengths, batches = length_sorted_batches(encoder, texts, max_length, batch_size)
    pieces: list[torch.Tensor] = [torch.empty(0)] * len(texts)
    for rows, input_ids, mask in batches:
        # fp32 compute on the encoder's device; CPU fp16 storage, the same for every device
        hidden = encoder.embed(input_ids, mask, layer).to(torch.float16).cpu()
        for r, i in enumerate(rows):
            pieces[i] = hidden[r, : lengths[i]]
    return torch.cat(pieces), torch.tensor(lengths, dtype=torch.int64)


_CALL_STATE = ("truncation", "padding")


def tokenizer_hash(tokenizer: Any) -> str:
    """Content hash of what decides the tokens: the fast tokenizer's full definition (vocab,
    normaliser such as lower-casing, pre-tokeniser, post-processor), else the vocab + options."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        # Truncation and padding are call settings the tokenizer remembers between calls, not
        # part of its definition (max_length is in the key on its own).
        spec = {k: v for k, v in json.loads(backend.to_str()).items() if k not in _CALL_STATE}
        text = json.dumps(spec, sort_keys=True)
    else:
        text = json.dumps([sorted(tokenizer.get_vocab().items()), str(tokenizer.init_kwargs)])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cache_key(
    encoder: Encoder,
    texts: Sequence[str],
    max_length: int,
    shard_texts: int,
    layer: int | None = None,
) -> dict:
    """Everything that shapes the shards: a cache is reused only if all of it matches. (The
    extraction batch size is not part of it: padding is masked, so it does not change them.)
    `layer` (a hidden state other than the last) joins the key only when given, so the caches
    of the last layer made before it existed keep their key."""
    key = {
        "format": FORMAT,
        "model_fingerprint": encoder.fingerprint,
        "tokenizer_hash": tokenizer_hash(encoder.tokenizer),
        "texts_hash": texts_hash(texts),
        "num_texts": len(texts),
        "max_length": max_length,
        "shard_texts": shard_texts,
    }
    return key if layer is None else {**key, "layer": layer}


def build_cache(
    encoder: Encoder,
    texts: Sequence[str],
    max_length: int,
    root: Path,
    shard_texts: int = 512,
    batch_size: int = 32,
    label: str = "",
    progress: bool = True,
    layer: int | None = None,
) -> FeatureCache:
    """Return the complete cache for (encoder, texts, max_length), extracting what is missing:
    the last layer's outputs, or with `layer` the hidden state of that index (a teacher's
    target layer; `None` must be passed for the last, which is the same tensor).

    Under torchrun each rank extracts every world-th shard into the same folder; rank 0 writes
    the manifest once all are there, and every rank returns the same cache."""
    if not texts:
        raise ValueError("cannot cache an empty list of texts")
    key = cache_key(encoder, texts, max_length, shard_texts, layer)
    folder = root.expanduser() / (
        f"{encoder.fingerprint}-{key['texts_hash']}-L{max_length}-S{shard_texts}-"
        f"{key['tokenizer_hash'][:8]}" + ("" if layer is None else f"-h{layer}")
    )
    folder.parent.mkdir(parents=True, exist_ok=True)
    rank, world = rank_world()
    # One extraction per folder: concurrent runs (sweep cells on several workers) that need the
    # same features wait here, then find the manifest the first one wrote. Under torchrun rank 0
    # holds the lock for all ranks, which meet at barriers instead.
    with FileLock(f"{folder}.lock") if rank == 0 else contextlib.nullcontext():
        complete = [_reuse_or_claim(folder, key) if rank == 0 else None]
        broadcast(complete)
        if not complete[0]:
            names = _extract_shards(
                encoder,
                texts,
                max_length,
                folder,
                shard_texts,
                batch_size,
                label,
                progress,
                mine=lambda k: k % world == rank,
                layer=layer,
            )
            barrier()
            if rank == 0:
                _write_manifest(encoder, folder, key, names)
            barrier()
    return FeatureCache(folder, json.loads((folder / MANIFEST).read_text()))


def _reuse_or_claim(folder: Path, key: dict[str, Any]) -> bool:
    """True when `folder` holds a complete cache for `key`; else make it ready for extraction."""
    if (folder / MANIFEST).is_file():
        problem = _check_complete(folder, key)
        if problem is None:
            return True
        log.warning("feature cache %s: %s; extracting it again", folder, problem)
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    _claim_partial(folder, key)
    return False


def _extract_shards(
    encoder: Encoder,
    texts: Sequence[str],
    max_length: int,
    folder: Path,
    shard_texts: int,
    batch_size: int,
    label: str,
    progress: bool,
    mine: Callable[[int], bool],
    layer: int | None = None,
) -> list[str]:
    """Extract the shards `mine` picks that are not already there; returns every shard name."""
    starts = range(0, len(texts), shard_texts)
    names = [f"shard-{k:05d}.safetensors" for k in range(len(starts))]
    bar = tqdm(
        total=len(texts),
        desc=f"extract {label or encoder.name}",
        unit="text",
        disable=not progress,
        leave=False,
    )
    with stopping.deferring():  # a stop request waits for the shard in progress
        for k, (start, name) in enumerate(zip(starts, names, strict=True)):
            if k and (reason := stopping.requested()):  # every rank asks at every shard: in step
                bar.close()
                raise stopping.stop(
                    reason, f"feature extraction after shard {k} of {len(names)}", folder
                )
            chunk = texts[start : start + shard_texts]
            if mine(k) and _finished_shard(folder / name, len(chunk)) is None:
                hidden, lengths = extract_shard(encoder, chunk, max_length, batch_size, layer)
                atomic_save({"hidden": hidden.contiguous(), "lengths": lengths}, folder / name)
            bar.update(len(chunk))
    bar.close()
    return names


def _write_manifest(encoder: Encoder, folder: Path, key: dict[str, Any], names: list[str]) -> None:
    """The manifest, written last: its presence says every shard is complete."""
    num_tokens = 0
    for name in names:
        with safe_open(folder / name, framework="pt") as f:
            num_tokens += int(f.get_tensor("lengths").sum())
    manifest = {
        **key,
        "model": encoder.name,
        "dim": encoder.dim,
        "num_tokens": num_tokens,
        "shards": names,
        "shard_bytes": [(folder / name).stat().st_size for name in names],
    }
    write_json(manifest, folder / MANIFEST)
    (folder / BUILDING).unlink(missing_ok=True)


def _check_complete(folder: Path, key: dict) -> str | None:
    """None if the finished cache in `folder` is the one `key` asks for and all its shards are
    there at their recorded sizes, else what is wrong."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        diffs = [k for k, v in key.items() if manifest.get(k) != v]
        if diffs:
            return (
                f"built for another {diffs[0]} ({manifest.get(diffs[0])!r}, now {key[diffs[0]]!r})"
            )
        for name, size in zip(manifest["shards"], manifest["shard_bytes"], strict=True):
            if not (folder / name).is_file() or (folder / name).stat().st_size != size:
                return f"{name} is missing or damaged"
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"unreadable {MANIFEST} ({type(exc).__name__})"
    return None


def _claim_partial(folder: Path, key: dict) -> None:
    """Resume only a partial extraction of the same configuration: `building.json` records the
    key of the one under way; shards left by any other (or by an unknown one) are deleted."""
    header = folder / BUILDING
    try:
        same = json.loads(header.read_text()) == key
    except (OSError, ValueError):
        same = False
    shards = sorted(folder.glob("shard-*.safetensors"))
    if not same and shards:
        log.warning(
            "feature cache %s: %d shard(s) from an unfinished extraction of another "
            "configuration (or an older alad); deleting them",
            folder,
            len(shards),
        )
        for shard in shards:
            shard.unlink()
    for leftover in folder.glob(".shard-*.tmp-*"):  # a shard a kill interrupted
        leftover.unlink(missing_ok=True)
    write_json(key, header)


def _finished_shard(path: Path, num_texts: int) -> torch.Tensor | None:
    """The lengths of an intact shard of `num_texts` texts at `path`, else None (a damaged or
    mis-sized one is deleted, to be extracted again)."""
    if not path.is_file():
        return None
    try:
        tensors = load_file(path)
        lengths, hidden = tensors["lengths"], tensors["hidden"]
        if len(lengths) == num_texts and int(lengths.sum()) == hidden.shape[0]:
            return lengths
        problem = f"holds {len(lengths)} texts, expected {num_texts}"
    except Exception as exc:  # safetensors raises its own error type for a damaged file
        problem = f"unreadable ({exc})"
    log.warning("feature cache: %s %s; extracting it again", path, problem)
    path.unlink()
    return None


def _pad(pieces: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Variable-length [n_i, D] fp16 pieces -> zero-padded fp32 [B, T, D] and mask [B, T]."""
    lengths = torch.tensor([len(p) for p in pieces])
    padded = pad_sequence(pieces, batch_first=True).float()
    mask = (torch.arange(padded.shape[1]) < lengths[:, None]).float()
    return padded, mask


def grouped_batches(
    lengths: torch.Tensor | Sequence[int], batch_size: int, rng: np.random.Generator | None
) -> list[np.ndarray]:
    """Row batches. Shuffled: texts of similar length share a batch (less padding), drawn from
    random pools of 16 batches, and batch order is shuffled; unshuffled: in order."""
    if rng is None:
        rows = np.arange(len(lengths))
        return [rows[s : s + batch_size] for s in range(0, len(rows), batch_size)]
    lengths = torch.as_tensor(lengths)
    rows = rng.permutation(len(lengths))
    pool = batch_size * 16
    batches = []
    for s in range(0, len(rows), pool):
        chunk = rows[s : s + pool]
        chunk = chunk[np.argsort(lengths.numpy()[chunk], kind="stable")]
        batches.extend(chunk[b : b + batch_size] for b in range(0, len(chunk), batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]


def paired_batches(
    compressed: FeatureCache,
    large: FeatureCache,
    batch_size: int,
    rng: np.random.Generator | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Yield (R_C [B,T,D_C], R_L [B,T,D_L], mask [B,T]) batches, one shard in memory at a time.

    With `rng`, shard order and text order within a shard are shuffled; without, order is fixed.
    Token counts must agree text by text: if they do not, the token sequences are misaligned.
    """
    if compressed.num_shards != large.num_shards or compressed.num_texts != large.num_texts:
        raise ValueError(f"caches cover different texts: {compressed.dir} vs {large.dir}")
    shard_order = (
        rng.permutation(compressed.num_shards) if rng is not None else range(compressed.num_shards)
    )
    for s in shard_order:
        h_c, len_c = compressed.shard(int(s))
        h_l, len_l = large.shard(int(s))
        if not torch.equal(len_c, len_l):
            bad = int((len_c != len_l).nonzero()[0])
            raise ValueError(
                f"shard {s}, text {bad}: {int(len_c[bad])} compressed vs {int(len_l[bad])} large "
                "tokens; the tokenizers do not line up (see alad.models.tokens)"
            )
        pieces_c = torch.split(h_c, len_c.tolist())
        pieces_l = torch.split(h_l, len_l.tolist())
        for batch in grouped_batches(len_c, batch_size, rng):
            x, mask = _pad([pieces_c[i] for i in batch])
            y, _ = _pad([pieces_l[i] for i in batch])
            yield x, y, mask


class FrozenOutputs:
    """Phase 3 with a frozen M_C (alad-frozen): its last-layer outputs for each token-id row,
    computed once and then looked up instead of running the encoder every epoch (METHOD.md:
    "compute them once and reuse them across epochs").

    Rows are looked up by their token ids, so any batching of the same rows hits the memo.
    Stored on disk as one fp16 safetensors file per (encoder fingerprint, rows) under
    `<root>/phase3/`, so every seed of a sweep cell reuses the first one's extraction. fp16,
    as for phases 1-2: the head sees the encoder's outputs to ~1e-3 relative error.
    """

    def __init__(self, encoder: torch.nn.Module, fingerprint: str, root: Path):
        self.encoder, self.fingerprint, self.root = encoder, fingerprint, root / "phase3"
        self.memo: dict[bytes, torch.Tensor] = {}
        self.dim = 0

    @staticmethod
    def _key(ids: Sequence[int] | torch.Tensor) -> bytes:
        return torch.as_tensor(ids, dtype=torch.int64).numpy().tobytes()

    @torch.no_grad()
    def fill(
        self, rows: Sequence[Sequence[int]], batch_size: int, pad_id: int, progress: bool = False
    ) -> None:
        """Make sure every row is in the memo: read the file of these rows, or extract it."""
        rows = [list(r) for r in dict.fromkeys(tuple(r) for r in rows)]
        h = hashlib.sha256()
        for r in rows:
            h.update(self._key(r))
        path = self.root / f"{self.fingerprint}-{h.hexdigest()[:16]}.safetensors"
        found = _read_outputs(path, len(rows)) if path.is_file() else None
        if found is not None:
            hidden, lengths = found
        else:  # one file, written at the end: a stop request waits for it (alad/stopping.py)
            with stopping.deferring():
                hidden, lengths = self._extract(rows, batch_size, pad_id, progress)
                path.parent.mkdir(parents=True, exist_ok=True)
                atomic_save({"hidden": hidden, "lengths": lengths}, path)
        self.dim = hidden.shape[-1]
        for r, piece in zip(rows, torch.split(hidden, lengths.tolist()), strict=True):
            self.memo[self._key(r)] = piece

    def _extract(self, rows, batch_size, pad_id, progress):
        self.encoder.eval()
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
        pieces: list[torch.Tensor] = [torch.empty(0)] * len(rows)
        for s in tqdm(
            range(0, len(order), batch_size), desc="phase-3 frozen outputs", disable=not progress
        ):
            batch = order[s : s + batch_size]
            width = max(len(rows[i]) for i in batch)
            ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for b, i in enumerate(batch):
                ids[b, : len(rows[i])] = torch.tensor(rows[i])
                mask[b, : len(rows[i])] = 1
            device = next(self.encoder.parameters()).device
            out = self.encoder(
                input_ids=ids.to(device), attention_mask=mask.to(device)
            ).last_hidden_state
            for b, i in enumerate(batch):  # stored from the CPU: the same file for every device
                pieces[i] = out[b, : len(rows[i])].to(torch.float16).cpu()
        lengths = torch.tensor([len(r) for r in rows], dtype=torch.int64)
        return torch.cat(pieces).contiguous(), lengths

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """[B, T, D] fp32 outputs of right-padded rows (zeros at padding), from the memo."""
        lengths = attention_mask.sum(1).tolist()
        pieces = []
        for row, n in zip(input_ids, lengths, strict=True):
            key = self._key(row[:n])
            if key not in self.memo:
                raise KeyError("a phase-3 row was not extracted before training (fill() first)")
            pieces.append(self.memo[key])
        out = pad_sequence(pieces, batch_first=True).float()
        if out.shape[1] < input_ids.shape[1]:
            out = torch.nn.functional.pad(out, (0, 0, 0, input_ids.shape[1] - out.shape[1]))
        return out


def _read_outputs(path: Path, num_rows: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(hidden, lengths) of an intact frozen-outputs file of `num_rows` rows, else None: a
    damaged file is extracted again, not a traceback on every later run."""
    try:
        tensors = load_file(path)
        hidden, lengths = tensors["hidden"], tensors["lengths"]
        if len(lengths) == num_rows and int(lengths.sum()) == hidden.shape[0]:
            return hidden, lengths
        problem = f"holds {len(lengths)} rows, expected {num_rows}"
    except Exception as exc:  # safetensors raises its own error type for a damaged file
        problem = f"unreadable ({exc})"
    log.warning("phase-3 frozen outputs %s %s; extracting them again", path, problem)
    return None
