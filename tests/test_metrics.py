"""alad.metrics against hand-computed numbers: per-word POS scores, entity-level NER (seqeval),
the official SQuAD 2.0 evaluation, size/speed-up."""

from __future__ import annotations

import logging
import math

import pytest

from alad.metrics import (
    exact_match,
    f1_token,
    ner_metrics,
    normalize_answer,
    pos_metrics,
    size_and_speed,
    squad_v2_metrics,
)

# ---------------------------------------------------------------------------------------------
# POS

POS_GOLD = [["NOUN", "VERB", "NOUN", "DET"], ["NOUN", "ADJ"]]
POS_PRED = [["NOUN", "VERB", "VERB", "DET"], ["NOUN", "NOUN"]]


def test_pos_accuracy_and_macro_f1_differ():
    m = pos_metrics(POS_GOLD, POS_PRED)
    # words: 6; right: NOUN, VERB, DET, NOUN -> 4/6
    assert m["accuracy"] == pytest.approx(4 / 6)
    # micro: TP 4, FP 2, FN 2 -> P = R = 4/6 -> F1 = 4/6 (= accuracy)
    assert m["f1_micro"] == pytest.approx(4 / 6)
    # NOUN: TP 2 (w0, w4), FP 1 (w5 gold ADJ), FN 1 (w2 pred VERB) -> P = R = 2/3, F1 = 2/3
    assert m["per_tag"]["NOUN"] == pytest.approx(
        {"precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3, "support": 3}
    )
    # VERB: TP 1, FP 1 (w2), FN 0 -> P 1/2, R 1, F1 = 2·(1/2)·1/(3/2) = 2/3
    assert m["per_tag"]["VERB"] == pytest.approx(
        {"precision": 0.5, "recall": 1.0, "f1": 2 / 3, "support": 1}
    )
    # DET: TP 1 -> 1/1/1
    assert m["per_tag"]["DET"]["f1"] == pytest.approx(1.0)
    # ADJ: TP 0, FP 0, FN 1 -> P 0 (0/0 -> 0), R 0, F1 0
    assert m["per_tag"]["ADJ"] == pytest.approx(
        {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    )
    # macro over {ADJ, DET, NOUN, VERB}: (0 + 1 + 2/3 + 2/3) / 4 = 7/12 ≈ 0.5833 (≠ 4/6)
    assert m["f1_macro"] == pytest.approx(7 / 12)
    assert set(m["per_tag"]) == {"ADJ", "DET", "NOUN", "VERB"}


def test_pos_macro_counts_tags_only_predicted():
    # gold NOUN NOUN, pred NOUN X: NOUN TP 1, FN 1 -> P 1, R 1/2, F1 2/3; X FP 1 -> F1 0
    # macro over {NOUN, X} = (2/3 + 0) / 2 = 1/3 (1/3 only if X, present only in pred, counts)
    m = pos_metrics([["NOUN", "NOUN"]], [["NOUN", "X"]])
    assert m["f1_macro"] == pytest.approx(1 / 3)
    assert m["per_tag"]["X"]["support"] == 0


def test_pos_length_mismatch_names_sentence():
    with pytest.raises(ValueError, match="sentence 1"):
        pos_metrics(POS_GOLD, [POS_PRED[0], ["NOUN"]])
    with pytest.raises(ValueError, match="2 gold sentences but 1"):
        pos_metrics(POS_GOLD, POS_PRED[:1])


# ---------------------------------------------------------------------------------------------
# NER

#              0        1        2    3        4    5        6    7        8        9
NER_GOLD = [["B-PER", "I-PER", "O", "B-PER", "O", "B-LOC", "O", "B-ORG", "I-ORG", "I-ORG"]]
NER_PRED = [["B-PER", "I-PER", "O", "B-PER", "O", "B-ORG", "O", "B-ORG", "I-ORG", "O"]]
# gold entities: PER[0,1], PER[3], LOC[5], ORG[7,9]
# pred entities: PER[0,1] (exact), PER[3] (exact), ORG[5] (wrong type), ORG[7,8] (partial span)


def test_ner_entity_level_partial_and_wrong_type_are_wrong():
    m = ner_metrics(NER_GOLD, NER_PRED)
    # TP 2 (the two PER), pred 4, gold 4 -> P = R = F1 = 2/4
    assert m["precision"] == pytest.approx(0.5)
    assert m["recall"] == pytest.approx(0.5)
    assert m["f1_micro"] == pytest.approx(0.5)
    # PER F1 1; LOC: 0 pred, 1 gold -> 0; ORG: 2 pred, 1 gold, 0 TP -> 0; macro = 1/3 (≠ 0.5)
    assert m["f1_macro"] == pytest.approx(1 / 3)
    assert m["per_type"]["PER"] == pytest.approx(
        {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 2}
    )
    assert m["per_type"]["ORG"] == pytest.approx(
        {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    )
    assert set(m["per_type"]) == {"LOC", "ORG", "PER"}
    # token accuracy: wrong at 5 (LOC->ORG) and 9 (I-ORG->O) -> 8/10
    assert m["accuracy"] == pytest.approx(0.8)


def test_ner_conlleval_mode_i_after_o_starts_entity():
    # conlleval (seqeval default mode): "O I-PER" is a PER entity, so pred B-PER matches it
    m = ner_metrics([["O", "I-PER"]], [["O", "B-PER"]])
    assert m["f1_micro"] == pytest.approx(1.0)


def test_ner_no_entities_is_zero_not_nan():
    m = ner_metrics([["O", "O"]], [["O", "O"]])
    assert m["f1_micro"] == 0.0 and m["f1_macro"] == 0.0 and not math.isnan(m["f1_macro"])
    assert m["accuracy"] == 1.0


def test_ner_length_mismatch_names_sentence():
    with pytest.raises(ValueError, match="sentence 0"):
        ner_metrics(NER_GOLD, [NER_PRED[0][:-1]])


# ---------------------------------------------------------------------------------------------
# SQuAD 2.0


@pytest.mark.parametrize(
    ("raw", "normalized"),
    [
        ("The  Cat!", "cat"),  # lower, "!" dropped, article dropped, spaces collapsed
        ("an apple", "apple"),
        ("A", ""),  # nothing but an article
        ("U.S.A.", "usa"),  # punctuation inside a word is deleted, not turned into a space
        ("rock'n'roll", "rocknroll"),
        ("the-cat", "thecat"),  # punctuation goes before articles: "thecat" is no article
        ("Theater  of\tthe   Absurd", "theater of absurd"),  # articles only as whole words
    ],
)
def test_normalize_answer(raw, normalized):
    assert normalize_answer(raw) == normalized


def test_exact_match_and_f1_token():
    assert exact_match("The Cat.", "cat") == 1
    assert exact_match("cats", "cat") == 0
    # pred [cat, sat], gold [cat, sat, down]: common 2, P 2/2, R 2/3 -> F1 = 2·(2/3)/(5/3) = 0.8
    assert f1_token("the cat sat", "cat sat down") == pytest.approx(0.8)
    # multiset overlap: pred x x y, gold x y y -> common min(2,1)+min(1,2) = 2, P = R = 2/3
    # (a set overlap would give 2/2 -> 1.0)
    assert f1_token("x x y", "x y y") == pytest.approx(2 / 3)
    # empty answers: both empty -> 1, one empty -> 0
    assert f1_token("", "") == 1.0
    assert f1_token("the", "") == 1.0  # "the" normalises to ""
    assert f1_token("", "1990") == 0.0
    assert f1_token("nothing here", "") == 0.0
    assert f1_token("blue", "red") == 0.0


SQUAD_GOLD = {
    "q1": ["Paris", "the city of Paris"],  # answerable, several gold answers
    "q2": ["1990"],  # answerable, predicted as no answer
    "q3": [],  # unanswerable, predicted as answerable
    "q4": [],  # unanswerable, predicted as no answer
    "q5": ["blue whale"],  # answerable, prediction missing
    "q6": ["42"],  # answerable, right
}
SQUAD_PRED = {"q1": "Paris France", "q2": "", "q3": "nothing here", "q4": "", "q6": "42."}
# per question (EM, F1):
# q1 vs "paris": EM 0, F1: common 1, P 1/2, R 1 -> 2/3; vs "city of paris": P 1/2, R 1/3 -> 0.4
#    -> max: EM 0, F1 2/3
# q2: "" vs "1990" -> (0, 0);  q3: "nothing here" vs [""] -> (0, 0);  q4: "" vs [""] -> (1, 1)
# q5: missing -> "" vs "blue whale" -> (0, 0);  q6: "42." vs "42" -> (1, 1)


def test_squad_v2_breakdown(caplog):
    with caplog.at_level(logging.WARNING, logger="alad.metrics"):
        m = squad_v2_metrics(SQUAD_GOLD, SQUAD_PRED)
    assert "no prediction" in caplog.text
    assert m["missing"] == 1
    # all 6: EM (0+0+0+1+0+1)/6 = 33.33; F1 (2/3+0+0+1+0+1)/6 = (8/3)/6 = 44.44
    assert m["total"] == 6
    assert m["exact"] == pytest.approx(100 * 2 / 6)
    assert m["f1"] == pytest.approx(100 * 8 / 18)
    # HasAns q1 q2 q5 q6: EM (0+0+0+1)/4 = 25; F1 (2/3+0+0+1)/4 = 5/12 = 41.67
    assert m["HasAns_total"] == 4
    assert m["HasAns_exact"] == pytest.approx(25.0)
    assert m["HasAns_f1"] == pytest.approx(100 * 5 / 12)
    # NoAns q3 q4: EM (0+1)/2 = 50; F1 (0+1)/2 = 50
    assert m["NoAns_total"] == 2
    assert m["NoAns_exact"] == pytest.approx(50.0)
    assert m["NoAns_f1"] == pytest.approx(50.0)


def test_squad_v2_single_cases():
    # unanswerable predicted as answerable -> EM 0, F1 0
    m = squad_v2_metrics({"q": []}, {"q": "Paris"})
    assert (m["exact"], m["f1"], m["NoAns_exact"]) == (0.0, 0.0, 0.0)
    # answerable predicted as no answer -> EM 0, F1 0
    m = squad_v2_metrics({"q": ["Paris"]}, {"q": ""})
    assert (m["exact"], m["f1"], m["HasAns_f1"]) == (0.0, 0.0, 0.0)
    # unanswerable predicted "" -> EM 100, F1 100
    m = squad_v2_metrics({"q": []}, {"q": ""})
    assert (m["exact"], m["f1"], m["NoAns_exact"], m["missing"]) == (100.0, 100.0, 100.0, 0)
    # official: a group without questions is absent from the dict
    assert "HasAns_total" not in m


def test_squad_v2_gold_normalising_to_empty_counts_as_no_answer_text():
    # official: gold "The" normalises to "" and is dropped -> scored against [""], yet the
    # question is HasAns because its raw answer list is non-empty
    m = squad_v2_metrics({"q": ["The"]}, {"q": ""})
    assert m["exact"] == 100.0 and m["HasAns_total"] == 1 and "NoAns_total" not in m


def test_squad_v2_empty_gold_rejected():
    with pytest.raises(ValueError, match="no gold"):
        squad_v2_metrics({}, {"q": "x"})


# ---------------------------------------------------------------------------------------------
# size, speed, table


def test_size_and_speed():
    m = size_and_speed(11_000_000, 110_000_000, 0.5, 1.2)
    assert m["size_pct"] == pytest.approx(10.0)  # 100 · 11M / 110M
    assert m["speedup"] == pytest.approx(2.4)  # 1.2 s / 0.5 s


@pytest.mark.parametrize(
    "args",
    [(0, 10, 1.0, 1.0), (1, -10, 1.0, 1.0), (1, 10, 0.0, 1.0), (1, 10, 1.0, float("nan"))],
)
def test_size_and_speed_rejects_non_positive(args):
    with pytest.raises(ValueError, match="must be positive"):
        size_and_speed(*args)
