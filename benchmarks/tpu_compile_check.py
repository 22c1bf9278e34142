"""TPU compile-and-fit check of `cxrtreknet-7b` and `medgemma-4b`, on a CPU-only machine.

    make tpu-compile-check        # creates .venv-tpu (jax[tpu] = libtpu), then runs this module

libtpu can compile for a TPU topology without a TPU: `jax.experimental.topologies` describes
the topology's devices, the mesh is built on them, and the full jitted train step of the
project (`cxrtrek_jax.train.step.make_train_step`: forward, backward, AdamW update, with the
real logical-axis sharding rules of `cxrtrek_jax.train.sharding`) is lowered from abstract inputs
(`jax.ShapeDtypeStruct`s carrying shardings; nothing is materialised) and compiled. The
compiled executable's memory analysis gives the bytes each chip needs (arguments, outputs,
temporaries; donated outputs alias their arguments), checked against the chip's HBM; its cost
analysis gives the FLOPs of one step per chip, compared with the analytic count
(`benchmarks.model_flops`). The exit status is 1 when a default configuration does not fit.

The decoding steps are compiled too (`DEFAULT_DECODE_CASES`: the topology, mesh and preset of
each default train case): a prefill of the prompt (images included) into the KV cache, one
single-token decode step reading it (bf16 weights for serving), and the staged decoder's answer
step as `cxrtrek eval --set mesh.*` runs it (`StepwiseDecoder` on the mesh: greedy decoding of a
whole answer in a `while_loop` over the chain state, KV cache and image features sharded by
`state_logical_axes`).

libtpu prints warnings about missing TPU worker environment variables (there is no TPU here);
they are harmless.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time
from typing import Any

__all__ = [
    "HBM_GIB",
    "TrainCase",
    "DecodeCase",
    "DEFAULT_TRAIN_CASES",
    "DEFAULT_DECODE_CASE",
    "DEFAULT_DECODE_CASES",
    "MemoryReport",
    "topology_mesh",
    "compile_train_step",
    "compile_decode_steps",
    "main",
]

GIB = 1024**3
# HBM per chip by the device kind libtpu reports.
HBM_GIB = {"TPU v5": 95.0, "TPU v5p": 95.0, "TPU v5 lite": 16.0, "TPU v5e": 16.0, "TPU v4": 32.0,
           "TPU v6 lite": 32.0}


@dataclasses.dataclass(frozen=True)
class TrainCase:
    """One topology's training configuration: global batch rows of `seq_len` tokens with
    `images` image slots each (all present), on a mesh of (data, fsdp, tensor) axes
    (-1 = all remaining chips)."""

    topology: str
    global_batch: int
    seq_len: int
    images: int
    mesh: tuple[int, int, int] = (1, -1, 1)
    preset: str = "cxrtreknet-7b"


@dataclasses.dataclass(frozen=True)
class DecodeCase:
    """Prefill `prompt_len` tokens (with `images` images per row) into a cache of
    `cache_len` slots, then decode one token, for `batch` rows."""

    topology: str
    batch: int
    prompt_len: int
    cache_len: int
    images: int
    mesh: tuple[int, int, int] = (1, -1, 1)
    preset: str = "cxrtreknet-7b"


# 4 images x 729 tokens = 2916 image tokens + ~1180 text tokens per row. A 64-chip v5p
# (--case v5p:4x4x4:256:4096:4) also lowers, but its compile needs more than the 24 GiB of RAM of
# the project's machines (killed at 18 GiB resident after 27 min), so it is not a default case.
# medgemma-4b: 4 images x (256 image tokens + Gemma 3's markers) per 4096-token row, each image
# 896 x 896 px through the 27-layer SigLIP (4096 patches); the 262208-way logits of a row are
# 4 GiB in fp32. With one row per chip (fsdp only) v5e-16 needs 20.2 GiB of temporaries (of 15.75);
# with the vocabulary, heads and MLP split over tensor=2 (one row per two chips) it fits (15.3 GiB).
DEFAULT_TRAIN_CASES = (
    TrainCase("v5p:2x2x2", global_batch=32, seq_len=4096, images=4),
    TrainCase("v5e:4x4", global_batch=16, seq_len=4096, images=4),
    TrainCase("v5p:2x2x2", global_batch=16, seq_len=4096, images=4, preset="medgemma-4b"),
    TrainCase("v5e:4x4", global_batch=8, seq_len=4096, images=4, mesh=(1, 8, 2), preset="medgemma-4b"),
)
DEFAULT_DECODE_CASE = DecodeCase("v5p:2x2x2", batch=32, prompt_len=2048, cache_len=4096, images=2)
DEFAULT_DECODE_CASES = (
    DEFAULT_DECODE_CASE,
    DecodeCase("v5e:4x4", batch=16, prompt_len=2048, cache_len=4096, images=2),
    DecodeCase("v5p:2x2x2", batch=32, prompt_len=2048, cache_len=4096, images=2, preset="medgemma-4b"),
    DecodeCase("v5e:4x4", batch=16, prompt_len=2048, cache_len=4096, images=2, mesh=(1, 8, 2), preset="medgemma-4b"),
)
# The programs of a decode case; results from before the staged decoder's step have only the first two.
DECODE_PROGRAMS = ("prefill", "decode_step", "chain_answer")
CHAIN_ANSWER_TOKENS = 128  # the answer budget (and record width) of the compiled chain answer step


@dataclasses.dataclass(frozen=True)
class MemoryReport:
    """Per-chip bytes from `compiled.memory_analysis()` and FLOPs from `cost_analysis()`."""

    argument_bytes: int
    output_bytes: int
    alias_bytes: int
    temp_bytes: int
    code_bytes: int
    hbm_bytes: int
    flops: float | None

    @property
    def total_bytes(self) -> int:
        """What the chip holds at the peak: arguments + outputs not aliased to them + temporaries
        + code."""
        return self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes + self.code_bytes

    @property
    def fits(self) -> bool:
        return self.total_bytes <= self.hbm_bytes

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out.update(total_bytes=self.total_bytes, fits=self.fits,
                   total_gib=self.total_bytes / GIB, hbm_gib=self.hbm_bytes / GIB)
        return out


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def topology_devices(topology: str) -> list:
    """The devices of a TPU topology such as "v5p:2x2x2" (compile-only, no TPU needed)."""
    from jax.experimental import topologies

    return list(topologies.get_topology_desc(topology_name=topology, platform="tpu").devices)


def topology_mesh(topology: str, axes: tuple[int, int, int]):
    """A (data, fsdp, tensor) mesh over the topology's chips in physical order."""
    from jax.experimental import mesh_utils
    from jax.sharding import Mesh

    from cxrtrek_jax.train import sharding as sharding_lib

    devices = topology_devices(topology)
    sizes = sharding_lib.MeshConfig(*axes).axis_sizes(len(devices))
    grid = mesh_utils.create_device_mesh(sizes, devices, allow_split_physical_axes=True)
    return Mesh(grid, sharding_lib.MESH_AXES)


