"""The MLflow store as a source of files: where it is, and downloading a registered version.

    alad finetune --init models:/alad-adapter-minilm-l6-to-mpnet-base-n5@champion-phase2-pos ...
    alad align phase2 --set phase2.teacher=models:/alad-pos-mpnet-base@champion ...

Below the phases on purpose: a phase that is given `models:/...` (an adapter to start from, a
teacher to align to) downloads it itself, so every door (CLI, DVC stages, Prefect, the sweep, a
test calling the phase) accepts the same URIs. Registering, gating and promoting stay in
alad/registry.py; runs in alad/tracking.py.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from alad.errors import RegistryError
from alad.models.packaged import cache_home

LOCAL_STORE = Path("mlflow")
REGISTRY_URI = ("models:/", "runs:/")


def tracking_uri() -> str:
    """$MLFLOW_TRACKING_URI, else the SQLite store ./mlflow/mlflow.db (folder created)."""
    if uri := os.environ.get("MLFLOW_TRACKING_URI"):
        return uri
    LOCAL_STORE.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(LOCAL_STORE / 'mlflow.db').resolve()}"


def is_registry_uri(ref: object) -> bool:
    return str(ref).startswith(REGISTRY_URI)


def pin(ref: str, uri: str | None = None) -> str:
    """`models:/<name>@<alias>` -> `models:/<name>/<version>` (the version the alias names
    now: an alias moves, a version does not); any other reference as it is."""
    if not ref.startswith("models:/") or "@" not in ref:
        return ref
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    uri = uri or tracking_uri()
    name, _, alias = ref.removeprefix("models:/").partition("@")
    try:
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        version = client.get_model_version_by_alias(name, alias).version
    except MlflowException as exc:
        raise RegistryError(f"{ref}: {exc.message} (tracking store {uri})") from None
    return f"models:/{name}/{version}"


def download(ref: str, kind: str, uri: str | None = None) -> Path:
    """The files of `models:/<name>@<alias>`, `models:/<name>/<version>` or
    `runs:/<run id>/<path>`, downloaded once into ~/.cache/alad/<kind>/ (an alias is resolved
    to its version first, so a moved alias is fetched again)."""
    import mlflow.artifacts
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    uri = uri or tracking_uri()
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    text, source = pin(ref, uri), ref
    try:
        if text.startswith("models:/"):
            name, _, version = text.removeprefix("models:/").rpartition("/")
            source = client.get_model_version_download_uri(name, version)
        dest = cache_home() / kind / hashlib.sha256(f"{uri}|{text}".encode()).hexdigest()[:16]
        if not dest.is_dir() or not any(dest.iterdir()):
            dest.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
                got = Path(
                    mlflow.artifacts.download_artifacts(
                        artifact_uri=source, dst_path=tmp, tracking_uri=uri
                    )
                )
                shutil.rmtree(dest, ignore_errors=True)
                got.rename(dest)
    except MlflowException as exc:
        raise RegistryError(f"{ref}: {exc.message} (tracking store {uri})") from None
    return dest


def registered_model_folder(ref: str, uri: str | None = None) -> tuple[Path, str]:
    """A registered task model (a pyfunc wrapping an alad model folder, alad/pyfunc.py) as
    (the alad model folder inside its download, the pinned `models:/<name>/<version>`)."""
    pinned = pin(ref, uri)
    root = download(pinned, "models", uri)
    found = sorted(
        p.parent
        for p in root.rglob("manifest.json")
        if (p.parent / "head.safetensors").is_file() and "code" not in p.relative_to(root).parts
    )
    if not found:
        raise RegistryError(
            f"{ref}: the registered version holds no alad model folder (manifest.json + "
            "head.safetensors); is it a task model registered by `alad`?"
        )
    return found[0], pinned
