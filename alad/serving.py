"""The registered model as an MLflow pyfunc: raw text in, word tags or answers out.

    mlflow models serve -m "models:/alad-ner-minilm-l6@champion" --env-manager local
    python -c "import mlflow; m = mlflow.pyfunc.load_model('models:/alad-ner-minilm-l6@champion');
               print(m.predict({'text': ['The king of the city was born in 1990 .']}))"

POS/NER models take a column `text` (one raw sentence per row) and return, per row, a list of
{"word", "tag"}; QA models take `question` and `context` and return one answer per row, "" for
no answer. An empty (or missing) text gets an empty tag list; a malformed request is an
MlflowException (served: HTTP 400 with the message). The saved model folder (alad/model.py)
travels as the artifact "model" and the alad package as code, so loading needs neither the
training run nor alad installed. Loading a pyfunc unpickles it and runs that code: by MLflow's
design, a registered model is trusted code (README, "Reliability and trust model").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow.pyfunc
import pandas as pd

from alad.errors import UsageError

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
        # A bad request is the caller's mistake: MlflowException with INVALID_PARAMETER_VALUE is
        # what `mlflow models serve` answers with a 400 and the message, without a stack trace.
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

        from alad.errors import AladError

        try:
            return predict_frame(self.predictor, as_frame(model_input))
        except AladError as exc:
            raise MlflowException(str(exc), error_code=INVALID_PARAMETER_VALUE) from None


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
    raise UsageError(
        f"model input of type {type(model_input).__name__}: expected a pandas DataFrame, a dict "
        "of columns or a list of rows"
    )


def _text(value: Any) -> str:
    """A cell as text; a missing value (None, NaN) is the empty text."""
    return (
        value if isinstance(value, str) else "" if value is None or pd.isna(value) else str(value)
    )


def predict_frame(predictor: Any, frame: pd.DataFrame) -> list:
    kind = predictor.task.head_kind
    expected = COLUMNS[kind]
    missing = [c for c in expected if c not in frame.columns]
    if missing:
        raise UsageError(
            f"input has no column {missing[0]!r}: a {predictor.manifest['task']} model expects "
            f"columns {list(expected)}, got {list(frame.columns)}"
        )
    if kind == "token":  # an empty text has no words: its tag list is empty
        tagged = predictor.tag([_text(t) for t in frame["text"]])
        return [[{"word": w, "tag": t} for w, t in sentence] for sentence in tagged]
    pairs = [(_text(q), _text(c)) for q, c in zip(frame["question"], frame["context"], strict=True)]
    return predictor.answer(pairs)
