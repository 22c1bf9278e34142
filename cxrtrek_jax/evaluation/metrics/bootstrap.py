"""Study-level (cluster) bootstrap confidence intervals from per-study sufficient statistics.

Turns of one study are not independent (same images, same patient, answers
that feed each other), so the resampling unit is the study: each replicate
draws as many studies as there are, with replacement, and every metric is
recomputed from the statistics summed over the drawn studies (a study drawn
k times counts k times). Only per-study sums of each metric family's
statistics vector are kept, so memory grows with studies, not turns.

All groups (every context mode, stage, task type, ...) share the same
replicate weights, so differences between context modes get paired
intervals. The interval is the percentile interval of the replicates,
ignoring replicates where the metric is undefined.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

__all__ = ["StudyStats", "bootstrap_weights", "percentile_interval"]


class StudyStats:
    """Sums of fixed-width statistics vectors per study index; grows as studies appear."""

    def __init__(self, width: int):
        self.width = width
        self._row_of: dict[int, int] = {}
        self._studies: list[int] = []
        self._sums = np.zeros((16, width), np.float64)

    def add(self, study: int, vector: np.ndarray) -> None:
        vector = np.asarray(vector, np.float64)
        if vector.shape != (self.width,):
            raise ValueError(f"statistics vector must have shape ({self.width},), got {vector.shape}")
        row = self._row_of.get(study)
        if row is None:
            row = len(self._studies)
            if row == len(self._sums):
                self._sums = np.concatenate([self._sums, np.zeros_like(self._sums)])
            self._row_of[study] = row
            self._studies.append(study)
        self._sums[row] += vector

    @property
    def studies(self) -> np.ndarray:
        """int64[S]: the study indices seen, in order of first appearance."""
        return np.asarray(self._studies, np.int64)

    @property
    def per_study(self) -> np.ndarray:
        """float64[S, width]: summed statistics of each study in `studies`."""
        return self._sums[: len(self._studies)]

    def total(self) -> np.ndarray:
        """float64[width]: statistics summed over all studies."""
        return self.per_study.sum(axis=0)

    def resampled(self, weights: np.ndarray) -> np.ndarray:
        """float64[B, width]: totals under replicate study weights `weights[B, num_studies]`."""
        return weights[:, self.studies] @ self.per_study


def bootstrap_weights(num_studies: int, num_resamples: int, seed: int, chunk: int = 64) -> Iterator[np.ndarray]:
    """Replicate weights in chunks: float64[<=chunk, num_studies], each row summing to num_studies.

    Row r counts how often each study is drawn in replicate r; the stream
    depends only on (num_studies, num_resamples, seed).
    """
    rng = np.random.default_rng(seed)
    done = 0
    while done < num_resamples:
        size = min(chunk, num_resamples - done)
        draws = rng.integers(0, num_studies, size=(size, num_studies))
        weights = np.zeros((size, num_studies), np.float64)
        np.add.at(weights, (np.arange(size)[:, None], draws), 1.0)
        yield weights
        done += size


def percentile_interval(replicates: np.ndarray, confidence: float) -> tuple[float, float] | None:
    """Percentile interval of the defined (non-NaN) replicates; None when there are none."""
    values = np.asarray(replicates, np.float64)
    values = values[~np.isnan(values)]
    if values.size == 0:
        return None
    tail = (1.0 - confidence) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)
