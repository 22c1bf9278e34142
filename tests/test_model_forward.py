"""CXRTrekNet forward: shapes, axis names, image splicing, packing, KV-cache prefill, sharding hook."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import Mesh

from cxrtrek_jax.model import AXIS_NAMES, CXRTrekNet, axis_rules, check_image_token_counts, get_config, override
from cxrtrek_jax.model.splice import compact_present_images, image_token_positions, splice_image_features

CFG = get_config("tiny")
N = CFG.tokens_per_image
IMG = CFG.image_token_id
SIZE = CFG.vision.image_size


@pytest.fixture(scope="module")
def model():
    return CXRTrekNet(CFG, rngs=nnx.Rngs(0))


@nnx.jit
def forward(model, tokens, images, image_mask, positions, segment_ids):
    return model(tokens, images, image_mask, positions, segment_ids)[0]


@nnx.jit
def cached_forward(model, tokens, images, image_mask, positions, segment_ids, cache, cache_index):
    return model(tokens, images, image_mask, positions, segment_ids, cache, cache_index)


def text_tokens(rng, shape):
    return rng.integers(0, IMG, shape).astype(np.int32)


def default_positions(batch, length):
    return np.broadcast_to(np.arange(length, dtype=np.int32), (batch, length))


def sample(rng, length, image_starts):
    """One row of tokens with an image run at each start."""
    row = text_tokens(rng, (length,))
    for start in image_starts:
        row[start:start + N] = IMG
    return row


def test_forward_shapes_dtype_and_no_cache(model):
    rng = np.random.default_rng(0)
    tokens = np.stack([sample(rng, 40, [1, 20]), sample(rng, 40, [5])])
    images = rng.random((2, 2, SIZE, SIZE), dtype=np.float32)
    mask = np.array([[True, True], [True, False]])
    logits = forward(model, tokens, images, mask, default_positions(2, 40), np.ones((2, 40), np.int32))
    assert logits.shape == (2, 40, CFG.vocab_size) and logits.dtype == jnp.float32
    assert np.isfinite(np.asarray(logits)).all()
    features = model.encode_images(jnp.asarray(images))
    assert features.shape == (2, 2, N, CFG.text.embed_dim)


def test_every_parameter_has_logical_axis_names(model):
    flat = nnx.to_flat_state(nnx.state(model, nnx.Param))
    assert len(flat) > 20
    for path, variable in flat:
        names = variable.get_metadata()["out_sharding"]
        assert len(names) == variable[...].ndim, path
        assert set(names) <= set(AXIS_NAMES), (path, names)
    specs = nnx.get_partition_spec(nnx.state(model, nnx.Param))
    assert tuple(specs["text"]["layers"][0]["attn"]["q_proj"]["kernel"].get_value()) == ("embed", "heads", "head_dim")


def test_splice_takes_kth_present_image_for_kth_run():
    features = jnp.arange(2 * 3 * 2 * 1, dtype=jnp.float32).reshape(2, 3, 2, 1)  # B=2, M=3, N=2, E=1
    mask = jnp.array([[False, True, True], [True, False, False]])
    flat = compact_present_images(features, mask)
    np.testing.assert_array_equal(flat[0, :4, 0], [2, 3, 4, 5])  # slots 1, 2
    np.testing.assert_array_equal(flat[1, :2, 0], [6, 7])  # slot 0
    tokens = jnp.array([[IMG, 5, IMG, IMG, 6, IMG], [7, IMG, IMG, 8, 9, 9]])
    segments = jnp.array([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0]])
    is_image, index, seen = image_token_positions(tokens, segments, IMG, jnp.zeros(2, jnp.int32))
    np.testing.assert_array_equal(seen, [4, 2])
    out = splice_image_features(-jnp.ones((2, 6, 1)), is_image, index, flat)
    np.testing.assert_array_equal(out[..., 0], [[2, -1, 3, 4, -1, 5], [-1, 6, 7, -1, -1, -1]])


def test_absent_slots_are_ignored_and_present_images_are_compacted(model):
    rng = np.random.default_rng(1)
    tokens = sample(rng, 32, [3])[None]
    image = rng.random((SIZE, SIZE), dtype=np.float32)
    noise = rng.random((SIZE, SIZE), dtype=np.float32)
    args = (default_positions(1, 32), np.ones((1, 32), np.int32))
    in_slot_1 = forward(model, tokens, np.stack([noise, image])[None], np.array([[False, True]]), *args)
    in_slot_0 = forward(model, tokens, np.stack([image, 1 - noise])[None], np.array([[True, False]]), *args)
    np.testing.assert_allclose(in_slot_1, in_slot_0, atol=1e-6)
    other = forward(model, tokens, np.stack([noise, image])[None], np.array([[True, False]]), *args)
    assert np.abs(np.asarray(other) - np.asarray(in_slot_0)).max() > 1e-3


def test_image_token_mismatch_raises_eagerly_and_is_nan_under_jit(model):
    rng = np.random.default_rng(2)
    tokens = np.stack([sample(rng, 32, [2]), sample(rng, 32, [2])])
    tokens[1, 30] = IMG  # one image token too many
    images = rng.random((2, 1, SIZE, SIZE), dtype=np.float32)
    mask = np.ones((2, 1), bool)
    with pytest.raises(ValueError, match=r"sample 1: 17 image tokens, 1 present images x 16 = 16 features"):
        check_image_token_counts(tokens, np.ones_like(tokens), mask, image_token_id=IMG, tokens_per_image=N)
    with pytest.raises(ValueError, match=r"samples \[0, 1\] hold image tokens but no images"):
        model(jnp.asarray(tokens))  # concrete inputs: checked eagerly, before the decoder runs
    logits = np.asarray(forward(model, tokens, images, mask, default_positions(2, 32), np.ones((2, 32), np.int32)))
    assert np.isfinite(logits[0]).all() and np.isnan(logits[1]).all()
    no_images = np.asarray(forward(model, tokens, None, None, default_positions(2, 32), np.ones((2, 32), np.int32)))
    assert np.isnan(no_images).all()


def test_packed_segments_match_separate_forwards(model):
    rng = np.random.default_rng(3)
    first = text_tokens(rng, (10,))
    second = sample(rng, 22, [4])
    image = rng.random((SIZE, SIZE), dtype=np.float32)
    length = 40
    packed = np.zeros((1, length), np.int32)
    packed[0, :10], packed[0, 10:32] = first, second
    segments = np.zeros((1, length), np.int32)
    segments[0, :10], segments[0, 10:32] = 1, 2
    positions = np.zeros((1, length), np.int32)
    positions[0, :10], positions[0, 10:32] = np.arange(10), np.arange(22)
    packed_logits = np.asarray(forward(model, packed, image[None, None], np.ones((1, 1), bool), positions, segments))

    alone = np.zeros((2, length), np.int32)
    alone[0, :10], alone[1, :22] = first, second
    alone_segments = np.zeros((2, length), np.int32)
    alone_segments[0, :10], alone_segments[1, :22] = 1, 1
    images = np.stack([np.zeros_like(image), image])[:, None]
    alone_logits = np.asarray(forward(model, alone, images, np.array([[False], [True]]),
                                      default_positions(2, length), alone_segments))
    np.testing.assert_allclose(packed_logits[0, :10], alone_logits[0, :10], atol=1e-5)
    np.testing.assert_allclose(packed_logits[0, 10:32], alone_logits[1, :22], atol=1e-5)


def test_chunked_prefill_with_cache_matches_full_forward(model):
    rng = np.random.default_rng(4)
    length, chunk, max_length = 44, 20, 64
    real_lengths = [44, 35]
    tokens = np.stack([sample(rng, length, [3, 25]), sample(rng, length, [2, 19])])
    images = rng.random((2, 2, SIZE, SIZE), dtype=np.float32)
    mask = np.ones((2, 2), bool)
    segments = np.zeros((2, length), np.int32)
    for b, n in enumerate(real_lengths):
        segments[b, :n] = 1
        tokens[b, n:] = 0
    full = np.asarray(forward(model, tokens, images, mask, default_positions(2, length), segments))

    # Different chunk sizes per sample, so the cache indices differ across the batch; image runs
    # are split across chunk boundaries.
    chunk_sizes = [[13, 17, 14], [7, 20, 8]]
    cache = model.init_cache(2, max_length)
    index = np.zeros(2, np.int32)
    got = np.zeros_like(full)
    for step in range(3):
        chunk_tokens = np.zeros((2, chunk), np.int32)
        chunk_segments = np.zeros((2, chunk), np.int32)
        chunk_positions = np.zeros((2, chunk), np.int32)
        spans = []
        for b in range(2):
            start = int(index[b])
            n = min(chunk_sizes[b][step], real_lengths[b] - start)
            chunk_tokens[b, :n] = tokens[b, start:start + n]
            chunk_segments[b, :n] = 1
            chunk_positions[b] = start + np.arange(chunk)
            spans.append((start, n))
        logits, cache = cached_forward(model, chunk_tokens, images, mask, chunk_positions, chunk_segments,
                                       cache, index)
        logits = np.asarray(logits)
        for b, (start, n) in enumerate(spans):
            got[b, start:start + n] = logits[b, :n]
            index[b] += n
    assert list(index) == real_lengths
    np.testing.assert_array_equal(np.asarray(cache.image_tokens_seen), [2 * N, 2 * N])
    for b, n in enumerate(real_lengths):
        np.testing.assert_allclose(got[b, :n], full[b, :n], atol=1e-5)


def test_cache_overflow_is_refused(model):
    tokens = np.ones((2, 8), np.int32)
    cache = model.init_cache(2, 10)
    index = jnp.array([0, 4], jnp.int32)
    with pytest.raises(ValueError, match=r"samples \[1\] run past the cache end"):
        model(jnp.asarray(tokens), cache=cache, cache_index=index)
    logits, _ = cached_forward(model, tokens, None, None, None, None, cache, index)
    assert np.isfinite(np.asarray(logits[0])).all() and np.isnan(np.asarray(logits[1])).all()


def test_sharding_rules_keep_logits(model):
    devices = np.array(jax.devices()[:8]).reshape(2, 2, 2)
    mesh = Mesh(devices, ("data", "fsdp", "tensor"))
    rules = (("batch", ("data", "fsdp")), ("embed", "fsdp"), ("mlp", "tensor"), ("heads", "tensor"),
             ("kv_heads", "tensor"), ("vocab", "tensor"))
    rng = np.random.default_rng(5)
    tokens = np.stack([sample(rng, 24, [2]) for _ in range(4)])
    images = rng.random((4, 1, SIZE, SIZE), dtype=np.float32)
    args = (tokens, images, np.ones((4, 1), bool), default_positions(4, 24), np.ones((4, 24), np.int32))
    plain = forward(model, *args)

    @nnx.jit
    def sharded(model, *inputs):
        with axis_rules(rules, mesh):
            return model(*inputs)[0]

    np.testing.assert_allclose(sharded(model, *args), plain, atol=1e-5)


@pytest.mark.slow
def test_bfloat16_compute_is_close_to_float32(model):
    rng = np.random.default_rng(6)
    tokens = sample(rng, 24, [2])[None]
    images = rng.random((1, 1, SIZE, SIZE), dtype=np.float32)
    bf16 = nnx.eval_shape(lambda: CXRTrekNet(override(CFG, {"dtype": "bfloat16"}), rngs=nnx.Rngs(0)))
    nnx.update(bf16, nnx.state(model, nnx.Param))
    args = (tokens, images, np.ones((1, 1), bool), default_positions(1, 24), np.ones((1, 24), np.int32))
    reference = np.asarray(forward(model, *args))
    low = np.asarray(forward(bf16, *args))
    assert low.dtype == np.float32
    assert np.abs(low - reference).max() < 0.1 * np.abs(reference).max()


@pytest.mark.slow
def test_remat_gives_the_same_gradients(model):
    rng = np.random.default_rng(7)
    tokens = sample(rng, 24, [2])[None]
    images = rng.random((1, 1, SIZE, SIZE), dtype=np.float32)
    remat = nnx.eval_shape(lambda: CXRTrekNet(override(CFG, {"remat": True}), rngs=nnx.Rngs(0)))
    nnx.update(remat, nnx.state(model, nnx.Param))

    @nnx.jit
    def grads(m):
        return nnx.grad(lambda m: jnp.sum(m(tokens, images)[0] ** 2))(m)

    with_remat, without = nnx.to_pure_dict(grads(remat)), nnx.to_pure_dict(grads(model))
    scale = max(float(np.abs(g).max()) for g in jax.tree.leaves(without))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5 * scale), with_remat, without)


def _plain_attention(q, k, v, mask, scale):
    """softmax(q k^T * scale) v by plain einsums (GQA by repeating kv heads), masked logits ->
    -0.7 * f32 max as in the model; autodiff gives its gradients."""
    groups = q.shape[2] // k.shape[2]
    k, v = jnp.repeat(k, groups, axis=2), jnp.repeat(v, groups, axis=2)
    logits = jnp.einsum("bthd,bshd->bhts", q, k) * scale
    if mask is not None:
        logits = jnp.where(mask[:, None], logits, -0.7 * float(jnp.finfo(jnp.float32).max))
    return jnp.einsum("bhts,bshd->bthd", jax.nn.softmax(logits, axis=-1), v)


@pytest.mark.parametrize("masked", [True, False])
def test_attention_values_and_gradients_equal_plain_einsums(masked):
    from cxrtrek_jax.model.attention import dot_product_attention
    from cxrtrek_jax.model.attention_mask import causal_segment_mask

    rng = np.random.default_rng(3)
    q, k, v, d_out = (jnp.asarray(rng.standard_normal(s), jnp.float32)
                      for s in ((2, 7, 6, 8), (2, 7, 2, 8), (2, 7, 2, 8), (2, 7, 6, 8)))
    segments = jnp.asarray([[1, 1, 1, 2, 2, 0, 0], [1, 1, 1, 1, 1, 1, 1]], jnp.int32)  # packed + padding
    mask = causal_segment_mask(segments, segments) if masked else None
    out, vjp = jax.vjp(lambda *a: dot_product_attention(*a, mask, scale=0.35), q, k, v)
    ref_out, ref_vjp = jax.vjp(lambda *a: _plain_attention(*a, mask, 0.35), q, k, v)
    np.testing.assert_allclose(out, ref_out, atol=1e-5, rtol=1e-5)
    for name, got, want in zip("qkv", vjp(d_out), ref_vjp(d_out)):
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5, err_msg=f"d{name}")


def test_causal_attention_skipping_the_masked_block_equals_plain_einsums_on_real_tokens():
    """causal=True (the upper-right block of a long causal row skipped) against the plain
    reference; padding queries (no key visible) may differ and carry no gradient here."""
    from cxrtrek_jax.model.attention import MIN_CAUSAL_SPLIT, dot_product_attention
    from cxrtrek_jax.model.attention_mask import causal_segment_mask

    length = MIN_CAUSAL_SPLIT
    rng = np.random.default_rng(5)
    q, k, v, d_out = (jnp.asarray(rng.standard_normal(s), jnp.float32)
                      for s in ((2, length, 4, 8), (2, length, 2, 8), (2, length, 2, 8), (2, length, 4, 8)))
    segments = np.ones((2, length), np.int32)
    segments[0, 100:] = 2  # a packed second sequence straddling the half
    segments[1, length - 30:] = 0  # padding
    real = jnp.asarray(segments > 0)[:, :, None, None]
    segments = jnp.asarray(segments)
    mask = causal_segment_mask(segments, segments)

    def ours(*a):
        return jnp.where(real, dot_product_attention(*a, mask, scale=0.35, causal=True), 0.0)

    def plain(*a):
        return jnp.where(real, _plain_attention(*a, mask, 0.35), 0.0)

    out, vjp = jax.vjp(ours, q, k, v)
    ref_out, ref_vjp = jax.vjp(plain, q, k, v)
    np.testing.assert_allclose(out, ref_out, atol=1e-5, rtol=1e-5)
    for name, got, want in zip("qkv", vjp(d_out), ref_vjp(d_out)):
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5, err_msg=f"d{name}")
    with pytest.raises(ValueError, match=r"causal=True\) needs the causal mask"):
        dot_product_attention(q, k, v, None, scale=0.35, causal=True)


@pytest.mark.parametrize("in_shape, out_shape", [((6,), (3, 4)), ((3, 4), (5,)), ((20,), (3,))])
def test_dense_values_and_gradients_equal_tensordot(in_shape, out_shape):
    """Both weight-gradient layouts (input narrower / output narrower) and multi-axis kernels."""
    from cxrtrek_jax.model.layers import Dense

    layer = Dense(in_shape, out_shape, in_names=("a",) * len(in_shape), out_names=("b",) * len(out_shape),
                  use_bias=True, dtype=jnp.float32, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(4)
    x = jnp.asarray(rng.standard_normal((2, 5, *in_shape)), jnp.float32)
    d_out = jnp.asarray(rng.standard_normal((2, 5, *out_shape)), jnp.float32)
    graphdef, state = nnx.split(layer)
    axes = (tuple(range(2, x.ndim)), tuple(range(len(in_shape))))
    out, vjp = jax.vjp(lambda x, state: nnx.merge(graphdef, state)(x), x, state)
    ref_out, ref_vjp = jax.vjp(lambda x, kernel, bias: jnp.tensordot(x, kernel, axes=axes) + bias,
                               x, layer.kernel[...], layer.bias[...])
    np.testing.assert_allclose(out, ref_out, atol=1e-5, rtol=1e-5)
    dx, d_state = vjp(d_out)
    got = (dx, nnx.to_pure_dict(d_state)["kernel"], nnx.to_pure_dict(d_state)["bias"])
    for name, g, want in zip(("dx", "dkernel", "dbias"), got, ref_vjp(d_out)):
        np.testing.assert_allclose(g, want, atol=1e-5, rtol=1e-5, err_msg=name)
