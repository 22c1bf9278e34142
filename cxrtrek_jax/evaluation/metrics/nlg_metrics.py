"""Natural-language-generation metrics: BLEU-1..4, ROUGE-L, METEOR and CIDEr-D.

All metrics see the same tokens: `nlg_tokens` lowercases and keeps runs of
letters and digits (a decimal number such as "2.5" stays one token); every
other character separates tokens, so punctuation is dropped as the
COCO-caption PTB tokenizer does.

Where each number comes from (one reference per item):
- BLEU-n: corpus BLEU (Papineni et al., 2002) with clipped n-gram counts and
  the closest reference length, no smoothing, computed from per-item
  statistics taken with NLTK's `modified_precision`/`closest_ref_length`
  (Apache-2.0), so any subset of items (or a bootstrap resample) gets its
  exact corpus BLEU from summed statistics. Equal to sacrebleu's corpus BLEU
  with `tokenize="none", smooth_method="none"` (tested).
- ROUGE-L: the COCO-caption implementation (pycocoevalcap `Rouge`, BSD;
  LCS F-measure with beta = 1.2), averaged over items.
- METEOR: METEOR 1.5 (Java, LGPL-2.1, shipped inside pycocoevalcap) driven by
  pycocoevalcap's wrapper with its settings (`-l en -norm`); segment scores
  are averaged over items. Needs a `java` executable; without one METEOR is
  reported as unavailable, never estimated.
- CIDEr-D: the COCO-caption definition (n = 1..4, sigma = 6, clipped tf-idf,
  x10), computed in two passes so the item list need not be held in memory:
  document frequencies from the references of the whole scored set first,
  then per-item scores, averaged. Equal to pycocoevalcap's `Cider` on the
  same set (tested).
"""

from __future__ import annotations

import math
import re
import shutil
import subprocess
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = [
    "BLEU_MAX_ORDER",
    "BLEU_STAT_NAMES",
    "nlg_tokens",
    "bleu_statistics",
    "bleu_from_statistics",
    "rouge_l",
    "CiderD",
    "MeteorScorer",
    "MeteorUnavailable",
    "meteor_unavailable_reason",
]

BLEU_MAX_ORDER = 4
BLEU_STAT_NAMES = (
    tuple(f"bleu_match_{n}" for n in range(1, BLEU_MAX_ORDER + 1))
    + tuple(f"bleu_total_{n}" for n in range(1, BLEU_MAX_ORDER + 1))
    + ("bleu_hyp_len", "bleu_ref_len")
)
_TOKEN = re.compile(r"[a-z0-9]+(?:\.[0-9]+)?")


def nlg_tokens(text: str) -> tuple[str, ...]:
    """Lowercased word/number tokens of `text`; punctuation dropped."""
    return tuple(_TOKEN.findall(text.lower()))


def bleu_statistics(hypothesis: Sequence[str], reference: Sequence[str]) -> np.ndarray:
    """Sufficient statistics of corpus BLEU for one item: float64[10].

    Layout (`BLEU_STAT_NAMES`): clipped matches for n = 1..4 (NLTK's
    `modified_precision` numerators), hypothesis n-gram counts for n = 1..4
    (max(0, len - n + 1), as in Papineni et al., sacrebleu and COCO-caption;
    NLTK instead counts at least 1 per item), hypothesis length, closest
    reference length (NLTK's `closest_ref_length`: ties go to the shorter).
    """
    from nltk.translate.bleu_score import closest_ref_length, modified_precision

    hypothesis, references = list(hypothesis), [list(reference)]
    stats = np.zeros(len(BLEU_STAT_NAMES), np.float64)
    for n in range(1, BLEU_MAX_ORDER + 1):
        precision = modified_precision(references, hypothesis, n)
        stats[n - 1] = precision.numerator
        stats[BLEU_MAX_ORDER + n - 1] = max(0, len(hypothesis) - n + 1)
    stats[-2] = len(hypothesis)
    stats[-1] = closest_ref_length(references, len(hypothesis))
    return stats


def bleu_from_statistics(stats: np.ndarray, order: int) -> np.ndarray:
    """Corpus BLEU-`order` from summed statistics `stats[..., 10]` -> [...].

    Geometric mean of the clipped precisions for n = 1..order times the
    brevity penalty; 0 when a precision is 0 (or 0/0) or the hypotheses are empty.
    """
    if not 1 <= order <= BLEU_MAX_ORDER:
        raise ValueError(f"BLEU order must be in 1..{BLEU_MAX_ORDER}, got {order}")
    stats = np.asarray(stats, np.float64)
    matches = stats[..., :order]
    totals = stats[..., BLEU_MAX_ORDER : BLEU_MAX_ORDER + order]
    hyp_len, ref_len = stats[..., -2], stats[..., -1]
    with np.errstate(divide="ignore", invalid="ignore"):
        log_precision = np.where(matches > 0, np.log(np.where(matches > 0, matches, 1) / totals), -np.inf)
        mean_log = log_precision.mean(axis=-1)
        brevity = np.where(hyp_len >= ref_len, 1.0, np.exp(1.0 - ref_len / np.where(hyp_len > 0, hyp_len, 1)))
        bleu = np.where(np.isfinite(mean_log), np.exp(np.where(np.isfinite(mean_log), mean_log, 0.0)), 0.0)
    return np.where(hyp_len > 0, bleu * brevity, 0.0)


