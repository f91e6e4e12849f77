"""Token alignment check: AlAd pairs position i of M_C with position i of M_L, so both
tokenizers must cut every text into the same token sequence (METHOD.md, "The adapter").

    alad align phase1 ...   # runs this check on every text before extracting anything

Token *strings* are compared, not ids: mpnet's ids are BERT's shifted by 4 and it has its own
special tokens (<s> </s> vs [CLS] [SEP]), so special tokens are compared by role and position.
"""

from __future__ import annotations

from collections.abc import Sequence

from transformers import PreTrainedTokenizerBase

from alad.errors import AladError

SPECIAL = "<special>"


class TokenMismatch(AladError, ValueError):
    """The two tokenizers disagree on a text; aligning would silently pair the wrong tokens."""


def _tokens(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], max_length: int):
    enc = tokenizer(
        list(texts), truncation=True, max_length=max_length, return_special_tokens_mask=True
    )
    specials = set(tokenizer.all_special_tokens)
    out = []
    for ids, special in zip(enc["input_ids"], enc["special_tokens_mask"], strict=True):
        toks = tokenizer.convert_ids_to_tokens(ids)
        out.append(
            [SPECIAL if s or t in specials else t for t, s in zip(toks, special, strict=True)]
        )
    return out


def check_token_alignment(
    compressed: PreTrainedTokenizerBase,
    large: PreTrainedTokenizerBase,
    texts: Sequence[str],
    max_length: int,
    batch_size: int = 1024,
    source: str = "corpus",
) -> int:
    """Raise TokenMismatch on the first text whose token sequences differ; return texts checked."""
    for start in range(0, len(texts), batch_size):
        chunk = texts[start : start + batch_size]
        pairs = zip(
            _tokens(compressed, chunk, max_length), _tokens(large, chunk, max_length), strict=True
        )
        for offset, (a, b) in enumerate(pairs):
            if a != b:
                first = next(
                    (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y),
                    min(len(a), len(b)),
                )
                raise TokenMismatch(
                    f"{source}, text {start + offset}: the compressed and large tokenizers "
                    f"disagree at token {first} ({len(a)} vs {len(b)} tokens).\n"
                    f"  text:       {chunk[offset][:200]!r}\n"
                    f"  compressed: {a[max(0, first - 3) : first + 4]}\n"
                    f"  large:      {b[max(0, first - 3) : first + 4]}\n"
                    "AlAd needs the same token sequence from both models (e.g. both uncased "
                    "WordPiece). Pick models that share a vocabulary."
                )
    return len(texts)
