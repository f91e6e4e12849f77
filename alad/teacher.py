"""The teacher: the model whose token embeddings AlAd learns to output (phases 1-2), and its head.

    alad align phase1 --set phase1.target_layer=6                        # M_L's layer 6
    alad align phase2 --init runs/phase1 --set phase2.teacher=models:/alad-pos-mpnet-base@champion
    alad compose --adapter runs/phase2 --out runs/pos-zero-shot          # M_C + AlAd + its head

The paper's teacher is M_L pre-trained, at its last layer (`phaseN.teacher: null`,
`target_layer: null`). Two others are worth aiming at (issue 20): a middle layer of M_L, where a
linear probe reads more of the task than at its last (`alad probe`), and M_L fine-tuned on the
task (a saved `large` model folder, or its registered version), whose last layer holds what the
task needs. The second comes with a task head that reads exactly that layer: AlAd aligned to
it outputs into the head's input space, so phase 3 can start from that head
(`phase3.head_init: teacher`) or skip phase 3 altogether (`compose_zero_shot`).

M_L (`models.large`) stays what the size and speed columns are measured against.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from torch import nn

from alad.aligned_model import (
    AlignedModel,
    load_head,
    read_manifest,
    save_model,
    verify_model_folder,
)
from alad.checkpoint import load_checkpoint
from alad.errors import AladError
from alad.models.catalog import Encoder, hidden_size, load_encoder
from alad.models.compress import split_spec
from alad.store import is_registry_uri, registered_model_folder

log = logging.getLogger(__name__)


class TeacherError(AladError, ValueError):
    """A teacher that cannot serve as asked: unknown, a sweep placeholder, no such layer, no
    task head, another task's labels."""


@dataclass
class Teacher:
    """A loaded teacher and the hidden state that is the target."""

    spec: str | None  # as configured (None: models.large)
    encoder: Encoder
    layer: int  # index into the encoder's hidden states: 0 = embeddings' output ... L = last
    folder: Path | None = None  # the alad model folder of a saved or registered task model
    version: str | None = None  # models:/<name>/<version> when it came from the registry

    @classmethod
    def pretrained(cls, encoder: Encoder) -> Teacher:
        """`encoder` as the paper's teacher: itself (M_L), at its last layer."""
        return cls(None, encoder, encoder.num_layers)

    @property
    def last(self) -> bool:
        return self.layer == self.encoder.num_layers

    @property
    def cache_layer(self) -> int | None:
        """The hidden state to extract, None for the last (the caches made before target
        layers existed are the last layer's, under the same key)."""
        return None if self.last else self.layer

    @property
    def is_paper(self) -> bool:
        """M_L pre-trained at its last layer: the paper's target."""
        return self.spec is None and self.last

    def describe(self) -> dict[str, Any]:
        """What checkpoint manifests record (and the registry's lineage tags copy)."""
        return {
            "teacher": self.spec,
            "teacher_name": self.encoder.name,
            "teacher_fingerprint": self.encoder.fingerprint,
            "teacher_layers": self.encoder.num_layers,
            "target_layer": self.layer,
            "teacher_dir": str(self.folder) if self.folder is not None else None,
            "teacher_version": self.version,
        }


def load_teacher(
    spec: str | None, large: str, layer: int | None = None, where: str = "phase"
) -> Teacher:
    """The teacher `spec` (None: `large`) with its target layer checked (None: the last).
    `where` names the config section in errors ("phase2": `phase2.target_layer`)."""
    folder = version = None
    if spec is None:
        encoder = load_encoder(large)
    elif spec.startswith("@"):
        raise TeacherError(
            f"{where}.teacher={spec!r} is a sweep grid's placeholder (the task's best `large` "
            "cell), resolved only inside `alad sweep`; give a model folder, a catalog name or "
            "models:/<name>@<alias>"
        )
    elif spec.startswith("models:/"):  # a registered task model (runs:/ is not one)
        folder, version = registered_model_folder(spec)
        encoder = _folder_encoder(folder, spec)
    elif (Path(spec).expanduser() / "manifest.json").is_file():
        folder = Path(spec).expanduser()
        encoder = _folder_encoder(folder, spec)
    else:
        encoder = load_encoder(spec)
    count = encoder.num_layers
    if layer is not None and not 0 <= layer <= count:
        raise TeacherError(
            f"{where}.target_layer={layer}: the teacher {encoder.name} has {count} layers; "
            f"choose 0 (the embeddings' output) to {count} (its last layer), or null for the last"
        )
    return Teacher(spec, encoder, count if layer is None else layer, folder, version)


def check_width(teacher: Teacher, large: str, where: str) -> None:
    """AlAd's output width is D_L: phase 3 builds the adapter for models.large's width, so a
    teacher of another width would leave an adapter no phase 3 can load."""
    if teacher.spec is None:
        return
    want = hidden_size(large)
    if teacher.encoder.dim != want:
        raise TeacherError(
            f"{where}.teacher={teacher.spec}: its width is {teacher.encoder.dim}, models.large "
            f"{large} has {want}; AlAd outputs D_L, so the teacher needs models.large's width"
        )


