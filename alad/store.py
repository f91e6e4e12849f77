"""The MLflow store as a source of files: where it is, and downloading a registered version.

    alad finetune --init models:/alad-adapter-minilm-l6-to-mpnet-base-n5@champion-phase2-pos ...
    alad align phase2 --set phase2.teacher=models:/alad-pos-mpnet-base@champion ...

Below the phases on purpose: a phase that is given `models:/...` (an adapter to start from, a
teacher to align to) downloads it itself, so every door (CLI, DVC stages, Prefect, the sweep, a
test calling the phase) accepts the same URIs. Registering, gating and promoting stay in
alad/registry.py; runs in alad/tracking.py.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import requests

from alad.errors import RegistryError, ServicesDown
from alad.models.packaged import cache_home

LOCAL_STORE = Path("mlflow")
REGISTRY_URI = ("models:/", "runs:/")

# A registry lookup (`models:/` resolution, `alad registry list|rollback`) gives up after this
# many seconds per try and this many retries: MLflow's defaults (120 s, 7 retries with backoff)
# took over 4 minutes against a server that was down. MLFLOW_HTTP_REQUEST_TIMEOUT and
# MLFLOW_HTTP_REQUEST_MAX_RETRIES, when set, win.
LOOKUP_TIMEOUT_S = 10
LOOKUP_RETRIES = 1


def tracking_uri(create: bool = True) -> str:
    """$MLFLOW_TRACKING_URI, else the SQLite store ./mlflow/mlflow.db (its folder created unless
    `create` is False: a lookup)."""
    if uri := os.environ.get("MLFLOW_TRACKING_URI"):
        return uri
    if create:
        LOCAL_STORE.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(LOCAL_STORE / 'mlflow.db').resolve()}"


def check_server(uri: str) -> None:
    """Fail in seconds when an http(s) server is down (MLflow itself retries for minutes)."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        requests.get(uri.rstrip("/") + "/health", timeout=2).raise_for_status()
    except requests.RequestException as exc:
        raise ServicesDown(
            f"MLflow server at {uri} is not answering ({type(exc).__name__}): start it with "
            "`make up` (or unset MLFLOW_TRACKING_URI to use the local SQLite store)"
        ) from exc


def missing_store(uri: str) -> Path | None:
    """Where the local store of `uri` (SQLite file, file-store folder) should be, if it is not
    there; None for a store that exists and for a server (`check_server` asks that)."""
    if uri.startswith("sqlite:///"):
        path = Path(uri.removeprefix("sqlite:///"))
        return None if path.is_file() else path
    if uri.startswith(("file:", "/", ".")):  # a file store: a folder (not "databricks")
        path = Path(urllib.parse.urlparse(uri).path if uri.startswith("file:") else uri)
        return None if path.is_dir() else path
    return None


def no_store(where: Path) -> str:
    """The message for a lookup in a local store that does not exist (and is not created)."""
    return (
        f"no tracking store at {where}: nothing is registered there (it was not created); "
        "set MLFLOW_TRACKING_URI to the store that holds the model, or run from the folder "
        "whose mlflow/ does"
    )


@contextlib.contextmanager
def bounded_lookup(uri: str, what: str = "") -> Iterator[None]:
    """Inside this block a registry lookup against `uri` ends in seconds when the server is down
    (`check_server`) and in bounded time when it answers slowly: MLflow's HTTP requests give up
    after LOOKUP_TIMEOUT_S per try and LOOKUP_RETRIES retries (unless the environment sets them;
    they are environment variables because MLflow reads them there, per request). An MLflow
    error inside is a RegistryError: one line, `what` first, naming the store."""
    from mlflow.exceptions import MlflowException

    check_server(uri)
    bounds = {
        "MLFLOW_HTTP_REQUEST_TIMEOUT": str(LOOKUP_TIMEOUT_S),
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(LOOKUP_RETRIES),
    }
    saved = {key: os.environ.get(key) for key in bounds}
    for key, value in bounds.items():
        os.environ.setdefault(key, value)
    try:
        yield
    except MlflowException as exc:
        raise RegistryError(what + _lookup_failure(exc, uri)) from None
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _lookup_failure(exc: object, uri: str) -> str:
    message = str(getattr(exc, "message", exc))
    if uri.startswith(("http://", "https://")) and "failed with exception" in message:
        return (
            f"the MLflow server at {uri} did not answer in time "
            f"({os.environ['MLFLOW_HTTP_REQUEST_TIMEOUT']} s per try, "
            f"{1 + int(os.environ['MLFLOW_HTTP_REQUEST_MAX_RETRIES'])} tries; set "
            "MLFLOW_HTTP_REQUEST_TIMEOUT / MLFLOW_HTTP_REQUEST_MAX_RETRIES to wait longer)"
        )
    return f"{one_line(message)} (tracking store {uri})"


def one_line(message: str, limit: int = 400) -> str:
    """An MLflow error message as one line (they can hold newlines and stack traces)."""
    text = " ".join(message.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def is_registry_uri(ref: object) -> bool:
    return str(ref).startswith(REGISTRY_URI)


def pin(ref: str, uri: str | None = None) -> str:
    """`models:/<name>@<alias>` -> `models:/<name>/<version>` (the version the alias names
    now: an alias moves, a version does not); any other reference as it is."""
    if not ref.startswith("models:/") or "@" not in ref:
        return ref
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    uri = _lookup_store(ref, uri)
    name, _, alias = ref.removeprefix("models:/").partition("@")
    with bounded_lookup(uri, f"{ref}: "):
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        try:
            version = client.get_model_version_by_alias(name, alias).version
        except MlflowException as exc:
            raise _missing(client, exc, ref, name, f"alias @{alias}", uri) from None
    return f"models:/{name}/{version}"


def _lookup_store(ref: str, uri: str | None) -> str:
    """The store to look `ref` up in; a local store that does not exist is an error (a lookup
    never creates one)."""
    uri = uri or tracking_uri(create=False)
    if (where := missing_store(uri)) is not None:
        raise RegistryError(f"{ref}: {no_store(where)}")
    return uri


def _missing(client, exc, ref: str, name: str, what: str, uri: str) -> Exception:
    """A lookup error that names what is missing: the model, or its alias / version."""
    from mlflow.exceptions import MlflowException

    if exc.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
        return exc
    try:
        client.get_registered_model(name)
    except MlflowException:
        return RegistryError(f"{ref}: no registered model named {name!r} in {uri}")
    return RegistryError(f"{ref}: model {name!r} in {uri} has no {what}")


def download(ref: str, kind: str, uri: str | None = None) -> Path:
    """The files of `models:/<name>@<alias>`, `models:/<name>/<version>` or
    `runs:/<run id>/<path>`, downloaded once into ~/.cache/alad/<kind>/ (an alias is resolved
    to its version first, so a moved alias is fetched again)."""
    import mlflow.artifacts
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    uri = _lookup_store(ref, uri)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    text, source = pin(ref, uri), ref
    with bounded_lookup(uri, f"{ref}: "):
        if text.startswith("models:/"):
            name, _, version = text.removeprefix("models:/").rpartition("/")
            if not name or not version:
                raise RegistryError(
                    f"{ref}: expected models:/<name>@<alias> or models:/<name>/<version>"
                )
            try:
                source = client.get_model_version_download_uri(name, version)
            except MlflowException as exc:
                raise _missing(client, exc, ref, name, f"version {version}", uri) from None
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
