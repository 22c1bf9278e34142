"""Training-step benchmark: CXRTrekNet in JAX vs the same architecture and weights as
`transformers.LlavaForConditionalGeneration` in PyTorch (eager, and `torch.compile`).

    make bench-train      # = python -m benchmarks.bench_train --out benchmarks/results/train.json

Both sides train the same batch (B rows of L tokens, every row with `images` present images,
no padding), fp32, AdamW with global-norm clipping and weight decay on matrices. The JAX side is
the project's jitted train step (`cxrtrek_jax.train.step`, donated state, one device); the
PyTorch side is what a PyTorch user writes: forward, masked token cross-entropy, backward,
`clip_grad_norm_`, `AdamW(foreach=True)`. The weights are the JAX initial parameters exported
with `cxrtrek_jax.hf.conversion` and loaded by `from_pretrained` from a temporary directory, and the
first-step losses of both sides are printed as the parity check.

Each side (the JAX step, every XLA-option variant, torch eager, torch.compile) runs in a spawned
process of its own that builds the same batch and the same weights (`SideProcess`); this process
only drives them in turn, so no side's thread pools or allocator share an address space with
another's (`--one-process` runs them all here, as before).

Reported per side (median over alternating rounds, `benchmarks.common.alternate`): steps/s,
tokens/s, and model FLOPs utilisation = analytic model FLOPs per step (`benchmarks.model_flops`,
the LM head counted at the answer tokens, which is all the loss needs; the PyTorch side computes
it at every token) x steps/s / the fp32 matmul peak, timed in the same rounds (`common.matmul_cases`, the best of
JAX and torch), plus the median over rounds of each side's time / JAX's time. The analytic count
is cross-checked against XLA's `compiled.cost_analysis()` for the JAX step. Extra JAX sides
compiled with XLA options (`--jax-variant NAME:KEY=VALUE`) join the same alternation.

The `cli` side (CPU) is the product as users start it: `cxrtrek train` in a process of its own,
started with this process's environment (no GLIBC_TUNABLES: the CLI sets its malloc itself), on
a phantom data set generated into a temporary directory, with the same preset, batch rows, row
length, image slots per row, optimizer settings and fp32; its step time is read from its
`metrics.jsonl` (`step_time_s` per log interval of `CLI_LOG_EVERY` x steps_per_round steps; the
first interval, holding the compilation, is dropped; the median of `rounds` intervals). It runs
after the alternating rounds (the other sides idle meanwhile). Its batches are the data
pipeline's (padded phantom chains, a trained tokenizer's vocabulary), not the synthetic batch,
so its loss is not the parity check; `cli_vs_jax` = JAX step time / CLI step time and
`cli_vs_torch_eager` = torch eager step time / CLI step time.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from cxrtrek_jax.cli.host_malloc import KEEP_FREED_MEMORY

__all__ = ["TrainBenchConfig", "bench_batch", "JaxTrainer", "TorchTrainer", "SideProcess", "cli_command", "run_cli_side",
           "run_benchmark", "main"]

BOS_ID = 1
_FIRST_TEXT_ID = 3


@dataclasses.dataclass(frozen=True)
class TrainBenchConfig:
    """preset: model preset; batch x seq_len tokens per step, `images` present images per row;
    rounds x steps_per_round timed steps per side after `warmup` untimed steps; torch_compile:
    also time `torch.compile(model)`; peak_n: matrix size of the peak measurement; device: "cpu"
    or "gpu" (JAX's default device there, PyTorch on CUDA when it has it); torch_sides: time the
    PyTorch reference (False: JAX only); jax_variants: extra JAX sides, (name, ((XLA option,
    value), ...)), compiled with those options and timed in the same alternation; processes: every
    side in a spawned process of its own (`SideProcess`; False: all sides in this process);
    keep_freed_memory (processes only): start the side processes with `KEEP_FREED_MEMORY`, so
    that neither side re-faults its freed step memory from the kernel at every step (see there);
    cli_side (CPU only): also time `cxrtrek train` itself (`run_cli_side`; on in `make bench-train`,
    off with --no-cli)."""

    preset: str = "small"
    batch: int = 8
    seq_len: int = 512
    images: int = 2
    rounds: int = 5
    steps_per_round: int = 2
    warmup: int = 2
    torch_compile: bool = True
    peak_n: int = 2048
    learning_rate: float = 1e-4
    weight_decay: float = 0.01
    clip_norm: float = 1.0
    seed: int = 0
    device: str = "cpu"
    torch_sides: bool = True
    jax_variants: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = ()
    processes: bool = True
    keep_freed_memory: bool = True
    cli_side: bool = False

    def __post_init__(self):
        if self.device not in ("cpu", "gpu"):
            raise ValueError(f"device must be 'cpu' or 'gpu', got {self.device!r}")
        for name in ("batch", "seq_len", "images", "rounds", "steps_per_round", "peak_n"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def bench_batch(model_config, batch: int, seq_len: int, images: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A full batch in the batch contract of `data_pipeline.batches.grain_pipeline`: each row is [BOS] + images x N image tokens +
    random text filling L + 1 tokens; the second half of the text is the scored answer (stage ids
    cycling 1..8). No padding, every image slot present."""
    n = model_config.tokens_per_image
    if images > model_config.max_images:
        raise ValueError(f"{images} images per row exceed the model's max_images={model_config.max_images}")
    text = seq_len + 1 - 1 - images * n
    if text < 8:
        raise ValueError(f"seq_len {seq_len} leaves {text} text tokens after {images} images of {n} tokens; need >= 8")
    rng = np.random.default_rng(seed)
    vocab, image_id = model_config.vocab_size, model_config.image_token_id
    ids = rng.integers(_FIRST_TEXT_ID, vocab - 1, size=(batch, text))
    ids = np.where(ids >= image_id, ids + 1, ids)
    sequence = np.concatenate(
        [np.full((batch, 1), BOS_ID), np.full((batch, images * n), image_id), ids], axis=1
    ).astype(np.int32)
    answer_start = seq_len + 1 - text // 2  # index in `sequence` of the first answer token
    target_index = np.arange(1, seq_len + 1)
    is_answer = np.broadcast_to(target_index >= answer_start, (batch, seq_len))
    stage = np.where(is_answer, 1 + (target_index - answer_start) % 8, 0)
    return {
        "input_tokens": sequence[:, :-1],
        "target_tokens": sequence[:, 1:],
        "loss_mask": is_answer.astype(np.float32),
        "stage_ids": stage.astype(np.int32),
        "segment_ids": np.ones((batch, seq_len), np.int32),
        "positions": np.broadcast_to(np.arange(seq_len, dtype=np.int32), (batch, seq_len)).copy(),
        "images": rng.random((batch, images, model_config.vision.image_size, model_config.vision.image_size),
                             dtype=np.float32),
        "image_mask": np.ones((batch, images), bool),
    }


class JaxTrainer:
    """The project's jitted train step on one device, compiled once (AOT) for the batch.

    compiler_options: XLA options for this executable (e.g. {"xla_cpu_use_onednn": True}). The
    parameters are initialised from `bench.seed`, so every JAX side starts from the same weights;
    `initial_params` keeps them on the host (for the PyTorch export)."""

    def __init__(self, model_config, bench: TrainBenchConfig, batch: dict[str, np.ndarray], *,
                 compiler_options: dict[str, Any] | None = None):
        import jax

        from cxrtrek_jax.train import optimizer as optimizer_lib
        from cxrtrek_jax.train import sharding as sharding_lib
        from cxrtrek_jax.train import step as step_lib
        from cxrtrek_jax.model import CXRTrekNet

        def model_fn(rngs):
            return CXRTrekNet(model_config, rngs=rngs)

        self.mesh = sharding_lib.make_mesh(sharding_lib.MeshConfig(), jax.devices()[:1])
        optim = optimizer_lib.OptimConfig(
            learning_rate=bench.learning_rate, warmup_steps=0, total_steps=10_000, final_lr_fraction=1.0,
            weight_decay=bench.weight_decay, clip_norm=bench.clip_norm)
        split = step_lib.split_abstract_model(model_fn)
        tx = optimizer_lib.make_optimizer(optim)
        shardings = step_lib.state_shardings(split, tx, self.mesh)
        params = step_lib.init_params(model_fn, bench.seed, shardings.params)
        self.initial_params = jax.device_get(params)
        self.state = step_lib.create_train_state(params, tx, shardings)
        self.batch = sharding_lib.put_batch(batch, self.mesh)
        step = step_lib.make_train_step(split, tx, optim, shardings)
        start = time.perf_counter()
        self.compiled = step.lower(self.state, self.batch).compile(compiler_options=compiler_options)
        self.compile_s = time.perf_counter() - start
        self.metrics = None

    def xla_flops(self) -> float | None:
        """FLOPs of one step by XLA's cost analysis of the compiled executable."""
        cost = self.compiled.cost_analysis()
        if isinstance(cost, (list, tuple)):
            cost = cost[0] if cost else {}
        return float(cost["flops"]) if cost and "flops" in cost else None

    def run(self, steps: int) -> None:
        """`steps` train steps, then wait for the device (the only sync)."""
        for _ in range(steps):
            self.state, self.metrics = self.compiled(self.state, self.batch)
        self.metrics["loss"].block_until_ready()

    def loss(self) -> float:
        return float(self.metrics["loss"])


def _torch_device(bench: TrainBenchConfig):
    import torch

    if bench.device == "gpu":
        if not torch.cuda.is_available():
            return None
        return torch.device("cuda")
    return torch.device("cpu")


class TorchTrainer:
    """`LlavaForConditionalGeneration` with the same weights, trained the PyTorch way."""

    def __init__(self, checkpoint_dir: str, model_config, bench: TrainBenchConfig, batch: dict[str, np.ndarray],
                 device, *, compile: bool):
        import torch
        from transformers import LlavaForConditionalGeneration

        self.torch = torch
        self.device = device
        model = LlavaForConditionalGeneration.from_pretrained(checkpoint_dir, dtype=torch.float32).to(device)
        model.train()
        self.model = model
        decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "norm" not in n]
        no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "norm" not in n)]
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": bench.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=bench.learning_rate, betas=(0.9, 0.999), eps=1e-8, foreach=True)
        self.clip_norm = bench.clip_norm
        self.forward = torch.compile(model) if compile else model
        vision = model_config.vision
        present = batch["images"][batch["image_mask"]]  # [num_present, H, W], row-major = slot order
        pixels = (present - vision.pixel_mean) / vision.pixel_std
        pixels = np.repeat(pixels[:, None], vision.num_channels, axis=1)
        self.inputs = {
            "input_ids": torch.from_numpy(batch["input_tokens"].astype(np.int64)).to(device),
            "pixel_values": torch.from_numpy(np.ascontiguousarray(pixels)).to(device),
            "attention_mask": torch.from_numpy((batch["segment_ids"] != 0).astype(np.int64)).to(device),
        }
        self.targets = torch.from_numpy(batch["target_tokens"].astype(np.int64)).to(device)
        self.mask = torch.from_numpy(batch["loss_mask"]).to(device)
        self.last_loss = None

    def _step(self):
        torch = self.torch
        self.optimizer.zero_grad(set_to_none=True)
        logits = self.forward(**self.inputs).logits
        token_loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), self.targets.reshape(-1), reduction="none")
        loss = (token_loss * self.mask.reshape(-1)).sum() / self.mask.sum().clamp(min=1.0)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_norm)
        self.optimizer.step()
        return loss

    def run(self, steps: int) -> None:
        for _ in range(steps):
            loss = self._step()
        self.last_loss = loss.detach()
        if self.device.type == "cuda":
            self.torch.cuda.synchronize()

    def loss(self) -> float:
        return float(self.last_loss)


