"""Task distillation in phase 3: a frozen, fine-tuned teacher's logits as soft targets.

    alad finetune --task pos --mode kd --set phase3.distill.teacher=runs/pos-large/model \
        --set phase3.distill.temperature=2 --set phase3.distill.alpha=0.5 ...

The loss is alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * the
task loss (alad.losses; each task's `kd_sum` in alad/tasks.py picks the positions), for any mode
(`kd` is `compressed` with it; `alad-joint` + KD is alad-joint with phase3.distill set).

The teacher (`phase3.distill.teacher`) is a fine-tuned model of the same task and labels: a
saved alad model folder (any mode), a registered one (`models:/...`, downloaded once by
alad.store), or a Hugging Face task model (a folder or hub id with a *ForTokenClassification
head whose config names its labels, or *ForQuestionAnswering) such as the peer harness's
`hf_tokcls.py --save`. Its labels must be the task's training labels as a set (one error naming
both lists otherwise); its logits are reordered to the task's label order.

What the teacher reads:
- POS / NER: the words of each training window, tokenised by its own tokenizer (split into more
  windows if they do not fit), and its logits at the first sub-token of each word are the
  targets of the student's scored positions of that window, word by word (the peer harness
  matches them the same way; `word_rows`, which mode slad's teacher reads its batches from);
- QA: the student's windows token by token (its own ids and special tokens for the same token
  strings: the tokenizers must share them, as minilm and mpnet do); its start/end logits at
  [CLS] and at the context tokens are the targets; the other positions are no answer candidates
  (logit -inf: they take no part in the distribution).

The teacher is frozen, so its logits are computed once (fp32, eval mode, no autocast: the same
file on every device) and cached as `<cache root>/teacher-logits/<teacher>-<key>.safetensors`:
every training row's targets back to back + their lengths, with the key and a sha256 of the
tensors in its metadata (checked on every read; a damaged file is computed again). The key is
the teacher's fingerprint (the checksums of its files), its tokenizer and label order, the task
and the teacher's input rows (data + tokenisation): every epoch, every seed and every mode over
the same training rows reads the same file, without loading the teacher at all.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn
from transformers import AutoConfig, AutoTokenizer, PreTrainedTokenizerBase

from alad.aligned_model import load_model, read_manifest, verify_model_folder
from alad.atomic import checksums, sha256
from alad.cache import atomic_save, tokenizer_hash
from alad.data import tagging
from alad.data.qa import QAFeatures
from alad.data.readers import TaggedSentence
from alad.inference import predict_outputs
from alad.models.catalog import resolve
from alad.runtime import Runtime, barrier, is_main
from alad.store import is_registry_uri, registered_model_folder
from alad.tasks import TASKS, Task
from alad.teacher import TeacherError

log = logging.getLogger(__name__)

FORMAT = 1
WHERE = "phase3.distill.teacher"


@dataclass
class KDTeacher:
    """A distillation teacher, resolved to a local folder; its weights are read by `load` only
    (a cached run never needs them)."""

    spec: str  # as configured
    folder: Path
    hf: bool  # a Hugging Face task model (else an alad model folder)
    head_kind: str  # "token" | "span"
    task: str | None  # an alad model's task (a Hugging Face model does not say)
    labels: list[str]  # in the teacher's logit order ([] for QA)
    tokenizer: PreTrainedTokenizerBase
    fingerprint: str
    version: str | None = None  # models:/<name>/<version> when it came from the registry

    def describe(self) -> dict[str, Any]:
        """What the student's manifest records of its teacher."""
        return {
            "teacher": self.spec,
            "teacher_dir": str(self.folder),
            "teacher_version": self.version,
            "teacher_fingerprint": self.fingerprint,
        }

    def load(self, device: torch.device) -> nn.Module:
        """The teacher in eval mode on `device`: token ids -> [B, T, labels | 2] logits."""
        if not self.hf:
            return load_model(self.folder, device)[0]
        from transformers import AutoModelForQuestionAnswering, AutoModelForTokenClassification

        auto = AutoModelForQuestionAnswering if self.head_kind == "span" else (
            AutoModelForTokenClassification
        )  # fmt: skip
        return HFLogits(auto.from_pretrained(self.folder), self.head_kind == "span").to(device)


