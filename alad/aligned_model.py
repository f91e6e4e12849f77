"""The deployable model: encoder (M_C, or M_L for the baseline) -> optional AlAd -> task head,
and its self-describing folder.

    alad predict runs/ner-alad-frozen/model "Empire State Building is in New York"

Folder layout (everything needed to load it without the training code's state):
  manifest.json       format, task, mode, labels, model names, AlAd shape, head, metrics
  encoder/            the encoder (fine-tuned weights; LoRA merged into them) + its tokenizer
  adapter.safetensors present when the mode uses AlAd
  head.safetensors
An int8-quantized encoder is not saved (packed int8 weights have no HF format): `encoder_spec`
names it and loading re-creates it from the catalog.
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from safetensors import SafetensorError
from safetensors.torch import save_file
from torch import nn
from transformers import AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from alad.adapter import AlignmentAdapter
from alad.atomic import (
    checksums,
    read_folder_manifest,
    replace_dir,
    tmp_dir,
    verify_manifest_files,
    write_json,
)
from alad.checkpoint import adapter_from, load_weights
from alad.config import Phase3Config
from alad.errors import AladError
from alad.heads import build_head
from alad.tasks import TASKS

FORMAT = "alad-model/1"


class AlignedModel(nn.Module):
    """encoder -> [AlignmentAdapter] -> head. Works on token ids, returns head logits."""

    def __init__(
        self, encoder: PreTrainedModel, head: nn.Module, adapter: AlignmentAdapter | None = None
    ):
        super().__init__()
        self.encoder, self.adapter, self.head = encoder, adapter, head
        # Phase 3 with a frozen encoder: its outputs looked up per row (alad.cache.FrozenOutputs)
        # instead of recomputed. Used while training only; never saved.
        self.frozen_outputs: Any = None

    def train(self, mode: bool = True) -> AlignedModel:
        # A frozen encoder is a fixed feature extractor: no dropout inside it while training.
        super().train(mode)
        if mode and not any(p.requires_grad for p in self.encoder.parameters()):
            self.encoder.eval()
        return self

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        trains_encoder = self.training and any(p.requires_grad for p in self.encoder.parameters())
        if self.frozen_outputs is not None and not trains_encoder:
            hidden = self.frozen_outputs(input_ids, attention_mask).to(input_ids.device)
            return self.adapter(hidden, attention_mask) if self.adapter is not None else hidden
        with torch.set_grad_enabled(torch.is_grad_enabled() and trains_encoder):
            hidden = self.encoder(
                input_ids=input_ids, attention_mask=attention_mask
            ).last_hidden_state
        return self.adapter(hidden, attention_mask) if self.adapter is not None else hidden

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(input_ids, attention_mask))

    def encoder_parameters(self) -> int:
        from alad.models.compress import parameter_count

        return parameter_count(self.encoder)

    def adapter_parameters(self) -> int:
        return sum(p.numel() for p in self.adapter.parameters()) if self.adapter else 0


class ModelFolderError(AladError, ValueError):
    """A saved model folder is missing or incomplete."""


def save_model(
    model: AlignedModel, tokenizer: PreTrainedTokenizerBase, manifest: dict[str, Any], out: Path
) -> Path:
    """Write the folder under a temporary name, then rename it over `out`. manifest.json lists
    the sha256 of every other file, checked on load."""
    tmp = tmp_dir(out)
    try:
        encoder = model.encoder
        if hasattr(encoder, "merge_and_unload"):  # LoRA: ship plain weights, no peft at inference
            # merged in a copy: merge_and_unload removes the LoRA layers from the model it is
            # called on, and training goes on after a save (the best epoch so far)
            encoder = copy.deepcopy(encoder).merge_and_unload()
        if manifest.get("encoder_spec") is None:
            encoder.save_pretrained(tmp / "encoder")
        tokenizer.save_pretrained(tmp / "encoder")
        if model.adapter is not None:
            save_file(
                {k: v.cpu().contiguous() for k, v in model.adapter.state_dict().items()},
                tmp / "adapter.safetensors",
            )
        save_file(
            {k: v.cpu().contiguous() for k, v in model.head.state_dict().items()},
            tmp / "head.safetensors",
        )
        full = {
            "format": FORMAT,
            "head": model.head.config(),
            "adapter": model.adapter.describe() if model.adapter else None,
            **manifest,
            "files": checksums(tmp),
        }
        write_json(full, tmp / "manifest.json")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return replace_dir(tmp, out)


# What loading and using a model folder reads from its manifest (checked up front, so a damaged
# or hand-edited manifest is one error naming the key, not a KeyError deep inside).
REQUIRED = ("task", "mode", "labels", "head", "large", "encoder_name", "max_length")


def read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / "manifest.json"
    if not path.is_file():
        raise ModelFolderError(f"{folder}: not an alad model folder (no manifest.json)")
    manifest = read_folder_manifest(path, FORMAT, ModelFolderError, REQUIRED)
    if manifest["task"] not in TASKS:
        raise ModelFolderError(f"{path}: task {manifest['task']!r} is not one of {sorted(TASKS)}")
    return manifest


def verify_model_folder(folder: Path, manifest: dict[str, Any]) -> None:
    """Every file manifest.json lists is there with its checksum and every weights file is
    listed; a manifest without a checksum list is refused (unless $ALAD_ALLOW_UNCHECKED=1)."""
    verify_manifest_files(folder, manifest, ModelFolderError)


def phase3_config(manifest: dict[str, Any]) -> Phase3Config:
    """The encoding/decoding settings a saved model was trained with."""
    keys = ("task", "max_length", "stride", "n_best", "max_answer_length", "null_threshold")
    missing = [k for k in keys if k not in manifest]
    if missing:
        raise ModelFolderError(f"model manifest.json: no {missing[0]!r} (a decoding setting)")
    try:
        return Phase3Config(**{k: manifest[k] for k in keys})
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise ModelFolderError(f"model manifest.json: {where}: {err['msg']}") from None


def load_model(
    folder: Path, device: torch.device | str = "cpu"
) -> tuple[AlignedModel, PreTrainedTokenizerBase, dict[str, Any]]:
    """Load a saved model in eval mode on `device`; needs only this folder (or the catalog for
    int8, which stays on the CPU: PyTorch's dynamic int8 kernels are CPU-only)."""
    from alad.models.catalog import load_encoder, load_hf_encoder

    manifest = read_manifest(folder)
    verify_model_folder(folder, manifest)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder / "encoder")
        if manifest.get("encoder_spec"):
            encoder = load_encoder(manifest["encoder_spec"]).model
        else:
            encoder = load_hf_encoder(str(folder / "encoder"))
    except (OSError, ValueError, RuntimeError, SafetensorError) as exc:
        first = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise ModelFolderError(f"{folder / 'encoder'}: cannot load the encoder ({first})") from None
    adapter = None
    if manifest.get("adapter"):
        adapter = adapter_from(manifest["adapter"], folder / "manifest.json")
        load_weights(adapter, folder / "adapter.safetensors")
    model = AlignedModel(encoder, load_head(folder, manifest), adapter).eval()
    if not manifest.get("encoder_spec"):
        model = model.to(device)
    return model, tokenizer, manifest


def load_head(folder: Path, manifest: dict[str, Any]) -> nn.Module:
    """The task head of a saved model folder (its manifest already read and verified)."""
    h = manifest["head"]
    try:
        head = build_head(h["kind"], h["dim"], h["num_labels"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelFolderError(f"{folder / 'manifest.json'}: bad 'head' {h!r} ({exc})") from None
    load_weights(head, folder / "head.safetensors")
    return head
