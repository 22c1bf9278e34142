"""How much a model relies on the images: its loss with each study's own images vs with images
swapped in from other studies of the batch.

A vision-language model that ignores its images (its image tokens collapsed to a constant, or
the decoder learned to look past them) scores the same loss either way; one that reads them
gets worse when the images belong to someone else. `image_gain = loss(swapped) - loss(own)`
(nats per answer token) is therefore a direct, label-free measure of visual grounding, logged
by the trainer at every validation (`val_image_gain`, and per stage).

`swap_images(batch, seed)` keeps every row's image-slot layout (`image_mask`) and so its image
token count, and fills a row's slots only with images of *another* row: a row holds one study (or,
packed, several), so no study ever sees an image of its own, not even its other view or its prior.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["swap_images", "image_gain"]


def swap_images(batch: Mapping[str, Any], seed: int = 0) -> dict[str, Any] | None:
    """The batch with every row's present image slots filled from another row.

    batch: the batch contract's fields; `images` float32[B, M, H, W], `image_mask` bool[B, M].
    The rows with images are put in a random cyclic order (a derangement); each takes the present
    images of the row before it, in slot order, repeated when it has more slots than that row has
    images. Returns None when fewer than two rows have images (nothing to swap between studies).
    """
    mask = np.asarray(batch["image_mask"], bool)
    rows = np.flatnonzero(mask.any(axis=1))
    if len(rows) < 2:
        return None
    order = rows[np.random.default_rng(seed).permutation(len(rows))]
    source_of = dict(zip(order, np.roll(order, 1)))
    given = np.asarray(batch["images"])
    images = np.array(given, copy=True)
    for row, source in source_of.items():
        donors = given[source][mask[source]]
        slots = np.flatnonzero(mask[row])
        images[row, slots] = donors[np.arange(len(slots)) % len(donors)]
    return {**batch, "images": images}


def image_gain(own: Mapping[str, float], swapped: Mapping[str, float]) -> dict[str, float]:
    """Loss increase from swapped images, overall (`image_gain`) and per stage
    (`stage{s}/image_gain`), from two `summarize_sums` dictionaries of the same batches."""
    out = {}
    for key, value in own.items():
        if key == "loss" or key.endswith("/loss"):
            name = "image_gain" if key == "loss" else key.replace("/loss", "/image_gain")
            if key in swapped:
                out[name] = float(swapped[key]) - float(value)
    return out
