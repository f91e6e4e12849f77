"""Write-then-rename helpers: a reader never sees a half-written file under the final name."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any


def write_bytes(data: bytes, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_text(text: str, path: Path) -> None:
    write_bytes(text.encode("utf-8"), path)


def write_json(data: Any, path: Path) -> None:
    write_text(json.dumps(data, indent=2, default=str), path)


def replace_dir(tmp: Path, final: Path) -> Path:
    """Put the complete folder `tmp` at `final`, moving any old one aside first (a rename, so
    `final` is never a half-deleted folder) and deleting it afterwards."""
    old = final.parent / f".{final.name}.old-{os.getpid()}"
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    return final
