"""The training state, the masked token loss with per-stage metrics, and the jitted sharded step.

At the jit boundary the NNX model is split (`nnx.split`) into a static graph definition, its
`nnx.Param` leaves as a plain nested dict (`params`, fp32 master weights) and its other variables
(`rest`: only RNG streams, e.g. LoRA dropout, reseeded from (seed, step) inside every step); inside
the step they are merged back (`nnx.merge`). The step is `jax.jit` with explicit `in_shardings` /
`out_shardings` and a donated state.

Batch fields (the batch contract of `data_pipeline.batches.grain_pipeline`, `BATCH_FIELDS`), B = global batch, L = sequence length:
  input_tokens, target_tokens, stage_ids, segment_ids, positions: int32[B, L];
  loss_mask: float32[B, L]; images: float32[B, M, H, W]; image_mask: bool[B, M];
  optionally (`IMAGE_LABEL_FIELDS`) image_labels, image_label_mask: float32[B, K].

Loss: token cross-entropy summed over `loss_mask`, divided by the number of answer tokens in the
global batch (not per micro-batch, not per sample). With `image_label_weight` w > 0 the train step
adds w x the summed binary cross-entropy of the image-label read-out (`image_label_sums`) to that
sum before the division: each known (row, finding) label weighs w answer tokens.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Callable, Mapping
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from cxrtrek_jax.train import optimizer as optimizer_lib
from cxrtrek_jax.train import sharding as sharding_lib
from cxrtrek_jax.model import axis_rules
from cxrtrek_jax.model import backward_passes
# The batch contract, defined by the data side.
from data_pipeline.batches.grain_pipeline import BATCH_FIELDS, IMAGE_LABEL_FIELDS
from data_pipeline.schema.stages import NUM_STAGES  # re-exported: the one definition of the stage count

__all__ = [
    "NUM_STAGES",
    "BATCH_FIELDS",
    "TrainState",
    "SplitModel",
    "split_abstract_model",
    "param_logical_names",
    "state_shardings",
    "init_params",
    "create_train_state",
    "check_batch",
    "token_metric_sums",
    "answer_token_sums",
    "image_label_readout",
    "image_label_sums",
    "DEFAULT_HEAD_CHUNK",
    "make_train_step",
    "make_eval_step",
    "summarize_sums",
    "summarize_metrics",
]


ModelFn = Callable[[nnx.Rngs], nnx.Module]


@flax.struct.dataclass
class TrainState:
    """step: int32[] optimizer updates applied so far; params: nested dict of fp32 arrays (the
    model's `nnx.Param`s); opt_state: the optax state for `params`."""

    step: jax.Array
    params: Any
    opt_state: Any


@dataclasses.dataclass(frozen=True)
class SplitModel:
    """The static parts of a model split at the jit boundary.

    graphdef: the NNX graph definition; abstract_params: nested dict of `ShapeDtypeStruct`;
    logical_names: same structure, tuples of logical axis names (or None); rest: the model's
    non-`Param` variables (abstract `nnx.State`; only RNG streams are supported).
    """

    graphdef: Any
    abstract_params: Any
    logical_names: Any
    rest: Any


def param_logical_names(params_state: nnx.State) -> dict:
    """Nested dict (the structure of `nnx.to_pure_dict(params_state)`) of each parameter's logical
    axis names (its `out_sharding` metadata), or None where it has none."""
    flat = {
        path: variable.get_metadata().get("out_sharding")
        for path, variable in nnx.to_flat_state(params_state)
    }
    return nnx.traversals.unflatten_mapping(
        {path: None if names is None else tuple(names) for path, names in flat.items()}
    )


def split_abstract_model(model_fn: ModelFn) -> SplitModel:
    """Trace `model_fn` abstractly (no parameter memory) and split it."""
    abstract_model = nnx.eval_shape(lambda: model_fn(nnx.Rngs(0)))
    graphdef, params_state, rest = nnx.split(abstract_model, nnx.Param, ...)
    return SplitModel(
        graphdef=graphdef,
        abstract_params=nnx.to_pure_dict(params_state),
        logical_names=param_logical_names(params_state),
        rest=rest,
    )


def state_shardings(
    split: SplitModel,
    tx: optax.GradientTransformation,
    mesh: Mesh,
    rules: sharding_lib.LogicalRules = sharding_lib.LOGICAL_AXIS_RULES,
) -> TrainState:
    """A `TrainState` of `NamedSharding`s: params by their logical names, optimizer slots like
    their parameters, scalars replicated."""
    params = sharding_lib.tree_shardings(split.abstract_params, split.logical_names, mesh, rules)
    abstract_opt_state = jax.eval_shape(tx.init, split.abstract_params)
    opt_state = sharding_lib.opt_state_shardings(
        abstract_opt_state, split.abstract_params, params, mesh
    )
    return TrainState(step=sharding_lib.replicated(mesh), params=params, opt_state=opt_state)


def init_params(model_fn: ModelFn, seed: int, param_shardings: Any) -> Any:
    """Freshly initialised parameters (from `nnx.Rngs(seed)`), created directly sharded."""

    def init():
        return nnx.to_pure_dict(nnx.split(model_fn(nnx.Rngs(seed)), nnx.Param, ...)[1])

    params = jax.jit(init, out_shardings=param_shardings)()
    optimizer_lib.check_master_weights(params)
    return params


def create_train_state(
    params: Any, tx: optax.GradientTransformation, shardings: TrainState
) -> TrainState:
    """A step-0 `TrainState` for `params` (placed onto `shardings.params`) with a fresh
    optimizer state created directly in its sharded layout."""
    optimizer_lib.check_master_weights(params)
    params = jax.device_put(params, shardings.params)
    opt_state = jax.jit(tx.init, out_shardings=shardings.opt_state)(params)
    step = jax.device_put(jnp.zeros((), jnp.int32), shardings.step)
    return TrainState(step=step, params=params, opt_state=opt_state)


def _rest_placeholder(abstract_rest: nnx.State) -> nnx.State:
    """Concrete stand-ins for the model's non-`Param` variables. Only RNG streams are supported
    (they are reseeded every step, so their stored values never matter); anything else would be
    training state this loop does not carry, and is refused."""

    def fill(path, variable):
        if isinstance(variable, nnx.RngKey):
            key = jax.random.key(0)
            return variable.replace(jax.random.split(key, variable.shape) if variable.shape else key)
        if isinstance(variable, nnx.RngCount):
            return variable.replace(jnp.zeros(variable.shape, jnp.uint32))
        raise ValueError(
            f"model variable {'.'.join(map(str, path))} ({type(variable).__name__}) is neither a "
            "parameter nor an RNG stream; the train step does not carry such state"
        )

    return nnx.map_state(fill, abstract_rest)


def check_batch(batch: Mapping[str, Any]) -> None:
    """ValueError naming the field when `batch` lacks a contract field, has an unexpected one, or
    a field's leading dims disagree ([B, L] token fields, [B, M, H, W] images, [B, M] mask)."""
    labelled = [f for f in IMAGE_LABEL_FIELDS if f in batch]
    missing = [f for f in BATCH_FIELDS if f not in batch]
    if labelled:
        missing += [f for f in IMAGE_LABEL_FIELDS if f not in batch]
    extra = sorted(set(batch) - set(BATCH_FIELDS) - set(IMAGE_LABEL_FIELDS))
    if missing or extra:
        raise ValueError(f"batch fields: missing {missing}, unexpected {extra}")
    rows_len = tuple(batch["input_tokens"].shape)
    if len(rows_len) != 2:
        raise ValueError(f"batch field 'input_tokens' must be [batch, length], got shape {rows_len}")
    for name in ("target_tokens", "loss_mask", "stage_ids", "segment_ids", "positions"):
        if tuple(batch[name].shape) != rows_len:
            raise ValueError(f"batch field {name!r} has shape {tuple(batch[name].shape)}, "
                             f"expected {rows_len} like 'input_tokens'")
    images, mask = tuple(batch["images"].shape), tuple(batch["image_mask"].shape)
    if len(images) != 4 or images[0] != rows_len[0] or mask != images[:2]:
        raise ValueError(f"batch fields 'images' {images} / 'image_mask' {mask} must be "
                         f"[{rows_len[0]}, M, H, W] / [{rows_len[0]}, M]")
    if labelled:
        labels, known = tuple(batch["image_labels"].shape), tuple(batch["image_label_mask"].shape)
        if len(labels) != 2 or labels[0] != rows_len[0] or known != labels:
            raise ValueError(f"batch fields 'image_labels' {labels} / 'image_label_mask' {known} must "
                             f"both be [{rows_len[0]}, K]")


def token_metric_sums(
    logits: jax.Array,
    target_tokens: jax.Array,
    loss_mask: jax.Array,
    stage_ids: jax.Array,
) -> dict[str, jax.Array]:
    """Sums over answer tokens (loss_mask > 0) of one (micro-)batch.

    logits: float[B, L, V]; target_tokens, stage_ids: int32[B, L]; loss_mask: float32[B, L].
    Returns loss_sum, answer_tokens, correct: float32[]; and per stage 1..8 (index s-1):
    stage_loss_sum, stage_answer_tokens, stage_correct: float32[8]. Tokens whose stage id is
    outside 1..8 count towards the totals only.
    """
    logits = logits.astype(jnp.float32)
    mask = loss_mask.astype(jnp.float32)
    token_loss = optax.softmax_cross_entropy_with_integer_labels(logits, target_tokens)
    correct = (jnp.argmax(logits, axis=-1) == target_tokens).astype(jnp.float32)
    per_stage = jax.nn.one_hot(stage_ids - 1, NUM_STAGES, dtype=jnp.float32) * mask[..., None]
    return {
        "loss_sum": jnp.sum(token_loss * mask),
        "answer_tokens": jnp.sum(mask),
        "correct": jnp.sum(correct * mask),
        "stage_loss_sum": jnp.einsum("bl,bls->s", token_loss, per_stage),
        "stage_answer_tokens": jnp.sum(per_stage, axis=(0, 1)),
        "stage_correct": jnp.einsum("bl,bls->s", correct, per_stage),
    }


DEFAULT_HEAD_CHUNK = 512


def _chunk_sums(head: Callable[[jax.Array], jax.Array], hidden: jax.Array, targets: jax.Array,
                weights: jax.Array, stages: jax.Array) -> dict[str, jax.Array]:
    """Loss and accuracy sums of one chunk of gathered answer tokens.

    hidden [C, E] (final hidden states); targets, stages int32[C]; weights float32[C] (the
    tokens' loss_mask, 0 for padding rows). head: [C, E] -> logits float32[C, V]. Returns
    loss_sum, correct: float32[]; stage_loss_sum, stage_correct: float32[8].
    """
    logits = head(hidden).astype(jnp.float32)
    token_loss = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    # where, not multiply: a non-finite padding row must not reach the sums.
    token_loss = jnp.where(weights > 0, token_loss * weights, 0.0)
    correct = jnp.where(weights > 0, (jnp.argmax(logits, axis=-1) == targets) * weights, 0.0)
    per_stage = jax.nn.one_hot(stages - 1, NUM_STAGES, dtype=jnp.float32)
    return {
        "loss_sum": jnp.sum(token_loss),
        "correct": jnp.sum(correct),
        "stage_loss_sum": token_loss @ per_stage,
        "stage_correct": correct @ per_stage,
    }


def answer_token_sums(
    hidden: jax.Array,
    head: Callable[[jax.Array], jax.Array],
    target_tokens: jax.Array,
    loss_mask: jax.Array,
    stage_ids: jax.Array,
    *,
    chunk: int = DEFAULT_HEAD_CHUNK,
) -> dict[str, jax.Array]:
    """`token_metric_sums` from final hidden states, with the LM head applied only at answer
    tokens (loss_mask > 0): never materialises the [B, L, V] logits.

    hidden: [B, L, E]; head: [n, E] -> logits float32[n, V]; target_tokens, stage_ids:
    int32[B, L]; loss_mask: float32[B, L]; chunk: rows per head product (at most B*L). The
    answer tokens are gathered in order into a [ceil(B*L / chunk) * chunk, E] block (padding rows after them) and scanned in [chunk, E]
    pieces; pieces past the last answer token are skipped (`lax.cond`), so the work is
    ceil(answer tokens / chunk) head products whatever their number, and every answer token
    counts. Each piece is rematerialised in the backward pass, so at most [chunk, V] logits are
    live. Returns the same sums as `token_metric_sums`.
    """
    batch, length, width = hidden.shape
    count = batch * length
    chunk = min(chunk, count)
    pieces = -(-count // chunk)
    mask = jnp.asarray(loss_mask, jnp.float32).reshape(count)
    target_tokens, stage_ids = jnp.asarray(target_tokens), jnp.asarray(stage_ids)
    answers = jnp.sum(mask > 0)
    (index,) = jnp.nonzero(mask > 0, size=pieces * chunk, fill_value=0)
    valid = jnp.arange(pieces * chunk) < answers
    weights = jnp.where(valid, mask[index], 0.0)
    gathered = (hidden.reshape(count, width)[index], target_tokens.reshape(count)[index],
                weights, stage_ids.reshape(count)[index])
    xs = jax.tree.map(lambda x: x.reshape(pieces, chunk, *x.shape[1:]), gathered)
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(
        lambda *piece: _chunk_sums(head, *piece), *jax.tree.map(lambda x: x[0], xs)))

    @jax.checkpoint  # outside the cond, so the head's weights stay loop-invariant residuals
    def piece_sums(start, piece):
        return jax.lax.cond(start < answers, lambda: _chunk_sums(head, *piece), lambda: zeros)

    def body(carry, xs_i):
        return jax.tree.map(jnp.add, carry, piece_sums(*xs_i)), None

    sums, _ = jax.lax.scan(body, zeros, (jnp.arange(pieces) * chunk, xs))
    per_stage = jax.nn.one_hot(stage_ids.reshape(count) - 1, NUM_STAGES, dtype=jnp.float32)
    return dict(sums, answer_tokens=jnp.sum(mask),
                stage_answer_tokens=mask @ per_stage)


_READOUT_SEED = 0x1AB


def image_label_readout(embed_dim: int, num_labels: int) -> jax.Array:
    """The fixed (never trained) read-out float32[E, K] of the image-label loss: Gaussian entries
    of variance 1/E from a constant seed. Being fixed, it adds no parameter (nothing to checkpoint
    or export), and the loss can only fall by making the image tokens themselves carry the labels
    along directions the decoder sees."""
    return jax.random.normal(jax.random.key(_READOUT_SEED), (embed_dim, num_labels)) / np.sqrt(embed_dim)


def image_label_sums(image_features: jax.Array, image_mask: jax.Array, labels: jax.Array,
                     label_mask: jax.Array) -> dict[str, jax.Array]:
    """The auxiliary image-label loss of one (micro-)batch.

    image_features: [B, M, N, E] (`CXRTrekNet.encode_images`); slot 0 is the row's current image.
    image_mask: bool[B, M]; labels, label_mask: float32[B, K] (1 = present / known).
    Each row's slot-0 tokens are averaged to [E] and read out by `image_label_readout` to K
    logits. Returns image_label_loss_sum (sigmoid cross-entropy in nats, summed over the known
    labels of rows whose slot 0 holds an image) and image_labels (how many), float32[].
    """
    pooled = jnp.mean(image_features[:, 0].astype(jnp.float32), axis=1)
    logits = pooled @ image_label_readout(pooled.shape[-1], labels.shape[-1])
    known = label_mask.astype(jnp.float32) * image_mask[:, :1].astype(jnp.float32)
    bce = optax.sigmoid_binary_cross_entropy(logits, labels.astype(jnp.float32))
    return {"image_label_loss_sum": jnp.sum(bce * known), "image_labels": jnp.sum(known)}


def _rng_stream_tags(rest: nnx.State) -> tuple[str, ...]:
    """The RNG streams (e.g. LoRA dropout's) held by the model's non-`Param` variables."""
    return tuple(sorted({v.tag for _, v in nnx.to_flat_state(rest) if isinstance(v, nnx.RngKey)}))


def _path_salted(path: tuple, key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """A distinct key per RNG stream location (so dropout masks are independent across layers);
    crc32 keeps it stable across processes, unlike `hash`."""
    salt = zlib.crc32("/".join(str(p) for p in path).encode())
    return jax.random.split(jax.random.fold_in(key, salt), shape) if shape else jax.random.fold_in(key, salt)


def _pure_head(text: nnx.Module) -> Callable[[jax.Array], jax.Array]:
    """`text.head` ([n, E] -> logits float32[n, V]) as a function of its own copy of the head's
    variables, so that it can run inside `scan` / `cond` / `checkpoint` (a LoRA adapter's
    dropout on the head then draws the same mask for every chunk)."""
    graphdef, state = nnx.split(text)
    return lambda hidden: nnx.merge(graphdef, state).head(hidden)


def _forward_sums(
    graphdef, params, rest, batch: Mapping[str, jax.Array], rng_key: jax.Array | None,
    head_chunk: int = DEFAULT_HEAD_CHUNK, image_labels: bool = False,
) -> dict[str, jax.Array]:
    """`answer_token_sums` of one (micro-)batch (plus `image_label_sums` with `image_labels`);
    rng_key None = evaluation: dropout off."""
    # Fresh Variable objects for this trace (reseeding mutates them).
    model = nnx.merge(graphdef, params, jax.tree.map(lambda x: x, rest))
    if rng_key is None:
        model.eval()
    else:
        tags = _rng_stream_tags(rest)
        if tags:
            nnx.reseed(model, policy=_path_salted, **{tag: rng_key for tag in tags})
    features = model.encode_images(batch["images"])
    hidden, _ = model(
        batch["input_tokens"],
        None,
        batch["image_mask"],
        batch["positions"],
        batch["segment_ids"],
        image_features=features,
        return_hidden=True,
    )
    sums = answer_token_sums(hidden, _pure_head(model.text), batch["target_tokens"], batch["loss_mask"],
                             batch["stage_ids"], chunk=head_chunk)
    if image_labels:
        sums.update(image_label_sums(features, batch["image_mask"], batch["image_labels"],
                                     batch["image_label_mask"]))
    return sums


def _microbatches(batch: Mapping[str, jax.Array], count: int, mesh: Mesh) -> dict[str, jax.Array]:
    """[B, ...] -> [count, B / count, ...], micro-batch k taking rows k, k + count, ... so every
    device keeps its rows (a contiguous split would put whole micro-batches on few devices)."""
    sharding = NamedSharding(mesh, jax.sharding.PartitionSpec(None, sharding_lib.BATCH_MESH_AXES))
    ways = mesh.shape["data"] * mesh.shape["fsdp"]
    out = {}
    for name, x in batch.items():
        rows = x.shape[0] // count
        if x.shape[0] % count or rows % ways:
            raise ValueError(
                f"batch field {name!r}: batch size {x.shape[0]} must split into {count} "
                f"micro-batches whose size is divisible by data x fsdp = {ways}"
            )
        x = x.reshape(rows, count, *x.shape[1:]).swapaxes(0, 1)
        out[name] = jax.lax.with_sharding_constraint(x, sharding)
    return out


@dataclasses.dataclass(frozen=True)
class _TrainableLeaves:
    """Which parameter leaves the step trains: `flags[i]` for leaf i (in `jax.tree.leaves` order)
    of the parameter tree `treedef`. Gradients are taken for the trainable leaves only."""

    treedef: Any
    flags: tuple[bool, ...]

    @classmethod
    def of(cls, abstract_params: Any, trainable: Any | None) -> _TrainableLeaves:
        """All leaves of `abstract_params`, or those True in the bool pytree `trainable`."""
        treedef = jax.tree.structure(abstract_params)
        flags = ([True] * treedef.num_leaves if trainable is None
                 else [bool(t) for t in jax.tree.leaves(trainable)])
        if len(flags) != treedef.num_leaves:
            raise ValueError(f"trainable mask has {len(flags)} leaves for {treedef.num_leaves} parameters")
        return cls(treedef, tuple(flags))

    def split(self, params: Any) -> tuple[list, list]:
        """(trainable leaves, frozen leaves) of `params`, each in leaf order."""
        leaves = jax.tree.leaves(params)
        return ([x for x, f in zip(leaves, self.flags) if f],
                [x for x, f in zip(leaves, self.flags) if not f])

    def combine(self, train_leaves: list, frozen_leaves: list) -> Any:
        """The parameter tree from its trainable and frozen leaves (inverse of `split`)."""
        it_train, it_frozen = iter(train_leaves), iter(frozen_leaves)
        return self.treedef.unflatten([next(it_train) if flag else next(it_frozen) for flag in self.flags])


_GradsAndSums = Callable[[Any, Mapping[str, jax.Array], jax.Array, jax.Array], tuple[list, dict]]


def _grads_and_sums_fn(split: SplitModel, leaves: _TrainableLeaves, head_chunk: int,
                       image_label_weight: float) -> _GradsAndSums:
    """`(params, batch, denominator, rng_key) -> (grads, sums)` of one (micro-)batch: the gradient
    (list over the trainable leaves) of the objective / denominator, where the objective is the
    summed token loss plus `image_label_weight` x the summed image-label loss when that is > 0;
    sums: `_forward_sums` of the batch."""
    graphdef, rest = split.graphdef, _rest_placeholder(split.rest)
    with_labels = image_label_weight > 0.0

    def grads_and_sums(params, batch, denominator, rng_key):
        train_leaves, frozen_leaves = leaves.split(params)

        def objective(train_leaves):
            params = leaves.combine(train_leaves, frozen_leaves)
            sums = _forward_sums(graphdef, params, rest, batch, rng_key, head_chunk, with_labels)
            objective = sums["loss_sum"]
            if with_labels:
                objective = objective + image_label_weight * sums["image_label_loss_sum"]
            return objective / denominator, sums

        (_, sums), train_grads = jax.value_and_grad(objective, has_aux=True)(train_leaves)
        return train_grads, sums

    return grads_and_sums


def _accumulate_fn(grads_and_sums: _GradsAndSums, accum: int, mesh: Mesh, seed: int
                   ) -> Callable[[TrainState, Mapping[str, jax.Array], jax.Array], tuple[list, dict]]:
    """`(state, batch, denominator) -> (grads, sums)` of a global batch: `grads_and_sums` of the
    whole batch (accum == 1), else added over `accum` micro-batches (`_microbatches`) in a scan.
    The RNG key is fold_in(key(seed), step), further folded with the micro-batch index."""

    def accumulate(state: TrainState, batch, denominator):
        step_key = jax.random.fold_in(jax.random.key(seed), state.step)
        if accum == 1:
            return grads_and_sums(state.params, batch, denominator, step_key)
        micro = _microbatches(batch, accum, mesh)

        def body(carry, xs):
            index, one_micro = xs
            key = jax.random.fold_in(step_key, index)
            grads, sums = grads_and_sums(state.params, one_micro, denominator, key)
            return jax.tree.map(jnp.add, carry, (grads, sums)), None

        first = jax.tree.map(lambda x: x[0], micro)
        shapes = jax.eval_shape(grads_and_sums, state.params, first, denominator, step_key)
        zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
        (grads, sums), _ = jax.lax.scan(body, zeros, (jnp.arange(accum), micro))
        return grads, sums

    return accumulate


def _guarded_update(tx: optax.GradientTransformation, leaves: _TrainableLeaves, state: TrainState,
                    train_grads: list, sums: Mapping[str, jax.Array], denominator: jax.Array,
                    with_labels: bool) -> tuple[TrainState, dict[str, jax.Array]]:
    """(the state after one optimizer update, or `state` unchanged when the loss, the gradient
    norm or (with labels) the image-label loss is not finite; {loss, grad_norm, finite}). Frozen
    leaves get zero gradients; grad_norm is the L2 norm over the trainable leaves."""
    frozen_zeros = [jnp.zeros_like(x) for x in leaves.split(state.params)[1]]
    grads = leaves.combine(train_grads, frozen_zeros)
    grad_norm = optax.tree.norm(train_grads)
    loss = sums["loss_sum"] / denominator
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    new_state = TrainState(
        step=state.step + 1,
        params=optax.apply_updates(state.params, updates),
        opt_state=opt_state,
    )
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    if with_labels:
        finite &= jnp.isfinite(sums["image_label_loss_sum"])
    new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), new_state, state)
    return new_state, {"loss": loss, "grad_norm": grad_norm, "finite": finite}


