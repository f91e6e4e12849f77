"""Task metrics, used by `alad evaluate MODEL --test FILE` through each task's `score`.

METHOD.md, "Tasks and metrics in the paper":
- POS (UPOS): accuracy and F1, scored per word (`pos_metrics`).
- NER (BIO): entity-level F1 overall (micro) and macro F1, via seqeval (`ner_metrics`).
- Extractive QA (SQuAD 2.0): exact match and F1 with the official normalisation
  (`squad_v2_metrics`), re-implemented here because the `evaluate` package downloads its metric
  script from the Hub at run time and this project runs offline.
- Size as % of M_L's parameters and speed-up relative to M_L (`size_and_speed`).
The Table-1 row itself is the task's (alad.tasks.table_row).

Scales: POS and NER scores are fractions in [0, 1] (as seqeval returns them); SQuAD scores are in
percent [0, 100] (as the official script prints them); the table row multiplies POS/NER by 100,
so every score in the table is a percentage with one decimal.
"""

from __future__ import annotations

import logging
import math
import re
import string
from collections import Counter

log = logging.getLogger(__name__)


def _check_lengths(gold: list[list[str]], pred: list[list[str]]) -> None:
    # A length mismatch means the prediction was aligned to the wrong words (e.g. sub-tokens
    # instead of first sub-tokens); zip() would silently truncate it, so fail loudly instead.
    if len(gold) != len(pred):
        raise ValueError(f"{len(gold)} gold sentences but {len(pred)} predicted sentences")
    for i, (g, p) in enumerate(zip(gold, pred, strict=True)):
        if len(g) != len(p):
            raise ValueError(f"sentence {i}: {len(g)} gold labels but {len(p)} predicted labels")


def _prf(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    # 0/0 counts as 0 (sklearn/seqeval `zero_division=0`): a tag never predicted has precision 0.
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


# ---------------------------------------------------------------------------------------------
# POS


def pos_metrics(gold: list[list[str]], pred: list[list[str]]) -> dict:
    """Per-word UPOS scores (fractions): accuracy, f1_micro, f1_macro, per_tag.

    Not seqeval: it would parse `NOUN`/`ADP` as IOB chunk tags. Macro F1 averages over every tag
    in gold ∪ pred (a tag only ever predicted scores F1 0, as in sklearn with those labels).
    Micro F1 equals accuracy for single-label tagging; it is computed from the counts anyway so
    POS and NER dicts share their keys.
    """
    _check_lengths(gold, pred)
    tp: Counter[str] = Counter()
    fp: Counter[str] = Counter()
    fn: Counter[str] = Counter()
    for g_sent, p_sent in zip(gold, pred, strict=True):
        for g, p in zip(g_sent, p_sent, strict=True):
            if g == p:
                tp[g] += 1
            else:
                fp[p] += 1
                fn[g] += 1
    words = sum(len(s) for s in gold)
    if words == 0:
        raise ValueError("no words to score")

    per_tag: dict[str, dict] = {}
    for tag in sorted(set(tp) | set(fp) | set(fn)):
        precision, recall, f1 = _prf(tp[tag], fp[tag], fn[tag])
        support = tp[tag] + fn[tag]  # gold occurrences
        per_tag[tag] = {"precision": precision, "recall": recall, "f1": f1, "support": support}

    correct = sum(tp.values())
    _, _, f1_micro = _prf(correct, sum(fp.values()), sum(fn.values()))
    return {
        "accuracy": correct / words,
        "f1_micro": f1_micro,
        "f1_macro": sum(t["f1"] for t in per_tag.values()) / len(per_tag),
        "per_tag": per_tag,
        "words": words,
    }


# ---------------------------------------------------------------------------------------------
# NER


def ner_metrics(gold: list[list[str]], pred: list[list[str]]) -> dict:
    """Entity-level BIO scores via seqeval (fractions): f1_micro, precision, recall, f1_macro,
    per_type, plus token-level accuracy.

    seqeval's default mode is conlleval-compatible (an `I-x` after `O` starts an entity); an
    entity counts only if type and both boundaries match exactly, so partial spans are wrong.
    `f1_micro` is the paper's F1_O ("F1 overall"); `f1_macro` averages over the entity types in
    gold ∪ pred.
    """
    # seqeval pulls in scikit-learn (~4 s to import): loaded when NER is scored, not whenever
    # the config (which validates against the tasks above this module) is imported.
    from seqeval.metrics import accuracy_score, classification_report, f1_score
    from seqeval.metrics.sequence_labeling import get_entities

    _check_lengths(gold, pred)
    if sum(len(s) for s in gold) == 0:
        raise ValueError("no tokens to score")
    types = sorted({t for t, _, _ in get_entities(gold)} | {t for t, _, _ in get_entities(pred)})
    if not types:
        # No entity anywhere: seqeval gives micro 0 but macro NaN (mean of nothing); report 0 for
        # both, like conlleval, so the dict stays JSON-safe.
        zero = {"f1_micro": 0.0, "precision": 0.0, "recall": 0.0, "f1_macro": 0.0}
        return {**zero, "per_type": {}, "accuracy": float(accuracy_score(gold, pred))}
    # zero_division=0: a type never predicted gets precision 0 instead of a warning per call.
    report = classification_report(gold, pred, output_dict=True, zero_division=0)
    micro = report["micro avg"]
    per_type = {
        t: {
            "precision": float(report[t]["precision"]),
            "recall": float(report[t]["recall"]),
            "f1": float(report[t]["f1-score"]),
            "support": int(report[t]["support"]),
        }
        for t in types
    }
    return {
        "f1_micro": float(f1_score(gold, pred, average="micro", zero_division=0)),
        "precision": float(micro["precision"]),
        "recall": float(micro["recall"]),
        "f1_macro": float(f1_score(gold, pred, average="macro", zero_division=0)),
        "per_type": per_type,
        "accuracy": float(accuracy_score(gold, pred)),
    }


# ---------------------------------------------------------------------------------------------
# SQuAD 2.0 (official evaluate-v2.0.py, by hand)

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(s: str) -> str:
    """Official order: lower -> remove punctuation -> remove articles -> collapse whitespace.

    The order matters: "the-cat" loses its hyphen first and becomes "thecat", not "cat".
    """
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCTUATION)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def exact_match(pred: str, gold: str) -> int:
    """1 if the normalised strings are equal, else 0."""
    return int(normalize_answer(pred) == normalize_answer(gold))


