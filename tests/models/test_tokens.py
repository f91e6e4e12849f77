"""Token alignment: position i of M_C must be position i of M_L, or the mismatch is reported."""

from __future__ import annotations

import pytest
from conftest import tiny_sentences, tiny_vocab
from transformers import AutoTokenizer, BertTokenizerFast

from alad.models.catalog import load_encoder
from alad.models.packaged import PACKAGED, ModelUnavailable
from alad.models.tokens import TokenMismatch, check_token_alignment

EXTRA_TEXTS = [
    "The City of MUSIC, 1990 (Zebra).",
    "'Great' King Wrote \"Books\" in the 19th century!",
    "Café naïve 日本 — ok?",
    "x",
]


@pytest.fixture(scope="module")
def bert_tok(tiny_models):
    return AutoTokenizer.from_pretrained(tiny_models[0])


@pytest.fixture(scope="module")
def mpnet_tok(tiny_models):
    return AutoTokenizer.from_pretrained(tiny_models[1])


def _missing_word_tokenizer(word: str) -> BertTokenizerFast:
    vocab = [tok for tok in tiny_vocab() if tok != word]
    return BertTokenizerFast(vocab={tok: i for i, tok in enumerate(vocab)}, do_lower_case=True)


def test_tiny_pair_really_differs_in_specials_and_ids(bert_tok, mpnet_tok):
    assert bert_tok.cls_token != mpnet_tok.cls_token
    a, b = bert_tok("the city")["input_ids"], mpnet_tok("the city")["input_ids"]
    assert a != b  # ids differ at the special tokens, so the check must compare strings


@pytest.mark.parametrize("max_length", [8, 32, 128])
def test_bert_and_mpnet_tokenizers_align(bert_tok, mpnet_tok, max_length):
    texts = tiny_sentences(40) + EXTRA_TEXTS
    assert check_token_alignment(bert_tok, mpnet_tok, texts, max_length=max_length) == len(texts)
    assert check_token_alignment(mpnet_tok, bert_tok, texts, max_length=max_length) == len(texts)


def test_no_texts_checks_nothing(bert_tok, mpnet_tok):
    assert check_token_alignment(bert_tok, mpnet_tok, [], max_length=16) == 0


MISMATCHES = {
    # name: (compressed tokenizer, bad text, token expected on each side in the message)
    "cased-vs-uncased": (
        lambda: BertTokenizerFast(vocab=tiny_vocab(), do_lower_case=False),
        "The city of music .",
        ("<special>", "'the'"),
    ),
    "word-missing-from-vocab": (
        lambda: _missing_word_tokenizer("music"),
        "the city of music .",
        ("'m'", "'music'"),
    ),
}


@pytest.mark.parametrize("case", sorted(MISMATCHES))
@pytest.mark.parametrize("batch_size", [1, 2, 1024])
def test_mismatch_is_reported_with_index_and_tokens(mpnet_tok, case, batch_size):
    make, bad, (left, right) = MISMATCHES[case]
    texts = ["the city .", "a king was born .", bad, "the end ."]
    with pytest.raises(TokenMismatch) as info:
        check_token_alignment(
            make(), mpnet_tok, texts, max_length=32, batch_size=batch_size, source="dev.tsv"
        )
    message = str(info.value)
    assert "dev.tsv, text 2:" in message  # global index, whatever the batch size
    assert repr(bad) in message
    compressed_line = next(line for line in message.splitlines() if "compressed:" in line)
    large_line = next(line for line in message.splitlines() if "large:" in line)
    assert left in compressed_line
    assert right in large_line


def test_mismatch_reports_first_differing_position(mpnet_tok):
    # [CLS] the city of music [SEP]: token 4, 'music', splits into 5 pieces on the compressed side
    with pytest.raises(TokenMismatch, match=r"disagree at token 4 \(10 vs 6 tokens\)"):
        check_token_alignment(
            _missing_word_tokenizer("music"), mpnet_tok, ["the city of music"], max_length=32
        )


def test_mismatch_beyond_max_length_is_not_seen(mpnet_tok):
    """Only the tokens the models will see matter: truncation cuts the mismatch away."""
    cased = BertTokenizerFast(vocab=tiny_vocab(), do_lower_case=False)
    text = "the city of music and The"
    assert check_token_alignment(cased, mpnet_tok, [text], max_length=6) == 1
    with pytest.raises(TokenMismatch):
        check_token_alignment(cased, mpnet_tok, [text], max_length=32)


def test_length_only_mismatch_is_detected(mpnet_tok):
    """A trailing combining accent: the compressed tokenizer (accents kept) emits one [UNK] more,
    the large one (accents stripped) emits nothing; one sequence is longer than the other."""
    keep_accents = BertTokenizerFast(vocab=tiny_vocab(), do_lower_case=True, strip_accents=False)
    with pytest.raises(TokenMismatch, match=r"\(5 vs 4 tokens\)"):
        check_token_alignment(keep_accents, mpnet_tok, ["the city \u0301"], max_length=32)


def test_unknown_model_lists_packaged_names():
    with pytest.raises(ModelUnavailable) as info:
        load_encoder("no-such-model")
    message = str(info.value)
    assert "'no-such-model'" in message
    for name in PACKAGED:
        assert name in message


def test_unknown_model_with_ops_names_the_base():
    with pytest.raises(ModelUnavailable, match="'no-such-model'"):
        load_encoder("no-such-model:prune2:int8")


def test_folder_without_config_is_unavailable(tmp_path):
    (tmp_path / "vocab.txt").write_text("[PAD]\n")
    with pytest.raises(ModelUnavailable, match="no config.json"):
        load_encoder(str(tmp_path))