def hbm_bytes(mesh) -> int:
    kind = mesh.devices.flat[0].device_kind
    if kind not in HBM_GIB:
        raise ValueError(f"unknown TPU device kind {kind!r}; known: {sorted(HBM_GIB)}")
    return int(HBM_GIB[kind] * GIB)


def _report(compiled, hbm: int) -> MemoryReport:
    memory = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):  # older jax returned one dict per program
        cost = cost[0] if cost else {}
    flops = None if not cost or "flops" not in cost else float(cost["flops"])
    return MemoryReport(
        argument_bytes=int(memory.argument_size_in_bytes),
        output_bytes=int(memory.output_size_in_bytes),
        alias_bytes=int(memory.alias_size_in_bytes),
        temp_bytes=int(memory.temp_size_in_bytes),
        code_bytes=int(memory.generated_code_size_in_bytes),
        hbm_bytes=hbm,
        flops=flops,
    )


def _abstract(tree, shardings):
    import jax

    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def _batch_shapes(batch: int, seq_len: int, images: int, image_size: int) -> dict[str, tuple[tuple[int, ...], Any]]:
    import jax.numpy as jnp

    token = ((batch, seq_len), jnp.int32)
    return {
        "input_tokens": token, "target_tokens": token, "loss_mask": ((batch, seq_len), jnp.float32),
        "stage_ids": token, "segment_ids": token, "positions": token,
        "images": ((batch, images, image_size, image_size), jnp.float32),
        "image_mask": ((batch, images), jnp.bool_),
    }


