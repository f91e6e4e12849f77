"""An aligned model as a transformers citizen: `AladForTokenClassification`,
`AladForQuestionAnswering` (encoder -> AlignmentAdapter -> head; config in alad/hf_config.py).

    alad export runs/ner-alad-joint/model --format hf --out hf-ner
    python -c "import alad, transformers; p = transformers.pipeline('token-classification',
               model='hf-ner', aggregation_strategy='first', ignore_labels=[]); print(p('...'))"

`import alad` registers them with AutoConfig / AutoModelForTokenClassification /
AutoModelForQuestionAnswering (alad/__init__.py), so `from_pretrained`, `save_pretrained`,
`push_to_hub` and `transformers.pipeline` take the folder without `trust_remote_code`. The
modules are named as in alad's own model (`encoder`, `adapter`, `head`), so the weights are the
saved model folder's, renamed by a prefix.

Token type ids are accepted and ignored: alad trains and predicts with token type 0 everywhere
(AlignedModel passes none), so a question/context pair's type ids would show the encoder inputs
it never saw. The exported tokenizer does not return them (`model_input_names`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from transformers import (
    AutoModel,
    AutoModelForQuestionAnswering,
    AutoModelForTokenClassification,
    PreTrainedModel,
)
from transformers.modeling_outputs import QuestionAnsweringModelOutput, TokenClassifierOutput

from alad.adapter import AlignmentAdapter
from alad.heads import build_head
from alad.hf_config import AladConfig, alad_settings, register_config

if TYPE_CHECKING:  # registering the classes (alad/__init__.py) loads no saved-model code
    from alad.aligned_model import AlignedModel


class AladPreTrainedModel(PreTrainedModel):
    config_class = AladConfig
    base_model_prefix = "alad"
    main_input_name = "input_ids"
    head_kind = ""  # "token" | "span" (alad/heads.py): set by each model class

    def __init__(self, config: AladConfig):
        super().__init__(config)
        try:  # no pooler: AlAd and the heads read token embeddings (alad.models.catalog)
            self.encoder = AutoModel.from_config(config.encoder, add_pooling_layer=False)
        except TypeError:
            self.encoder = AutoModel.from_config(config.encoder)
        self.adapter = AlignmentAdapter(**config.adapter) if config.adapter else None
        self.head = build_head(self.head_kind, config.head_width(), config.num_labels)
        self.post_init()  # the subclasses add no modules of their own

    def head_logits(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None
    ) -> torch.Tensor:
        """What AlignedModel.forward computes: [B, T, num_labels] (span: start, end)."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if self.adapter is not None:
            hidden = self.adapter(hidden, attention_mask)
        return self.head(hidden)


class AladForTokenClassification(AladPreTrainedModel):
    """POS / NER tags per token; a word's tag is its first sub-token's (alad's rule)."""

    head_kind = "token"

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,  # ignored: module docstring
        labels: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> TokenClassifierOutput:
        logits = self.head_logits(input_ids, attention_mask)
        loss = None
        if labels is not None:  # -100: not a first sub-token (alad/data/tagging.py)
            loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
        return TokenClassifierOutput(loss=loss, logits=logits)


class AladForQuestionAnswering(AladPreTrainedModel):
    """Start / end logits per token for extractive QA; index 0 ([CLS]) is "no answer"."""

    head_kind = "span"

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,  # ignored: module docstring
        start_positions: torch.Tensor | None = None,
        end_positions: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> QuestionAnsweringModelOutput:
        logits = self.head_logits(input_ids, attention_mask)
        start, end = logits[..., 0].contiguous(), logits[..., 1].contiguous()
        loss = None
        if start_positions is not None and end_positions is not None:
            loss = (
                F.cross_entropy(start, start_positions) + F.cross_entropy(end, end_positions)
            ) / 2
        return QuestionAnsweringModelOutput(loss=loss, start_logits=start, end_logits=end)


CLASSES: dict[str, type[AladPreTrainedModel]] = {
    "token": AladForTokenClassification,
    "span": AladForQuestionAnswering,
}


def register_models() -> None:
    """The Auto classes know AladConfig and its two models (idempotent)."""
    register_config()
    AutoModelForTokenClassification.register(AladConfig, AladForTokenClassification, exist_ok=True)
    AutoModelForQuestionAnswering.register(AladConfig, AladForQuestionAnswering, exist_ok=True)


def to_hf(model: AlignedModel, manifest: dict[str, Any]) -> AladPreTrainedModel:
    """The transformers model holding `model`'s weights (a loaded model folder, alad's
    aligned_model.load_model), in eval mode."""
    kind = manifest["head"]["kind"]
    labels = list(manifest["labels"]) if kind == "token" else []
    config = AladConfig(
        encoder=model.encoder.config.to_dict(),
        adapter=model.adapter.describe() if model.adapter is not None else None,
        head_dim=int(manifest["head"]["dim"]),
        id2label=dict(enumerate(labels)) if labels else None,
        label2id={lab: i for i, lab in enumerate(labels)} if labels else None,
        num_labels=int(manifest["head"]["num_labels"]),
        **alad_settings(manifest),
    )
    hf = CLASSES[kind](config)
    state = {f"encoder.{k}": v for k, v in model.encoder.state_dict().items()}
    if model.adapter is not None:
        state.update({f"adapter.{k}": v for k, v in model.adapter.state_dict().items()})
    state.update({f"head.{k}": v for k, v in model.head.state_dict().items()})
    hf.load_state_dict(state, strict=True)
    return hf.eval()


def pipeline_word_tags(pipe: Any, text: str) -> list[tuple[str, str | None]]:
    """Word tags from a `transformers.pipeline("token-classification")` of an exported model, as
    `alad predict` tags words: the words are the tokenizer's pre-tokenizer's, each word's tag is
    its first token's (aggregation "none", no label ignored). A word the pipeline returns no
    token for gets None: a word past `model_max_length` tokens (the pipeline truncates, alad
    windows) or one the tokenizer drops (README "Deploying")."""
    words = pipe.tokenizer.backend_tokenizer.pre_tokenizer.pre_tokenize_str(text)
    first: dict[int, str] = {}
    for token in pipe(text, aggregation_strategy="none", ignore_labels=[]):
        first.setdefault(token["start"], token["entity"])
    return [(word, first.get(start)) for word, (start, _) in words]