# ----------------------------------------------------------------------------- the timed sides


class _Side:
    """One timed side, built from the benchmark config alone (so a child process can build it):
    kind "jax" (the project's train step, compiled with the XLA `options`), "torch_eager" or
    "torch_compile" (LLaVA loaded from `checkpoint_dir`). `matmul()` runs one fp32 matmul chain
    of `common.matmul_cases` in this side's framework (the peak measurement)."""

    def __init__(self, kind: str, bench: TrainBenchConfig, options: tuple[tuple[str, str], ...] = (),
                 checkpoint_dir: str | None = None):
        from cxrtrek_jax.model import get_config

        self.bench = bench
        model_config = get_config(bench.preset)
        batch = bench_batch(model_config, bench.batch, bench.seq_len, bench.images, bench.seed)
        self.model_config = model_config
        self._matmul = None
        if kind == "jax":
            self.framework = "jax"
            self.trainer = JaxTrainer(model_config, bench, batch, compiler_options=_parse_options(options) or None)
        elif kind in ("torch_eager", "torch_compile"):
            import torch

            torch._logging.set_logs(dynamo=logging.ERROR)  # HF LLaVA's graph-break notes
            self.framework = "torch"
            device = _torch_device(bench)
            if device is None:
                raise RuntimeError(f"{kind}: PyTorch has no CUDA device here")
            self.trainer = TorchTrainer(checkpoint_dir, model_config, bench, batch, device,
                                        compile=kind == "torch_compile")
        else:
            raise ValueError(f"unknown side kind {kind!r}")

        self.info = self.describe()

    def describe(self) -> dict[str, Any]:
        """This side's process id, compile time (JAX) and thread count (torch)."""
        info: dict[str, Any] = {"pid": os.getpid(), "compile_s": getattr(self.trainer, "compile_s", None)}
        if self.framework == "torch":
            import torch

            info["torch_threads"] = torch.get_num_threads()
        return info

    def run(self, steps: int) -> None:
        self.trainer.run(steps)

    def loss(self) -> float:
        return self.trainer.loss()

    def xla_flops(self) -> float | None:
        return self.trainer.xla_flops() if self.framework == "jax" else None

    def save_checkpoint(self, directory: str) -> None:
        """The JAX side's initial parameters as a Hugging Face LLaVA checkpoint in `directory`."""
        _save_torch_checkpoint(self.trainer.initial_params, self.model_config, directory)

    def matmul(self) -> None:
        if self._matmul is None:
            from benchmarks import common

            device = "cpu" if self.framework == "jax" else self.trainer.device.type
            cases, _ = common.matmul_cases(self.bench.peak_n, (self.framework,), torch_device=device)
            self._matmul = cases[self.framework]
        self._matmul()

    def close(self) -> None:
        """Nothing to release in this process (a `SideProcess` stops its child)."""


