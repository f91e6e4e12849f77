"""Extractive QA windows, labels and span post-processing, on a tiny in-test WordPiece vocab."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import BertTokenizerFast, MPNetTokenizerFast

from alad.data.qa import (
    CLS_INDEX,
    QAFeatures,
    best_null_threshold,
    exact_match,
    gold_answers,
    postprocess_qa,
    prepare_qa_features,
)
from alad.data.readers import QAExample

WORDS = [
    *("the", "river", "runs", "through", "old", "city", "and", "king", "lives", "in", "a"),
    *("stone", "house", "near", "water", "where", "is", "golden", "bridge", "what", "who"),
    *("built", "it", "was", "by"),
]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
VOCAB = {t: i for i, t in enumerate(SPECIAL + WORDS + [".", ",", "?", "##s"])}

FILLER = (
    "the river runs through the old city , and the king lives in a stone house near the water ."
)
QUESTION = "Where is the golden bridge?"
ANSWER = "golden bridges"  # golden | bridge | ##s : a subword, so offsets matter
MAX_LEN, STRIDE = 32, 8


def _bert():
    return BertTokenizerFast(vocab=VOCAB, do_lower_case=True)


def _long_context() -> tuple[str, int]:
    """~90 words; the answer is context tokens 30-32, inside windows 2 and 3 (the windows hold
    23 context tokens each and start every 15 tokens)."""
    head = FILLER + " the river runs through the old city , and the"
    context = f"{head} {ANSWER} near the city . " + " ".join([FILLER] * 3)
    return context, len(head) + 1


@pytest.fixture(scope="module")
def tok():
    return _bert()


@pytest.fixture(scope="module")
def long_example() -> QAExample:
    context, start = _long_context()
    assert context[start : start + len(ANSWER)] == ANSWER
    return QAExample("q-long", QUESTION, context, ((ANSWER, start),))


@pytest.fixture(scope="module")
def train_feats(tok, long_example) -> QAFeatures:
    return prepare_qa_features(tok, [long_example], max_length=MAX_LEN, stride=STRIDE, train=True)


def _ctx_positions(offsets) -> list[int]:
    return [i for i, o in enumerate(offsets) if o is not None]


def test_tiny_tokenizer_tokenizes_as_expected(tok):
    assert tok.is_fast
    assert tok.tokenize(QUESTION) == ["where", "is", "the", "golden", "bridge", "?"]
    assert tok.tokenize(ANSWER) == ["golden", "bridge", "##s"]
    assert "[UNK]" not in tok.tokenize(_long_context()[0])


def test_long_context_gives_several_windows_with_exact_offsets(tok, long_example, train_feats):
    feats = train_feats
    n_ctx_tokens = len(tok.tokenize(long_example.context))
    assert n_ctx_tokens > 80
    assert len(feats) >= 4
    assert feats.example_index == [0] * len(feats)
    assert feats.example_ids == ["q-long"] * len(feats)
    assert feats.n_split_examples == 1
    q_len = len(tok.tokenize(QUESTION))
    full = tok(long_example.context, add_special_tokens=False, return_offsets_mapping=True)
    full_offsets = [tuple(o) for o in full["offset_mapping"]]
    prev_ctx: list[tuple[int, int]] | None = None
    for f in range(len(feats)):
        ids, offsets = feats.input_ids[f], feats.offset_mapping[f]
        assert len(ids) <= MAX_LEN and len(offsets) == len(ids) == len(feats.attention_mask[f])
        assert ids[0] == tok.cls_token_id
        # [CLS] question [SEP] context [SEP]: only context tokens carry offsets
        assert offsets[: q_len + 2] == [None] * (q_len + 2) and offsets[-1] is None
        ctx = _ctx_positions(offsets)
        assert ctx == list(range(q_len + 2, len(ids) - 1))
        assert feats.token_type_ids is not None and feats.token_type_ids[f][ctx[0]] == 1
        tokens = tok.convert_ids_to_tokens(ids)
        for i in ctx:
            s, e = offsets[i]
            assert long_example.context[s:e].lower() == tokens[i].removeprefix("##")
        # windows are consecutive slices of the context's tokens, overlapping by `stride`
        window = [offsets[i] for i in ctx]
        first = full_offsets.index(window[0])
        assert window == full_offsets[first : first + len(window)]
        if prev_ctx is not None:
            assert window[:STRIDE] == prev_ctx[-STRIDE:]
        else:
            assert first == 0
        prev_ctx = window
    assert prev_ctx is not None and prev_ctx[-1] == full_offsets[-1]


def test_training_labels_point_at_the_answer_or_cls(tok, long_example, train_feats):
    feats = train_feats
    text, start = long_example.answers[0]
    full = tok(long_example.context, add_special_tokens=False, return_offsets_mapping=True)
    full_offsets = [tuple(o) for o in full["offset_mapping"]]
    a = next(i for i, o in enumerate(full_offsets) if o[0] == start)  # "golden"
    b = a + 2  # "##s"
    assert full_offsets[b][1] == start + len(text)

    containing = []
    for f in range(len(feats)):
        offsets = feats.offset_mapping[f]
        ctx = _ctx_positions(offsets)
        c0 = full_offsets.index(offsets[ctx[0]])
        c1 = c0 + len(ctx) - 1
        s, e = feats.start_positions[f], feats.end_positions[f]
        if c0 <= a and b <= c1:
            containing.append(f)
            assert (s, e) == (ctx[0] + a - c0, ctx[0] + b - c0)
            recovered = long_example.context[offsets[s][0] : offsets[e][1]]
            assert recovered == text
            tokens = tok.convert_ids_to_tokens(feats.input_ids[f][s : e + 1])
            assert tokens == ["golden", "bridge", "##s"]
        else:
            assert (s, e) == (CLS_INDEX, CLS_INDEX)
    # the answer sits in windows 2 and 3 (their overlap); windows 1, 4, ... are all-CLS
    assert containing == [1, 2]
    assert len(feats) > 3


def test_window_with_part_of_the_answer_gets_cls(tok):
    # The answer straddles the end of window 1: labels there must be CLS, not a clipped span.
    context, _ = _long_context()
    full = tok(context, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    q_len = len(tok.tokenize(QUESTION))
    per_window = MAX_LEN - 3 - q_len
    s_char, e_char = full[per_window - 2][0], full[per_window + 1][1]  # last 2 + next 2 tokens
    ex = QAExample("q-straddle", QUESTION, context, ((context[s_char:e_char], s_char),))
    feats = prepare_qa_features(tok, [ex], max_length=MAX_LEN, stride=STRIDE, train=True)
    assert (feats.start_positions[0], feats.end_positions[0]) == (0, 0)
    s, e = feats.start_positions[1], feats.end_positions[1]
    assert s > 0
    assert (
        context[feats.offset_mapping[1][s][0] : feats.offset_mapping[1][e][1]]
        == (context[s_char:e_char])
    )


def test_unanswerable_example_is_labelled_cls_in_every_window(tok, long_example):
    ex = QAExample("q-none", "Who built it?", long_example.context, ())
    assert ex.is_impossible
    feats = prepare_qa_features(tok, [ex], max_length=MAX_LEN, stride=STRIDE, train=True)
    assert len(feats) > 1
    assert feats.start_positions == [0] * len(feats)
    assert feats.end_positions == [0] * len(feats)


def test_eval_features_have_no_labels_and_items_are_model_inputs(tok, long_example):
    short = QAExample("q-short", QUESTION, "the golden bridge .", (("golden bridge", 4),))
    feats = prepare_qa_features(tok, [short, long_example], max_length=MAX_LEN, stride=STRIDE)
    assert feats.start_positions is None and feats.end_positions is None
    assert feats.example_index[0] == 0 and set(feats.example_index[1:]) == {1}
    assert feats.n_split_examples == 1
    item = feats[0]
    assert set(item) == {"input_ids", "attention_mask", "token_type_ids"}
    train = prepare_qa_features(tok, [short], max_length=MAX_LEN, stride=STRIDE, train=True)
    # [CLS] where is the golden bridge ? [SEP] the golden bridge . [SEP]
    assert train[0]["start_positions"] == 9 and train[0]["end_positions"] == 10


def test_first_gold_answer_is_used_for_labels(tok):
    ctx = "the king built the stone house near the river ."
    ex = QAExample("q-two", "who built it ?", ctx, (("king", 4), ("the king", 0)))
    feats = prepare_qa_features(tok, [ex], max_length=MAX_LEN, stride=STRIDE, train=True)
    s, e = feats.start_positions[0], feats.end_positions[0]
    assert ctx[feats.offset_mapping[0][s][0] : feats.offset_mapping[0][e][1]] == "king"


def test_question_too_long_names_the_example(tok):
    ok = QAExample("fine", QUESTION, "the river .", ())
    bad = QAExample("too-long-q", " ".join(["river"] * 40), "the river .", ())
    with pytest.raises(ValueError, match="too-long-q"):
        prepare_qa_features(tok, [ok, bad], max_length=MAX_LEN, stride=STRIDE)
    # short enough to fit, but leaving no more than `stride` context tokens: also a clear error
    # (the tokenizers library would panic instead)
    tight = QAExample("tight-q", " ".join(["river"] * (MAX_LEN - 3 - STRIDE)), "the river .", ())
    with pytest.raises(ValueError, match="tight-q.*too long"):
        prepare_qa_features(tok, [tight], max_length=MAX_LEN, stride=STRIDE)


# ----------------------------------------------------------------------------- post-processing


def _answer_positions(feats: QAFeatures, f: int, context: str, start: int) -> tuple[int, int]:
    """Token positions of ANSWER in feature f (found via offsets, not via the labels)."""
    offsets = feats.offset_mapping[f]
    s = next(i for i, o in enumerate(offsets) if o is not None and o[0] == start)
    e = next(i for i, o in enumerate(offsets) if o is not None and o[1] == start + len(ANSWER))
    return s, e


def _blank_logits(
    feats: QAFeatures, cls: float = -5.0, background: float = -10.0
) -> tuple[list, list]:
    starts = [np.full(len(ids), background) for ids in feats.input_ids]
    ends = [np.full(len(ids), background) for ids in feats.input_ids]
    for row in starts + ends:
        row[CLS_INDEX] = cls
    return starts, ends


@pytest.fixture(scope="module")
def eval_feats(tok, long_example) -> QAFeatures:
    return prepare_qa_features(tok, [long_example], max_length=MAX_LEN, stride=STRIDE)


def test_best_span_in_second_window_is_predicted(eval_feats, long_example):
    ex = long_example
    starts, ends = _blank_logits(eval_feats)
    s, e = _answer_positions(eval_feats, 1, ex.context, ex.answers[0][1])
    starts[1][s], ends[1][e] = 10.0, 9.0
    # a weaker span elsewhere (window 3, "the river") must lose
    starts[3][12], ends[3][13] = 8.0, 8.0
    preds, details = postprocess_qa([ex], eval_feats, starts, ends)
    assert preds == {"q-long": ANSWER}
    d = details["q-long"]
    assert d["best_text"] == ANSWER and d["best_span_score"] == pytest.approx(19.0)
    assert d["null_score"] == pytest.approx(-10.0)
    assert d["best_char_span"] == (ex.answers[0][1], ex.answers[0][1] + len(ANSWER))


def test_logit_formats_agree(eval_feats, long_example):
    ex = long_example
    starts, ends = _blank_logits(eval_feats)
    s, e = _answer_positions(eval_feats, 2, ex.context, ex.answers[0][1])
    starts[2][s], ends[2][e] = 10.0, 9.0
    # padding with huge logits must be ignored, and must not crowd the top n_best (here 2)
    width = max(len(r) for r in starts) + 3
    padded_s = np.full((len(starts), width), 50.0)
    padded_e = np.full((len(starts), width), 50.0)
    for f, (rs, re_) in enumerate(zip(starts, ends, strict=True)):
        padded_s[f, : len(rs)], padded_e[f, : len(re_)] = rs, re_
    expected = postprocess_qa([ex], eval_feats, starts, ends, n_best=2)
    assert expected[0] == {"q-long": ANSWER}
    for s_in, e_in in [
        (padded_s, padded_e),
        (torch.tensor(padded_s), torch.tensor(padded_e)),
        ([torch.tensor(r, dtype=torch.bfloat16) for r in starts], [torch.tensor(r) for r in ends]),
    ]:
        assert postprocess_qa([ex], eval_feats, s_in, e_in, n_best=2) == expected


def test_high_cls_in_every_window_means_no_answer(eval_feats, long_example):
    starts, ends = _blank_logits(eval_feats, cls=15.0)
    s, e = _answer_positions(eval_feats, 1, long_example.context, long_example.answers[0][1])
    starts[1][s], ends[1][e] = 10.0, 9.0
    preds, details = postprocess_qa([long_example], eval_feats, starts, ends)
    assert preds == {"q-long": ""}
    assert details["q-long"]["best_text"] == ANSWER  # still reported, for threshold tuning
    assert details["q-long"]["score_diff"] == pytest.approx(30.0 - 19.0)


def test_null_score_is_the_minimum_over_windows(eval_feats, long_example):
    # The best span is in window 1, whose own CLS score is high (would say "no answer"), as are
    # all the others' except window 3: the minimum (window 3's) decides -> answer.
    starts, ends = _blank_logits(eval_feats, cls=15.0)
    s, e = _answer_positions(eval_feats, 1, long_example.context, long_example.answers[0][1])
    starts[1][s], ends[1][e] = 10.0, 9.0
    starts[3][CLS_INDEX], ends[3][CLS_INDEX] = 1.0, 2.0
    preds, details = postprocess_qa([long_example], eval_feats, starts, ends)
    assert details["q-long"]["null_score"] == pytest.approx(3.0)
    assert preds == {"q-long": ANSWER}
    # and a single high-CLS window does not veto when the others are low
    starts, ends = _blank_logits(eval_feats, cls=-5.0)
    starts[1][s], ends[1][e] = 10.0, 9.0
    starts[0][CLS_INDEX], ends[0][CLS_INDEX] = 40.0, 40.0
    preds, details = postprocess_qa([long_example], eval_feats, starts, ends)
    assert details["q-long"]["null_score"] == pytest.approx(-10.0)
    assert preds == {"q-long": ANSWER}


@pytest.mark.parametrize(
    ("cls", "threshold", "expected"),
    [
        (7.0, 0.0, ANSWER),  # null 14 < span 19
        (7.0, -6.0, ""),  # diff -5 > -6
        (12.0, 0.0, ""),  # null 24 > span 19: diff 5
        (12.0, 5.0, ANSWER),  # diff 5 is not > 5
        (12.0, 6.0, ANSWER),
    ],
)
def test_null_threshold_flips_the_decision(eval_feats, long_example, cls, threshold, expected):
    starts, ends = _blank_logits(eval_feats, cls=cls)
    s, e = _answer_positions(eval_feats, 1, long_example.context, long_example.answers[0][1])
    starts[1][s], ends[1][e] = 10.0, 9.0
    preds, _ = postprocess_qa([long_example], eval_feats, starts, ends, null_threshold=threshold)
    assert preds == {"q-long": expected}


@pytest.mark.parametrize("bad", ["reversed", "too_long", "question", "sep", "cls_start"])
def test_invalid_spans_are_never_chosen(eval_feats, long_example, bad):
    # Each bad pair scores 100 and its cross pairs with the valid span are invalid too; the
    # background is low enough that a bad start/end with any other position scores below 10.
    starts, ends = _blank_logits(eval_feats, background=-100.0)
    f = 1
    s, e = _answer_positions(eval_feats, f, long_example.context, long_example.answers[0][1])
    starts[f][s], ends[f][e] = 5.0, 5.0  # the valid (weaker) span
    ctx = _ctx_positions(eval_feats.offset_mapping[f])
    assert (ctx.index(s), ctx.index(e)) == (15, 17) and len(ctx) == 23
    n = len(eval_feats.input_ids[f])
    if bad == "reversed":  # end before start, both in the context
        starts[f][ctx[20]], ends[f][ctx[12]] = 50.0, 50.0
    elif bad == "too_long":  # 6 tokens > max_answer_length 5
        starts[f][ctx[0]], ends[f][ctx[5]] = 50.0, 50.0
    elif bad == "question":  # start in the question
        starts[f][2], ends[f][ctx[1]] = 50.0, 50.0
    elif bad == "sep":  # end on the final [SEP]
        starts[f][ctx[-1]], ends[f][n - 1] = 50.0, 50.0
    else:  # start on [CLS], end in the context
        starts[f][CLS_INDEX], ends[f][ctx[0]] = -5.0, 50.0
        starts[f][CLS_INDEX] = 40.0  # null would be 45 -> lower the others' null
    preds, details = postprocess_qa(
        [long_example], eval_feats, starts, ends, max_answer_length=5, null_threshold=100.0
    )
    assert details["q-long"]["best_text"] == ANSWER
    assert preds == {"q-long": ANSWER}


def test_span_of_exactly_max_answer_length_is_allowed(eval_feats, long_example):
    starts, ends = _blank_logits(eval_feats)
    offsets = eval_feats.offset_mapping[0]
    ctx = _ctx_positions(offsets)
    starts[0][ctx[0]], ends[0][ctx[4]] = 20.0, 20.0
    preds, _ = postprocess_qa([long_example], eval_feats, starts, ends, max_answer_length=5)
    assert preds["q-long"] == long_example.context[offsets[ctx[0]][0] : offsets[ctx[4]][1]]
    assert preds["q-long"] == "the river runs through the"


def test_several_examples_and_mismatched_logits(tok, long_example):
    short = QAExample("q-short", QUESTION, "the golden bridge .", (("golden bridge", 4),))
    feats = prepare_qa_features(tok, [short, long_example], max_length=MAX_LEN, stride=STRIDE)
    starts, ends = _blank_logits(feats, cls=20.0)  # everything: no answer ...
    starts[0][CLS_INDEX] = ends[0][CLS_INDEX] = -5.0  # ... except the short one
    starts[0][9], ends[0][10] = 3.0, 3.0
    preds, details = postprocess_qa([short, long_example], feats, starts, ends)
    assert preds == {"q-short": "golden bridge", "q-long": ""}
    assert set(details) == {"q-short", "q-long"}
    with pytest.raises(ValueError, match="features"):
        postprocess_qa([short, long_example], feats, starts[:-1], ends[:-1])


def test_mpnet_style_tokenizer_uses_its_own_cls():
    vocab = {
        t: i for i, t in enumerate(["<s>", "<pad>", "</s>", "<unk>", "<mask>"] + list(VOCAB)[5:])
    }
    mp = MPNetTokenizerFast(vocab=vocab, do_lower_case=True)
    context, start = _long_context()
    ex = QAExample("q-mp", QUESTION, context, ((ANSWER, start),))
    feats = prepare_qa_features(mp, [ex], max_length=MAX_LEN, stride=STRIDE, train=True)
    assert len(feats) > 2 and feats.token_type_ids is None
    assert all(ids[0] == mp.cls_token_id == vocab["<s>"] for ids in feats.input_ids)
    labelled = [f for f in range(len(feats)) if feats.start_positions[f] != 0]
    assert labelled
    for f in range(len(feats)):
        s, e = feats.start_positions[f], feats.end_positions[f]
        if f in labelled:
            offs = feats.offset_mapping[f]
            assert context[offs[s][0] : offs[e][1]] == ANSWER
        else:
            assert e == 0
    # post-processing round trip from the labels
    starts, ends = _blank_logits(feats)
    f = labelled[0]
    starts[f][feats.start_positions[f]] = ends[f][feats.end_positions[f]] = 10.0
    assert postprocess_qa([ex], feats, starts, ends)[0] == {"q-mp": ANSWER}


# ---------------------------------------------------------------------------- threshold tuning


def test_exact_match_normalisation():
    assert exact_match("The Golden Bridge.", ["golden bridge"])
    assert exact_match("", [])
    assert not exact_match("bridge", [])
    assert not exact_match("", ["bridge"])


def test_best_null_threshold_maximises_exact_match():
    gold = {
        "a": ["golden bridge"],
        "b": [],
        "c": ["king"],
        "d": ["river"],
        "e": ["house"],
    }
    details = {
        "a": {"score_diff": -1.0, "best_text": "golden bridge"},  # right span
        "b": {"score_diff": 2.0, "best_text": "the river"},  # unanswerable
        "c": {"score_diff": 3.0, "best_text": "king"},
        "d": {"score_diff": 3.0, "best_text": "river"},
        "e": {"score_diff": 4.0, "best_text": "stone"},  # wrong span
    }

    def em(thr: float) -> int:
        return sum(
            exact_match("" if d["score_diff"] > thr else d["best_text"], gold[q])
            for q, d in details.items()
        )

    thr = best_null_threshold(gold, details)
    assert thr == 3.0  # ties with 4.0 (also EM 3): the smaller one
    assert em(thr) == 3
    assert em(thr) == max(em(t) for t in [-100.0, -1.0, 0.0, 2.0, 2.5, 3.0, 3.5, 4.0, 100.0])
    # equal score differences switch together: answering x also answers y (wrong)
    gold_t = {"x": ["king"], "y": []}
    details_t = {
        "x": {"score_diff": 1.0, "best_text": "king"},
        "y": {"score_diff": 1.0, "best_text": "river"},
    }
    thr_t = best_null_threshold(gold_t, details_t)
    assert em_only(thr_t, details_t, gold_t) == 1 and thr_t < 1.0
    # all-unanswerable dev set: never answer
    details_b = {"b": details["b"]}
    assert em_only(best_null_threshold(gold, details_b), details_b, gold) == 1
    with pytest.raises(ValueError, match="no gold"):
        best_null_threshold({"a": ["x"]}, details)


def em_only(thr: float, details: dict, gold: dict) -> int:
    return sum(
        exact_match("" if d["score_diff"] > thr else d["best_text"], gold[q])
        for q, d in details.items()
    )


def test_threshold_from_real_postprocess_details(tok, long_example):
    feats = prepare_qa_features(tok, [long_example], max_length=MAX_LEN, stride=STRIDE)
    starts, ends = _blank_logits(feats, cls=12.0)  # null 24 vs span 19: "" at threshold 0
    s, e = _answer_positions(feats, 1, long_example.context, long_example.answers[0][1])
    starts[1][s], ends[1][e] = 10.0, 9.0
    preds, details = postprocess_qa([long_example], feats, starts, ends)
    assert preds["q-long"] == ""
    thr = best_null_threshold(gold_answers([long_example]), details)
    preds, _ = postprocess_qa([long_example], feats, starts, ends, null_threshold=thr)
    assert preds["q-long"] == ANSWER


def test_best_null_threshold_for_f1_counts_partial_answers():
    # A partial span (F1 0.8, EM 0) is worth answering for F1, not for EM.
    gold = {"a": ["big red dog"], "b": []}
    details = {
        "a": {"score_diff": 0.5, "best_text": "big red"},
        "b": {"score_diff": 1.0, "best_text": "x"},
    }
    assert best_null_threshold(gold, details, metric="exact") < 0.5  # answer nothing
    assert best_null_threshold(gold, details, metric="f1") == 0.5  # answer "a", not "b"
    with pytest.raises(ValueError, match="metric"):
        best_null_threshold(gold, details, metric="recall")