def rouge_l(hypothesis: Sequence[str], reference: Sequence[str]) -> float:
    """COCO-caption ROUGE-L (LCS F-measure, beta 1.2); 0 when either side is empty."""
    if not hypothesis or not reference:
        return 0.0
    from pycocoevalcap.rouge.rouge import Rouge

    return float(Rouge().calc_score([" ".join(hypothesis)], [" ".join(reference)]))


def _ngram_counts(tokens: Sequence[str], max_n: int) -> Counter:
    counts: Counter = Counter()
    for n in range(1, max_n + 1):
        for i in range(len(tokens) - n + 1):
            counts[tuple(tokens[i : i + n])] += 1
    return counts


class CiderD:
    """CIDEr-D in two passes: `add_reference` for every item, then `score` each item.

    Document frequencies count, for each n-gram, the items whose reference
    contains it; idf uses log(number of items). As in the COCO-caption code,
    the Gaussian length penalty compares bigram counts of hypothesis and
    reference (= word lengths minus one for texts of two words or more).
    """

    def __init__(self, max_n: int = 4, sigma: float = 6.0):
        self.max_n = max_n
        self.sigma = sigma
        self._document_frequency: Counter = Counter()
        self._num_references = 0

    @property
    def num_references(self) -> int:
        return self._num_references

    def add_reference(self, reference: Sequence[str]) -> None:
        self._document_frequency.update(_ngram_counts(reference, self.max_n).keys())
        self._num_references += 1

    def _vector(self, counts: Counter, log_num_refs: float) -> tuple[list[dict], list[float], int]:
        vectors: list[dict] = [{} for _ in range(self.max_n)]
        norms = [0.0] * self.max_n
        bigrams = 0
        for ngram, tf in counts.items():
            n = len(ngram) - 1
            weight = float(tf) * (log_num_refs - math.log(max(1.0, self._document_frequency.get(ngram, 0.0))))
            vectors[n][ngram] = weight
            norms[n] += weight * weight
            if n == 1:
                bigrams += tf
        return vectors, [math.sqrt(x) for x in norms], bigrams

    def score(self, hypothesis: Sequence[str], reference: Sequence[str]) -> float:
        """CIDEr-D of one item (x10 scale); needs every reference added first."""
        if self._num_references == 0:
            raise RuntimeError("CiderD.score called before any add_reference")
        log_num_refs = math.log(float(self._num_references))
        vec_h, norm_h, len_h = self._vector(_ngram_counts(hypothesis, self.max_n), log_num_refs)
        vec_r, norm_r, len_r = self._vector(_ngram_counts(reference, self.max_n), log_num_refs)
        penalty = math.exp(-((len_h - len_r) ** 2) / (2 * self.sigma**2))
        total = 0.0
        for n in range(self.max_n):
            value = sum(min(w, vec_r[n].get(g, 0.0)) * vec_r[n].get(g, 0.0) for g, w in vec_h[n].items())
            if norm_h[n] != 0 and norm_r[n] != 0:
                value /= norm_h[n] * norm_r[n]
            total += value * penalty
        return total / self.max_n * 10.0


def _meteor_jar() -> Path | None:
    try:
        import pycocoevalcap.meteor.meteor as wrapper
    except ImportError:
        return None
    jar = Path(wrapper.__file__).with_name(wrapper.METEOR_JAR)
    return jar if jar.is_file() else None


def meteor_unavailable_reason() -> str | None:
    """Why METEOR cannot run here (no java, no jar), or None when it can."""
    if shutil.which("java") is None:
        return "no `java` executable on PATH (METEOR 1.5 is a Java program)"
    if _meteor_jar() is None:
        return "pycocoevalcap's meteor-1.5.jar is not installed"
    return None


class MeteorUnavailable(RuntimeError):
    """METEOR cannot run on this machine; the message says why."""


class MeteorScorer:
    """METEOR 1.5 segment scores through pycocoevalcap's Java wrapper.

    Starting the JVM and loading the paraphrase table takes ~20 s, so keep
    one scorer for a whole run and score items in chunks.
    """

    def __init__(self):
        reason = meteor_unavailable_reason()
        if reason is not None:
            raise MeteorUnavailable(reason)
        from pycocoevalcap.meteor.meteor import Meteor

        self._meteor = Meteor()

    @staticmethod
    def describe() -> str:
        """The METEOR jar and the java version, for the metrics' provenance."""
        out = subprocess.run(["java", "-version"], capture_output=True, text=True, check=False)
        version = (out.stderr or out.stdout).strip().splitlines()
        return f"{_meteor_jar().name} (-l en -norm) on {version[0] if version else 'java'}"

    def score(self, hypotheses: Sequence[Sequence[str]], references: Sequence[Sequence[str]]) -> list[float]:
        """Segment METEOR of each (hypothesis, reference) token pair, in order."""
        if len(hypotheses) != len(references):
            raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} references")
        if not hypotheses:
            return []
        res = {i: [" ".join(h)] for i, h in enumerate(hypotheses)}
        gts = {i: [" ".join(r)] for i, r in enumerate(references)}
        try:
            _, scores = self._meteor.compute_score(gts, res)
        except (ValueError, BrokenPipeError) as err:
            raise MeteorUnavailable(f"the METEOR process failed: {err}") from err
        return [float(s) for s in scores]

    def close(self) -> None:
        # The wrapper stops its JVM when it is garbage-collected.
        self._meteor = None

    def __enter__(self) -> "MeteorScorer":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