def _side_process_main(conn, kind: str, bench: TrainBenchConfig, options, checkpoint_dir) -> None:
    """A side process: build the side, report its `info`, then serve (method, args) calls until "stop"."""
    import traceback

    logging.getLogger("cxrtrek_jax.train.sharding").setLevel(logging.ERROR)
    try:
        side = _Side(kind, bench, options, checkpoint_dir)
        conn.send(("ok", side.info))
    except BaseException:  # noqa: BLE001 - reported to the parent, which raises it
        conn.send(("error", traceback.format_exc()))
        return
    while True:
        method, args = conn.recv()
        if method == "stop":
            conn.send(("ok", None))
            return
        try:
            conn.send(("ok", getattr(side, method)(*args)))
        except BaseException:  # noqa: BLE001
            conn.send(("error", traceback.format_exc()))


# glibc malloc settings for the side processes (GLIBC_TUNABLES): one arena, no mmap, no trim, so
# memory a step frees stays in the process for the next step. XLA's CPU runtime allocates an
# executable's whole temporary buffer (1.56 GB for the default small B8 x T512 step) at every
# execution; by default glibc maps it fresh and unmaps it after (from a thread's arena, a huge
# block is always mmapped), and the kernel zero-fills its 380,000 pages again each step: 0.8 s of
# system time per step, 3-5 s when another process ran in between. PyTorch's eager step faults
# ~330,000 pages per step the same way. Both sides get the same settings.
# `KEEP_FREED_MEMORY` (imported above) is defined in `cxrtrek_jax.cli.host_malloc`, which
# `cxrtrek train` applies to itself on CPU with mallopt.


