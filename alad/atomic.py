"""File I/O that fails safely: write-then-rename, folder swaps that survive a kill, checksums,
UTF-8 reads whose errors name the file, output places checked before any work, and claims (one
process at a time on a piece of work, on a shared filesystem too).

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
import secrets
import shutil
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from alad.errors import AladError, DataFormatError

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


# alad's own small JSON files (manifests of checkpoints, model folders and resume states): a
# few kilobytes each; a file beyond this is not one of them (and is not read into memory).
MAX_MANIFEST_BYTES = 16 * 2**20


def read_bytes(path: Path, max_bytes: int | None = None) -> bytes:
    """The file's bytes, at most `max_bytes` (None: no limit). A folder, an unreadable file or
    one over the limit (read no further than the limit: `/dev/zero` ends at once) is a
    DataFormatError naming the path."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            data = f.read() if max_bytes is None else f.read(max_bytes + 1)
    except IsADirectoryError:
        raise DataFormatError(f"{path}: is a folder, not a file") from None
    except PermissionError:
        raise DataFormatError(f"{path}: cannot be read (permission denied)") from None
    if max_bytes is not None and len(data) > max_bytes:
        raise DataFormatError(
            f"{path}: larger than {_size(max_bytes)}, the most alad reads for this kind of file"
        )
    return data


def _size(n: int) -> str:
    return f"{n / 2**20:g} MiB" if n >= 2**20 else f"{n:,} bytes"


def read_text(path: Path, max_bytes: int | None = None) -> str:
    """The file as text: UTF-8, with or without a byte-order mark. Anything else is a
    DataFormatError naming the file, the line and the byte (never a UnicodeDecodeError); so is
    a folder, and a file over `max_bytes` (see `read_bytes`)."""
    data = read_bytes(path, max_bytes)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        if data[:2] in (b"\xff\xfe", b"\xfe\xff"):  # a UTF-16 byte-order mark
            raise DataFormatError(
                f"{path}: UTF-16 text, not UTF-8; save the file as UTF-8, e.g. "
                "`iconv -f utf-16 -t utf-8 IN > OUT`"
            ) from None
        line = data.count(b"\n", 0, exc.start) + 1
        raise DataFormatError(
            f"{path}:{line}: not UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
            "save the file as UTF-8, e.g. `iconv -f latin1 -t utf-8 IN > OUT`"
        ) from None