def _require_labelled(batch: Mapping[str, Any], image_label_weight: float) -> None:
    """ValueError unless `batch` carries `IMAGE_LABEL_FIELDS` (needed when the weight is > 0)."""
    if image_label_weight > 0.0 and not all(f in batch for f in IMAGE_LABEL_FIELDS):
        raise ValueError(f"image_label_weight {image_label_weight} needs batches with "
                         f"{IMAGE_LABEL_FIELDS} (PipelineConfig.image_labels)")


def make_train_step(
    split: SplitModel,
    tx: optax.GradientTransformation,
    config: optimizer_lib.OptimConfig,
    shardings: TrainState,
    *,
    trainable: Any | None = None,
    seed: int = 0,
    rules: sharding_lib.LogicalRules = sharding_lib.LOGICAL_AXIS_RULES,
    head_chunk: int = DEFAULT_HEAD_CHUNK,
    image_label_weight: float = 0.0,
    hand_written_backward: bool | None = None,
) -> Callable[[TrainState, dict[str, jax.Array]], tuple[TrainState, dict[str, jax.Array]]]:
    """The jitted train step `(state, batch) -> (state, metrics)`; `state` is donated.

    trainable: optional pytree of bools (as given to `make_optimizer`); gradients are only taken
      for trainable parameters. When the loss or the gradient norm is not finite the update is
      skipped (the state comes back unchanged) and `metrics["finite"]` is False; the caller stops.
    seed: RNG streams in the model (LoRA dropout) are reseeded every step from (seed, step,
      micro-batch), so a resumed run draws the same masks as an uninterrupted one.
    rules: logical-axis rules for the model's activation constraints.
    head_chunk: answer tokens per LM-head product (`answer_token_sums`).
    image_label_weight: w > 0 adds the image-label loss (`image_label_sums`; the batches must
      carry `IMAGE_LABEL_FIELDS`) to the objective, each known label weighing w answer tokens.
    hand_written_backward: differentiate the dense and attention layers through their
      hand-written backward passes (True) or JAX's autodiff of their plain forms (False); None
      (default): hand-written where they win (`backward_passes.hand_written_backward_wins` of the
      mesh's device platform: on CPU), autodiff elsewhere (TPU, GPU), where the hand-written
      passes cost the 7B step on v5p 2x2x2 more HBM than it has. Same loss and gradients.
    metrics (replicated, no host sync): loss (the token loss alone), accuracy, answer_tokens,
      grad_norm, learning_rate, finite, the raw sums of `token_metric_sums` (per stage included)
      and, with w > 0, those of `image_label_sums`.
    """
    if not image_label_weight >= 0.0:
        raise ValueError(f"image_label_weight must be >= 0, got {image_label_weight}")
    mesh = shardings.step.mesh
    if hand_written_backward is None:
        hand_written_backward = backward_passes.hand_written_backward_wins(mesh.devices.flat[0].platform)
    schedule = optimizer_lib.learning_rate_schedule(config)
    leaves = _TrainableLeaves.of(split.abstract_params, trainable)
    accumulate = _accumulate_fn(_grads_and_sums_fn(split, leaves, head_chunk, image_label_weight),
                                config.grad_accum_steps, mesh, seed)

    def step_fn(state: TrainState, batch: dict[str, jax.Array]):
        _require_labelled(batch, image_label_weight)
        denominator = jnp.maximum(jnp.sum(batch["loss_mask"].astype(jnp.float32)), 1.0)
        with axis_rules(rules, mesh), backward_passes.hand_written_backward(hand_written_backward):
            train_grads, sums = accumulate(state, batch, denominator)
        new_state, update = _guarded_update(tx, leaves, state, train_grads, sums, denominator,
                                            image_label_weight > 0.0)
        metrics = dict(sums, loss=update["loss"], accuracy=sums["correct"] / denominator,
                       grad_norm=update["grad_norm"], learning_rate=schedule(state.step),
                       finite=update["finite"])
        return new_state, metrics

    return jax.jit(
        step_fn,
        in_shardings=(shardings, sharding_lib.batch_sharding(mesh)),
        out_shardings=(shardings, sharding_lib.replicated(mesh)),
        donate_argnums=0,
    )