class SideProcess:
    """A `_Side` in its own (spawned) process, driven over a pipe: each framework has a process of
    its own, as a user of either has (isolation alone did not change the figures; the page faults
    `KEEP_FREED_MEMORY` removes did). Calls block until the child answers; the child's errors are raised
    here with its traceback."""

    def __init__(self, kind: str, bench: TrainBenchConfig, options: tuple[tuple[str, str], ...] = (),
                 checkpoint_dir: str | None = None):
        import multiprocessing

        context = multiprocessing.get_context("spawn")
        tunables = os.environ.get("GLIBC_TUNABLES")
        self.kind = kind
        self._conn, child = context.Pipe()
        self._process = context.Process(target=_side_process_main, args=(child, kind, bench, options, checkpoint_dir),
                                        name=f"bench-train-{kind}", daemon=True)
        if bench.keep_freed_memory:  # the child's glibc reads it at start-up
            os.environ["GLIBC_TUNABLES"] = ":".join(t for t in (tunables, KEEP_FREED_MEMORY) if t)
        try:
            self._process.start()
        finally:
            if tunables is None:
                os.environ.pop("GLIBC_TUNABLES", None)
            else:
                os.environ["GLIBC_TUNABLES"] = tunables
        child.close()
        self.info = self._answer()

    def _answer(self):
        try:
            status, payload = self._conn.recv()
        except EOFError:
            self._process.join(5)
            raise RuntimeError(f"the {self.kind} side process died (exit code {self._process.exitcode})") from None
        if status == "error":
            raise RuntimeError(f"the {self.kind} side process failed:\n{payload}")
        return payload

    def _call(self, method: str, *args):
        self._conn.send((method, args))
        return self._answer()

    def run(self, steps: int) -> None:
        self._call("run", steps)

    def loss(self) -> float:
        return self._call("loss")

    def xla_flops(self) -> float | None:
        return self._call("xla_flops")

    def save_checkpoint(self, directory: str) -> None:
        self._call("save_checkpoint", directory)

    def matmul(self) -> None:
        self._call("matmul")

    def close(self) -> None:
        if self._process.is_alive():
            try:
                self._call("stop")
            except (RuntimeError, OSError):
                pass
            self._process.join(30)
        if self._process.is_alive():
            self._process.kill()
        self._conn.close()


