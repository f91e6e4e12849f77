"""Extractive QA (SQuAD 2.0): windowed features for training/eval and span post-processing.

The Hugging Face `run_qa.py` / `utils_qa.py` recipe, for any fast tokenizer whose first token is
the classifier token (BERT `[CLS]`, MPNet/RoBERTa `<s>`):

    feats = prepare_qa_features(tok, examples, max_length=384, stride=128, train=False)
    # ... run the model over feats[i] (padded by a collator), collect start/end logits ...
    preds, details = postprocess_qa(examples, feats, start_logits, end_logits)
    thr = best_null_threshold(gold_answers(examples), details)  # tune on dev, reuse on test

Question first, context second, only the context is truncated; a long context becomes several
windows overlapping by `stride` tokens. Index 0 (CLS) is the "no answer" position: training
labels point there when the question is unanswerable or the gold answer is not wholly inside the
window, and at inference the null score is start[0] + end[0], minimised over the windows.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from alad.data.records import QAExample
from alad.errors import DataFormatError
from alad.metrics import f1_token, normalize_answer

log = logging.getLogger(__name__)

CLS_INDEX = 0
_CONTEXT = 1  # sequence id of the context (question is 0)
_BATCH = 1000


@dataclass
class QAFeatures:
    """One entry per window. `offset_mapping[f][t]` is the (char start, char end) of token t in
    its example's context, or None for question/special tokens. `start_positions` /
    `end_positions` only when built with `train=True`."""

    input_ids: list[list[int]]
    attention_mask: list[list[int]]
    example_index: list[int]
    offset_mapping: list[list[tuple[int, int] | None]]
    start_positions: list[int] | None = None
    end_positions: list[int] | None = None
    token_type_ids: list[list[int]] | None = None  # tokenizers that have them (BERT), else None
    n_split_examples: int = 0  # examples that needed more than one window
    example_ids: list[str] = field(default_factory=list)  # QAExample.id per feature

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, i: int) -> dict[str, Any]:
        """Model inputs (and labels) of feature i, unpadded, for a padding collator."""
        item: dict[str, Any] = {
            "input_ids": self.input_ids[i],
            "attention_mask": self.attention_mask[i],
        }
        if self.token_type_ids is not None:
            item["token_type_ids"] = self.token_type_ids[i]
        if self.start_positions is not None and self.end_positions is not None:
            item["start_positions"] = self.start_positions[i]
            item["end_positions"] = self.end_positions[i]
        return item


def _answer_char_span(text: str, start: int) -> tuple[int, int]:
    """[start, end) of the answer with surrounding whitespace trimmed (SQuAD has a few answers
    with a leading/trailing space, which would otherwise pull in the neighbouring token)."""
    stripped = text.strip()
    if not stripped:
        return start, start + len(text)
    lead = len(text) - len(text.lstrip())
    return start + lead, start + lead + len(stripped)


def prepare_qa_features(
    tokenizer,
    examples: Sequence[QAExample],
    max_length: int = 384,
    stride: int = 128,
    train: bool = False,
) -> QAFeatures:
    """Tokenize (question, context) pairs into overlapping windows of at most `max_length` tokens.

    No padding (the collator pads). With `train=True`, start/end labels from the first gold
    answer, CLS (0) where the example is unanswerable or the answer is not wholly inside the
    window. A question that leaves no more than `stride` context tokens per window (too long for
    `max_length` on its own) is a DataFormatError naming the example."""
    _check_tokenizer_and_sizes(tokenizer, max_length, stride)
    examples = list(examples)
    # As utils_qa: leading whitespace in questions only wastes tokens (and breaks some BPEs).
    questions = [ex.question.lstrip() for ex in examples]

    feats = QAFeatures([], [], [], [], example_ids=[])
    if train:
        feats.start_positions, feats.end_positions = [], []
    has_token_types = True

    for lo in range(0, len(examples), _BATCH):
        batch = examples[lo : lo + _BATCH]
        batch_q = questions[lo : lo + _BATCH]
        _check_question_room(tokenizer, batch, batch_q, max_length, stride)
        enc = _encode_windows(tokenizer, batch, batch_q, max_length, stride)
        # Every feature has token types or none does, so one batch without them drops them all.
        has_token_types = has_token_types and "token_type_ids" in enc
        for f, sample in enumerate(enc["overflow_to_sample_mapping"]):
            ex_i = lo + sample
            offsets = _window_offsets(tokenizer, enc, f)
            _append_window(feats, enc, f, ex_i, examples[ex_i], offsets, has_token_types, train)
    if not has_token_types:
        feats.token_type_ids = None

    feats.n_split_examples = sum(1 for n in Counter(feats.example_index).values() if n > 1)
    if examples:
        log.info(
            "QA features: %d examples -> %d windows; %d examples split into more than one "
            "window (max_length=%d, stride=%d)",
            len(examples),
            len(feats),
            feats.n_split_examples,
            max_length,
            stride,
        )
    return feats


def _check_tokenizer_and_sizes(tokenizer, max_length: int, stride: int) -> None:
    if not getattr(tokenizer, "is_fast", False):
        raise TypeError(
            f"{type(tokenizer).__name__} is not a fast tokenizer; QA features need offset "
            "mappings and sequence ids (use a tokenizers-backed tokenizer)"
        )
    if stride < 0 or max_length <= 0:
        raise ValueError(f"need max_length > 0 and stride >= 0, got {max_length=}, {stride=}")


def _check_question_room(
    tokenizer, batch: list[QAExample], questions: list[str], max_length: int, stride: int
) -> None:
    """A DataFormatError naming the first example whose question leaves no more than `stride`
    context tokens per window: the data's fault, so the user must learn which example it is."""
    n_special = tokenizer.num_special_tokens_to_add(pair=True)
    q_lens = tokenizer(questions, add_special_tokens=False)["input_ids"]
    for ex, q_ids in zip(batch, q_lens, strict=True):
        room = max_length - n_special - len(q_ids)
        if room <= stride:
            raise DataFormatError(
                f"QA example {ex.id!r}: question alone is too long for max_length="
                f"{max_length}: its {len(q_ids)} tokens + {n_special} special tokens leave "
                f"{max(room, 0)} context tokens per window, need more than stride={stride} "
                f"(raise phase3.max_length, lower phase3.stride, or drop the example)"
            )


