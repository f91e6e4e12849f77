"""Use a saved model on raw text: tags per word (POS/NER) or an answer / no answer (QA).

alad predict runs/ner-alad-frozen/model "Empire State Building = ESB ."
alad predict runs/qa-alad-joint/model --question "Who?" --context "..."

Text is any Unicode string. Control characters, NUL, zero-width and right-to-left characters,
lone combining accents and emoji are kept and tagged as words (one the tokenizer drops entirely
is read as its unknown token: alad/data/tagging.py); a lone surrogate, which is what bytes that
are not UTF-8 become in Python (argv, stdin, a "\\ud800" escape in JSON), is replaced by U+FFFD.
A text without words (empty, only spaces) gets no tags; a question or a context without words
gets no answer.
"""

from __future__ import annotations

import re
from pathlib import Path

from alad.aligned_model import load_model, phase3_config
from alad.data.readers import QAExample, TaggedSentence
from alad.errors import UsageError
from alad.inference import predict_outputs
from alad.runtime import CPU, Runtime
from alad.tasks import TASKS

_SURROGATE = re.compile("[\ud800-\udfff]")


def as_text(text: str) -> str:
    """`text` with every lone surrogate replaced by U+FFFD (module docstring): the tokenizer
    (Rust, UTF-8) cannot take one. Everything else is kept as it is."""
    return _SURROGATE.sub("\ufffd", text)


class Predictor:
    """Loads a saved model folder once; answers many calls."""

    def __init__(self, folder: Path, runtime: Runtime = CPU):
        self.folder, self.runtime = Path(folder), runtime
        self.model, self.tokenizer, self.manifest = load_model(self.folder, runtime.device)
        self.task = TASKS[self.manifest["task"]]
        self.cfg = phase3_config(self.manifest)

    def words(self, text: str) -> list[str]:
        """Split raw text into words the way the tokenizer's pre-tokenizer does."""
        return [w for w, _ in self.tokenizer.backend_tokenizer.pre_tokenizer.pre_tokenize_str(text)]

    def tag(self, texts: list[str]) -> list[list[tuple[str, str]]]:
        """Words and their tags per text; a text without words (empty) gets an empty list."""
        if self.task.head_kind != "token":
            raise UsageError(
                f"{self.folder} is a {self.manifest['task']} model: it answers questions "
                "(alad predict MODEL --question Q --context C), it does not tag text"
            )
        words = [tuple(self.words(as_text(t))) for t in texts]
        nonempty = [i for i, w in enumerate(words) if w]
        tagged = self._tag([words[i] for i in nonempty]) if nonempty else []
        out: list[list[tuple[str, str]]] = [[] for _ in texts]
        for i, sentence in zip(nonempty, tagged, strict=True):
            out[i] = sentence
        return out

    def _tag(self, words: list[tuple[str, ...]]) -> list[list[tuple[str, str]]]:
        labels = self.manifest["labels"]
        sentences = [TaggedSentence(w, ()) for w in words]
        placeholder = [TaggedSentence(s.words, (labels[0],) * len(s.words)) for s in sentences]
        feats = self.task.encode(self.tokenizer, placeholder, labels, self.cfg, False)
        outputs = predict_outputs(
            self.model, self.task, feats, 32, self.tokenizer.pad_token_id or 0, self.runtime
        )
        tags = self.task.decode(placeholder, feats, outputs, labels, self.cfg)
        return [list(zip(s.words, t, strict=True)) for s, t in zip(sentences, tags, strict=True)]

    def answer(self, pairs: list[tuple[str, str]]) -> list[str]:
        """(question, context) pairs -> answer text, or "" for no answer (also when the question
        or the context has no words)."""
        if self.task.head_kind != "span":
            raise UsageError(
                f"{self.folder} is a {self.manifest['task']} model: it tags the words of text "
                '(alad predict MODEL "a sentence"), it does not answer questions'
            )
        clean = [(as_text(q), as_text(c)) for q, c in pairs]
        asked = [i for i, (q, c) in enumerate(clean) if q.strip() and c.strip()]
        answers = [""] * len(pairs)  # nothing asked, or nothing to read: no answer
        if not asked:
            return answers
        examples = [QAExample(str(i), *clean[i]) for i in asked]
        feats = self.task.encode(self.tokenizer, examples, [], self.cfg, False)
        outputs = predict_outputs(
            self.model, self.task, feats, 32, self.tokenizer.pad_token_id or 0, self.runtime
        )
        preds = self.task.decode(examples, feats, outputs, [], self.cfg)
        for i, e in zip(asked, examples, strict=True):
            answers[i] = preds[e.id]
        return answers