def make_eval_step(
    model_config,
    mesh: Mesh,
    rules: sharding_lib.LogicalRules = sharding_lib.LOGICAL_AXIS_RULES,
    head_chunk: int = DEFAULT_HEAD_CHUNK,
) -> Callable[[Any, Mapping[str, Any]], dict[str, np.ndarray]]:
    """`eval_step(params, local_batch) -> sums` for a `cxrtrek_jax.model.ModelConfig`: the
    `token_metric_sums` of one batch (dropout off), as host numpy arrays so that batches can be
    added up (`np.add`) and summarised with `summarize_sums`.

    params: as in `TrainState.params` (sharded by `rules` on `mesh`); local_batch: this process's
    rows of a batch (numpy, `data_pipeline.batches.grain_pipeline` batch fields; padding rows have segment_ids 0 and no loss).
    """
    from cxrtrek_jax.model import CXRTrekNet

    split = split_abstract_model(lambda rngs: CXRTrekNet(model_config, rngs=rngs))
    rest = _rest_placeholder(split.rest)
    param_shardings = sharding_lib.tree_shardings(
        split.abstract_params, split.logical_names, mesh, rules
    )

    def sums_fn(params, batch):
        with axis_rules(rules, mesh):
            return _forward_sums(split.graphdef, params, rest, batch, None, head_chunk)

    jitted = jax.jit(
        sums_fn,
        in_shardings=(param_shardings, sharding_lib.batch_sharding(mesh)),
        out_shardings=sharding_lib.replicated(mesh),
    )

    def eval_step(params, local_batch):
        check_batch(local_batch)
        return jax.device_get(jitted(params, sharding_lib.put_batch(local_batch, mesh)))

    return eval_step