def _parse_options(options: tuple[tuple[str, str], ...]) -> dict[str, Any]:
    """XLA option strings -> typed values (true/false -> bool, integers -> int)."""
    out: dict[str, Any] = {}
    for key, value in options:
        lowered = value.lower()
        if lowered in ("true", "false"):
            out[key] = lowered == "true"
        elif lowered.lstrip("-").isdigit():
            out[key] = int(lowered)
        else:
            out[key] = value
    return out


def parse_variant(text: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    """NAME:KEY=VALUE[,KEY=VALUE...], e.g. onednn:xla_cpu_use_onednn=true."""
    name, sep, body = text.partition(":")
    pairs = [item.split("=", 1) for item in body.split(",") if item]
    if not name or not sep or not pairs or any(len(p) != 2 or not p[0] for p in pairs):
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME:KEY=VALUE[,KEY=VALUE...]")
    return f"jax+{name}", tuple((k, v) for k, v in pairs)


def _save_torch_checkpoint(params, model_config, directory: str) -> None:
    from cxrtrek_jax.hf import conversion as hf_conversion

    hf_conversion.save_hf_checkpoint(params, model_config, directory)


def _start_side(kind: str, bench: TrainBenchConfig, options: tuple[tuple[str, str], ...] = (),
                checkpoint_dir: str | None = None):
    return (SideProcess if bench.processes else _Side)(kind, bench, options, checkpoint_dir)


def run_benchmark(bench: TrainBenchConfig, log: Callable[[str], None] = _log) -> dict[str, Any]:
    """Run the comparison; returns the results (JSON-able): machine, config, per-side timings,
    steps/s, tokens/s, MFU, the FLOP counts and the first-step losses."""
    from benchmarks import common, model_flops
    from cxrtrek_jax.model import get_config, to_dict

    model_config = get_config(bench.preset)
    batch = bench_batch(model_config, bench.batch, bench.seq_len, bench.images, bench.seed)
    results: dict[str, Any] = {"machine": common.machine_info(), "config": dataclasses.asdict(bench),
                               "model": to_dict(model_config)}
    where = ("all sides in this process" if not bench.processes else "each side in its own process"
             + (f", GLIBC_TUNABLES {KEEP_FREED_MEMORY}" if bench.keep_freed_memory else ", default malloc"))
    results["sides_run"] = where
    running: dict[str, Any] = {}
    try:
        with tempfile.TemporaryDirectory() as checkpoint_dir:
            log(f"building and compiling the JAX train step ({where})")
            running["jax"] = _start_side("jax", bench)
            results["jax_compile_s"] = {"jax": running["jax"].info["compile_s"]}
            for name, options in bench.jax_variants:
                log(f"compiling JAX variant {name}: {dict(options)}")
                running[name] = _start_side("jax", bench, options)
                results["jax_compile_s"][name] = running[name].info["compile_s"]
            torch_device = _torch_device(bench) if bench.torch_sides else None
            results["torch_device"] = None if torch_device is None else str(torch_device)
            if torch_device is not None:
                running["jax"].save_checkpoint(checkpoint_dir)
                log("loading the same weights into PyTorch LLaVA")
                running["torch_eager"] = _start_side("torch_eager", bench, checkpoint_dir=checkpoint_dir)
                if bench.torch_compile:
                    running["torch_compile"] = _start_side("torch_compile", bench, checkpoint_dir=checkpoint_dir)
        results["side_pids"] = {name: side.info["pid"] for name, side in running.items()}
        results["torch_threads"] = running["torch_eager"].info["torch_threads"] if "torch_eager" in running else None
        results.update(_time_sides(running, bench, log))
        results["xla_flops_per_step"] = running["jax"].xla_flops()
        if bench.cli_side and bench.device == "cpu":
            cli = run_cli_side(bench, log)
            results["timings"]["cli"] = cli.pop("timing")
            results["cli"] = cli
    finally:
        for side in running.values():
            side.close()
    timings = results.pop("timings")
    peak = common.MatmulPeak(bench.peak_n, {name.split("/", 1)[1]: common.matmul_chain_flops(bench.peak_n)
                                            / timings.pop(name).median_s
                                            for name in list(timings) if name.startswith("matmul/")})
    results["matmul_peak"] = peak.to_json()
    images = bench.batch * bench.images
    answer_tokens = int(np.count_nonzero(batch["loss_mask"]))
    forward = model_flops.forward_flops(model_config, batch=bench.batch, seq_len=bench.seq_len, images=images,
                                        head_tokens=answer_tokens)
    model_step_flops = 3.0 * forward.total
    results["model_flops_per_step"] = model_step_flops
    results["answer_tokens_per_step"] = answer_tokens
    results["model_flops_per_step_head_at_every_token"] = 3.0 * model_flops.forward_flops(
        model_config, batch=bench.batch, seq_len=bench.seq_len, images=images).total
    results["forward_flops_by_part"] = dataclasses.asdict(forward)
    tokens = bench.batch * bench.seq_len
    sides = {}
    for name, timing in timings.items():
        step_s = timing.median_s / bench.steps_per_round
        sides[name] = {
            **timing.to_json(),
            "step_s": step_s,
            "steps_per_s": 1.0 / step_s,
            "tokens_per_s": tokens / step_s,
            "model_flops_per_s": model_step_flops / step_s,
            "mfu": model_step_flops / step_s / peak.peak,
        }
    results["sides"] = sides
    # Per-round ratios: both sides of a round ran within seconds of each other, under the same load.
    results["paired_jax_speedup"] = {
        name: statistics.median(o / j for o, j in zip(timing.samples_s, timings["jax"].samples_s))
        for name, timing in timings.items() if name not in ("jax", "cli")}
    best_jax = min((n for n in sides if n == "jax" or n in dict(bench.jax_variants)), key=lambda n: sides[n]["step_s"])
    results["best_jax_side"] = best_jax
    if "torch_eager" in sides:
        results["jax_vs_torch_eager"] = sides["torch_eager"]["step_s"] / sides["jax"]["step_s"]
        results["best_jax_vs_torch_eager"] = sides["torch_eager"]["step_s"] / sides[best_jax]["step_s"]
    if "cli" in sides:
        results["cli_vs_jax"] = sides["jax"]["step_s"] / sides["cli"]["step_s"]
        if "torch_eager" in sides:
            results["cli_vs_torch_eager"] = sides["torch_eager"]["step_s"] / sides["cli"]["step_s"]
    if "torch_compile" in sides:
        results["jax_vs_torch_compile"] = sides["torch_compile"]["step_s"] / sides["jax"]["step_s"]
        results["best_jax_vs_torch_compile"] = sides["torch_compile"]["step_s"] / sides[best_jax]["step_s"]
    results["load_average_end"] = list(os.getloadavg())
    return results


def _time_sides(sides: dict[str, Any], bench: TrainBenchConfig, log: Callable[[str], None]) -> dict[str, Any]:
    """First step of every side (its loss: the parity check), then `bench.rounds` alternating
    rounds of `steps_per_round` steps per side and of the fp32 matmul chain in each framework.
    Returns first_step_loss, first_step_s, timings (name -> common.Timing; "matmul/<framework>"
    for the peak) and torch_compile_error when torch.compile could not run (that side is dropped,
    and said so in the log and the report)."""
    from benchmarks import common

    out: dict[str, Any] = {"first_step_loss": {}, "first_step_s": {}}
    for name, side in list(sides.items()):
        log(f"first step: {name}")
        start = time.perf_counter()
        try:
            side.run(1)
        except Exception as err:  # torch.compile needs a working C++ toolchain; report, don't hide
            if name != "torch_compile":
                raise
            out["torch_compile_error"] = f"{type(err).__name__}: {str(err)[-500:]}"
            log(f"torch.compile failed: {out['torch_compile_error']}")
            sides.pop(name).close()
            continue
        out["first_step_loss"][name] = side.loss()
        out["first_step_s"][name] = time.perf_counter() - start
    log(f"timing {list(sides)} and the fp32 matmul peak (n={bench.peak_n}): {bench.rounds} alternating "
        f"rounds of {bench.steps_per_round} steps")
    cases = {name: (lambda s=side: s.run(bench.steps_per_round)) for name, side in sides.items()}
    cases["matmul/jax"] = sides["jax"].matmul
    if "torch_eager" in sides:
        cases["matmul/torch"] = sides["torch_eager"].matmul
    out["timings"] = common.alternate(cases, rounds=bench.rounds, warmup=max(bench.warmup - 1, 0))
    return out


# ----------------------------------------------------------------------------- the CLI side

# Steps per `cxrtrek train` log interval, in units of steps_per_round (the CLI's default log_every
# is 10; each log line syncs the host with the device once).
CLI_LOG_EVERY = 5
CLI_PHANTOM_STUDIES = 120


def cli_command(bench: TrainBenchConfig, workdir: str, data_dir: str) -> list[str]:
    """The `cxrtrek train` command line of the CLI side: `rounds + 1` log intervals of
    `CLI_LOG_EVERY x steps_per_round` steps on phantom data in `data_dir` (generated there), one
    bucket of `seq_len` tokens, `batch` rows, `images` image slots per row, the benchmark's
    optimizer settings; a checkpoint only at the end, one validation batch."""
    from cxrtrek_jax.model import get_config

    log_every = CLI_LOG_EVERY * bench.steps_per_round
    steps = log_every * (bench.rounds + 1)
    script = os.path.join(os.path.dirname(sys.executable), "cxrtrek")
    program = [script] if os.access(script, os.X_OK) else [sys.executable, "-m", "cxrtrek_jax.cli"]
    sets = {
        "data.path": data_dir, "data.phantom_studies": CLI_PHANTOM_STUDIES,
        "data.pipeline.global_batch_size": bench.batch, "data.pipeline.length_buckets": f"[{bench.seq_len}]",
        "model.max_images": bench.images, "tokenizer.vocab_size": get_config(bench.preset).vocab_size,
        "optim.learning_rate": bench.learning_rate, "optim.warmup_steps": 0, "optim.total_steps": 10_000,
        "optim.final_lr_fraction": 1.0, "optim.weight_decay": bench.weight_decay,
        "optim.clip_norm": bench.clip_norm, "train.num_steps": steps, "train.log_every": log_every,
        "train.eval_batches": 1, "train.seed": bench.seed, "checkpoint.save_every": steps,
    }
    return [*program, "train", "--experiment", "baseline", "--preset", bench.preset, "--workdir", workdir,
            "--no-progress", *[arg for key, value in sets.items() for arg in ("--set", f"{key}={value}")]]


def run_cli_side(bench: TrainBenchConfig, log: Callable[[str], None] = _log) -> dict[str, Any]:
    """Run `cli_command` in a temporary directory; its steady-state step times.

    Returns command (the argument list), timing (a `common.Timing` of `rounds` samples, each
    steps_per_round x an interval's mean step time), first_interval_step_s (compilation
    included), shapes (the batch fields' shapes the CLI's step ran on, from its log) and
    load_average ([start, end]). RuntimeError with the CLI's output tail when it fails."""
    import json
    import subprocess

    from benchmarks import common

    with tempfile.TemporaryDirectory() as root:
        workdir, data_dir = os.path.join(root, "run"), os.path.join(root, "phantom")
        command = cli_command(bench, workdir, data_dir)
        env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
        log(f"timing the CLI side: {' '.join(command[:6])} ... ({len(command) - 6} more arguments)")
        load_start = os.getloadavg()[0]
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"the CLI side failed (exit {done.returncode}):\n{done.stdout[-3000:]}\n"
                               f"{done.stderr[-3000:]}")
        with open(os.path.join(workdir, "metrics.jsonl")) as f:
            records = [json.loads(line) for line in f if line.strip()]
    intervals = [r["step_time_s"] for r in records if r["split"] == "train"]
    if len(intervals) != bench.rounds + 1:
        raise RuntimeError(f"the CLI side logged {len(intervals)} train intervals, expected {bench.rounds + 1}")
    malloc_line = [line for line in done.stdout.splitlines() if line.startswith("CPU run:")]
    return {
        "command": command,
        "timing": common.Timing("cli", tuple(t * bench.steps_per_round for t in intervals[1:])),
        "first_interval_step_s": intervals[0],
        "malloc": malloc_line[0] if malloc_line else "no malloc line printed",
        "load_average": [load_start, os.getloadavg()[0]],
    }