def _encode_windows(
    tokenizer, batch: list[QAExample], questions: list[str], max_length: int, stride: int
):
    """The tokenizer's BatchEncoding of every window of every (question, context) pair."""
    return tokenizer(
        questions,
        [ex.context for ex in batch],
        truncation="only_second",
        max_length=max_length,
        stride=stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        padding=False,
    )


def _window_offsets(tokenizer, enc, f: int) -> list[tuple[int, int] | None]:
    """Character offsets of window f's context tokens, None for question/special tokens."""
    seq_ids = enc.sequence_ids(f)
    if seq_ids[CLS_INDEX] is not None:
        first = enc["input_ids"][f][0]
        raise ValueError(
            f"{type(tokenizer).__name__} does not start a pair with a special (CLS) "
            f"token (first token {first}); the no-answer position must be index 0"
        )
    return [
        (int(o[0]), int(o[1])) if s == _CONTEXT else None
        for o, s in zip(enc["offset_mapping"][f], seq_ids, strict=True)
    ]


def _append_window(
    feats: QAFeatures,
    enc,
    f: int,
    ex_i: int,
    ex: QAExample,
    offsets: list[tuple[int, int] | None],
    with_token_types: bool,
    train: bool,
) -> None:
    """Window f of the encoding (example `ex_i`) as the next feature of `feats`."""
    feats.input_ids.append(list(enc["input_ids"][f]))
    feats.attention_mask.append(list(enc["attention_mask"][f]))
    if with_token_types:
        if feats.token_type_ids is None:
            feats.token_type_ids = []
        feats.token_type_ids.append(list(enc["token_type_ids"][f]))
    feats.example_index.append(ex_i)
    feats.example_ids.append(ex.id)
    feats.offset_mapping.append(offsets)
    if train:
        s, e = _window_labels(ex, offsets)
        feats.start_positions.append(s)  # type: ignore[union-attr]
        feats.end_positions.append(e)  # type: ignore[union-attr]


