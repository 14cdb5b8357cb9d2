"""Metrics for generated text: BLEU-1..4, ROUGE-L, CIDEr-D (the COCO caption definitions) and VQA exact match.

- BLEU-1..4, ROUGE-L and CIDEr-D follow coco-caption (pycocoevalcap 1.2), the definitions captioning
  papers report, line by line: pycocoevalcap itself is a 104 MB wheel of Java tools, and the maintained
  Python scorers differ from it (torchmetrics' BLEU breaks reference-length ties differently; its and
  rouge-score's ROUGE-L is the summarisation F1 with beta = 1 and best-reference selection, not the
  captioning one with beta = 1.2 over the best precision and recall; none has CIDEr-D).
  tests/test_text_metrics.py checks all three against values pycocoevalcap 1.2 printed for the same inputs.
- Exact match: VQA's answer normalisation (lower case, punctuation, number words → digits, articles).

Texts are tokenised like coco-caption's PTB tokenizer does in effect: lower case, punctuation dropped,
decimals ("5.6") and hyphenated words ("t2-weighted") kept whole.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

Refs = Sequence[str] | str

_TOKEN = re.compile(r"[a-z0-9]+(?:[.'/\-][a-z0-9]+)*")


def caption_tokens(text: str) -> list[str]:
    """Lower-cased word tokens without punctuation ("A man's 5.6-cm mass." → ["a", "man's", "5.6-cm", "mass"])."""
    return _TOKEN.findall(str(text).lower())


# ---- VQA exact match -------------------------------------------------------------------------------------
# From the official VQA evaluation (vqaEval.py); its period regex "(?!<=\d)(\.)(?!\d)" is kept as written:
# it removes every period not followed by a digit.
_PUNCT = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?",
          "!"]
_NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
            "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = {"a", "an", "the"}
_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_DIGITS = re.compile(r"(\d)(,)(\d)")


def normalize_answer(text: str) -> str:
    """VQA answer normalisation: "Two, the lesions." → "2 lesions"."""
    s = str(text).replace("\n", " ").replace("\t", " ").strip().lower()
    for p in _PUNCT:
        if (p + " " in s or " " + p in s) or _COMMA_DIGITS.search(s):
            s = s.replace(p, "")
        else:
            s = s.replace(p, " ")
    s = _PERIOD.sub("", s)
    return " ".join(_NUMBERS.get(w, w) for w in s.split() if w not in _ARTICLES)


def exact_match(predictions: Sequence[str], references: Sequence[Refs]) -> float:
    """Fraction of predictions equal, after `normalize_answer`, to one of their references."""
    refs = _as_lists(references, len(predictions))
    if not predictions:
        return 0.0
    hits = [normalize_answer(p) in {normalize_answer(r) for r in rs} for p, rs in zip(predictions, refs)]
    return sum(hits) / len(hits)


def _ngrams(words: list[str], n: int = 4) -> Counter:
    return Counter(tuple(words[i:i + k]) for k in range(1, n + 1) for i in range(len(words) - k + 1))


# ---- BLEU (coco-caption) ---------------------------------------------------------------------------------
def bleu(predictions: Sequence[str], references: Sequence[Refs], max_n: int = 4) -> dict[str, float]:
    """Corpus BLEU-1..max_n as coco-caption's `Bleu` computes it: clipped n-gram counts summed over the corpus,
    cumulative geometric means, one brevity penalty against the sum of each prediction's closest reference
    length (the shorter one on a tie). Its smoothing constants are kept (a precision with no n-grams at all
    counts as 1e-15 / 1e-9, so 3-word captions get a small BLEU-4 instead of 0), for comparable numbers.

    Not torchmetrics' `bleu_score`: it breaks length ties by reference order, not towards the shorter
    reference (the first example in tests/test_text_metrics.py scores 0.886 there, 0.960 in coco-caption)."""
    tiny, small = 1e-15, 1e-9
    correct, guess = [0] * max_n, [0] * max_n
    test_len = ref_len = 0
    for p, rs in zip(predictions, _as_lists(references, len(predictions))):
        words = caption_tokens(p)
        refs = [caption_tokens(r) for r in rs]
        counts = _ngrams(words, max_n)
        max_ref: Counter = Counter()
        for r in refs:
            max_ref |= _ngrams(r, max_n)
        test_len += len(words)
        ref_len += min((abs(len(r) - len(words)), len(r)) for r in refs)[1]
        for k in range(max_n):
            guess[k] += max(0, len(words) - k)
        for g, c in counts.items():
            correct[len(g) - 1] += min(c, max_ref[g])
    out, score = {}, 1.0
    ratio = (test_len + tiny) / (ref_len + small)
    for k in range(max_n):
        score *= (correct[k] + tiny) / (guess[k] + small)
        value = score ** (1.0 / (k + 1))
        out[f"bleu_{k + 1}"] = value * math.exp(1 - 1 / ratio) if ratio < 1 else value
    return out


# ---- ROUGE-L (coco-caption) ------------------------------------------------------------------------------
def _lcs(a: list[str], b: list[str]) -> int:
    """Length of the longest common subsequence (dynamic programming over one row)."""
    if len(a) < len(b):
        a, b = b, a
    row = [0] * (len(b) + 1)
    for x in a:
        prev = 0
        for j, y in enumerate(b, 1):
            cur = row[j]
            row[j] = prev + 1 if x == y else max(row[j], row[j - 1])
            prev = cur
    return row[len(b)]


def rouge_l(predictions: Sequence[str], references: Sequence[Refs], beta: float = 1.2) -> float:
    """Mean over predictions of F_beta from the best LCS precision and best LCS recall over the references."""
    scores = []
    for p, rs in zip(predictions, _as_lists(references, len(predictions))):
        c = caption_tokens(p)
        prec, rec = [], []
        for r in rs:
            t = caption_tokens(r)
            lcs = _lcs(t, c)
            prec.append(lcs / len(c) if c else 0.0)
            rec.append(lcs / len(t) if t else 0.0)
        pm, rm = max(prec), max(rec)
        scores.append((1 + beta ** 2) * pm * rm / (rm + beta ** 2 * pm) if pm and rm else 0.0)
    return sum(scores) / len(scores) if scores else 0.0


# ---- CIDEr-D (coco-caption's Cider) ----------------------------------------------------------------------
def cider_d(predictions: Sequence[str], references: Sequence[Refs], n: int = 4, sigma: float = 6.0) -> float:
    """CIDEr-D (Vedantam et al. 2015, as coco-caption computes it): per n-gram order, the cosine of TF-IDF
    vectors with the candidate's weights clipped at the reference's, times a Gaussian penalty on the length
    difference (sigma 6); averaged over orders 1..n and references, times 10. Document frequencies come from
    the references of the scored set itself."""
    refs = [[caption_tokens(r) for r in rs] for rs in _as_lists(references, len(predictions))]
    if not refs:
        return 0.0
    ref_counts = [[_ngrams(r, n) for r in rs] for rs in refs]
    df: Counter = Counter()
    for counts in ref_counts:
        df.update({g for c in counts for g in c})
    log_docs = math.log(float(len(refs)))

    def vec(counts: Counter) -> tuple[list[dict], list[float], int]:
        v: list[dict] = [{} for _ in range(n)]
        norm = [0.0] * n
        length = 0
        for g, tf in counts.items():
            k = len(g) - 1
            v[k][g] = tf * (log_docs - math.log(max(1.0, df[g])))
            norm[k] += v[k][g] ** 2
            if k == 1:  # coco-caption measures length in bigrams (words - 1); kept for identical scores
                length += tf
        return v, [math.sqrt(x) for x in norm], length

    scores = []
    for p, counts in zip(predictions, ref_counts):
        vh, nh, lh = vec(_ngrams(caption_tokens(p), n))
        total = [0.0] * n
        for c in counts:
            vr, nr, lr = vec(c)
            penalty = math.exp(-((lh - lr) ** 2) / (2 * sigma ** 2))
            for k in range(n):
                val = sum(min(w, vr[k].get(g, 0.0)) * vr[k].get(g, 0.0) for g, w in vh[k].items())
                if nh[k] and nr[k]:
                    val /= nh[k] * nr[k]
                total[k] += val * penalty
        scores.append(10.0 * sum(total) / n / len(counts))
    return sum(scores) / len(scores)


def text_metrics(predictions: Sequence[str], references: Sequence[Refs]) -> dict[str, float]:
    """BLEU-1..4, ROUGE-L, CIDEr-D and exact match of predictions against one or more references each."""
    predictions = [str(p) for p in predictions]
    out = bleu(predictions, references)
    out["rouge_l"] = rouge_l(predictions, references)
    out["cider_d"] = cider_d(predictions, references)
    out["exact_match"] = exact_match(predictions, references)
    return out


def _as_lists(references: Sequence[Refs], n: int) -> list[list[str]]:
    if len(references) != n:
        raise ValueError(f"{n} predictions but {len(references)} reference entries")
    out = [[r] if isinstance(r, str) else [str(x) for x in r] for r in references]
    if any(not rs for rs in out):
        raise ValueError("every prediction needs at least one reference")
    return out