class HFLogits(nn.Module):
    """A Hugging Face task model as alad's models are called: (ids, mask) -> logits."""

    def __init__(self, model: nn.Module, span: bool):
        super().__init__()
        self.model, self.span = model.eval(), span

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.model(input_ids=input_ids, attention_mask=attention_mask)
        return torch.stack([out.start_logits, out.end_logits], -1) if self.span else out.logits


def resolve_teacher(spec: str) -> KDTeacher:
    """`phase3.distill.teacher` as a KDTeacher (downloaded first where it is a registry URI)."""
    version = None
    if spec.startswith("@"):
        raise TeacherError(
            f"{WHERE}={spec!r} is a sweep grid's placeholder (the task's best `large` cell), "
            "resolved only inside `alad sweep`; give a model folder or models:/<name>@<alias>"
        )
    if is_registry_uri(spec):
        folder, version = registered_model_folder(spec)
    else:
        folder = Path(spec).expanduser()
    if (folder / "manifest.json").is_file():
        manifest = read_manifest(folder)
        verify_model_folder(folder, manifest)
        # its files' checksums (from the manifest, verified just now; or computed where an
        # unchecked folder is allowed): the same weights give the same cache, whatever the path
        sums = manifest.get("files") or checksums(folder)
        files = {"files": sums, "encoder_spec": manifest.get("encoder_spec")}
        return KDTeacher(
            spec, folder, False, manifest["head"]["kind"], manifest["task"],
            list(manifest["labels"]), AutoTokenizer.from_pretrained(folder / "encoder"),
            _digest(json.dumps(files, sort_keys=True).encode()), version,
        )  # fmt: skip
    return _hf_teacher(spec)


def _hf_teacher(spec: str) -> KDTeacher:
    """A Hugging Face task model (folder or hub id) as a teacher; its labels from id2label."""
    source = Path(resolve(spec))
    if not source.is_dir():  # a hub id: its snapshot (the HF cache offline, else downloaded)
        from huggingface_hub import snapshot_download

        try:
            source = Path(snapshot_download(spec))
        except Exception as exc:  # the hub client raises many types; one line names the spec
            raise TeacherError(
                f"{WHERE}={spec}: not an alad model folder, a local folder or a reachable "
                f"hub model ({type(exc).__name__})"
            ) from None
    config = AutoConfig.from_pretrained(source)
    task_heads = ("ForTokenClassification", "ForQuestionAnswering")
    heads = [a for a in config.architectures or [] if a.endswith(task_heads)]
    if not heads:
        raise TeacherError(
            f"{WHERE}={spec}: {config.architectures or 'a model'} has no task head; a teacher "
            "is a fine-tuned task model (an alad model folder, or a Hugging Face "
            "*ForTokenClassification / *ForQuestionAnswering model)"
        )
    span = heads[0].endswith("ForQuestionAnswering")
    labels = [] if span else [str(config.id2label[i]) for i in range(config.num_labels)]
    if labels and all(re.fullmatch(r"LABEL_\d+", label) for label in labels):
        raise TeacherError(
            f"{WHERE}={spec}: its config.json does not name its labels (LABEL_0 .. "
            f"LABEL_{len(labels) - 1}); write the label names into its id2label/label2id "
            "(experiments/parity.sh does for the peer harness's teacher)"
        )
    weights = [p for p in source.iterdir() if p.suffix == ".safetensors"]
    weights += source.glob("pytorch_model*.bin")
    files = sorted([source / "config.json", *weights])
    listing = json.dumps([[p.name, sha256(p)] for p in files]).encode()
    tok = AutoTokenizer.from_pretrained(source)
    kind = "span" if span else "token"
    return KDTeacher(spec, source, True, kind, None, labels, tok, _digest(listing))


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def label_order(teacher: KDTeacher, task: str, labels: Sequence[str], train: str) -> list[int]:
    """The teacher's logit column of each of the task's labels; one TeacherError (one line)
    when the teacher is of another task or has another label set."""
    kind = TASKS[task].head_kind
    if teacher.head_kind != kind or (teacher.task is not None and teacher.task != task):
        what = teacher.task or ("QA" if teacher.head_kind == "span" else "token-tagging")
        raise TeacherError(
            f"{WHERE}={teacher.spec}: a {what} model; phase 3 trains {task}: distil from a "
            f"model of the same task"
        )
    if set(teacher.labels) != set(labels) or len(teacher.labels) != len(labels):
        raise TeacherError(
            f"{WHERE}={teacher.spec}: the teacher's labels {list(teacher.labels)} "
            f"({teacher.folder}) differ from this task's training labels {list(labels)} "
            f"({train}); distil from a model of the same task with the same labels"
        )
    return [teacher.labels.index(label) for label in labels]


