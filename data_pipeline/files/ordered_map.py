"""`ordered_map`: a map over a stream in worker processes, results in input order.

Shared by the TFDS build (examples prepared in workers) and `data construct` (studies built in
workers). Workers are spawned, not forked: a caller may hold JAX or Grain threads.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterable, Iterator
from typing import Any

__all__ = ["ordered_map"]


def ordered_map(function: Callable[[Any], Any], items: Iterable[Any], processes: int,
                chunksize: int = 4) -> Iterator[Any]:
    """`map(function, items)`, in `processes` spawned worker processes when more than one (input
    order kept; `items` consumed lazily, a bounded number in flight). `function` and the items
    must be picklable."""
    if processes == 1:
        yield from map(function, items)
        return
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        yield from pool.imap(function, items, chunksize=chunksize)
