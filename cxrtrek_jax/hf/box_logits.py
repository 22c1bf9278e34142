"""The box grammar for Hugging Face `generate`: a `LogitsProcessor` that gives an exported model's
detection answers the ids the JAX decoder allows (`data_pipeline.text.box_grammar`).

    tokenizer = load_tokenizer(export_dir)
    box = BoxLogitsProcessor.for_tokenizer(tokenizer, model.config.text_config.vocab_size,
                                           prompt_length=len(ids), max_new_tokens=budget)
    model.generate(input_ids, ..., max_new_tokens=budget, logits_processor=LogitsProcessorList([box]))

Each call replays the generated ids of every row through the automaton (numpy, the same
functions the decoder runs with jax.numpy) and sets the scores of the ids it does not allow to
-inf. The budget counts as the decoder's does: `max_new_tokens` tokens, the end-of-turn
included, so with the same budget greedy `generate` writes the JAX decoder's boxes token for
token (`tests/test_box_constraint_hf.py`).
"""

from __future__ import annotations

import numpy as np
import torch
from transformers import LogitsProcessor

from data_pipeline.text.box_grammar import BoxGrammar, allowed_tokens, replay

__all__ = ["BoxLogitsProcessor"]


class BoxLogitsProcessor(LogitsProcessor):
    """Masks `generate`'s scores [B, V] to the box grammar for the tokens after `prompt_length`.

    grammar: built for the model's V ids; prompt_length: the length of the (left-aligned, unpadded)
    input ids; max_new_tokens: the answer budget, end-of-turn included.
    """

    def __init__(self, grammar: BoxGrammar, *, prompt_length: int, max_new_tokens: int):
        self.grammar = grammar
        self.prompt_length = prompt_length
        self.max_new_tokens = max_new_tokens

    @classmethod
    def for_tokenizer(cls, tokenizer, vocab_size: int, *, prompt_length: int, max_new_tokens: int):
        return cls(BoxGrammar.build(tokenizer, vocab_size), prompt_length=prompt_length,
                   max_new_tokens=max_new_tokens)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if scores.shape[-1] != self.grammar.vocab_size:
            raise ValueError(f"scores cover {scores.shape[-1]} ids, the box grammar {self.grammar.vocab_size}")
        generated = input_ids[:, self.prompt_length:].cpu().numpy()
        registers = np.stack([replay(self.grammar, row) for row in generated])
        left = np.full((len(generated),), self.max_new_tokens - generated.shape[1], np.int32)
        allowed = torch.from_numpy(allowed_tokens(self.grammar, registers, left, np)).to(scores.device)
        return scores.masked_fill(~allowed, float("-inf"))