@dataclass
class TeacherLogits:
    """The teacher's targets of every training row, in row order (alad.tasks `kd_sum`)."""

    pieces: list[torch.Tensor]
    teacher: KDTeacher
    path: Path

    def rows(self, rows: Sequence[int]) -> list[torch.Tensor]:
        return [self.pieces[i] for i in rows]


def teacher_logits(
    spec: str,
    task: Task,
    examples: Sequence[Any],
    feats: Any,
    student_tok: PreTrainedTokenizerBase,
    labels: Sequence[str],
    train: str,
    root: Path,
    runtime: Runtime,
    max_length: int,
    batch_size: int = 32,
) -> TeacherLogits:
    """The teacher `spec`'s targets for the training rows `feats` (of `examples`, windows of
    `max_length` tokens), read from the cache under `root` or computed once and written there
    (rank 0; the others read). `train` names the training data in errors."""
    teacher = resolve_teacher(spec)
    order = label_order(teacher, task.name, labels, train)
    if task.head_kind == "token":
        inputs = word_rows(teacher.tokenizer, examples, feats, max_length, f"{WHERE}={spec}")
    else:
        inputs = _qa_inputs(student_tok, teacher.tokenizer, feats)
    key = {
        "format": FORMAT,
        "task": task.head_kind,
        "teacher": teacher.fingerprint,
        "tokenizer": tokenizer_hash(teacher.tokenizer),
        "labels": teacher.labels,
        "inputs": _inputs_hash(inputs),
        "rows": task.num_rows(feats),
    }
    name = f"{teacher.fingerprint}-{_digest(json.dumps(key, sort_keys=True).encode())}"
    path = root / "teacher-logits" / f"{name}.safetensors"
    for turn in ("main", "others"):  # rank 0 computes and writes the file; the others read it
        if is_main() == (turn == "main"):
            path.parent.mkdir(parents=True, exist_ok=True)
            with FileLock(f"{path}.lock"):  # sweep cells on several workers: one computation
                found = _read(path, key)
                if found is None:
                    found = _compute(teacher, task, inputs, feats, runtime, batch_size)
                    _write(found, path, key)
        barrier()
    logits, lengths = found
    if task.head_kind == "token":
        logits = logits[:, order]
    log.info("phase 3: distilling from %s (teacher logits %s)", spec, path)
    return TeacherLogits(list(torch.split(logits, lengths.tolist())), teacher, path)


@dataclass
class TeacherRows:
    """What a teacher runs on (`feats`, rows of its own token ids) and how its outputs map to
    the student's rows: token tasks `owner[i]` = the student row of teacher row i (its scored
    positions are that row's next words); QA `places[r]` = (student position, teacher position)
    of each answer candidate of window r."""

    feats: Any
    owner: list[int] | None = None
    places: list[list[tuple[int, int]]] | None = None
    _of: list[list[int]] | None = field(default=None, init=False, repr=False)

    def rows_of(self, student_rows: Sequence[int]) -> list[int]:
        """Token tasks: the teacher rows of these student rows, in their order, so that the
        teacher's scored positions pair up one by one with the student's (row by row, as a
        batch's label mask orders them)."""
        if self._of is None:
            assert self.owner is not None, "QA rows pair up by position, not by owner"
            self._of = [[] for _ in range(max(self.owner, default=-1) + 1)]
            for i, owner in enumerate(self.owner):
                self._of[owner].append(i)
        return [t for r in student_rows for t in self._of[r]]


