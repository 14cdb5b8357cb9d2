"""Text metrics against published values (Papineni et al. 2002) and coco-caption (pycocoevalcap 1.2) output."""

from __future__ import annotations

import math

import pytest

from polymodal.training.text_metrics import (
    bleu,
    caption_tokens,
    cider_d,
    exact_match,
    normalize_answer,
    rouge_l,
    text_metrics,
)

# Four COCO-style captions with 2-3 references each. The expected values were printed by pycocoevalcap 1.2's
# Bleu(4), Rouge() and Cider() for exactly these (already tokenised) strings.
REFS = [["a man is riding a horse on the beach", "a person rides a brown horse",
         "someone riding a horse near the ocean"],
        ["two dogs play in the snow", "a pair of dogs playing in snow"],
        ["a plate of food with broccoli and rice", "a dish of rice with vegetables"],
        ["a red double decker bus on a street", "a bus driving down the road"]]
PREDS = ["a man riding a horse on a beach", "two dogs playing in the snow", "a plate of rice and broccoli",
         "a bus on the street"]
COCO_BLEU = [0.9599999999232001, 0.7999999999329525, 0.5731043245823727, 0.34688811956619675]
COCO_ROUGE_L = 0.6990238716410783
COCO_CIDER_D = 2.5334103559314536

# easy-vqa style captions, one reference each (pycocoevalcap 1.2 again). No caption has four words, so
# coco-caption's BLEU-4 is its smoothing constant at work, 0.0246, not a 4-gram match.
SHAPE_REFS = ["a blue circle", "a red triangle", "a green rectangle", "a blue triangle", "a gray circle"]
SHAPE_PREDS = ["a blue circle", "a red circle", "a green rectangle", "a teal triangle", "a gray circle"]
SHAPE_BLEU = [0.8666666665511112, 0.7788880962530284, 0.7140036980572885, 0.024562657123545936]
SHAPE_CIDER_D = 5.302530458202479


def test_bleu_rouge_cider_match_coco_caption():
    b = bleu(PREDS, REFS)
    assert [b[f"bleu_{n}"] for n in range(1, 5)] == pytest.approx(COCO_BLEU, abs=1e-12)
    assert rouge_l(PREDS, REFS) == pytest.approx(COCO_ROUGE_L, abs=1e-12)
    assert cider_d(PREDS, REFS) == pytest.approx(COCO_CIDER_D, abs=1e-12)


def test_single_reference_captions_match_coco_caption():
    m = text_metrics(SHAPE_PREDS, SHAPE_REFS)
    assert [m[f"bleu_{n}"] for n in range(1, 5)] == pytest.approx(SHAPE_BLEU, abs=1e-12)
    assert m["rouge_l"] == pytest.approx(13 / 15, abs=1e-12)  # hand: 4 exact, one LCS 2/3 → (4 + 2/3) / 5
    assert m["cider_d"] == pytest.approx(SHAPE_CIDER_D, abs=1e-12)
    # coco-caption gives a 3-word exact match 7.5, not 10: the 4-gram order has no n-grams (cosine 0)
    pair = ["a blue circle", "a red triangle"]  # hand: "a" has idf 0; orders 1-3 cosine 1, order 4 none
    assert cider_d(pair, pair) == pytest.approx(7.5)
    assert m["exact_match"] == pytest.approx(0.6)


def test_bleu_published_examples():
    """Papineni et al. 2002, section 2.1: modified unigram precision 2/7 and 17/18, bigram 10/17."""
    assert bleu(["the the the the the the the"], [["The cat is on the mat.", "There is a cat on the mat."]]
                )["bleu_1"] == pytest.approx(2 / 7, abs=1e-8)
    refs = [["It is a guide to action that ensures that the military will forever heed Party commands.",
             "It is the guiding principle which guarantees the military forces always being under the command "
             "of the Party.",
             "It is the practical guide for the army always to heed the directions of the party."]]
    cand = ["It is a guide to action which ensures that the military always obeys the commands of the party."]
    b = bleu(cand, refs)  # candidate and closest reference both have 18 words: no brevity penalty
    assert b["bleu_1"] == pytest.approx(17 / 18, abs=1e-8)
    assert b["bleu_2"] == pytest.approx(math.sqrt(17 / 18 * 10 / 17), abs=1e-8)


def test_perfect_and_empty_predictions():
    m = text_metrics(PREDS, [[p] for p in PREDS])
    assert m["bleu_4"] == pytest.approx(1.0) and m["rouge_l"] == pytest.approx(1.0)
    assert m["exact_match"] == 1.0
    empty = text_metrics(["", ""], ["a cat", "a dog"])
    assert empty["bleu_1"] == pytest.approx(0.0, abs=1e-9) and empty["rouge_l"] == 0 and empty["cider_d"] == 0


def test_cider_d_penalises_length_and_clips_repeats():
    refs = [["a red car on the road"], ["a dog in the park"], ["two cats on a sofa"]]
    good = cider_d(["a red car on the road", "a dog in the park", "two cats on a sofa"], refs)
    repeated = cider_d(["a red red red red car on the road", "a dog in the park", "two cats on a sofa"], refs)
    assert repeated < good  # clipping (no credit for extra "red") and the Gaussian length penalty


def test_vqa_normalisation():
    assert normalize_answer("Two, the lesions.") == "2 lesions"
    assert normalize_answer("  Right-Sided ") == "right sided"
    assert normalize_answer("5.6 cm") == "5.6 cm"  # a period before a digit stays
    assert normalize_answer("None") == "0"
    assert exact_match(["the left lung", "yes", "axial"], [["left lung"], "Yes", ["coronal", "axial"]]) == 1.0
    assert exact_match(["left", "no"], ["right", "yes"]) == 0.0


def test_tokens_and_input_checks():
    assert caption_tokens("A man's 5.6-cm mass, T2-weighted.") == ["a", "man's", "5.6-cm", "mass", "t2-weighted"]
    with pytest.raises(ValueError, match="2 predictions but 1"):
        text_metrics(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="at least one reference"):
        text_metrics(["a"], [[]])
