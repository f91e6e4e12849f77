"""Token-task encoding (POS, NER): words -> sub-token windows with labels on first sub-tokens.

    alad finetune --task pos ...      # encodes train/dev/test with this

As the field does it: the first sub-token of each word carries the word's label, the others and
the special tokens get -100 (ignored by the loss and by scoring). A sentence longer than the
window is split into consecutive windows of whole words, never cut; the count is logged.
Predictions are read back per word and re-joined per sentence, so scores are per word.

A word the tokenizer turns into no tokens at all (a zero-width space, a byte-order mark, a
control character or NUL, a lone combining accent: its normalizer removes them) is encoded as the
tokenizer's unknown token, so it keeps its position and gets a label like any other word (the
model tags it from its context); without this the words and the labels fall out of step.

Importing this module loads neither torch nor transformers (only `collate` needs torch): the ONNX
predictor (alad/onnx_predict.py) encodes and decodes with it, through a `tokenizers` tokenizer.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from alad.data.records import TaggedSentence
from alad.errors import DataFormatError

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)
IGNORE = -100


@dataclass
class TaggedFeatures:
    """One row per window: ids, labels (-100 off first sub-tokens), and where its words belong."""

    input_ids: list[list[int]]
    labels: list[list[int]]
    sentence_index: list[int]
    num_words: list[int]  # words in this window (their labels are the non-ignored positions)
    split_sentences: int = 0
    # the window's first word in its sentence: words[word_start : word_start + num_words]
    # (a distillation teacher reads the same words with its own tokenizer, alad/distill.py)
    word_start: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.input_ids)


def label_list(train: Sequence[TaggedSentence]) -> list[str]:
    """Labels seen in training, sorted ('O' first for BIO), the model's output classes."""
    labels = sorted({t for s in train for t in s.tags})
    if "O" in labels:
        labels.remove("O")
        labels.insert(0, "O")
    return labels


def check_labels(sentences: Sequence[TaggedSentence], labels: Sequence[str], source: str) -> None:
    known = set(labels)
    for i, s in enumerate(sentences):
        unseen = sorted(set(s.tags) - known)
        if unseen:
            raise DataFormatError(
                f"{source}: sentence {i} has label(s) {unseen} that the training split does not "
                f"have (training labels: {len(labels)}). Train on data that covers them, or "
                "map them to a known label."
            )


def _word_lengths(tokenizer: PreTrainedTokenizerBase, words: Sequence[str]) -> list[int]:
    """Sub-tokens per word; 0 for a word the tokenizer drops entirely (module docstring)."""
    return [len(ids) for ids in tokenizer(list(words), add_special_tokens=False)["input_ids"]]


def _tokenizable(
    tokenizer: PreTrainedTokenizerBase, words: Sequence[str], lengths: Sequence[int]
) -> list[str]:
    """`words`, each one that has no tokens replaced by the unknown token (module docstring)."""
    if all(lengths):
        return list(words)
    if tokenizer.unk_token is None:
        word = next(w for w, n in zip(words, lengths, strict=True) if not n)
        raise DataFormatError(
            f"the word {word!r} has no tokens under this tokenizer, and the tokenizer has no "
            "unknown token to stand for it: remove or replace that word"
        )
    return [w if n else tokenizer.unk_token for w, n in zip(words, lengths, strict=True)]


def _windows(lengths: list[int], budget: int) -> list[tuple[int, int]]:
    """Greedy [start, end) word ranges whose sub-tokens fit `budget`."""
    out, start = [], 0
    while start < len(lengths):
        end, used = start, 0
        while end < len(lengths) and (end == start or used + lengths[end] <= budget):
            used += lengths[end]
            end += 1
        out.append((start, end))
        start = end
    return out


def encode_tagged(
    tokenizer: PreTrainedTokenizerBase,
    sentences: Sequence[TaggedSentence],
    label2id: dict[str, int] | None,
    max_length: int,
) -> TaggedFeatures:
    """Windows of whole words that fit `max_length` tokens including the special tokens."""
    budget = max_length - tokenizer.num_special_tokens_to_add(pair=False)
    feats = TaggedFeatures([], [], [], [])
    spans: list[tuple[int, int, int]] = []
    words: list[list[str]] = []
    for si, sentence in enumerate(sentences):
        lengths = _word_lengths(tokenizer, sentence.words)
        words.append(_tokenizable(tokenizer, sentence.words, lengths))
        windows = _windows([max(1, n) for n in lengths], budget)  # an unknown token is one
        spans.extend((si, a, b) for a, b in windows)
        feats.split_sentences += len(windows) > 1
    enc = tokenizer(
        [words[si][a:b] for si, a, b in spans],
        is_split_into_words=True,
        truncation=True,
        max_length=max_length,
    )
    for row, (si, a, b) in enumerate(spans):
        tags = sentences[si].tags[a:b]
        labels, previous = [], None
        for w in enc.word_ids(row):
            first = w is not None and w != previous
            labels.append((label2id[tags[w]] if label2id else 0) if first else IGNORE)
            previous = w
        feats.input_ids.append(enc["input_ids"][row])
        feats.labels.append(labels)
        feats.sentence_index.append(si)
        feats.word_start.append(a)
        feats.num_words.append(sum(lab != IGNORE for lab in labels))
    if feats.split_sentences:
        log.info(
            "%d of %d sentences were longer than %d tokens and split into windows",
            feats.split_sentences,
            len(sentences),
            max_length,
        )
    return feats


def collate(rows: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    import torch  # here, not at the top: the rest of the module serves without torch

    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, (ids, labs) in enumerate(rows):
        input_ids[r, : len(ids)] = torch.tensor(ids)
        labels[r, : len(labs)] = torch.tensor(labs)
        mask[r, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


def words_from_windows(
    feats: TaggedFeatures, window_preds: Sequence[Sequence[int]], n_sentences: int
) -> list[list[int]]:
    """Per-window label ids at first sub-tokens -> per-sentence label ids, in word order."""
    out: list[list[int]] = [[] for _ in range(n_sentences)]
    for si, labels, preds in zip(feats.sentence_index, feats.labels, window_preds, strict=True):
        out[si].extend(p for p, lab in zip(preds, labels, strict=False) if lab != IGNORE)
    return out


def decode_tags(
    feats: TaggedFeatures, outputs: Sequence[Any], labels: Sequence[str], n_sentences: int
) -> list[list[str]]:
    """Per-window logits [tokens, labels] (torch tensors or numpy arrays) -> the tag of each
    word of each sentence: the arg-max at its first sub-token."""
    window_preds = [o.argmax(-1).tolist() for o in outputs]
    per_sentence = words_from_windows(feats, window_preds, n_sentences)
    return [[labels[i] for i in ids] for ids in per_sentence]
