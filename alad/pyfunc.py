"""The registered model as an MLflow pyfunc: raw text in, word tags or answers out.

    mlflow models serve -m "models:/alad-ner-minilm-l6@champion" --env-manager local
    python -c "import mlflow; m = mlflow.pyfunc.load_model('models:/alad-ner-minilm-l6@champion');
               print(m.predict({'text': ['The king of the city was born in 1990 .']}))"

POS/NER models take a column `text` (one raw sentence per row) and return, per row, a list of
{"word", "tag"}; QA models take `question` and `context` and return one answer per row, "" for
no answer. Any text is taken (control characters, NUL, zero-width, RTL, emoji: alad/predict.py);
an empty (or missing) text gets an empty tag list; a malformed request is an
MlflowException (served: HTTP 400 with the message). The saved model folder (alad/aligned_model.py)
travels as the artifact "model" and the alad package as code, so loading needs neither the
training run nor alad installed. Loading a pyfunc unpickles it and runs that code: by MLflow's
design, a registered model is trusted code (README, "Reliability and trust model").
"""

from __future__ import annotations

import importlib.metadata
import shutil
import tempfile
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import pandas as pd
from mlflow.entities import LoggedModel

from alad.errors import UsageError
from alad.tracking import flavor_metadata, logged_model

COLUMNS = {"token": ("text",), "span": ("question", "context")}


class AladPyfunc(mlflow.pyfunc.PythonModel):
    """Wraps alad.predict.Predictor; loaded once per process by MLflow."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        import os

        from alad.predict import Predictor  # torch/transformers load here, not at unpickling
        from alad.runtime import Runtime, resolve_device

        # Where it is served: ALAD_RUNTIME__DEVICE (as in the config), else a visible GPU
        device = resolve_device(os.environ.get("ALAD_RUNTIME__DEVICE", "auto"))
        self.predictor = Predictor(Path(context.artifacts["model"]), Runtime(device))

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
    """A cell as text: a string as it is (alad.predict takes any), bytes as UTF-8 (a bad byte
    becomes U+FFFD), a missing value (None, NaN) as the empty text, anything else as str()."""
    if isinstance(value, str):
        return value
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", errors="replace")
    return "" if value is None or pd.isna(value) else str(value)


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


# What the pyfunc needs at load time, pinned to what trained it (alad itself ships as code).
SERVING_PACKAGES = (
    "torch",
    "transformers",
    "tokenizers",
    "safetensors",
    "numpy",
    "pandas",
    "peft",
    "pydantic",
    "pydantic-settings",
    "pyyaml",
    "seqeval",
    "tqdm",
    "mlflow",
)


def pip_requirements() -> list[str]:
    """Exact versions of what the pyfunc imports, as installed here."""
    return [f"{p}=={importlib.metadata.version(p)}" for p in SERVING_PACKAGES]


def log_pyfunc(
    client: Any, experiment_id: str, run_id: str, model_dir: Path, task: str
) -> LoggedModel:
    """Save `model_dir` as an alad.pyfunc.AladPyfunc, log it as a LoggedModel of the run."""
    import mlflow.pyfunc
    import pandas as pd

    import alad
    from alad.aligned_model import read_manifest
    from alad.tasks import TASKS

    read_manifest(model_dir)  # fail before logging anything if it is not a model folder
    with (
        logged_model(client, experiment_id, run_id, "alad") as logged,
        tempfile.TemporaryDirectory() as tmp,
    ):
        # alad ships as code: copy it without bytecode caches, which are not portable.
        code = Path(tmp) / "code" / "alad"
        shutil.copytree(
            Path(alad.__file__).parent, code, ignore=shutil.ignore_patterns("__pycache__")
        )
        local = Path(tmp) / "model"
        mlflow.pyfunc.save_model(
            path=str(local),
            python_model=AladPyfunc(),
            artifacts={"model": str(model_dir)},
            code_paths=[str(code)],
            pip_requirements=pip_requirements(),
            # A DataFrame, not a dict of lists: MLflow reads {"text": [...]} as one
            # row holding an array, and would then reject a column of plain strings.
            input_example=pd.DataFrame(TASKS[task].input_example),
            mlflow_model=flavor_metadata(logged, run_id),
        )
        client.log_model_artifacts(logged.model_id, str(local))
    return logged