def compile_train_step(case: TrainCase, model_config=None, *, mesh=None, hbm: int | None = None) -> dict[str, Any]:
    """Lower and compile the train step of `model_config` (default `cxrtreknet-7b`) for `case`;
    its report as a JSON-able dict. mesh / hbm: override the topology's mesh and HBM bytes per
    chip (tests compile on CPU devices)."""
    import jax

    from cxrtrek_jax.train import optimizer as optimizer_lib
    from cxrtrek_jax.train import sharding as sharding_lib
    from cxrtrek_jax.train import step as step_lib
    from cxrtrek_jax.model import CXRTrekNet, backward_passes, get_config

    from benchmarks import model_flops

    cfg = model_config or get_config(case.preset)
    mesh = mesh if mesh is not None else topology_mesh(case.topology, case.mesh)
    split = step_lib.split_abstract_model(lambda rngs: CXRTrekNet(cfg, rngs=rngs))
    optim = optimizer_lib.OptimConfig(weight_decay=0.1)
    tx = optimizer_lib.make_optimizer(optim)
    shardings = step_lib.state_shardings(split, tx, mesh)
    step_fn = step_lib.make_train_step(split, tx, optim, shardings)
    abstract_state = _abstract(
        step_lib.TrainState(
            step=jax.ShapeDtypeStruct((), jax.numpy.int32),
            params=split.abstract_params,
            opt_state=jax.eval_shape(tx.init, split.abstract_params),
        ),
        shardings,
    )
    batch_sharding = sharding_lib.batch_sharding(mesh)
    abstract_batch = {
        name: jax.ShapeDtypeStruct(shape, dtype, sharding=batch_sharding)
        for name, (shape, dtype) in _batch_shapes(case.global_batch, case.seq_len, case.images,
                                                  cfg.vision.image_size).items()
    }
    start = time.perf_counter()
    lowered = step_fn.lower(abstract_state, abstract_batch)
    lower_s = time.perf_counter() - start
    compiled = lowered.compile()
    compile_s = time.perf_counter() - start - lower_s
    report = _report(compiled, hbm_bytes(mesh) if hbm is None else hbm)
    chips = mesh.devices.size
    images = case.global_batch * case.images
    model = model_flops.train_flops(cfg, batch=case.global_batch, seq_len=case.seq_len, images=images)
    hardware = model_flops.hardware_train_flops(cfg, batch=case.global_batch, seq_len=case.seq_len, images=images)
    return {
        "kind": "train_step",
        "case": dataclasses.asdict(case),
        "chips": chips,
        "device_kind": mesh.devices.flat[0].device_kind,
        "mesh": dict(mesh.shape),
        "dtype": cfg.dtype,
        "remat": cfg.remat,
        # The dense/attention layers' hand-written backward passes are for CPU meshes only.
        "hand_written_backward": backward_passes.hand_written_backward_wins(mesh.devices.flat[0].platform),
        "params": sum(x.size for x in jax.tree.leaves(split.abstract_params)),
        "memory": report.to_json(),
        "analytic_model_flops_per_chip": model / chips,
        "analytic_hardware_flops_per_chip": hardware / chips,
        "lower_s": lower_s,
        "compile_s": compile_s,
    }


