"""The examples of the tasks, as plain records: a tagged sentence (POS, NER), a QA example.

    python -c "from alad.data.records import QAExample; print(QAExample('q1', 'Who?', 'The king.'))"

Standard library only: the torch-free ONNX predictor (alad/onnx_predict.py) builds them.
alad/data/readers.py reads and writes them in the tasks' file formats.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class TaggedSentence:
    words: tuple[str, ...]
    tags: tuple[str, ...]

    @property
    def text(self) -> str:
        return " ".join(self.words)


@dataclass(frozen=True)
class QAExample:
    id: str
    question: str
    context: str
    answers: tuple[tuple[str, int], ...] = field(
        default=()
    )  # (text, char start); () = unanswerable
    title: str = ""  # the article: questions of one article share contexts (split by it)

    @property
    def is_impossible(self) -> bool:
        return not self.answers
