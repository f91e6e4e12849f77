"""File I/O that fails safely: write-then-rename, folder swaps that survive a kill, checksums,
and UTF-8 reads whose errors name the file.

A reader never sees a half-written file or folder under its final name. A folder is built as
`.<name>.tmp-<pid>` and swapped in by `replace_dir` (two renames: the old folder aside to
`.<name>.old-<pid>`, the new one into place); `recover_dir` finishes or undoes a swap that a kill
interrupted, and removes what it left behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from alad.errors import DataFormatError

log = logging.getLogger(__name__)


def write_bytes(data: bytes, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException:  # a full disk, a SIGTERM (alad/stopping.py): leave nothing behind
        tmp.unlink(missing_ok=True)
        raise


def write_text(text: str, path: Path) -> None:
    write_bytes(text.encode("utf-8"), path)


def write_json(data: Any, path: Path) -> None:
    write_text(json.dumps(data, indent=2, default=str), path)


def read_text(path: Path) -> str:
    """The file as text: UTF-8, with or without a byte-order mark. Anything else is a
    DataFormatError naming the file, the line and the byte (never a UnicodeDecodeError)."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DataFormatError(
            f"{path}:{line}: not UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
            "save the file as UTF-8, e.g. `iconv -f latin1 -t utf-8 IN > OUT`"
        ) from None


def text_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, line with its newline) of a UTF-8 text file; \\r\\n and \\r read as \\n."""
    with io.StringIO(read_text(path), newline=None) as f:
        yield from enumerate(f, start=1)


def read_json(path: Path, what: str = "valid JSON") -> Any:
    """Parse a UTF-8 JSON file; a syntax error names the file, line and column."""
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as exc:
        raise DataFormatError(
            f"{path}:{exc.lineno}: not {what} ({exc.msg}, column {exc.colno})"
        ) from None


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def checksums(folder: Path, skip: tuple[str, ...] = ("manifest.json",)) -> dict[str, str]:
    """sha256 of every file under `folder` (relative POSIX paths), except `skip`."""
    return {
        p.relative_to(folder).as_posix(): sha256(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.relative_to(folder).as_posix() not in skip
    }


def read_folder_manifest(path: Path, fmt: str, error: type[Exception]) -> dict[str, Any]:
    """A folder's manifest.json: a JSON object whose `format` is `fmt`; otherwise `error`
    with a message naming the file."""
    try:
        manifest = read_json(path)
    except DataFormatError as exc:
        raise error(str(exc)) from None
    if not isinstance(manifest, dict) or manifest.get("format") != fmt:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise error(f"{path}: format {found!r}, expected {fmt}")
    return manifest


def verify_manifest_files(folder: Path, manifest: dict[str, Any], error: type[Exception]) -> None:
    """Every file the manifest lists under `files` is there with its checksum (folders written
    before checksums list none); otherwise `error` naming the file."""
    files = manifest.get("files", {})
    if not isinstance(files, dict):
        raise error(f"{folder / 'manifest.json'}: 'files' must map file names to sha256 checksums")
    if problem := verify_checksums(folder, files):
        raise error(f"{folder}: {problem}")


def verify_checksums(folder: Path, expected: dict[str, str]) -> str | None:
    """None if every listed file is there with its checksum, else what is wrong (one file)."""
    for name, digest in expected.items():
        path = folder / name
        inside = Path(os.path.normpath(path)).is_relative_to(Path(os.path.normpath(folder)))
        if not isinstance(digest, str) or not inside:
            return f"manifest.json lists {name!r}, which is not a file of this folder"
        if not path.is_file():
            return f"{name} is missing"
        if sha256(path) != digest:
            return f"{name} does not match its checksum in manifest.json (damaged or replaced)"
    return None


def tmp_dir(final: Path) -> Path:
    """A fresh, empty `.<name>.tmp-<pid>` beside `final`, to build a folder in."""
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def replace_dir(tmp: Path, final: Path) -> Path:
    """Put the complete folder `tmp` at `final`, moving any old one aside first (a rename, so
    `final` is never a half-deleted folder) and deleting it afterwards."""
    recover_dir(final)
    old = final.parent / f".{final.name}.old-{os.getpid()}"
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True  # ours: this process may be building it right now (replace_dir's `tmp`)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recover_dir(final: Path) -> None:
    """Clean up after a swap of `final` that a kill interrupted (processes still alive are left
    alone: they may be writing).

    Killed between the two renames: `final` is missing, `.old-<pid>` holds the previous folder and
    `.tmp-<pid>` the complete new one (it is only renamed once complete), so the swap is finished.
    Killed before or after: a `.tmp-` folder is an unfinished build and an `.old-` folder a
    replaced one; both are deleted."""
    parent = final.parent
    if not parent.is_dir():
        return
    pattern = re.compile(rf"^\.{re.escape(final.name)}\.(old|tmp)-(\d+)$")
    leftovers = []
    for p in parent.iterdir():
        m = pattern.match(p.name)
        if m and not _pid_alive(int(m.group(2))):
            leftovers.append((m.group(1), m.group(2), p))
    for kind, pid, p in leftovers:
        if kind == "old" and not final.exists():
            new = parent / f".{final.name}.tmp-{pid}"
            source = new if new.is_dir() else p
            log.warning("%s: finishing a folder swap a kill interrupted (from %s)", final, source)
            os.replace(source, final)
    for _, _, p in leftovers:
        if p.exists():
            log.warning("%s: removing %s, left by an interrupted write", final, p.name)
            with contextlib.suppress(FileNotFoundError):
                shutil.rmtree(p) if p.is_dir() else p.unlink()


def recover_all(folder: Path) -> None:
    """`recover_dir` for every folder or file under `folder` that has swap leftovers."""
    if not folder.is_dir():
        return
    names = {
        m.group(1)
        for p in folder.iterdir()
        if (m := re.match(r"^\.(.+)\.(?:old|tmp)-\d+$", p.name))
    }
    for name in sorted(names):
        recover_dir(folder / name)
