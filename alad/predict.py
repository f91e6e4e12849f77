"""Use a saved model on raw text: tags per word (POS/NER) or an answer / no answer (QA).

alad predict runs/ner-alad-frozen/model "Empire State Building = ESB ."
alad predict runs/qa-alad-joint/model --question "Who?" --context "..."
"""

from __future__ import annotations

from pathlib import Path

from alad.data.readers import QAExample, TaggedSentence
from alad.model import load_model, phase3_config
from alad.phases.finetune import predict_outputs
from alad.tasks import TASKS


class Predictor:
    """Loads a saved model folder once; answers many calls."""

    def __init__(self, folder: Path):
        self.model, self.tokenizer, self.manifest = load_model(Path(folder))
        self.task = TASKS[self.manifest["task"]]
        self.cfg = phase3_config(self.manifest)

    def words(self, text: str) -> list[str]:
        """Split raw text into words the way the tokenizer's pre-tokenizer does."""
        return [w for w, _ in self.tokenizer.backend_tokenizer.pre_tokenizer.pre_tokenize_str(text)]

    def tag(self, texts: list[str]) -> list[list[tuple[str, str]]]:
        if self.task.head_kind != "token":
            raise ValueError(
                f"this model answers questions ({self.manifest['task']}); use answer()"
            )
        labels = self.manifest["labels"]
        sentences = [TaggedSentence(tuple(self.words(t)), ()) for t in texts]
        placeholder = [TaggedSentence(s.words, (labels[0],) * len(s.words)) for s in sentences]
        feats = self.task.encode(self.tokenizer, placeholder, labels, self.cfg, False)
        outputs = predict_outputs(
            self.model, self.task, feats, 32, self.tokenizer.pad_token_id or 0
        )
        tags = self.task.decode(placeholder, feats, outputs, labels, self.cfg)
        return [list(zip(s.words, t, strict=True)) for s, t in zip(sentences, tags, strict=True)]

    def answer(self, pairs: list[tuple[str, str]]) -> list[str]:
        """(question, context) pairs -> answer text, or "" for no answer."""
        if self.task.head_kind != "span":
            raise ValueError(f"this model tags words ({self.manifest['task']}); use tag()")
        examples = [QAExample(str(i), q, c) for i, (q, c) in enumerate(pairs)]
        feats = self.task.encode(self.tokenizer, examples, [], self.cfg, False)
        outputs = predict_outputs(
            self.model, self.task, feats, 32, self.tokenizer.pad_token_id or 0
        )
        preds = self.task.decode(examples, feats, outputs, [], self.cfg)
        return [preds[e.id] for e in examples]
