"""How much a model relies on the images: its loss with each study's own images vs with images
swapped in from other studies of the batch.

A vision-language model that ignores its images (its image tokens collapsed to a constant, or
the decoder learned to look past them) scores the same loss either way; one that reads them
gets worse when the images belong to someone else. `image_gain = loss(swapped) - loss(own)`
(nats per answer token) is therefore a direct, label-free measure of visual grounding, logged
by the trainer at every validation (`val_image_gain`, and per stage).

`swap_images(batch, seed)` keeps every row's image-slot layout (`image_mask`) and so its image
token count, and fills a row's slots only with images of rows that share none of its images: a
row holds one study (packed, several; one QA pair of a study with `context` "off", when its other
pairs are in other rows beside it, all with the same images), so no study ever sees an image of
its own, not even its other view or its prior.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["swap_images", "image_gain"]


def swap_images(batch: Mapping[str, Any], seed: int = 0) -> dict[str, Any] | None:
    """The batch with every row's present image slots filled from rows that share no image with it.

    batch: the batch contract's fields; `images` float32[B, M, H, W], `image_mask` bool[B, M].
    Rows that hold a common image (pixel for pixel) are one group: the rows of one study in a
    one-pair-per-row batch (alignment, `context` "off") all carry its current image, and a study
    whose prior is another study's current image shares that image with it. The groups are put
    in a random cyclic order (a derangement); each row takes the present images of a row of the
    group before its own (round robin over that group's rows), in slot order, repeated when it
    has more slots than that row has images. So no row ever sees an image of its own study.
    Returns None when fewer than two groups have images (nothing to swap between studies).
    """
    mask = np.asarray(batch["image_mask"], bool)
    given = np.asarray(batch["images"])
    groups = _image_groups(given, mask)
    if len(groups) < 2:
        return None
    order = [groups[i] for i in np.random.default_rng(seed).permutation(len(groups))]
    images = np.array(given, copy=True)
    for members, donors_group in zip(order, order[-1:] + order[:-1]):
        for k, row in enumerate(members):
            source = donors_group[k % len(donors_group)]
            donors = given[source][mask[source]]
            slots = np.flatnonzero(mask[row])
            images[row, slots] = donors[np.arange(len(slots)) % len(donors)]
    return {**batch, "images": images}


def _image_groups(images: np.ndarray, mask: np.ndarray) -> list[list[int]]:
    """The rows with images, grouped so that two rows sharing any present image (identical
    bytes) are in one group (connected components); groups and their rows in row order."""
    parent: dict[int, int] = {}

    def root(row: int) -> int:
        while parent[row] != row:
            parent[row] = parent[parent[row]]
            row = parent[row]
        return row

    holder: dict[bytes, int] = {}
    for row in np.flatnonzero(mask.any(axis=1)).tolist():
        parent[row] = row
        for slot in np.flatnonzero(mask[row]):
            key = np.ascontiguousarray(images[row, slot]).tobytes()
            if key in holder:
                parent[root(row)] = root(holder[key])
            else:
                holder[key] = row
    groups: dict[int, list[int]] = {}
    for row in parent:
        groups.setdefault(root(row), []).append(row)
    return sorted(groups.values())


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
