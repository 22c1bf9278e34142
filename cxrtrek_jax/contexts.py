"""The context modes: what a turn's question is asked with (the one definition, import-free).

A chain (`cxrtrek_jax.decoding.run_chain`) answers each turn with its earlier turns answered
by the model ("own"), by the references ("teacher"), or with no earlier turns ("none").
Evaluation adds "swapped": the own context with another study's images (a grounding check);
prediction records, scoring and the case report know all four.
"""

from __future__ import annotations

__all__ = ["CHAIN_CONTEXTS", "SWAPPED", "CONTEXT_MODES"]

CHAIN_CONTEXTS = ("own", "teacher", "none")
SWAPPED = "swapped"
CONTEXT_MODES = CHAIN_CONTEXTS + (SWAPPED,)
