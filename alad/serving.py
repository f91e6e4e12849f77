"""The registered model as an MLflow pyfunc: raw text in, word tags or answers out.

    mlflow models serve -m "models:/alad-ner-minilm-l6@champion" --env-manager local
    python -c "import mlflow; m = mlflow.pyfunc.load_model('models:/alad-ner-minilm-l6@champion');
               print(m.predict({'text': ['The king of the city was born in 1990 .']}))"

POS/NER models take a column `text` (one raw sentence per row) and return, per row, a list of
{"word", "tag"}; QA models take `question` and `context` and return one answer per row, "" for
no answer. The saved model folder (alad/model.py) travels as the artifact "model" and the alad
package as code, so loading needs neither the training run nor alad installed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow.pyfunc
import pandas as pd

COLUMNS = {"token": ("text",), "span": ("question", "context")}


class AladPyfunc(mlflow.pyfunc.PythonModel):
    """Wraps alad.predict.Predictor; loaded once per process by MLflow."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        from alad.predict import Predictor  # torch/transformers load here, not at unpickling

        self.predictor = Predictor(Path(context.artifacts["model"]))

    # pd.DataFrame is a hint MLflow 3 infers no schema from: the schema comes from the logged
    # input example, and MLflow turns dicts/lists into a DataFrame before calling this.
    def predict(
        self,
        context: mlflow.pyfunc.PythonModelContext,
        model_input: pd.DataFrame,
        params: dict[str, Any] | None = None,
    ) -> list:
        return predict_frame(self.predictor, as_frame(model_input))


def as_frame(model_input: Any) -> pd.DataFrame:
    """DataFrame as is; {"col": [...]} or {"col": value}; a list of row dicts or of sentences."""
    if isinstance(model_input, pd.DataFrame):
        return model_input
    if isinstance(model_input, dict):
        scalar = not any(isinstance(v, list | tuple) for v in model_input.values())
        return pd.DataFrame([model_input] if scalar else model_input)
    if isinstance(model_input, list | tuple):
        if all(isinstance(x, str) for x in model_input):
            return pd.DataFrame({"text": list(model_input)})
        return pd.DataFrame(list(model_input))
    raise ValueError(
        f"model input of type {type(model_input).__name__}: expected a pandas DataFrame, a dict "
        "of columns or a list of rows"
    )


def predict_frame(predictor: Any, frame: pd.DataFrame) -> list:
    kind = predictor.task.head_kind
    expected = COLUMNS[kind]
    missing = [c for c in expected if c not in frame.columns]
    if missing:
        raise ValueError(
            f"input has no column {missing[0]!r}: a {predictor.manifest['task']} model expects "
            f"columns {list(expected)}, got {list(frame.columns)}"
        )
    if kind == "token":
        tagged = predictor.tag([str(t) for t in frame["text"]])
        return [[{"word": w, "tag": t} for w, t in sentence] for sentence in tagged]
    pairs = [(str(q), str(c)) for q, c in zip(frame["question"], frame["context"], strict=True)]
    return predictor.answer(pairs)
