"""The chain state pytree: documented shapes, stable structure across steps, logical axes,
and decoding with the state sharded over a (data, fsdp, tensor) mesh."""

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec

from cxrtrek_jax.train import sharding as sharding_lib
from cxrtrek_jax.decoding import (
    GREEDY,
    ChainState,
    DecodeSpec,
    SamplingConfig,
    StepwiseDecoder,
    StopReason,
    param_shardings,
    state_logical_axes,
)
from cxrtrek_jax.model import KV_AXES, SLOT_AXES, CXRTrekNet, get_config

B, S, A, T = 4, 64, 5, 3


@pytest.fixture(scope="module")
def setup():
    config = get_config("tiny")
    model = CXRTrekNet(config, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model)
    spec = DecodeSpec(cache_length=S, max_answer_tokens=A, max_turns=T, end_of_turn_id=3, pad_id=0,
                      suppressed_ids=(config.image_token_id, 0))
    rng = np.random.default_rng(0)
    n = config.tokens_per_image
    images = rng.random((B, config.max_images, 32, 32), dtype=np.float32)
    image_mask = np.array([[True, True], [True, False], [True, True], [True, False]])
    prompts = [rng.integers(5, 500, size).tolist() for size in (7, 3, 9, 5)]
    questions = [[5] + [config.image_token_id] * n * count + rng.integers(5, 500, extra).tolist()
                 for count, extra in ((2, 4), (1, 9), (0, 2), (1, 1))]
    return dict(config=config, graphdef=graphdef, params=params, spec=spec, images=images, image_mask=image_mask,
                prompts=prompts, questions=questions)


def _decode(setup, decoder, params):
    state = decoder.start(params, setup["images"], setup["image_mask"], setup["prompts"], jax.random.key(0))
    asked = decoder.ask(params, state, setup["questions"], [1, 2, 3, 4])
    answered, tokens = decoder.answer(params, asked, GREEDY, A)
    return state, asked, answered, tokens


def test_state_fields_have_the_documented_shapes(setup):
    config = setup["config"]
    decoder = StepwiseDecoder(setup["graphdef"], config, setup["spec"])
    state, asked, answered, tokens = _decode(setup, decoder, setup["params"])
    text = config.text
    assert len(state.cache.k) == len(state.cache.v) == text.num_layers
    assert state.cache.k[0].shape == (B, S, text.num_kv_heads, text.head_dim)
    assert state.cache.segment_ids.shape == (B, S)
    assert state.image_features.shape == (B, config.max_images, config.tokens_per_image, text.embed_dim)
    assert state.next_logits.shape == (B, config.vocab_size)
    assert state.tokens.shape == (B, A) and state.answers.shape == (B, T, A)
    assert state.answer_lengths.shape == state.answer_stages.shape == state.stop_reasons.shape == (B, T)
    for field in ("length", "prompt_length", "answer_start", "stage", "done", "stop_reason", "overflowed",
                  "num_tokens"):
        assert getattr(state, field).shape == (B,), field
    assert state.turn.shape == () and state.rng.shape == ()
    assert (state.batch_size, state.cache_length, state.answer_capacity, state.turn_capacity) == (B, S, A, T)
    # Steps keep the structure, shapes and dtypes: the state is a fixed pytree.
    shapes = lambda s: jax.tree.map(lambda x: (x.shape, x.dtype), s)  # noqa: E731
    assert shapes(state) == shapes(asked) == shapes(answered)
    np.testing.assert_array_equal(state.length, [len(p) for p in setup["prompts"]])
    np.testing.assert_array_equal(state.prompt_length, state.length)
    np.testing.assert_array_equal(asked.length, state.length + np.array([len(q) for q in setup["questions"]]))
    assert np.all(np.asarray(answered.done)) and int(answered.turn) == 1
    np.testing.assert_array_equal(answered.answers[:, 0], tokens)
    assert StopReason.CACHE_FULL.label == "cache_full"


def test_logical_axes_of_the_state(setup):
    decoder = StepwiseDecoder(setup["graphdef"], setup["config"], setup["spec"])
    state = decoder.start(setup["params"], setup["images"], setup["image_mask"], setup["prompts"], jax.random.key(0))
    axes = state_logical_axes(state)
    assert isinstance(axes, ChainState)
    assert axes.cache.k == tuple(KV_AXES for _ in state.cache.k) and axes.cache.segment_ids == SLOT_AXES
    assert axes.length == ("batch",) and axes.answers == ("batch", None, None)
    assert axes.image_features == ("batch", None, None, "embed")
    assert axes.rng is None and axes.turn is None


def test_sharded_state_decodes_like_one_device(setup):
    mesh = sharding_lib.make_mesh(sharding_lib.MeshConfig(data=2, fsdp=2, tensor=2))
    params = jax.device_put(setup["params"], param_shardings(setup["params"], mesh))
    sharded = StepwiseDecoder(setup["graphdef"], setup["config"], setup["spec"], mesh=mesh)
    single = StepwiseDecoder(setup["graphdef"], setup["config"], setup["spec"])
    _, _, state, tokens = _decode(setup, sharded, params)
    _, _, reference_state, reference = _decode(setup, single, setup["params"])
    np.testing.assert_array_equal(tokens, reference)
    np.testing.assert_allclose(state.next_logits, reference_state.next_logits, atol=1e-5)
    assert state.cache.k[0].sharding.spec == PartitionSpec(("data", "fsdp"), None, "tensor")
    assert state.cache.segment_ids.sharding.spec == PartitionSpec(("data", "fsdp"))
    assert state.answers.sharding.spec == PartitionSpec(("data", "fsdp"))
    assert state.rng.sharding.is_fully_replicated


def test_sampled_answers_follow_the_state_rng(setup):
    decoder = StepwiseDecoder(setup["graphdef"], setup["config"], setup["spec"])
    sampling = SamplingConfig(temperature=1.5, top_k=50, top_p=0.95)

    def sample(seed):
        state = decoder.start(setup["params"], setup["images"], setup["image_mask"], setup["prompts"],
                              jax.random.key(seed))
        state = decoder.ask(setup["params"], state, setup["questions"], [1, 2, 3, 4])
        state, tokens = decoder.answer(setup["params"], state, sampling, A)
        return state, np.asarray(tokens)

    first, tokens = sample(0)
    _, again = sample(0)
    _, other = sample(1)
    np.testing.assert_array_equal(tokens, again)  # the key in the state makes sampling reproducible
    assert not np.array_equal(tokens, other)
    generated = np.arange(A)[None, :] < np.asarray(first.num_tokens)[:, None]
    assert not np.isin(tokens[generated], setup["spec"].suppressed_ids).any()
    assert not np.array_equal(np.asarray(jax.random.key_data(first.rng)),
                              np.asarray(jax.random.key_data(jax.random.key(0))))  # the key advanced
