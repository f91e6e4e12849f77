"""Write-then-rename helpers: a reader never sees a half-written file under the final name."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def write_text(text: str, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_json(data: Any, path: Path) -> None:
    write_text(json.dumps(data, indent=2, default=str), path)