def word_rows(
    tok: PreTrainedTokenizerBase,
    examples: Sequence[Any],
    feats: Any,
    max_length: int,
    who: str,
    label2id: dict[str, int] | None = None,
) -> TeacherRows:
    """Each student window's words, encoded by the teacher's tokenizer (module docstring),
    with their labels when `label2id` is given (a teacher that trains: SLAD). One TeacherError
    naming `who` where the teacher would score other words than the student."""
    windows = []
    for si, start, n in zip(feats.sentence_index, feats.word_start, feats.num_words, strict=True):
        s = examples[si]
        windows.append(TaggedSentence(s.words[start : start + n], s.tags[start : start + n]))
    tfeats = tagging.encode_tagged(tok, windows, label2id, max_length)
    scored = [0] * len(feats)
    for owner, n in zip(tfeats.sentence_index, tfeats.num_words, strict=True):
        scored[owner] += n
    for r, (got, want) in enumerate(zip(scored, feats.num_words, strict=True)):
        if got != want:  # a word cut by truncation: it would pair the wrong words
            raise TeacherError(
                f"{who}: training row {r}: the teacher scores {got} words, the student {want}; "
                "raise phase3.max_length"
            )
    return TeacherRows(tfeats, owner=list(tfeats.sentence_index))


def _qa_inputs(
    student: PreTrainedTokenizerBase, teacher: PreTrainedTokenizerBase, feats: QAFeatures
) -> TeacherRows:
    """Each student window as the teacher's ids: its question and context token strings
    converted, wrapped in the teacher's own special tokens (module docstring)."""
    s_pre, s_mid, _ = _pair_template(student)  # where the question sits in its windows
    pre, mid, post = _pair_template(teacher)
    rows, places = [], []
    for ids, offsets in zip(feats.input_ids, feats.offset_mapping, strict=True):
        context = [p for p, o in enumerate(offsets) if o is not None]
        question = range(len(s_pre), context[0] - len(s_mid))
        q, c = (_teacher_ids(student, teacher, [ids[p] for p in ps]) for ps in (question, context))
        rows.append(pre + q + mid + c + post)
        first = len(pre) + len(q) + len(mid)  # the teacher's position of the first context token
        places.append([(0, 0), *((s, first + j) for j, s in enumerate(context))])
    n = len(rows)
    tfeats = QAFeatures(rows, [[1] * len(r) for r in rows], list(range(n)), [[]] * n)
    return TeacherRows(tfeats, places=places)


def _pair_template(tok: PreTrainedTokenizerBase) -> tuple[list[int], list[int], list[int]]:
    """The special tokens a tokenizer puts around a (question, context) pair: (before, between,
    after), read off one encoded pair ([CLS] A [SEP] B [SEP]; <s> A </s></s> B </s>)."""
    enc = tok("a", "b", return_special_tokens_mask=True)
    parts: list[list[int]] = [[]]
    kinds = [1]
    for token, special in zip(enc["input_ids"], enc["special_tokens_mask"], strict=True):
        if special != kinds[-1]:
            parts.append([])
            kinds.append(special)
        parts[-1].append(token)
    if kinds != [1, 0, 1, 0, 1] or not parts[0]:
        raise TeacherError(
            f"{WHERE}: QA distillation needs a teacher tokenizer that puts a pair as "
            f"[CLS] question [SEP] context [SEP] (its own special tokens); {type(tok).__name__} "
            "does not"
        )
    return parts[0], parts[2], parts[4]


