"""The no-cache reference: every token from a full forward pass over the whole conversation.

For one study at a time, the conversation of the context mode is built from
messages and encoded in one piece with the chat template (teacher: system,
earlier questions with their reference answers, the question; none: system
and the question with every image visible at it; own: the previous turn's
full token sequence, the model's generated ids as generated, and the next
question), and each answer token is the greedy choice of a fresh, uncached
forward pass over all tokens so far (images through the vision tower every
time). The decoding rules match `stepwise.answer_step`: suppressed ids and
vocabulary padding are never chosen, end-of-turn is blocked until
`min_new_tokens` and forced at `max_new_tokens`.

Quadratic in the conversation length by design: it is the ground truth the
cached chain is tested against (`tests/test_chain.py`, `tests/test_stepwise.py`).
It is not the decode benchmark's baseline: `benchmarks.bench_decode`'s
re-prefill method runs the cached step functions from a fresh state each turn.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from cxrtrek_jax.decoding.chain import ChainStudy
from cxrtrek_jax.decoding.stepwise import DecodeSpec
from cxrtrek_jax.decoding.turn_plans import Turn
from cxrtrek_jax.model import CXRTrekNet
from data_pipeline.schema.records import Message
from data_pipeline.text.sequences import place_placeholders
from data_pipeline.text.tokenizer import CXRTrekTokenizer

__all__ = ["ReferenceTurn", "ReferenceDecoder"]


@dataclasses.dataclass(frozen=True)
class ReferenceTurn:
    """One turn decoded by the reference: the generated ids (end-of-turn excluded) and why it stopped."""

    turn_index: int
    stage: int
    answer: str
    answer_tokens: tuple[int, ...]
    stop_reason: str


class ReferenceDecoder:
    """Greedy decoding without a cache; every forward pass is padded to `spec.cache_length` tokens."""

    def __init__(self, model: CXRTrekNet, tokenizer: CXRTrekTokenizer, spec: DecodeSpec):
        self.tokenizer = tokenizer
        self.spec = spec
        self.config = model.config
        graphdef, self._params = nnx.split(model)

        @jax.jit
        def next_logits(params, tokens, length, images, image_mask):
            model_now = nnx.merge(graphdef, params)
            segment_ids = (jnp.arange(tokens.shape[1])[None, :] < length).astype(jnp.int32)
            logits, _ = model_now(tokens, images, image_mask, segment_ids=segment_ids)
            return logits[0, length - 1]

        self._next_logits = next_logits

    def run(self, study: ChainStudy, *, context: str, max_new_tokens: int,
            min_new_tokens: int = 0) -> list[ReferenceTurn]:
        """The study's turns answered in `context` ("own", "teacher" or "none")."""
        images = np.zeros((1, self.config.max_images, *study.images.shape[1:]), np.float32)
        images[0, : len(study.images)] = study.images
        plan = study.plan()
        turn = next(plan, None)
        history: list[tuple[Turn, list[int]]] = []  # (turn, generated ids incl. end-of-turn)
        own_ids: list[int] | None = None
        results = []
        while turn is not None:
            ids, shown = self._conversation(study, history, turn, context, own_ids)
            generated, reason = self._generate(ids, images, shown, max_new_tokens, min_new_tokens)
            own_ids = ids + generated
            history.append((turn, generated))
            body = generated[:-1] if generated[-1:] == [self.tokenizer.end_of_turn_id] else generated
            answer = self.tokenizer.decode(body)
            results.append(ReferenceTurn(turn.turn_index, turn.stage, answer, tuple(body), reason))
            try:
                turn = plan.send(answer)
            except StopIteration:
                turn = None
        return results

    def _conversation(self, study: ChainStudy, history, turn: Turn, context: str,
                      own_ids: list[int] | None) -> tuple[list[int], int]:
        """The token ids to answer `turn` from, and how many images they introduce."""
        image_token = self.tokenizer.format.image
        n_image = self.config.tokens_per_image
        if context == "none":
            question = place_placeholders(turn.question, turn.image_input_count, image_token)
            messages = [Message("system", study.system_prompt), Message("user", question)]
            ids = self.tokenizer.encode_chat(messages, tokens_per_image=n_image, add_generation_prompt=True).ids
            return ids.tolist(), turn.image_input_count
        shown = 0
        messages = [Message("system", study.system_prompt)]
        for earlier, _ in history:
            messages.append(Message("user", place_placeholders(
                earlier.question, max(0, earlier.image_input_count - shown), image_token)))
            messages.append(Message("assistant", earlier.reference or ""))
            shown = max(shown, earlier.image_input_count)
        question = Message("user", place_placeholders(turn.question, max(0, turn.image_input_count - shown),
                                                       image_token))
        shown = max(shown, turn.image_input_count)
        if context == "teacher":
            ids = self.tokenizer.encode_chat(messages + [question], tokens_per_image=n_image,
                                             add_generation_prompt=True).ids
            return ids.tolist(), shown
        if own_ids is None:
            own_ids = self.tokenizer.encode_chat(messages[:1]).ids.tolist()
        asked = self.tokenizer.encode_chat([question], tokens_per_image=n_image, add_generation_prompt=True)
        return own_ids + asked.ids[1:].tolist(), shown

    def _generate(self, ids: list[int], images: np.ndarray, shown: int, max_new_tokens: int,
                  min_new_tokens: int) -> tuple[list[int], str]:
        spec = self.spec
        capacity = spec.cache_length
        image_mask = np.zeros((1, self.config.max_images), bool)
        image_mask[0, :shown] = True
        budget = min(max(max_new_tokens, 1), spec.max_answer_tokens)
        generated: list[int] = []
        while True:
            sequence = ids + generated
            if len(sequence) > capacity:
                raise ValueError(f"the reference conversation ({len(sequence)} tokens) exceeds {capacity} tokens")
            tokens = np.full((1, capacity), spec.pad_id, np.int32)
            tokens[0, : len(sequence)] = sequence
            logits = np.array(self._next_logits(self._params, tokens, len(sequence), images, image_mask))
            logits[list(spec.suppressed_ids)] = -np.inf
            if spec.vocab_limit is not None:
                logits[spec.vocab_limit:] = -np.inf
            if len(generated) < min_new_tokens - 1:
                logits[spec.end_of_turn_id] = -np.inf
            token = int(np.argmax(logits))
            if len(generated) == budget - 1:
                reason = "end_of_turn" if token == spec.end_of_turn_id else "max_new_tokens"
                return generated + [spec.end_of_turn_id], reason
            generated.append(token)
            if token == spec.end_of_turn_id:
                return generated, "end_of_turn"