def f1_token(pred: str, gold: str) -> float:
    """Token-overlap F1 of the normalised answers (multiset overlap, as the official script).

    If either side normalises to no tokens, F1 is 1 when both are empty (a correct "no answer")
    and 0 otherwise.
    """
    pred_toks = normalize_answer(pred).split()
    gold_toks = normalize_answer(gold).split()
    if not pred_toks or not gold_toks:
        return float(pred_toks == gold_toks)
    same = sum((Counter(pred_toks) & Counter(gold_toks)).values())
    if same == 0:
        return 0.0
    precision = same / len(pred_toks)
    recall = same / len(gold_toks)
    return 2 * precision * recall / (precision + recall)


def _mean_pct(scores: list[float]) -> float:
    return 100.0 * sum(scores) / len(scores)


def squad_v2_metrics(gold: dict[str, list[str]], pred: dict[str, str]) -> dict:
    """Official SQuAD 2.0 scores in percent: exact, f1, total and the HasAns_/NoAns_ breakdown.

    gold maps question id -> gold answer texts ([] for unanswerable); pred maps id -> predicted
    text ("" for "no answer"). As in the official script, gold answers that normalise to "" are
    dropped and an id left with none is scored against [""], while HasAns is decided by the raw
    list being non-empty; the score per question is the max over its gold answers.

    Deviations from the official script, both reported: a missing prediction counts as "" (the
    official script skips it and then crashes in the breakdown) and is counted in `missing`;
    predictions for unknown ids are ignored (as official) but logged. As in the official
    script, a HasAns_/NoAns_ group with no questions is left out of the dict rather than
    reported as 0.
    """
    if not gold:
        raise ValueError("no gold questions to score")
    missing = [qid for qid in gold if qid not in pred]
    if missing:
        log.warning(
            "%d of %d questions have no prediction (scored as no answer), e.g. %s",
            len(missing),
            len(gold),
            missing[:3],
        )
    extra = len(set(pred) - set(gold))
    if extra:
        log.warning("%d predictions have no gold question and are ignored", extra)

    exact: dict[str, float] = {}
    f1: dict[str, float] = {}
    for qid, answers in gold.items():
        golds = [a for a in answers if normalize_answer(a)] or [""]
        answer = pred.get(qid, "")
        exact[qid] = max(exact_match(answer, g) for g in golds)
        f1[qid] = max(f1_token(answer, g) for g in golds)

    out: dict = {
        "exact": _mean_pct(list(exact.values())),
        "f1": _mean_pct(list(f1.values())),
        "total": len(gold),
    }
    has_ans = [qid for qid, answers in gold.items() if answers]
    no_ans = [qid for qid, answers in gold.items() if not answers]
    for prefix, qids in (("HasAns", has_ans), ("NoAns", no_ans)):
        if qids:
            out[f"{prefix}_exact"] = _mean_pct([exact[q] for q in qids])
            out[f"{prefix}_f1"] = _mean_pct([f1[q] for q in qids])
            out[f"{prefix}_total"] = len(qids)
    out["missing"] = len(missing)
    return out


# ---------------------------------------------------------------------------------------------
# Size, speed and the table


def size_pct(compressed_params: int, large_params: int) -> float:
    """The paper's "size %": 100·compressed/large parameters."""
    for name, value in (("compressed_params", compressed_params), ("large_params", large_params)):
        if not value > 0:
            raise ValueError(f"{name} must be positive, got {value!r}")
    return 100.0 * compressed_params / large_params


def size_and_speed(
    compressed_params: int, large_params: int, compressed_seconds: float, large_seconds: float
) -> dict:
    """`size_pct` = 100·compressed/large parameters; `speedup` = large / compressed seconds."""
    for name, value in (
        ("compressed_params", compressed_params),
        ("large_params", large_params),
        ("compressed_seconds", compressed_seconds),
        ("large_seconds", large_seconds),
    ):
        # `not value > 0` also rejects NaN, which `value <= 0` would let through.
        if not value > 0 or math.isinf(value):
            raise ValueError(f"{name} must be positive and finite, got {value!r}")
    return {
        "size_pct": size_pct(compressed_params, large_params),
        "speedup": large_seconds / compressed_seconds,
    }