def compile_decode_steps(case: DecodeCase, model_config=None, *, mesh=None, hbm: int | None = None) -> dict[str, Any]:
    """Compile prefill (prompt + images into the KV cache) and one decode step for `case`
    (mesh / hbm as in `compile_train_step`)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx
    from jax.sharding import NamedSharding

    from cxrtrek_jax.train import sharding as sharding_lib
    from cxrtrek_jax.train import step as step_lib
    from cxrtrek_jax.model import KV_AXES, SLOT_AXES, CXRTrekNet, KVCache, axis_rules, backward_passes, get_config

    cfg = model_config or get_config(case.preset)
    mesh = mesh if mesh is not None else topology_mesh(case.topology, case.mesh)
    hbm = hbm_bytes(mesh) if hbm is None else hbm
    split = step_lib.split_abstract_model(lambda rngs: CXRTrekNet(cfg, rngs=rngs))
    serving_params = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, jnp.bfloat16), split.abstract_params)
    param_shardings = sharding_lib.tree_shardings(serving_params, split.logical_names, mesh)
    params = _abstract(serving_params, param_shardings)
    text = cfg.text
    kv_shape = (case.batch, case.cache_len, text.num_kv_heads, text.head_dim)
    kv_sharding = NamedSharding(mesh, sharding_lib.partition_spec(KV_AXES, kv_shape, mesh))
    slot_sharding = NamedSharding(mesh, sharding_lib.partition_spec(SLOT_AXES, kv_shape[:2], mesh))
    row_sharding = sharding_lib.batch_sharding(mesh)
    kv = jax.ShapeDtypeStruct(kv_shape, jnp.dtype(cfg.dtype), sharding=kv_sharding)
    cache = KVCache(
        k=(kv,) * text.num_layers, v=(kv,) * text.num_layers,
        segment_ids=jax.ShapeDtypeStruct(kv_shape[:2], jnp.int32, sharding=slot_sharding),
        image_tokens_seen=jax.ShapeDtypeStruct((case.batch,), jnp.int32, sharding=row_sharding),
    )
    cache_shardings = jax.tree.map(lambda x: x.sharding, cache)

    def tokens(length):
        return jax.ShapeDtypeStruct((case.batch, length), jnp.int32, sharding=row_sharding)

    rows = jax.ShapeDtypeStruct((case.batch,), jnp.int32, sharding=row_sharding)
    images = jax.ShapeDtypeStruct((case.batch, case.images, cfg.vision.image_size, cfg.vision.image_size),
                                  jnp.float32, sharding=row_sharding)
    image_mask = jax.ShapeDtypeStruct((case.batch, case.images), jnp.bool_, sharding=row_sharding)

    # The layers' forms of the mesh's platform, as the decoder (`StepwiseDecoder`) and train step take them.
    hand_written = backward_passes.hand_written_backward_wins(mesh.devices.flat[0].platform)

    def forward(params, tokens, images, image_mask, positions, segment_ids, cache, cache_index):
        model = nnx.merge(split.graphdef, params, split.rest)
        with axis_rules(sharding_lib.LOGICAL_AXIS_RULES, mesh), backward_passes.hand_written_backward(hand_written):
            logits, cache = model(tokens, images, image_mask, positions, segment_ids, cache, cache_index)
        return logits[:, -1], cache

    logits_sharding = NamedSharding(mesh, sharding_lib.partition_spec(("batch", "vocab"), (case.batch, text.vocab_size), mesh))
    prefill = jax.jit(forward, out_shardings=(logits_sharding, cache_shardings), donate_argnums=6)

    def decode(params, token, positions, cache, cache_index):
        segment_ids = jnp.ones_like(token)
        return forward(params, token, None, None, positions, segment_ids, cache, cache_index)

    decode_step = jax.jit(decode, out_shardings=(logits_sharding, cache_shardings), donate_argnums=3)
    out: dict[str, Any] = {"kind": "decode", "case": dataclasses.asdict(case), "chips": mesh.devices.size,
                           "device_kind": mesh.devices.flat[0].device_kind, "mesh": dict(mesh.shape),
                           "weights_dtype": "bfloat16", "cache_dtype": cfg.dtype}
    for name, lower in (
        ("prefill", lambda: prefill.lower(params, tokens(case.prompt_len), images, image_mask,
                                          tokens(case.prompt_len), tokens(case.prompt_len), cache, rows)),
        ("decode_step", lambda: decode_step.lower(params, tokens(1), tokens(1), cache, rows)),
        ("chain_answer", lambda: _lower_chain_answer(case, cfg, mesh)),
    ):
        start = time.perf_counter()
        compiled = lower().compile()
        out[name] = {"memory": _report(compiled, hbm).to_json(), "compile_s": time.perf_counter() - start}
    return out


def _lower_chain_answer(case: DecodeCase, cfg, mesh):
    """The staged decoder's answer step (`StepwiseDecoder(..., mesh=mesh).lower_answer`, greedy, the
    whole cache as its window) lowered from abstract bf16 parameters sharded by the logical rules and an
    abstract chain state of `case.batch` rows (`cache_len` slots, `case.images` image slots) sharded
    as the decoder shards it."""
    import functools

    import jax
    import jax.numpy as jnp
    from flax import nnx
    from jax.sharding import NamedSharding

    from cxrtrek_jax.decoding import GREEDY, DecodeSpec, StepwiseDecoder, param_shardings, start_step, state_logical_axes
    from cxrtrek_jax.model import CXRTrekNet
    from cxrtrek_jax.train import sharding as sharding_lib

    graphdef, state = nnx.split(nnx.eval_shape(lambda: CXRTrekNet(cfg, rngs=nnx.Rngs(0))))
    serving = jax.tree.map(lambda x: jax.ShapeDtypeStruct(
        x.shape, jnp.bfloat16 if jnp.issubdtype(x.dtype, jnp.floating) else x.dtype), state)
    params = jax.tree.map(lambda sharding, variable: jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), variable),
        param_shardings(serving, mesh), serving)
    spec = DecodeSpec(cache_length=case.cache_len, max_answer_tokens=CHAIN_ANSWER_TOKENS, max_turns=64,
                      end_of_turn_id=1, pad_id=0, suppressed_ids=(cfg.image_token_id, 0))
    size = cfg.vision.image_size
    chain = jax.eval_shape(functools.partial(start_step, graphdef, spec), params,
                           jax.ShapeDtypeStruct((case.batch, case.images, size, size), jnp.float32),
                           jax.ShapeDtypeStruct((case.batch, case.images), jnp.bool_),
                           jax.ShapeDtypeStruct((case.batch, case.prompt_len), jnp.int32),
                           jax.ShapeDtypeStruct((case.batch,), jnp.int32), jax.eval_shape(lambda: jax.random.key(0)))
    chain = jax.tree.map(
        lambda names, x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=NamedSharding(
            mesh, sharding_lib.partition_spec(names, x.shape, mesh))),
        state_logical_axes(chain), chain,
        is_leaf=lambda n: n is None or (isinstance(n, tuple) and all(a is None or isinstance(a, str) for a in n)))
    decoder = StepwiseDecoder(graphdef, cfg, spec, mesh=mesh)
    return decoder.lower_answer(params, chain, GREEDY)


def _case_json(case) -> dict[str, Any]:
    """A case as it reads back from the results JSON (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(case)))


