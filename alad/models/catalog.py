"""Model catalog: a name resolves to a loaded encoder (model + tokenizer), offline by default.

    alad models list
    alad models info minilm-l6

A name is one of: a packaged offline model (PACKAGED: `mpnet-base`, `minilm-l6`, `minilm-l3`),
a local folder holding a Hugging Face model, or a hub id (`bert-base-uncased`,
`prajjwal1/bert-tiny`; needs internet unless already in the HF cache). Any of these may carry
compression suffixes: `mpnet-base:prune4`, `minilm-l6:int8` (see `alad.models.compress`).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch
from transformers import AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers import logging as hf_logging

from alad.models.compress import apply_ops, parameter_count, size_bytes, split_spec
from alad.models.packaged import PACKAGED, ModelUnavailable

log = logging.getLogger(__name__)

# Relative cost of one training token by encoder (minilm-l6 = 1), measured on a 2-core CPU
# (README "Costs"). Orders sweep cells and seeds their ETA before any cell is timed.
TRAINING_COST = {"minilm-l3": 0.5, "minilm-l6": 1.0, "mpnet-base:prune4": 2.7, "mpnet-base": 8.0}


def training_cost(spec: str) -> float:
    """`spec`'s relative training cost; a model never measured counts as mpnet-base."""
    return TRAINING_COST.get(spec, TRAINING_COST["mpnet-base"])


@dataclass(eq=False)
class Encoder:
    """A frozen-able transformer encoder and its tokenizer, under the name it was asked by."""

    name: str
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    source: str

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def num_layers(self) -> int:
        return int(self.model.config.num_hidden_layers)

    @cached_property
    def num_parameters(self) -> int:
        return parameter_count(self.model)

    @cached_property
    def size_bytes(self) -> int:
        return size_bytes(self.model)

    @cached_property
    def fingerprint(self) -> str:
        """Content hash of the weights and the name: keys the frozen-output cache."""
        h = hashlib.sha256(self.name.encode())
        for key, value in sorted(self.model.state_dict().items()):
            h.update(key.encode())
            _hash_value(h, value)
        return h.hexdigest()[:16]

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def embed(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, layer: int | None = None
    ) -> torch.Tensor:
        """Token embeddings [B, T, D] on the model's device: the last layer's (the R of
        METHOD.md), or with `layer` the hidden state of that index (0 = the embeddings' output,
        1..num_layers = after each transformer layer; `hidden_states` of Hugging Face)."""
        device = self.device
        out = self.model(
            input_ids=input_ids.to(device),
            attention_mask=attention_mask.to(device),
            output_hidden_states=layer is not None,
        )
        return out.last_hidden_state if layer is None else out.hidden_states[layer]


def _hash_value(h: hashlib._Hash, value: object) -> None:
    """Tensors, quantized tensors and the (weight, bias) tuples of packed int8 Linears."""
    if isinstance(value, tuple | list):
        for item in value:
            _hash_value(h, item)
    elif isinstance(value, torch.Tensor):
        t = value.detach()
        if t.is_quantized:  # int8 values + the scale that gives them meaning
            scheme = t.qscheme()
            scales = (
                t.q_per_channel_scales()
                if scheme in (torch.per_channel_affine, torch.per_channel_symmetric)
                else torch.tensor([t.q_scale()])
            )
            _hash_value(h, scales)
            t = t.int_repr()
        h.update(t.cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())


def known_models() -> dict[str, str]:
    return {name: desc for name, (_, desc) in PACKAGED.items()}


def resolve(name: str) -> str:
    """Packaged name -> prepared local folder; local folder -> itself; else a hub id."""
    if name in PACKAGED:
        preparer, _ = PACKAGED[name]
        return str(preparer(None))
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelUnavailable(f"{path}: folder has no config.json; not a Hugging Face model")
        return str(path)
    return name  # a hub id: transformers downloads it, or finds it in the HF cache offline


def load_hf_encoder(source: str) -> PreTrainedModel:
    # No pooler: AlAd works on token embeddings, and a pooler the checkpoint lacks would be
    # randomly initialised and counted as parameters.
    try:
        return AutoModel.from_pretrained(source, add_pooling_layer=False)
    except TypeError:
        return AutoModel.from_pretrained(source)


def load_encoder(spec: str) -> Encoder:
    """Load `spec` (name plus optional compression suffixes) in eval mode on the CPU."""
    base, ops = split_spec(spec)
    source = resolve(base)
    # The pooler we drop on purpose shows up as an "UNEXPECTED keys" report; keep logs quiet.
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = load_hf_encoder(source)
    except OSError as exc:
        raise ModelUnavailable(
            f"unknown or unreachable model {base!r}: not a packaged model "
            f"({', '.join(PACKAGED)}), not a local folder, and the hub could not provide it "
            f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]})"
        ) from exc
    model = apply_ops(model.eval(), ops).eval()
    log.info(
        "loaded %s from %s (%d layers, %d-d)",
        spec,
        source,
        model.config.num_hidden_layers,
        model.config.hidden_size,
    )
    return Encoder(name=spec, model=model, tokenizer=tokenizer, source=source)


def hidden_size(spec: str) -> int:
    """The width D of `spec`'s token embeddings, from its config (no weights are read)."""
    from transformers import AutoConfig

    source = resolve(split_spec(spec)[0])
    try:
        return int(AutoConfig.from_pretrained(source).hidden_size)
    except OSError as exc:
        raise ModelUnavailable(f"cannot read the config of model {spec!r} ({exc})") from exc


def count_parameters(spec: str) -> int:
    """Parameters of `spec` as `Encoder.num_parameters` counts them, without reading weights:
    the architecture is built on the meta device from its config. For the size % column,
    which needs M_L's parameter count but not M_L itself."""
    from transformers import AutoConfig

    base, ops = split_spec(spec)
    source = resolve(base)
    try:
        config = AutoConfig.from_pretrained(source)
    except OSError as exc:
        raise ModelUnavailable(f"cannot read the config of model {base!r} ({exc})") from exc
    with torch.device("meta"):
        try:
            model = AutoModel.from_config(config, add_pooling_layer=False)
        except TypeError:
            model = AutoModel.from_config(config)
    # int8 leaves the count as it is (packed weights count as the float ones did) and cannot
    # quantize meta tensors: only the ops that change the architecture are applied.
    return parameter_count(apply_ops(model, [op for op in ops if op != "int8"]))


def size_report(compressed: Encoder, large: Encoder, extra_params: int = 0) -> dict[str, float]:
    """Parameters and size as % of the large model (the paper's "size %" column)."""
    params = compressed.num_parameters + extra_params
    return {
        "compressed_params": params,
        "large_params": large.num_parameters,
        "size_pct_params": 100.0 * params / large.num_parameters,
        "compressed_mb": compressed.size_bytes / 2**20,
        "large_mb": large.size_bytes / 2**20,
    }
