"""The trainer's one gather of small host values from every process of a multi-process JAX job.

Used where the processes must agree before running collectives: the checkpoint step each one
restored (`checkpointing.check_same_step`) and how many validation batches each one has
(`run._validation`).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np

__all__ = ["gather_ints"]


def gather_ints(values: Sequence[int]) -> np.ndarray:
    """int32[process, n]: `values` (n ints, the same n on every process) of every process, row p
    holding process p's. With one process it is `values` as one row and nothing is exchanged;
    with several it is a collective (`multihost_utils.process_allgather`): every process must
    call it, in the same order."""
    local = np.asarray(values, np.int32)
    if jax.process_count() == 1:
        return local[None]
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(local)).reshape(jax.process_count(), -1)