def _previous_results(path: str | None) -> dict[str, Any]:
    if path is None or not os.path.exists(path):
        return {"train": [], "decode": []}
    with open(path) as f:
        data = json.load(f)
    decode = data.get("decode") or []
    return {"train": data.get("train", []), "decode": [decode] if isinstance(decode, dict) else decode}


def _parse_train_case(text: str) -> TrainCase:
    """TOPOLOGY:BATCH:SEQ_LEN:IMAGES[:PRESET], e.g. v5p:2x2x2:32:4096:4 or v5e:4x4:16:4096:4:medgemma-4b."""
    parts = text.split(":")
    if len(parts) not in (5, 6):
        raise argparse.ArgumentTypeError(f"{text!r}: expected TOPOLOGY:BATCH:SEQ_LEN:IMAGES[:PRESET], e.g. "
                                         "v5p:2x2x2:32:4096:4")
    try:
        preset = {"preset": parts[5]} if len(parts) == 6 else {}
        return TrainCase(f"{parts[0]}:{parts[1]}", int(parts[2]), int(parts[3]), int(parts[4]), **preset)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"{text!r}: {err}") from None


def _gib(n: float) -> str:
    return f"{n / GIB:.2f}"


def _print_train_table(results: list[dict[str, Any]]) -> None:
    print("| preset | topology | chips | global batch x L (images) | args GiB | out GiB | alias GiB | temp GiB | total GiB | HBM GiB | fits | TFLOP/chip (XLA) | TFLOP/chip (model / +remat) | compile s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        m, c = r["memory"], r["case"]
        xla = "n/a" if m["flops"] is None else f"{m['flops'] / 1e12:.1f}"
        print(f"| {c.get('preset', 'cxrtreknet-7b')} | {c['topology']} | {r['chips']} | {c['global_batch']} x {c['seq_len']} ({c['images']}) | "
              f"{_gib(m['argument_bytes'])} | {_gib(m['output_bytes'])} | {_gib(m['alias_bytes'])} | "
              f"{_gib(m['temp_bytes'])} | {_gib(m['total_bytes'])} | {_gib(m['hbm_bytes'])} | "
              f"{'yes' if m['fits'] else 'NO'} | {xla} | {r['analytic_model_flops_per_chip'] / 1e12:.1f} / "
              f"{r['analytic_hardware_flops_per_chip'] / 1e12:.1f} | {r['compile_s']:.0f} |")


def _print_decode_table(result: dict[str, Any]) -> None:
    c = result["case"]
    print(f"{c.get('preset', 'cxrtreknet-7b')} decode on {c['topology']} ({result['chips']} chips): batch {c['batch']}, prompt {c['prompt_len']} "
          f"tokens ({c['images']} images), cache {c['cache_len']} slots, bf16 weights")
    print("| program | args GiB | out GiB | alias GiB | temp GiB | total GiB | HBM GiB | fits | GFLOP/chip (XLA) | compile s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in (name for name in DECODE_PROGRAMS if name in result):
        m = result[name]["memory"]
        xla = "n/a" if m["flops"] is None else f"{m['flops'] / 1e9:.1f}"
        print(f"| {name} | {_gib(m['argument_bytes'])} | {_gib(m['output_bytes'])} | {_gib(m['alias_bytes'])} | "
              f"{_gib(m['temp_bytes'])} | {_gib(m['total_bytes'])} | {_gib(m['hbm_bytes'])} | "
              f"{'yes' if m['fits'] else 'NO'} | {xla} | {result[name]['compile_s']:.0f} |")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.tpu_compile_check",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--case", dest="cases", type=_parse_train_case, action="append",
                        help="train case TOPOLOGY:BATCH:SEQ_LEN:IMAGES (repeatable; default: "
                             + ", ".join(f"{c.topology}:{c.global_batch}:{c.seq_len}:{c.images}"
                                         for c in DEFAULT_TRAIN_CASES) + ")")
    parser.add_argument("--no-decode", action="store_true", help="skip the decode-step compile")
    parser.add_argument("--out", help="write the results as JSON here (after every compile)")
    parser.add_argument("--resume", action="store_true",
                        help="keep the results already in --out for the same cases and compile only the rest")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.getLogger("cxrtrek_jax.train.sharding").setLevel(logging.ERROR)

    from benchmarks import common

    cases = args.cases or list(DEFAULT_TRAIN_CASES)
    previous = _previous_results(args.out) if args.resume else {"train": [], "decode": []}
    results: dict[str, Any] = {"machine": common.machine_info(), "train": [], "decode": []}
    _log(f"machine: {results['machine']['cpu']}, versions {results['machine']['versions']}")
    for case in cases:
        done = [r for r in previous["train"] if r["case"] == _case_json(case)]
        if done:
            _log(f"{case.preset} {case.topology}: kept from {args.out}")
            results["train"].append(done[0])
            continue
        _log(f"compiling the {case.preset} train step for {case}")
        result = compile_train_step(case)
        results["train"].append(result)
        m = result["memory"]
        _log(f"{case.preset} {case.topology}: total {m['total_gib']:.2f} GiB of {m['hbm_gib']:.0f} GiB per chip, "
             f"fits={m['fits']}, compile {result['compile_s']:.0f} s")
        common.write_results(args.out, results)
    if not args.no_decode:
        for case in DEFAULT_DECODE_CASES:
            done = [r for r in previous["decode"]
                    if r["case"] == _case_json(case) and all(name in r for name in DECODE_PROGRAMS)]
            if done:
                _log(f"{case.preset} decode: kept from {args.out}")
                decode = done[0]
            else:
                _log(f"compiling prefill + decode step for {case}")
                decode = compile_decode_steps(case)
            results["decode"].append(decode)
            common.write_results(args.out, results)
    print()
    _print_train_table(results["train"])
    for decode in results["decode"]:
        print()
        _print_decode_table(decode)
    failed = [f"{r['case'].get('preset', 'cxrtreknet-7b')} {r['case']['topology']}" for r in results["train"]
              if not r["memory"]["fits"]]
    for decode in results["decode"]:
        failed += [f"{decode['case'].get('preset', 'cxrtreknet-7b')} {decode['case']['topology']} {name}"
                   for name in DECODE_PROGRAMS if name in decode and not decode[name]["memory"]["fits"]]
    if failed:
        print(f"DOES NOT FIT: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
