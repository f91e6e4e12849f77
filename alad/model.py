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

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from alad.adapter import AlignmentAdapter
from alad.atomic import replace_dir
from alad.config import Phase3Config
from alad.errors import AladError
from alad.heads import build_head

FORMAT = "alad-model/1"


class AlignedModel(nn.Module):
    """encoder -> [AlignmentAdapter] -> head. Works on token ids, returns head logits."""

    def __init__(
        self, encoder: PreTrainedModel, head: nn.Module, adapter: AlignmentAdapter | None = None
    ):
        super().__init__()
        self.encoder, self.adapter, self.head = encoder, adapter, head

    def train(self, mode: bool = True) -> AlignedModel:
        # A frozen encoder is a fixed feature extractor: no dropout inside it while training.
        super().train(mode)
        if mode and not any(p.requires_grad for p in self.encoder.parameters()):
            self.encoder.eval()
        return self

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        trains_encoder = self.training and any(p.requires_grad for p in self.encoder.parameters())
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
    """Write the folder under a temporary name, then rename it over `out`."""
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        encoder = model.encoder
        if hasattr(encoder, "merge_and_unload"):  # LoRA: ship plain weights, no peft at inference
            encoder = encoder.merge_and_unload()
        if manifest.get("encoder_spec") is None:
            encoder.save_pretrained(tmp / "encoder")
        tokenizer.save_pretrained(tmp / "encoder")
        if model.adapter is not None:
            save_file(
                {k: v.contiguous() for k, v in model.adapter.state_dict().items()},
                tmp / "adapter.safetensors",
            )
        save_file(
            {k: v.contiguous() for k, v in model.head.state_dict().items()},
            tmp / "head.safetensors",
        )
        full = {
            "format": FORMAT,
            "head": model.head.config(),
            "adapter": model.adapter.describe() if model.adapter else None,
            **manifest,
        }
        (tmp / "manifest.json").write_text(json.dumps(full, indent=2, default=str))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return replace_dir(tmp, out)


def read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / "manifest.json"
    if not path.is_file():
        raise ModelFolderError(f"{folder}: not an alad model folder (no manifest.json)")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT:
        raise ModelFolderError(f"{path}: format {manifest.get('format')!r}, expected {FORMAT}")
    return manifest


def phase3_config(manifest: dict[str, Any]) -> Phase3Config:
    """The encoding/decoding settings a saved model was trained with."""
    keys = ("task", "max_length", "stride", "n_best", "max_answer_length", "null_threshold")
    return Phase3Config(**{k: manifest[k] for k in keys})


def load_model(folder: Path) -> tuple[AlignedModel, PreTrainedTokenizerBase, dict[str, Any]]:
    """Load a saved model in eval mode; needs only this folder (or the catalog for int8)."""
    from alad.models.catalog import load_encoder, load_hf_encoder

    manifest = read_manifest(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder / "encoder")
    if manifest.get("encoder_spec"):
        encoder = load_encoder(manifest["encoder_spec"]).model
    else:
        encoder = load_hf_encoder(str(folder / "encoder"))
    adapter = None
    if manifest.get("adapter"):
        a = manifest["adapter"]
        adapter = AlignmentAdapter(a["d_compressed"], a["d_large"], a["window"], a["hidden"])
        adapter.load_state_dict(load_file(folder / "adapter.safetensors"))
    h = manifest["head"]
    head = build_head(h["kind"], h["dim"], h["num_labels"])
    head.load_state_dict(load_file(folder / "head.safetensors"))
    return AlignedModel(encoder, head, adapter).eval(), tokenizer, manifest