def _window_labels(ex: QAExample, offsets: list[tuple[int, int] | None]) -> tuple[int, int]:
    """(start token, end token) of the first gold answer in this window, or (CLS, CLS)."""
    if ex.is_impossible:
        return CLS_INDEX, CLS_INDEX
    ctx = [i for i, o in enumerate(offsets) if o is not None]
    if not ctx:
        return CLS_INDEX, CLS_INDEX
    text, start = ex.answers[0]
    start_char, end_char = _answer_char_span(text, start)
    first, last = offsets[ctx[0]], offsets[ctx[-1]]
    assert first is not None and last is not None
    if not (first[0] <= start_char and last[1] >= end_char):
        return CLS_INDEX, CLS_INDEX
    start_tok = max(i for i in ctx if offsets[i][0] <= start_char)  # type: ignore[index]
    end_tok = min(i for i in ctx if offsets[i][1] >= end_char)  # type: ignore[index]
    if end_tok < start_tok:  # answer inside a gap between tokens (cannot happen after strip)
        return CLS_INDEX, CLS_INDEX
    return start_tok, end_tok


def _to_rows(logits, n: int, name: str) -> list[np.ndarray]:
    """Per-feature 1-D float arrays from a padded 2-D array/tensor or a list of 1-D ones."""
    if hasattr(logits, "detach"):  # torch tensor
        logits = logits.detach().float().cpu().numpy()
    if isinstance(logits, np.ndarray):
        if logits.ndim != 2:
            raise ValueError(f"{name}: expected a 2-D (features, tokens) array, got {logits.shape}")
        rows = list(logits)
    else:
        rows = [
            r.detach().float().cpu().numpy() if hasattr(r, "detach") else np.asarray(r)
            for r in logits
        ]
    if len(rows) != n:
        raise ValueError(f"{name}: {len(rows)} rows of logits for {n} features")
    return [np.asarray(r, dtype=np.float64).reshape(-1) for r in rows]


def postprocess_qa(
    examples: Sequence[QAExample],
    features: QAFeatures,
    start_logits,
    end_logits,
    n_best: int = 20,
    max_answer_length: int = 30,
    null_threshold: float = 0.0,
) -> tuple[dict[str, str], dict[str, dict[str, Any]]]:
    """Answer text per example id ("" = no answer) and per-example details.

    Over all windows of an example: the top-`n_best` start and end indices, spans inside the
    context with start <= end and at most `max_answer_length` tokens, score = start + end logit.
    Null score = min over windows of start[CLS] + end[CLS]. Predict "" when
    null_score - best_span_score > null_threshold. Logits: numpy or torch, a padded
    (features, tokens) array or a list of per-feature 1-D arrays; only the first
    len(offset_mapping[f]) entries of row f are read.

    details[id] = {"best_span_score", "null_score", "score_diff" (null - best span), "best_text",
    "best_char_span" ((start, end) in the context, or None), "prediction"}; best_span_score is
    -inf (and best_text "") when no valid span exists."""
    n_feat = len(features)
    starts = _to_rows(start_logits, n_feat, "start_logits")
    ends = _to_rows(end_logits, n_feat, "end_logits")
    by_example = _features_by_example(features, len(examples))

    predictions: dict[str, str] = {}
    details: dict[str, dict[str, Any]] = {}
    for ex_i, ex in enumerate(examples):
        if not by_example[ex_i]:
            raise ValueError(f"QA example {ex.id!r} has no features (features built elsewhere?)")
        null_score = math.inf
        best_score = -math.inf
        best_span: tuple[int, int] | None = None
        for f in by_example[ex_i]:
            offsets = features.offset_mapping[f]
            n_tok = len(offsets)
            if len(starts[f]) < n_tok or len(ends[f]) < n_tok:
                raise ValueError(
                    f"feature {f}: logits have {len(starts[f])}/{len(ends[f])} entries for "
                    f"{n_tok} tokens"
                )
            s_log, e_log = starts[f][:n_tok], ends[f][:n_tok]
            null_score = min(null_score, float(s_log[CLS_INDEX] + e_log[CLS_INDEX]))
            score, span = _best_window_span(s_log, e_log, offsets, n_best, max_answer_length)
            if score > best_score:  # strict: on a tie the earlier window keeps the answer
                best_score, best_span = score, span
        best_text = ex.context[best_span[0] : best_span[1]] if best_span is not None else ""
        diff = null_score - best_score
        prediction = "" if diff > null_threshold else best_text
        predictions[ex.id] = prediction
        details[ex.id] = {
            "best_span_score": best_score,
            "null_score": null_score,
            "score_diff": diff,
            "best_text": best_text,
            "best_char_span": best_span,
            "prediction": prediction,
        }
    return predictions, details


