"""Continuous batching and windowed decoding: a stream of studies through a few rows gives
every study the answers it gets decoded alone; rows are reused as chains end; the stream is
read as rows free up; a step over a cache window equals the step over the whole cache."""

import jax
import numpy as np
import pytest
from flax import nnx

from cxrtrek_jax.decoding import (
    GREEDY,
    ChainStudy,
    DecodeSpec,
    ReferenceDecoder,
    StepwiseDecoder,
    fixed_plan,
    run_chain,
    stream_chain,
    study_turns,
)
from cxrtrek_jax.model import CXRTrekNet, get_config, override
from data_pipeline.files.images import resize_with_pad
from data_pipeline.phantom import PhantomConfig, generate_study
from data_pipeline.text.tokenizer import train_tokenizer, training_texts

BUDGET = 6
CACHE = 512
SYSTEM = "You read chest X-rays."


@pytest.fixture(scope="module")
def world():
    """Six phantom studies cut to 1..7 turns (so chains end at different turns), a tiny model whose
    end-of-turn logit is scaled up (answers of different lengths) and a decoder."""
    phantom = PhantomConfig(size=64, turns_per_study=(8, 10), prob_prior=0.5)
    pairs = [generate_study(11, index, phantom) for index in range(6)]
    tokenizer = train_tokenizer(training_texts([study for study, _ in pairs]), 500)
    config = override(get_config("tiny"), {"image_token_id": tokenizer.image_id, "max_images": 4})
    model = CXRTrekNet(config, rngs=nnx.Rngs(3))
    kernel = model.text.lm_head.kernel
    kernel[...] = kernel[...].at[:, tokenizer.end_of_turn_id].multiply(3.0)
    graphdef, params = nnx.split(model)
    spec = DecodeSpec.for_model(config, tokenizer, cache_length=CACHE, max_answer_tokens=BUDGET, max_turns=16)
    studies = []
    for (study, images), keep in zip(pairs, (7, 1, 4, 2, 6, 3)):
        turns = study_turns(study)[:keep]
        pixels = np.stack([resize_with_pad(images[p], config.vision.image_size) for p in study.images])
        studies.append(ChainStudy(study.study_id, pixels, SYSTEM, lambda t=turns: fixed_plan(t)))
    return dict(tokenizer=tokenizer, config=config, model=model, params=params, spec=spec, studies=studies,
                decoder=StepwiseDecoder(graphdef, config, spec))


def test_windows_are_eighths_quarters_halves_of_the_cache():
    spec = DecodeSpec(cache_length=1000, max_answer_tokens=4, max_turns=2, end_of_turn_id=3, pad_id=0)
    # S/8 = 125 -> 128 (a multiple of min_bucket 16), S/4 = 250 -> 256, S/2 = 500 -> 512, then S.
    assert [spec.window(n) for n in (1, 128, 129, 256, 257, 512, 513, 1000, 4000)] == [
        128, 128, 256, 256, 512, 512, 1000, 1000, 1000]
    assert spec.windows() == (128, 256, 512, 1000)
    tiny = DecodeSpec(cache_length=64, max_answer_tokens=4, max_turns=2, end_of_turn_id=3, pad_id=0)
    assert tiny.windows() == (16, 32, 64)  # S/8 = 8 rounds up to 16 = S/4


@pytest.mark.parametrize("context", ["own", pytest.param("teacher", marks=pytest.mark.slow),
                                     pytest.param("none", marks=pytest.mark.slow)])
def test_a_stream_through_two_rows_answers_as_each_study_alone(world, context):
    decoder, params, tokenizer = world["decoder"], world["params"], world["tokenizer"]
    studies = world["studies"]
    finished = list(stream_chain(decoder, params, tokenizer, iter(studies), batch_size=2, context=context,
                                 max_new_tokens=BUDGET))
    assert sorted(index for index, _ in finished) == list(range(len(studies)))
    streamed = dict(finished)
    for index, study in enumerate(studies):
        (alone,) = run_chain(decoder, params, tokenizer, [study], context=context, max_new_tokens=BUDGET)
        assert [t.answer_tokens for t in streamed[index]] == [t.answer_tokens for t in alone], study.study_id
        assert [t.stop_reason for t in streamed[index]] == [t.stop_reason for t in alone]
        assert [t.turn_index for t in streamed[index]] == [t.turn_index for t in alone]
    answers = [t.answer_tokens for _, results in finished for t in results]
    assert len(set(answers)) > 1  # the untrained model does not answer everything alike


def test_streamed_answers_equal_the_cache_free_reference(world):
    """Against an independent decoder (no cache, the whole conversation re-run per token): the
    first study, admitted mid-stream into a reused row, answers exactly as the reference."""
    studies = world["studies"]
    order = [studies[1], studies[3], studies[0]]  # 1 and 2 turns, then study 0 takes a freed row
    finished = dict(stream_chain(world["decoder"], world["params"], world["tokenizer"], order, batch_size=2,
                                 context="own", max_new_tokens=BUDGET))
    reference = ReferenceDecoder(world["model"], world["tokenizer"], world["spec"])
    expected = reference.run(studies[0], context="own", max_new_tokens=BUDGET)
    assert [t.answer_tokens for t in finished[2]] == [t.answer_tokens for t in expected]