def summarize_sums(sums: Mapping[str, Any]) -> dict[str, float]:
    """Host scalars from `token_metric_sums` (possibly added over batches): loss, accuracy and
    answer_tokens, and for each stage s with answer tokens `stage{s}/loss`, `stage{s}/accuracy`,
    `stage{s}/tokens`; with `image_label_sums` also image_label_loss (nats per known label) and
    image_labels."""
    m = jax.device_get(dict(sums))
    tokens = float(m["answer_tokens"])
    out = {
        "loss": float(m["loss_sum"]) / max(tokens, 1.0),
        "accuracy": float(m["correct"]) / max(tokens, 1.0),
        "answer_tokens": tokens,
    }
    for s in range(NUM_STAGES):
        stage_tokens = float(m["stage_answer_tokens"][s])
        if stage_tokens > 0:
            out[f"stage{s + 1}/loss"] = float(m["stage_loss_sum"][s]) / stage_tokens
            out[f"stage{s + 1}/accuracy"] = float(m["stage_correct"][s]) / stage_tokens
            out[f"stage{s + 1}/tokens"] = stage_tokens
    if "image_label_loss_sum" in m:
        labels = float(m["image_labels"])
        out["image_label_loss"] = float(m["image_label_loss_sum"]) / max(labels, 1.0)
        out["image_labels"] = labels
    return out


def summarize_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """Host scalars of one train step: `summarize_sums` plus grad_norm and learning_rate."""
    m = jax.device_get(dict(metrics))
    return dict(
        summarize_sums(m),
        grad_norm=float(m["grad_norm"]),
        learning_rate=float(m["learning_rate"]),
    )
