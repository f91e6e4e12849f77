"""Use a saved model on raw text: tags per word (POS/NER) or an answer / no answer (QA).

alad predict runs/ner-alad-frozen/model "Empire State Building = ESB ."
alad predict runs/qa-alad-joint/model --question "Who?" --context "..."

Which text is taken and how (any Unicode; lone surrogates become U+FFFD; a text without words
gets no tags): alad/text_predictor.py, shared with the torch-free ONNX predictor
(alad/onnx_predict.py).
"""

from __future__ import annotations

from pathlib import Path

from alad.aligned_model import load_model, phase3_config
from alad.data.readers import QAExample, TaggedSentence
from alad.inference import predict_outputs
from alad.runtime import CPU, Runtime
from alad.tasks import TASKS
from alad.text_predictor import TextPredictor


class Predictor(TextPredictor):
    """Loads a saved model folder once; answers many calls (`tag`, `answer`)."""

    def __init__(self, folder: Path, runtime: Runtime = CPU):
        self.folder, self.runtime = Path(folder), runtime
        self.model, self.tokenizer, self.manifest = load_model(self.folder, runtime.device)
        self.task = TASKS[self.manifest["task"]]
        self.task_name, self.head_kind = self.task.name, self.task.head_kind
        self.pre_tokenizer = self.tokenizer.backend_tokenizer.pre_tokenizer
        self.cfg = phase3_config(self.manifest)

    def _outputs(self, feats):
        pad = self.tokenizer.pad_token_id or 0
        return predict_outputs(self.model, self.task, feats, 32, pad, self.runtime)

    def tag_words(self, words: list[tuple[str, ...]]) -> list[list[str]]:
        labels = self.manifest["labels"]
        # placeholder tags: encoding marks the first sub-token of each word with a label id
        sentences = [TaggedSentence(w, (labels[0],) * len(w)) for w in words]
        feats = self.task.encode(self.tokenizer, sentences, labels, self.cfg, False)
        return self.task.decode(sentences, feats, self._outputs(feats), labels, self.cfg)

    def answer_examples(self, examples: list[QAExample]) -> dict[str, str]:
        feats = self.task.encode(self.tokenizer, examples, [], self.cfg, False)
        return self.task.decode(examples, feats, self._outputs(feats), [], self.cfg)