def _folder_encoder(folder: Path, name: str) -> Encoder:
    """The encoder of a saved alad model folder, named `name` (the spec it was asked by)."""
    manifest = read_manifest(folder)
    verify_model_folder(folder, manifest)
    if manifest.get("adapter"):
        raise TeacherError(
            f"{folder}: a model with an AlAd adapter (mode {manifest['mode']}): its head reads the "
            "adapter's output, not its encoder's; a teacher is an encoder (e.g. a `large` model)"
        )
    spec = manifest.get("encoder_spec")  # int8: re-created from the catalog, as load_model does
    return replace(load_encoder(spec or str(folder / "encoder")), name=name)


def teacher_head(folder: Path) -> tuple[nn.Module, dict[str, Any]]:
    """The task head of the teacher's model folder and that folder's manifest."""
    manifest = read_manifest(folder)
    verify_model_folder(folder, manifest)
    if manifest.get("adapter"):
        raise TeacherError(f"{folder}: its head reads an AlAd adapter's output, not an encoder's")
    return load_head(folder, manifest), manifest


def teacher_folder(adapter_manifest: dict[str, Any], source: Path) -> Path:
    """The model folder of the teacher an adapter was aligned to (its checkpoint manifest says),
    downloaded again from the registry where it came from there and is not on this machine."""
    m = adapter_manifest
    name = m.get("teacher") or m.get("large")
    if m.get("teacher_dir") is None:
        raise TeacherError(
            f"{source}: the adapter was aligned to {name}, a pre-trained encoder without a task "
            "head; align phase 2 to a task model first (phase2.teacher: a `large` model folder "
            "or models:/<name>@<alias>)"
        )
    if m.get("target_layer") != m.get("teacher_layers"):
        raise TeacherError(
            f"{source}: the adapter was aligned to layer {m.get('target_layer')} of {name}'s "
            f"{m.get('teacher_layers')}; its task head reads the last layer"
        )
    folder = Path(m["teacher_dir"])
    if (folder / "manifest.json").is_file():
        return folder
    if m.get("teacher_version"):
        return registered_model_folder(m["teacher_version"])[0]
    raise TeacherError(f"{source}: its teacher's model folder {folder} is not on this machine")


def head_for(
    adapter_manifest: dict[str, Any], source: Path, task: str, labels: list[str], dim: int
) -> nn.Module:
    """`phase3.head_init: teacher`: the head of the adapter's teacher, checked to fit this
    phase 3: the same task, exactly the same labels in the same order, AlAd's output width."""
    folder = teacher_folder(adapter_manifest, source)
    head, manifest = teacher_head(folder)
    if manifest["task"] != task:
        raise TeacherError(f"{folder}: a {manifest['task']} model; phase 3 trains {task}")
    if list(manifest["labels"]) != list(labels):
        raise TeacherError(
            f"{folder}: the teacher's labels {manifest['labels']} differ from this task's "
            f"training labels {labels}; its head cannot start phase 3 (phase3.head_init=fresh)"
        )
    if manifest["head"]["dim"] != dim:
        got = manifest["head"]["dim"]
        raise TeacherError(f"{folder}: its head reads {got}-d vectors, AlAd outputs {dim}-d")
    log.info("phase 3: the head starts from the teacher's, %s", folder)
    return head


def compose_zero_shot(adapter: Path, out: Path, teacher: str | None = None) -> Path:
    """M_C + a phase-1/2 adapter + the teacher's task head, no phase 3: a normal saved model
    folder (`mode: alad-frozen`, `zero_shot: true`), so `alad evaluate`, `alad predict` and
    the pyfunc use it as any other. `teacher` (a model folder or models:/ URI) defaults to the
    one the adapter was aligned to; another one is allowed, with a warning."""
    ckpt = load_checkpoint(adapter)
    m = ckpt.manifest
    if teacher is None:
        folder = teacher_folder(m, adapter)
    elif is_registry_uri(teacher):
        folder = registered_model_folder(teacher)[0]
    else:
        folder = Path(teacher)
    head, tm = teacher_head(folder)
    own = m.get("teacher_dir")
    if own is None or Path(own).resolve() != folder.resolve():
        log.warning(
            "%s was aligned to %s, the head is %s's: it reads a space the adapter was not "
            "aligned to",
            adapter,
            m.get("teacher") or m.get("large"),
            folder,
        )
    if tm["head"]["dim"] != ckpt.adapter.d_large:
        raise TeacherError(
            f"{folder}: its head reads {tm['head']['dim']}-d, the adapter outputs "
            f"{ckpt.adapter.d_large}-d"
        )
    compressed = load_encoder(m["compressed"])
    int8 = "int8" in split_spec(compressed.name)[1]
    keep = (
        "task",
        "labels",
        "max_length",
        "stride",
        "n_best",
        "max_answer_length",
        "null_threshold",
    )
    manifest = {
        **{k: tm[k] for k in keep if k in tm},
        "mode": "alad-frozen",
        "zero_shot": True,
        "compressed": m["compressed"],
        "large": m["large"],
        "encoder_name": compressed.name,
        "encoder_spec": compressed.name if int8 else None,
        "init": str(adapter),
        "teacher": teacher or m.get("teacher"),
        "teacher_dir": str(folder),
        "epochs": 0,
        "dev": None,  # never validated itself: `alad evaluate` on dev says how it does
    }
    model = AlignedModel(compressed.model, head, ckpt.adapter).eval()
    return save_model(model, compressed.tokenizer, manifest, out)
