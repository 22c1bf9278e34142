"""Step functions: sampling, prefill against a full forward pass, the answer rules, no
recompilation over a 26-turn chain, and cache overflow."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from cxrtrek_jax.decoding import (
    GREEDY,
    ChainStudy,
    ReferenceDecoder,
    DecodeSpec,
    SamplingConfig,
    StepwiseDecoder,
    StopReason,
    filter_logits,
    fixed_plan,
    run_chain,
    sample_tokens,
    study_turns,
)
from cxrtrek_jax.model import CXRTrekNet, backward_passes, get_config, override
from data_pipeline.files.images import resize_with_pad
from data_pipeline.text.sequences import place_placeholders
from data_pipeline.phantom import PhantomConfig, generate_study
from data_pipeline.text.tokenizer import train_tokenizer, training_texts

CACHE = 1024
TIGHT = 128
BUDGET = 4


# ----------------------------------------------------------------------------- sampling

def test_greedy_is_argmax_and_top_k_one_is_argmax_at_any_temperature():
    logits = jax.random.normal(jax.random.key(1), (5, 50))
    np.testing.assert_array_equal(sample_tokens(logits, jax.random.key(2), GREEDY), jnp.argmax(logits, -1))
    for seed in range(3):
        hot = sample_tokens(logits, jax.random.key(seed), SamplingConfig(temperature=5.0, top_k=1))
        np.testing.assert_array_equal(hot, jnp.argmax(logits, -1))


def test_top_k_and_top_p_filters():
    logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))

    def kept(**kw):
        filtered = np.asarray(filter_logits(logits, SamplingConfig(temperature=1.0, **kw)))[0]
        return np.flatnonzero(filtered > -1e29).tolist()

    assert kept(top_k=2) == [0, 1]
    assert kept(top_p=0.7) == [0, 1]
    assert kept(top_p=0.8) == [0, 1]   # the smallest set reaching 0.8
    assert kept(top_p=0.81) == [0, 1, 2]
    assert kept(top_p=0.01) == [0]     # the most likely token is always kept
    assert kept(top_k=3, top_p=0.99) == [0, 1, 2]


def test_sampled_frequencies_follow_the_filtered_distribution():
    logits = jnp.log(jnp.tile(jnp.array([[0.5, 0.3, 0.15, 0.05]]), (4000, 1)))
    draws = np.asarray(sample_tokens(logits, jax.random.key(0), SamplingConfig(temperature=1.0, top_k=2)))
    assert set(draws.tolist()) == {0, 1}
    assert abs(np.mean(draws == 0) - 0.625) < 0.03


@pytest.mark.parametrize("kwargs, message", [
    (dict(temperature=-1.0), "temperature"), (dict(top_k=-1), "top_k"), (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p")])
def test_sampling_config_is_checked(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SamplingConfig(**kwargs)


def test_buckets():
    spec = DecodeSpec(cache_length=100, max_answer_tokens=4, max_turns=2, end_of_turn_id=3, pad_id=0)
    assert [spec.bucket(n) for n in (1, 16, 17, 33, 64, 65, 500)] == [16, 16, 32, 64, 64, 100, 100]
    with pytest.raises(ValueError, match="end-of-turn id 3 cannot be suppressed"):
        DecodeSpec(cache_length=8, max_answer_tokens=4, max_turns=2, end_of_turn_id=3, pad_id=0, suppressed_ids=(3,))


# ----------------------------------------------------------------------------- a tiny world

@pytest.fixture(scope="module")
def world():
    phantom = PhantomConfig(size=64, turns_per_study=(25, 26), prob_prior=0.5)
    pairs = [generate_study(5, index, phantom) for index in range(6)]
    tokenizer = train_tokenizer(training_texts([study for study, _ in pairs]), 500)
    config = override(get_config("tiny"), {"image_token_id": tokenizer.image_id, "max_images": 4,
                                           "text.max_positions": CACHE})
    model = CXRTrekNet(config, rngs=nnx.Rngs(1))
    kernel = model.text.lm_head.kernel
    kernel[...] = kernel[...].at[:, tokenizer.end_of_turn_id].multiply(3.0)
    graphdef, params = nnx.split(model)
    spec = DecodeSpec.for_model(config, tokenizer, cache_length=CACHE, max_answer_tokens=8, max_turns=32)
    studies = []
    for study, images in pairs:
        pixels = np.stack([resize_with_pad(images[p], config.vision.image_size) for p in study.images])
        turns = study_turns(study)
        studies.append(ChainStudy(study.study_id, pixels, "You read chest X-rays.", lambda t=turns: fixed_plan(t)))
    decoder = StepwiseDecoder(graphdef, config, spec)
    decoder.warm_up(params, batch_size=3, image_shape=(32, 32), prompt_length=len(_prompt(tokenizer)),
                    sampling=GREEDY)
    tight = StepwiseDecoder(graphdef, config, dataclasses.replace(spec, cache_length=TIGHT))
    return dict(tokenizer=tokenizer, config=config, model=model, params=params, spec=spec, decoder=decoder,
                tight=tight, studies=studies)


def _prompt(tokenizer):
    return tokenizer.encode_chat([{"role": "system", "content": "You read chest X-rays."}]).ids.tolist()


def _question(world, text):
    return world["tokenizer"].encode_chat([{"role": "user", "content": text}], add_generation_prompt=True,
                                          tokens_per_image=world["config"].tokens_per_image).ids[1:].tolist()


def _three_images(world):
    images = np.stack([np.pad(s.images, ((0, 4 - len(s.images)), (0, 0), (0, 0))) for s in world["studies"][:3]])
    mask = np.array([[k < len(s.images) for k in range(4)] for s in world["studies"][:3]])
    return images, mask


@nnx.jit
def _forward(model, tokens, images, image_mask):
    return model(tokens, images, image_mask)[0]


def test_prefill_matches_a_full_forward_pass(world):
    decoder, config = world["decoder"], world["config"]
    images, mask = _three_images(world)
    prompt = _prompt(world["tokenizer"])
    questions = [_question(world, "<image>\nIs there a pleural effusion?"), None,
                 _question(world, "Here is the current X-ray image: <image> . Which view? A. PA B. AP")]
    state = decoder.start(world["params"], images, mask, [prompt] * 3, jax.random.key(0))
    state = decoder.ask(world["params"], state, questions, [2, 0, 1])
    for b, question in enumerate(questions):
        tokens = prompt + (question or [])
        one_image = np.zeros((1, 4), bool)
        one_image[0, 0] = question is not None
        full = _forward(world["model"], jnp.asarray([tokens]), jnp.asarray(images[b:b + 1]), jnp.asarray(one_image))
        np.testing.assert_allclose(state.next_logits[b], full[0, -1], atol=2e-5, rtol=1e-5)
        assert int(state.length[b]) == len(tokens)
    np.testing.assert_array_equal(state.stop_reason, [StopReason.IN_PROGRESS, StopReason.NOT_ASKED,
                                                      StopReason.IN_PROGRESS])
    np.testing.assert_array_equal(state.done, [False, True, False])
    np.testing.assert_array_equal(state.stage, [2, 0, 1])
    np.testing.assert_array_equal(state.cache.image_tokens_seen, [config.tokens_per_image, 0,
                                                                  config.tokens_per_image])


def test_answer_rules(world):
    decoder, spec = world["decoder"], world["spec"]
    images, mask = _three_images(world)
    state = decoder.start(world["params"], images, mask, [_prompt(world["tokenizer"])] * 3, jax.random.key(0))
    question = _question(world, "<image>\nWrite the radiology report for this chest X-ray.")
    state = decoder.ask(world["params"], state, [question, question, None], [8, 8, 0])
    before = np.asarray(state.length)
    state, tokens = decoder.answer(world["params"], state, GREEDY, np.array([6, 2, 6]), 6)
    tokens, counts = np.asarray(tokens), np.asarray(state.num_tokens)
    assert counts.tolist() == [6, 2, 0]
    assert tokens[0, 5] == tokens[1, 1] == spec.end_of_turn_id
    assert spec.end_of_turn_id not in tokens[0, :5].tolist()  # held back by min_new_tokens
    assert not set(tokens[:2].ravel().tolist()) & set(spec.suppressed_ids[:2])
    assert np.all(tokens[1, 2:] == spec.pad_id) and np.all(tokens[2] == spec.pad_id)
    assert state.stop_reason.tolist()[2] == StopReason.NOT_ASKED
    assert state.stop_reason.tolist()[1] == StopReason.MAX_NEW_TOKENS  # eot was not allowed before the budget
    np.testing.assert_array_equal(state.length, before + counts)
    for b in range(3):
        assert np.all(np.asarray(state.cache.segment_ids[b, : int(state.length[b])]) == 1)
    assert int(state.turn) == 1
    np.testing.assert_array_equal(state.answers[:, 0], tokens)
    np.testing.assert_array_equal(state.answer_lengths[:, 0], counts)
    np.testing.assert_array_equal(state.answer_stages[:, 0], [8, 8, 0])

    resumed = decoder.rewind(state, before, state.cache.image_tokens_seen)
    again, same = decoder.answer(world["params"], resumed, GREEDY, np.array([6, 2, 6]), 6)
    np.testing.assert_array_equal(same, tokens)  # rewinding the answer and decoding again is exact
    with pytest.raises(ValueError, match=r"cannot rewind samples \[0\]"):
        decoder.rewind(state, before + np.array([7, 0, 0]), state.cache.image_tokens_seen)


def test_a_26_turn_chain_compiles_nothing_after_warm_up(world):
    decoder = world["decoder"]  # warmed up by the fixture: start, ask per bucket, answer, rewind
    warm = decoder.compiled_count()
    assert warm >= 1 + len(decoder.chunk_buckets()) + 2
    compiles = []

    def listener(name, *_, **__):
        if name.endswith("backend_compile_duration"):
            compiles.append(name)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        for context, studies in (("own", world["studies"][:3]), ("own", world["studies"][3:]),
                                 ("none", world["studies"][3:])):
            results = run_chain(decoder, world["params"], world["tokenizer"], studies, context=context,
                                max_new_tokens=BUDGET)
            assert max(len(r) for r in results) >= 25
            assert all(t.stop_reason != "cache_full" for r in results for t in r)
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert compiles == []
    assert decoder.compiled_count() == warm


@pytest.mark.parametrize("context", ["teacher", "own"])
def test_a_chain_longer_than_the_cache_is_asked_in_windows(world, context):
    """A turn that no longer fits with the whole chain is asked in a window (the prompt, the
    images, the newest earlier turns that fit): before it, answers equal the ample cache's; no
    turn is lost; and (teacher) a windowed turn answers exactly what the cache-free reference
    decoder answers to the window's conversation built from the plan's turns alone."""
    tight = world["tight"]
    studies = world["studies"][:3]
    ample = run_chain(world["decoder"], world["params"], world["tokenizer"], studies, context=context,
                      max_new_tokens=BUDGET)
    cut = run_chain(tight, world["params"], world["tokenizer"], studies, context=context, max_new_tokens=BUDGET)
    reference = ReferenceDecoder(world["model"], world["tokenizer"], world["spec"])
    for study, full, short in zip(studies, ample, cut):
        assert len(short) == len(full)
        image = world["tokenizer"].format.image
        turns = list(study.plan())
        for turn, t in zip(turns, short):  # lost only when it does not fit even alone, with all its images
            alone = len(_prompt(world["tokenizer"])) + len(_question(
                world, place_placeholders(turn.question, turn.image_input_count, image))) + BUDGET
            assert (t.stop_reason == "cache_full") == (alone > TIGHT), (t.turn_index, alone)
        dropped = [t.context_dropped for t in short]
        first = next(k for k, d in enumerate(dropped) if d > 0)
        assert first < next((k for k, t in enumerate(full) if t.context_dropped), len(full))
        assert [t.answer_tokens for t in short[:first]] == [t.answer_tokens for t in full[:first]]
        if context != "teacher":
            continue
        for k in (first, len(short) - 1):
            window = turns[dropped[k] : k + 1]
            alone = ChainStudy(study.study_id, study.images, study.system_prompt, lambda w=window: fixed_plan(w))
            expected = reference.run(alone, context="teacher", max_new_tokens=BUDGET)[-1]
            assert short[k].answer_tokens == expected.answer_tokens, (study.study_id, k, dropped[k])


def test_overflow_inside_an_answer_and_a_question(world):
    decoder = world["tight"]
    images, mask = _three_images(world)
    prompt = _prompt(world["tokenizer"])
    state = decoder.start(world["params"], images, mask, [prompt] * 3, jax.random.key(0))
    fill = TIGHT - 2 - len(prompt)
    filler = [_question(world, "x")[0]] * fill
    state = decoder.ask(world["params"], state, [filler, filler[:10], filler + [5, 5, 5]], [1, 1, 1])
    np.testing.assert_array_equal(state.length, [TIGHT - 2, len(prompt) + 10, len(prompt)])
    np.testing.assert_array_equal(state.overflowed, [False, False, True])
    state, _ = decoder.answer(world["params"], state, GREEDY, 6, 6)
    assert np.asarray(state.num_tokens).tolist() == [2, 6, 0]
    reasons = state.stop_reason.tolist()
    assert reasons[0] == reasons[2] == StopReason.CACHE_FULL
    # Sample 1 fits: its 6th token closes the turn, chosen by the model or appended at the budget
    # (which of the two depends on the untrained model's argmax, not on the cache).
    assert reasons[1] in (StopReason.END_OF_TURN, StopReason.MAX_NEW_TOKENS)
    np.testing.assert_array_equal(state.overflowed, [True, False, True])
    assert np.all(np.isfinite(np.asarray(state.next_logits)))
    state = decoder.ask(world["params"], state, [[7], [7], [7]], [2, 2, 2])
    assert state.stop_reason.tolist() == [StopReason.CACHE_FULL, StopReason.IN_PROGRESS, StopReason.CACHE_FULL]
    rewound = decoder.rewind(state, [len(prompt)] * 3, [0, 0, 0])
    np.testing.assert_array_equal(rewound.overflowed, [False, False, False])


def test_more_image_tokens_than_images_is_refused(world):
    decoder, config = world["decoder"], world["config"]
    images, mask = _three_images(world)
    state = decoder.start(world["params"], images, mask, [_prompt(world["tokenizer"])] * 3, jax.random.key(0))
    present = mask.sum(axis=1)
    too_many = [config.image_token_id] * config.tokens_per_image * (int(present[1]) + 1)
    with pytest.raises(ValueError, match=r"sample 1: 0 image tokens so far \+ \d+ in the chunk"):
        decoder.ask(world["params"], state, [None, too_many, [7]], [0, 1, 1])


def test_a_model_built_with_remat_decodes_as_without_it():
    """The 7B and MedGemma presets set `remat`; decoding runs their blocks plainly (rematerialising
    inside the answer's while_loop failed to trace), so greedy answers equal those of the same
    weights built without remat."""
    config = override(get_config("tiny"), {"text.num_layers": 1, "vision.depth": 1})
    size, slots = config.vision.image_size, config.max_images
    spec = DecodeSpec(cache_length=64, max_answer_tokens=8, max_turns=2, end_of_turn_id=1, pad_id=0,
                      suppressed_ids=(config.image_token_id, 0))
    answers = {}
    for remat in (False, True):
        built = override(config, {"remat": remat})
        graphdef, params = nnx.split(CXRTrekNet(built, rngs=nnx.Rngs(1)))
        decoder = StepwiseDecoder(graphdef, built, spec)
        state = decoder.start(params, np.zeros((2, slots, size, size), np.float32), np.zeros((2, slots), bool),
                              [[2, 3, 4], [2, 5]], jax.random.key(0))
        state = decoder.ask(params, state, [[6, 7], [8, 9, 10]], [1, 2])
        _, answers[remat] = decoder.answer(params, state, GREEDY, 8)
    np.testing.assert_array_equal(answers[True], answers[False])


def _custom_vjp_calls(jaxpr) -> int:
    """custom_vjp equations in a jaxpr, sub-jaxprs (jit, remat, while) included."""
    from jax.extend.core import jaxprs_in_params

    return sum(("custom_vjp" in eqn.primitive.name) + sum(_custom_vjp_calls(sub) for sub in jaxprs_in_params(eqn.params))
               for eqn in jaxpr.eqns)


def test_the_decoder_traces_the_layer_forms_of_its_platform(monkeypatch):
    """On CPU the layers' hand-written-backward forms; on a platform where they do not win (TPU: they
    took the MedGemma prefill from 9.54 to 17.58 GiB of temporaries per chip) the plain forms, with
    the same answers. The platform is CPU here, so the TPU case is made by emptying the platforms
    where the hand-written forms win."""
    config = override(get_config("tiny"), {"text.num_layers": 1, "vision.depth": 1})
    size, slots = config.vision.image_size, config.max_images
    spec = DecodeSpec(cache_length=64, max_answer_tokens=8, max_turns=2, end_of_turn_id=1, pad_id=0,
                      suppressed_ids=(config.image_token_id, 0))
    graphdef, params = nnx.split(CXRTrekNet(config, rngs=nnx.Rngs(1)))
    images, mask = np.zeros((2, slots, size, size), np.float32), np.zeros((2, slots), bool)
    prompts, lengths = np.array([[2, 3, 4, 0], [2, 5, 0, 0]], np.int32), np.array([3, 2], np.int32)
    calls, answers = {}, {}
    for platforms in (backward_passes.HAND_WRITTEN_PLATFORMS, ()):
        monkeypatch.setattr(backward_passes, "HAND_WRITTEN_PLATFORMS", platforms)
        decoder = StepwiseDecoder(graphdef, config, spec)
        traced = decoder._start.trace(params, images, mask, prompts, lengths, jax.random.key(0))
        calls[platforms] = _custom_vjp_calls(traced.jaxpr.jaxpr)
        state = decoder.start(params, images, mask, [[2, 3, 4], [2, 5]], jax.random.key(0))
        state = decoder.ask(params, state, [[6, 7], [8, 9, 10]], [1, 2])
        _, answers[platforms] = decoder.answer(params, state, GREEDY, 8)
    assert calls[("cpu",)] > 0 and calls[()] == 0
    np.testing.assert_array_equal(answers[("cpu",)], answers[()])