def _teacher_ids(
    student: PreTrainedTokenizerBase, teacher: PreTrainedTokenizerBase, ids: list[int]
) -> list[int]:
    out = []
    for token in student.convert_ids_to_tokens(ids):
        if token == student.unk_token:
            out.append(teacher.unk_token_id)
            continue
        tid = teacher.convert_tokens_to_ids(token)
        if tid is None or tid == teacher.unk_token_id:
            raise TeacherError(
                f"{WHERE}: QA distillation reads the teacher on the student's windows token by "
                f"token, and the teacher's vocabulary has no {token!r}: the two tokenizers must "
                "share their token strings (as minilm and mpnet do)"
            )
        out.append(tid)
    return out


def _inputs_hash(inputs: TeacherRows) -> str:
    h = hashlib.sha256()
    f = inputs.feats
    for i, row in enumerate(f.input_ids):
        h.update(torch.as_tensor(row, dtype=torch.int64).numpy().tobytes())
        if isinstance(f, tagging.TaggedFeatures):  # which positions are first sub-tokens
            scored = [int(x != tagging.IGNORE) for x in f.labels[i]]
            h.update(bytes(scored) + str(inputs.owner[i]).encode() + b"|")
        else:
            h.update(json.dumps(inputs.places[i]).encode())
    return h.hexdigest()[:16]


def _compute(
    teacher: KDTeacher,
    task: Task,
    inputs: TeacherRows,
    feats: Any,
    runtime: Runtime,
    batch_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's forward passes over every row: (targets back to back, rows' lengths)."""
    log.info("phase 3: computing the teacher's logits once (%s)", teacher.spec)
    model = teacher.load(runtime.device)
    pad = teacher.tokenizer.pad_token_id or 0
    outputs = predict_outputs(model, task, inputs.feats, batch_size, pad)  # fp32, eval mode
    del model
    if inputs.owner is not None:
        pieces: list[list[torch.Tensor]] = [[] for _ in range(task.num_rows(feats))]
        for row, out, owner in zip(inputs.feats.labels, outputs, inputs.owner, strict=True):
            scored = torch.tensor(row[: len(out)]) != tagging.IGNORE
            pieces[owner].append(out[scored])
        rows = [torch.cat(p) for p in pieces]  # as many words as the student's (word_rows)
    else:
        rows = []
        for out, places, ids in zip(outputs, inputs.places, feats.input_ids, strict=True):
            target = torch.full((len(ids), 2), -torch.inf)
            s_pos, t_pos = (list(x) for x in zip(*places, strict=True))
            target[s_pos] = out[t_pos]
            rows.append(target)
    lengths = torch.tensor([len(r) for r in rows], dtype=torch.int64)
    return torch.cat(rows).float().contiguous(), lengths


def _checksum(logits: torch.Tensor, lengths: torch.Tensor) -> str:
    h = hashlib.sha256(logits.numpy().tobytes())
    h.update(lengths.numpy().tobytes())
    return h.hexdigest()


def _write(found: tuple[torch.Tensor, torch.Tensor], path: Path, key: dict[str, Any]) -> None:
    logits, lengths = found
    meta = {"key": json.dumps(key, sort_keys=True), "sha256": _checksum(logits, lengths)}
    atomic_save({"logits": logits, "lengths": lengths}, path, meta)


def _read(path: Path, key: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(targets, lengths) of an intact cache file of `key`, else None (a damaged one or one of
    another key is computed again: never a traceback on every later run)."""
    if not path.is_file():
        return None
    try:
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(path)
        logits, lengths = tensors["logits"], tensors["lengths"]
        if json.loads(meta.get("key", "null")) != json.loads(json.dumps(key)):
            problem = "was written for another key"
        elif meta.get("sha256") != _checksum(logits, lengths):
            problem = "fails its checksum"
        elif len(lengths) != key["rows"] or int(lengths.sum()) != logits.shape[0]:
            problem = f"holds {len(lengths)} rows, expected {key['rows']}"
        else:
            return logits, lengths
    except Exception as exc:  # safetensors raises its own error type for a damaged file
        problem = f"is unreadable ({type(exc).__name__})"
    log.warning("teacher logits %s %s; computing them again", path, problem)
    return None


__all__ = [
    "KDTeacher",
    "TeacherLogits",
    "TeacherRows",
    "label_order",
    "resolve_teacher",
    "teacher_logits",
    "word_rows",
]