def _features_by_example(features: QAFeatures, n_examples: int) -> list[list[int]]:
    """The feature indices of each example, in feature order."""
    by_example: list[list[int]] = [[] for _ in range(n_examples)]
    for f, ex_i in enumerate(features.example_index):
        if not 0 <= ex_i < n_examples:
            raise ValueError(f"feature {f} points at example {ex_i}; only {n_examples} given")
        by_example[ex_i].append(f)
    return by_example


def _best_window_span(
    s_log: np.ndarray,
    e_log: np.ndarray,
    offsets: list[tuple[int, int] | None],
    n_best: int,
    max_answer_length: int,
) -> tuple[float, tuple[int, int] | None]:
    """(score, (char start, char end)) of the best valid span among the top-`n_best` starts and
    ends of one window, or (-inf, None) when none is valid."""
    best_score = -math.inf
    best_span: tuple[int, int] | None = None
    top_s = np.argsort(-s_log, kind="stable")[:n_best]
    top_e = np.argsort(-e_log, kind="stable")[:n_best]
    for si in top_s.tolist():
        so = offsets[si]
        if so is None:
            continue
        for ei in top_e.tolist():
            eo = offsets[ei]
            if eo is None or ei < si or ei - si + 1 > max_answer_length:
                continue
            score = float(s_log[si] + e_log[ei])
            if score > best_score:
                best_score, best_span = score, (so[0], eo[1])
    return best_score, best_span


def exact_match(prediction: str, gold: Sequence[str]) -> bool:
    """SQuAD 2.0 EM: an empty gold list means unanswerable, matched only by ""."""
    golds = [g for g in gold if normalize_answer(g)] or [""]
    pred = normalize_answer(prediction)
    return any(pred == normalize_answer(g) for g in golds)


def gold_answers(examples: Sequence[QAExample]) -> dict[str, list[str]]:
    """id -> gold answer texts ([] for unanswerable), for `best_null_threshold`/evaluation."""
    return {ex.id: [text for text, _ in ex.answers] for ex in examples}


def best_null_threshold(
    gold: dict[str, list[str]], details: dict[str, dict[str, Any]], metric: str = "exact"
) -> float:
    """The `null_threshold` that maximises `metric` ("exact" or "f1") on a dev set, as SQuAD
    2.0's `find_best_thresh`. An example answers best_text when score_diff <= threshold, else
    "". Candidates are the observed score differences (plus one below them all = always "");
    ties go to the smallest threshold."""
    missing = [qid for qid in details if qid not in gold]
    if missing:
        raise ValueError(f"{len(missing)} predicted ids have no gold answers, e.g. {missing[0]!r}")
    if not details:
        raise ValueError("no predictions to tune a threshold on")
    if metric not in ("exact", "f1"):
        raise ValueError(f"metric must be 'exact' or 'f1', got {metric!r}")

    def value(pred: str, answers: list[str]) -> float:
        if metric == "exact":
            return float(exact_match(pred, answers))
        golds = [g for g in answers if normalize_answer(g)] or [""]
        return max(f1_token(pred, g) for g in golds)

    # Gain in the metric when an example switches from "" to its best span.
    gains: list[tuple[float, float]] = []
    score = 0.0
    for qid, d in details.items():
        null_value = value("", gold[qid])
        score += null_value
        gains.append((float(d["score_diff"]), value(d["best_text"], gold[qid]) - null_value))
    gains.sort(key=lambda g: g[0])
    finite = [d for d, _ in gains if math.isfinite(d)]
    best_thr = (min(finite) - 1.0) if finite else 0.0
    best_score = score
    i = 0
    while i < len(gains):
        diff = gains[i][0]
        if not math.isfinite(diff):  # no valid span (+inf): always ""; -inf cannot occur
            break
        while i < len(gains) and gains[i][0] == diff:  # equal diffs switch together
            score += gains[i][1]
            i += 1
        if score > best_score + 1e-12:
            best_score, best_thr = score, diff
    return best_thr
