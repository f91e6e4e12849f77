"""`AladConfig`: an aligned model's transformers config (model_type "alad").

    python -c "import alad, transformers; print(transformers.AutoConfig.from_pretrained('hf-ner'))"

What `alad export MODEL --format hf` writes into config.json: the encoder's own config nested
under `encoder` (a dict with its `model_type`: BERT, MPNet, ...), the AlAd shape under `adapter`
(None: a mode without AlAd), the head, `id2label` / `label2id`, and alad's task with the decoding
settings it was trained with. The model classes are in alad/hf.py; both are registered with the
Auto classes when transformers' auto modules load after `import alad` (alad/__init__.py).
Importing this module loads transformers' config code only (no modeling code).
"""

from __future__ import annotations

from typing import Any

from transformers.configuration_utils import PreTrainedConfig, SubConfigSpec
from transformers.models.auto.configuration_auto import AutoConfig

MODEL_TYPE = "alad"


class AladConfig(PreTrainedConfig):
    """encoder -> [AlignmentAdapter] -> head, as a transformers config."""

    model_type = MODEL_TYPE
    sub_configs_defaults = {"encoder": SubConfigSpec(config_class=AutoConfig, model_type="bert")}

    encoder: PreTrainedConfig | dict | None = None
    # AlignmentAdapter.describe(): d_compressed, d_large, window, hidden; None = no AlAd
    adapter: dict | None = None
    head_dim: int | None = None  # the width the head reads: D_L with AlAd, else the encoder's
    task: str = "ner"  # alad's task (alad/tasks.py TASKS)
    mode: str | None = None  # alad's mode the model was trained in (alad/modes.py)
    # alad's encoding/decoding settings (tokens per window; QA windows and span decoding)
    max_length: int = 128
    stride: int = 128
    n_best: int = 20
    max_answer_length: int = 30
    null_threshold: float = 0.0

    def head_width(self) -> int:
        if self.head_dim is not None:
            return int(self.head_dim)
        if self.adapter:
            return int(self.adapter["d_large"])
        return int(self.encoder.hidden_size)


def register_config() -> None:
    """AutoConfig knows "alad" (idempotent)."""
    AutoConfig.register(MODEL_TYPE, AladConfig, exist_ok=True)


def alad_settings(manifest: dict[str, Any]) -> dict[str, Any]:
    """The AladConfig fields a saved model folder's manifest.json gives."""
    keys = ("task", "mode", "max_length", "stride", "n_best", "max_answer_length")
    out = {k: manifest[k] for k in keys if manifest.get(k) is not None}
    out["null_threshold"] = float(manifest.get("null_threshold") or 0.0)
    return out