def text_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, line with its newline) of a UTF-8 text file; \\r\\n and \\r read as \\n."""
    with io.StringIO(read_text(path), newline=None) as f:
        yield from enumerate(f, start=1)


def read_json(path: Path, what: str = "valid JSON", max_bytes: int | None = None) -> Any:
    """Parse a UTF-8 JSON file (of at most `max_bytes`); a syntax error names the file, line and
    column."""
    try:
        return json.loads(read_text(path, max_bytes))
    except json.JSONDecodeError as exc:
        raise DataFormatError(
            f"{path}:{exc.lineno}: not {what} ({exc.msg}, column {exc.colno})"
        ) from None
    except RecursionError:
        raise DataFormatError(f"{path}: not {what} (nested too deeply)") from None


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


def read_folder_manifest(
    path: Path, fmt: str, error: type[Exception], required: Sequence[str] = ()
) -> dict[str, Any]:
    """A folder's manifest.json: a JSON object whose `format` is `fmt` and that has every key of
    `required`; otherwise `error` with a message naming the file (and the first missing key)."""
    try:
        manifest = read_json(path, max_bytes=MAX_MANIFEST_BYTES)
    except DataFormatError as exc:
        raise error(str(exc)) from None
    if not isinstance(manifest, dict) or manifest.get("format") != fmt:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise error(f"{path}: format {found!r}, expected {fmt}")
    if missing := [k for k in required if k not in manifest]:
        raise error(f"{path}: no {missing[0]!r}; the manifest is damaged or incomplete")
    return manifest


# Set to 1 to load a checkpoint, resume state or model folder whose manifest.json has no
# `files` checksum list (one written before checksums existed), with a warning. README
# "Reliability and trust model".
ALLOW_UNCHECKED = "ALAD_ALLOW_UNCHECKED"
WEIGHT_SUFFIXES = (".safetensors", ".pt", ".bin")


def unchecked_allowed() -> bool:
    return os.environ.get(ALLOW_UNCHECKED, "").strip().lower() in ("1", "true", "yes")


def verify_manifest_files(
    folder: Path, manifest: dict[str, Any] | None, error: type[Exception]
) -> None:
    """Every file the manifest lists under `files` is there with its checksum, and every weights
    file of the folder is listed; otherwise `error` naming the file. A manifest without `files`
    (or no manifest: None) is refused unless $ALAD_ALLOW_UNCHECKED=1, which loads it with a
    warning: nothing would notice a damaged or replaced weights file."""
    where = folder / "manifest.json"
    files = (manifest or {}).get("files")
    if files is None:
        if not unchecked_allowed():
            raise error(
                f"{where}: no 'files' checksum list, so nothing here can be verified (written "
                f"before checksums, or edited); save it again, or set {ALLOW_UNCHECKED}=1 to "
                "load it unchecked"
            )
        log.warning("%s: no checksums; loading it unchecked (%s=1)", where, ALLOW_UNCHECKED)
        return
    if not isinstance(files, dict):
        raise error(f"{where}: 'files' must map file names to sha256 checksums")
    if problem := verify_checksums(folder, files):
        raise error(f"{folder}: {problem}")
    for path in sorted(folder.rglob("*")):
        name = path.relative_to(folder).as_posix()
        if path.suffix in WEIGHT_SUFFIXES and path.is_file() and name not in files:
            raise error(f"{where}: {name} is not in its 'files' checksum list (added or renamed)")


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


# -- output places, checked before any work ----------------------------------------------------


class OutputError(AladError):
    """A place a command would write to cannot be written; found before any work is done."""


def _dir_problem(path: Path) -> str | None:
    """Why `path` cannot be a folder this process writes in, else None. A missing folder is
    fine if the nearest existing one above it takes new entries (the first write creates it;
    a command that fails for another reason leaves no empty folders behind). Tried for real,
    with a probe file: os.access says yes to root on a read-only folder and knows nothing of
    read-only mounts."""
    here = next((p for p in (path, *path.parents) if p.exists() or p.is_symlink()), Path("."))
    if not here.is_dir():
        return f"{here} is {'a file' if here.is_file() else 'not a folder'}"
    probe = here / f".alad-probe-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        os.close(os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        probe.unlink()
    except OSError as exc:
        return f"{exc.strerror or exc} in {here}"
    return None


def ensure_writable_dir(path: Path, what: str, fix: str) -> Path:
    """`path` as a folder this process can write files in (or create: see `_dir_problem`);
    otherwise an OutputError naming the path, the reason and `fix` (what to do). Every command
    calls it for every place it will write before it trains anything: a place found unusable
    only at the first save loses the work done until then."""
    path = Path(path).expanduser()
    if problem := _dir_problem(path):
        raise OutputError(f"{path}: cannot write the {what} there ({problem}); {fix}")
    return path


def ensure_writable_file(path: Path, what: str, fix: str) -> Path:
    """`ensure_writable_dir` for a file: `path` must not be a folder or a device (write_bytes
    would rename a regular file over it) and its folder must take new files."""
    path = Path(path).expanduser()
    problem = None
    if path.is_dir():
        problem = "it is a folder"
    elif path.exists() and not path.is_file():
        problem = "it is not a regular file"
    if problem := problem or _dir_problem(path.parent):
        raise OutputError(f"{path}: cannot write the {what} there ({problem}); {fix}")
    return path


# -- claims: one process at a time on a piece of work -----------------------------------------

CLAIM_BEAT_SECONDS = 60  # a live claim's file is touched this often
CLAIM_STALE_SECONDS = 15 * 60  # untouched this long: its holder is gone (killed, machine lost)


class Claim:
    """A piece of work taken by this process: the file `path` (pid, host, time, nonce), created
    with O_CREAT|O_EXCL so that one process of all those sharing the filesystem gets it, and
    touched every CLAIM_BEAT_SECONDS while held. `release()` removes it (the `with` block ends
    on return, exception or stop request); a claim whose holder was killed without releasing
    it is stale (see `claim`) and taken over by the next process that wants the work."""

    def __init__(self, path: Path, record: dict[str, Any]) -> None:
        self.path, self.record = path, record
        self._done = threading.Event()
        self._beat = threading.Thread(target=self._touch, daemon=True, name=f"claim {path.name}")
        self._beat.start()

    def _touch(self) -> None:
        while not self._done.wait(CLAIM_BEAT_SECONDS):
            with contextlib.suppress(OSError):
                os.utime(self.path)

    def release(self) -> None:
        self._done.set()
        if _claim_record(self.path) == self.record:  # still ours: never remove a successor's
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    def __enter__(self) -> Claim:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _claim_record(path: Path) -> dict[str, Any] | None:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _stale(path: Path, record: dict[str, Any] | None) -> str | None:
    """Why the claim at `path` is stale, else None (held by a live process)."""
    try:
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return None  # released meanwhile: not stale, just gone
    pid = record.get("pid") if record else None
    here = record is not None and record.get("host") == socket.gethostname()
    if here and isinstance(pid, int) and not _pid_alive(pid):
        return f"its process {pid} on this machine is gone"
    if age > CLAIM_STALE_SECONDS:
        return f"untouched for {age / 60:.0f} min (a live claim is touched every minute)"
    if record is None and age > 60:  # a holder dies between creating and writing it
        return "empty or unreadable, and a minute old"
    return None


def claim(path: Path) -> Claim | None:
    """Take the claim `path` for this process, or None if a live process holds it. A stale
    claim (its process gone from this machine, or untouched for CLAIM_STALE_SECONDS) is taken
    over with a warning. Taking over renames the stale file aside first and checks that it
    moved the file it judged, so two processes recovering the same claim do not both win."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(3):
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "time": datetime.now(UTC).isoformat(timespec="seconds"),
            "nonce": secrets.token_hex(8),
        }
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            held = _claim_record(path)
            why = _stale(path, held)
            if why is None or not _take_over(path, held):
                return None
            log.warning("%s: a stale claim (%s; %s); taking it over", path, held, why)
            continue
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(record, f)
        return Claim(path, record)
    return None


def _take_over(path: Path, judged: dict[str, Any] | None) -> bool:
    """Remove the stale claim `path` whose content was `judged`; False if another process
    took it over first (then the claim it moved aside is put back)."""
    aside = path.with_name(f".{path.name}.stale-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return True  # another process removed it: try to create it afresh
    if _claim_record(aside) == judged:
        aside.unlink()
        return True
    with contextlib.suppress(OSError):  # a successor's live claim: back, unless a third won
        os.link(aside, path)
    aside.unlink()
    return False