def format_report(results: dict[str, Any]) -> str:
    """The human-readable summary printed at the end of a run."""
    c, m = results["config"], results["machine"]
    peak = results["matmul_peak"]
    lines = [
        f"machine: {m['cpu']} ({m['usable_cpus']} usable CPUs, load {m['load_average'][0]:.1f} -> "
        f"{results['load_average_end'][0]:.1f}); {m['jax_devices']}; torch threads {results['torch_threads']}",
        "versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v != "absent"),
        f"config: {c['preset']}, batch {c['batch']} x {c['seq_len']} tokens, {c['images']} images/row, fp32, "
        f"AdamW + clip {c['clip_norm']}; {c['rounds']} alternating rounds x {c['steps_per_round']} steps; "
        f"{results['sides_run']}",
        "fp32 matmul peak (n={}): ".format(peak["n"])
        + ", ".join(f"{k} {v / 1e9:.1f}" for k, v in peak["flops_per_s"].items())
        + f" GFLOP/s -> peak {peak['peak_flops_per_s'] / 1e9:.1f} GFLOP/s",
        f"model FLOPs/step (analytic, LM head at the {results['answer_tokens_per_step']} answer tokens) "
        f"{results['model_flops_per_step'] / 1e9:.1f} G (head at every token: "
        f"{results['model_flops_per_step_head_at_every_token'] / 1e9:.1f} G); XLA cost analysis "
        + ("n/a" if results["xla_flops_per_step"] is None else f"{results['xla_flops_per_step'] / 1e9:.1f} G"
           f" (ratio {results['xla_flops_per_step'] / results['model_flops_per_step']:.3f})"),
        "first-step loss: " + ", ".join(f"{k} {v:.6f}" for k, v in results["first_step_loss"].items()),
        "| side | step s (median) | spread | steps/s | tokens/s | GFLOP/s | MFU |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, s in results["sides"].items():
        lines.append(f"| {name} | {s['step_s']:.3f} | {s['spread']:.0%} | {s['steps_per_s']:.3f} | "
                     f"{s['tokens_per_s']:.0f} | {s['model_flops_per_s'] / 1e9:.1f} | {s['mfu']:.1%} |")
    for key, label in (("jax_vs_torch_eager", "torch eager"), ("jax_vs_torch_compile", "torch.compile")):
        if key in results:
            lines.append(f"JAX speed / {label} speed = {results[key]:.2f}")
            if results["best_jax_side"] != "jax":
                lines.append(f"{results['best_jax_side']} speed / {label} speed = {results['best_' + key]:.2f}")
    if "cli_vs_jax" in results:
        cli = results["cli"]
        lines.append(f"cxrtrek train (run after the rounds, load {cli['load_average'][0]:.1f} -> "
                     f"{cli['load_average'][1]:.1f}; {cli['malloc'][:60]}...): speed / JAX speed = "
                     f"{results['cli_vs_jax']:.2f}"
                     + (f", / torch eager speed = {results['cli_vs_torch_eager']:.2f}"
                        if "cli_vs_torch_eager" in results else ""))
    lines.append("per-round ratios (median over rounds of other side's time / JAX time): "
                 + ", ".join(f"{k} {v:.2f}" for k, v in results["paired_jax_speedup"].items()))
    if "torch_compile_error" in results:
        lines.append(f"torch.compile: not timed ({results['torch_compile_error']})")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    defaults = TrainBenchConfig()
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_train", description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default=defaults.preset)
    parser.add_argument("--batch", type=int, default=defaults.batch)
    parser.add_argument("--seq-len", type=int, default=defaults.seq_len)
    parser.add_argument("--images", type=int, default=defaults.images, help="present images per row")
    parser.add_argument("--rounds", type=int, default=defaults.rounds)
    parser.add_argument("--steps-per-round", type=int, default=defaults.steps_per_round)
    parser.add_argument("--warmup", type=int, default=defaults.warmup)
    parser.add_argument("--no-torch-compile", action="store_true")
    parser.add_argument("--peak-n", type=int, default=defaults.peak_n)
    parser.add_argument("--device", choices=("cpu", "gpu"), default=defaults.device)
    parser.add_argument("--no-torch", action="store_true", help="time the JAX side(s) only")
    parser.add_argument("--jax-variant", dest="jax_variants", type=parse_variant, action="append", default=[],
                        help="extra JAX side compiled with XLA options, NAME:KEY=VALUE[,KEY=VALUE] (repeatable)")
    parser.add_argument("--default-malloc", action="store_true",
                        help="start the side processes with the system's malloc settings, not KEEP_FREED_MEMORY")
    parser.add_argument("--no-cli", action="store_true", help="do not time `cxrtrek train` itself (the cli side)")
    parser.add_argument("--one-process", action="store_true",
                        help="run every side in this process (default: one process per side, driven in turn)")
    parser.add_argument("--out", help="write the results as JSON here")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.getLogger("cxrtrek_jax.train.sharding").setLevel(logging.ERROR)
    bench = TrainBenchConfig(
        preset=args.preset, batch=args.batch, seq_len=args.seq_len, images=args.images, rounds=args.rounds,
        steps_per_round=args.steps_per_round, warmup=args.warmup, torch_compile=not args.no_torch_compile,
        peak_n=args.peak_n, device=args.device, torch_sides=not args.no_torch,
        jax_variants=tuple(args.jax_variants), processes=not args.one_process,
        keep_freed_memory=not args.default_malloc, cli_side=not args.no_cli)
    results = run_benchmark(bench)
    from benchmarks import common

    common.write_results(args.out, results)
    print(format_report(results), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