def test_rows_are_reused_as_chains_end_and_the_stream_is_read_lazily(world):
    studies = world["studies"]
    pulled = []

    def source():
        for study in studies:
            pulled.append(study.study_id)
            yield study

    turns_seen = []
    stream = stream_chain(world["decoder"], world["params"], world["tokenizer"], source(), batch_size=2,
                          context="own", max_new_tokens=BUDGET,
                          on_turn=lambda index, result: turns_seen.append(index))
    first_index, first_results = next(stream)
    assert first_index == 1 and len(first_results) == 1  # the 1-turn study ends first
    assert len(pulled) == 2  # nothing read beyond the two rows yet
    rest = list(stream)
    order = [first_index] + [index for index, _ in rest]
    # Turns per study 7, 1, 4, 2, 6, 3. Row 0 holds study 0 for turns 1-7 while row 1 serves study 1
    # (turn 1), 2 (turns 2-5) and 3 (turns 6-7); both rows end at turn 7 (row 0 reported first), then
    # study 4 (turns 8-13) and study 5 (turns 8-10) take them.
    assert order == [1, 2, 0, 3, 5, 4]
    assert sorted(turns_seen) == sorted(index for index, study in enumerate(studies)
                                        for _ in study.plan())


def _state_after_question(world, study_index=0, window=None):
    decoder, tokenizer = world["decoder"], world["tokenizer"]
    study = world["studies"][study_index]
    config = world["config"]
    images = np.zeros((1, config.max_images, *study.images.shape[1:]), np.float32)
    images[0, : len(study.images)] = study.images
    mask = np.arange(config.max_images)[None] < len(study.images)
    prompt = tokenizer.encode_chat([{"role": "system", "content": SYSTEM}]).ids.tolist()
    question = tokenizer.encode_chat([{"role": "user", "content": "<image>\nIs there a pleural effusion?"}],
                                     add_generation_prompt=True,
                                     tokens_per_image=config.tokens_per_image).ids[1:].tolist()
    state = decoder.start(world["params"], images, mask, [prompt], jax.random.key(0))
    state = decoder.ask(world["params"], state, [question], [2], window=window)
    return decoder.answer(world["params"], state, GREEDY, BUDGET, window=window)


def test_a_windowed_step_equals_the_whole_cache_step(world):
    small = world["spec"].windows()[0]
    full_state, full_tokens = _state_after_question(world)
    cut_state, cut_tokens = _state_after_question(world, window=small)
    np.testing.assert_array_equal(cut_tokens, full_tokens)
    np.testing.assert_array_equal(cut_state.length, full_state.length)
    np.testing.assert_allclose(cut_state.next_logits, full_state.next_logits, atol=1e-5)
    np.testing.assert_allclose(cut_state.cache.k[0][:, :small], full_state.cache.k[0][:, :small], atol=1e-6)
    assert cut_state.cache.k[0].shape == full_state.cache.k[0].shape  # the state keeps all S slots
    with pytest.raises(ValueError, match="not one of the decoder's windows"):
        _state_after_question(world, window=small + 1)


def test_admitting_a_study_into_a_row_equals_starting_it(world):
    decoder, params, tokenizer, config = world["decoder"], world["params"], world["tokenizer"], world["config"]
    studies = world["studies"]
    prompt = tokenizer.encode_chat([{"role": "system", "content": SYSTEM}]).ids.tolist()
    longer = prompt[:-1] + prompt[1:]  # another prompt length, so a stale row would show

    def stacked(chosen):
        images = np.zeros((len(chosen), config.max_images, *chosen[0].images.shape[1:]), np.float32)
        for b, study in enumerate(chosen):
            images[b, : len(study.images)] = study.images
        return images, np.arange(config.max_images)[None] < np.array([[len(s.images)] for s in chosen])

    images, mask = stacked(studies[:2])
    running = decoder.start(params, images, mask, [longer, longer], jax.random.key(0))
    image_chunk = [config.image_token_id] * config.tokens_per_image + [7]  # row 1 consumes image features
    running = decoder.ask(params, running, [[7, 8, 9], image_chunk], [1, 1])
    assert int(running.cache.image_tokens_seen[1]) == config.tokens_per_image
    new_images, new_mask = stacked(studies[2:3])
    admitted = decoder.admit(params, running, [1], new_images, new_mask, [prompt])
    alone = decoder.start(params, new_images, new_mask, [prompt], jax.random.key(0))
    assert int(admitted.length[1]) == int(alone.length[0]) == len(prompt)
    np.testing.assert_allclose(admitted.next_logits[1], alone.next_logits[0], atol=1e-5)
    np.testing.assert_allclose(admitted.image_features[1], alone.image_features[0], atol=1e-6)
    assert int(admitted.cache.image_tokens_seen[1]) == 0 and not bool(admitted.overflowed[1])
    np.testing.assert_array_equal(admitted.cache.segment_ids[1, : len(prompt)], 1)
    # row 0 is untouched
    np.testing.assert_array_equal(admitted.length[0], running.length[0])
    np.testing.assert_array_equal(admitted.next_logits[0], running.next_logits[0])
    with pytest.raises(ValueError, match="distinct rows"):
        decoder.admit(params, running, [2], new_images, new_mask, [prompt])


def test_finished_studies_are_put_back_in_stream_order():
    from cxrtrek_jax.evaluation.runs.model_eval import in_stream_order

    arriving = [(1, "b"), (3, "d"), (0, "a"), (2, "c"), (4, "e")]
    assert list(in_stream_order(iter(arriving))) == [(0, "a"), (1, "b"), (2, "c"), (3, "d"), (4, "e")]
    released = []
    for index, _ in in_stream_order(iter(arriving)):
        released.append(index)
        if index == 1:  # 0 and 1 come out as soon as 0 has arrived, before 2 has
            break
    assert released == [0, 1]
    with pytest.raises(RuntimeError, match=r"indices \[2\] arrived without index 1"):
        list(in_stream_order(iter([(0, "a"), (2, "c")])))
