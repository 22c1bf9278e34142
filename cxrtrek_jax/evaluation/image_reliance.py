"""How much a model relies on the images: its loss with each study's own images vs with images
swapped in from other studies of the batch.

A vision-language model that ignores its images (its image tokens collapsed to a constant, or
the decoder learned to look past them) scores the same loss either way; one that reads them
gets worse when the images belong to someone else. `image_gain = loss(swapped) - loss(own)`
(nats per answer token) is therefore a direct, label-free measure of visual grounding, logged
by the trainer at every validation (`val_image_gain`, and per stage).

`swap_images(batch, seed)` keeps every row's image-slot layout (`image_mask`) and so its image
token count: it only permutes the present images among all present slots of the batch, with
no image left in its own slot.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["swap_images", "image_gain"]


def swap_images(batch: Mapping[str, Any], seed: int = 0) -> dict[str, Any] | None:
    """The batch with its present images permuted across slots (none stays in place).

    batch: common.md fields; `images` float32[B, M, H, W], `image_mask` bool[B, M].
    Returns None when the batch has fewer than two present images (nothing to swap).
    """
    mask = np.asarray(batch["image_mask"], bool)
    slots = np.argwhere(mask)
    if len(slots) < 2:
        return None
    order = np.random.default_rng(seed).permutation(len(slots))
    source = np.empty_like(order)
    source[order] = np.roll(order, 1)  # a cyclic shift of a random order: a derangement
    images = np.array(batch["images"], copy=True)
    rows, cols = slots[:, 0], slots[:, 1]
    images[rows, cols] = np.asarray(batch["images"])[rows[source], cols[source]]
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
