"""Staged decoding on CPU: the explicit-state chain against re-prefilling and Hugging Face `generate`.

    python -m benchmarks.bench_decode [--new-tokens 16] [--rounds 3] [--out benchmarks/results/decode.json]

`make bench-decode` runs it on one CPU core: pinned with `taskset -c 0`, XLA
single-threaded (`XLA_FLAGS=--xla_cpu_multi_thread_eigen=false
intra_op_parallelism_threads=1`) and torch with one thread (the script gives
torch as many threads as cores it may use). On a shared machine this is also
the steadiest setting: multi-threaded torch stalls badly when other jobs take
its cores.

Model: the `small` preset (randomly initialised; speed does not depend on the
weights), one phantom study (128 px images), greedy decoding in `own` context,
batch 1, fp32. Two chains: 8 turns (one per stage 1..8; the prior image enters
at stage 5, the later image at stage 6) and 26 turns. Every answer has exactly
`--new-tokens` tokens in every method (end-of-turn held back until then), so
all methods do the same amount of generation:

  explicit state   `run_chain`: images encoded once, each turn prefills only its
                   question onto the carried KV cache and decodes in `lax.while_loop`;
  JAX re-prefill   the same step functions, but every turn starts from scratch:
                   encode the images and prefill the whole conversation so far;
  HF re-encode     `LlavaForConditionalGeneration.generate` on the exported weights,
                   turn by turn, each call re-encoding images and conversation;
  HF KV reuse      the same, passing the previous call's `cache` (DynamicCache), so
                   each call prefills only the new tokens (new images' pixels only).

Each method runs the chain once untimed (JAX compiles every shape here), then
the methods run in alternating timed rounds (`benchmarks.common.alternate`);
the median is reported. In JAX the answer's last token is the closing end-of-turn; the HF
methods generate `new_tokens - 1` tokens and the end-of-turn is prefilled with
the next question, so every turn adds the same tokens to the conversation.
As a check, all four methods must produce the same answer tokens.

Batched, three cases, each JAX against HF `generate` with its KV cache reused on the same studies:
  --batch N (default 8)        N phantom studies, each an 8-stage chain like the one above;
  --large-batch N (default 32) the same with N studies;
  --mixed N (default 16)       a stream of N studies alternating 8-stage and 26-turn chains,
                               decoded --batch at a time.
JAX: `stream_chain` (continuous batching: rows of the explicit state, each study with its own
turn plan; a row whose chain ends takes the next study of the stream; every decoding step
attends over the smallest cache window holding the batch). HF: `generate` turn by turn on
consecutive groups of --batch studies (the whole batch for the first two cases), reusing its
cache, each turn's chunks left-padded with an attention mask; a group runs until its longest
chain ends (ended rows are padded). Reported as studies/s; JAX's per-study answers must equal
each study decoded alone by `run_chain` and HF's answers.

The machine's bound is measured in the same run (XLA, this process's settings): compute as the
best FLOP/s of a 1024^3 float32 matmul, weight bandwidth as the best read rate of a 256 MiB
array. The work of each case is counted from the chains: model FLOPs (`model_flops`) of every
prefilled token (its LM head only at the token before an answer), every image through the
vision tower and projector, and every generated token; each decoding step of B rows must read
the text weights once. Bound = prefill and image FLOPs / peak + per generated token max(its
FLOPs / peak, weight bytes / (B x bandwidth)); the report gives that bound in studies/s and the
fraction of it reached.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import tempfile
from collections.abc import Callable

import jax
import numpy as np
import torch
import transformers
from flax import nnx
from transformers import LlavaForConditionalGeneration

from benchmarks import common
from cxrtrek_jax.hf import conversion as hf_conversion
from benchmarks.model_flops import forward_flops
from cxrtrek_jax.decoding import (GREEDY, ChainStudy, DecodeSpec, StepwiseDecoder, Turn, fixed_plan, run_chain,
                                  stream_chain)
from cxrtrek_jax.decoding.chain import ChatTokens, stack_images
from cxrtrek_jax.model import CXRTrekNet, get_config, override
from data_pipeline.files.images import resize_with_pad
from data_pipeline.phantom import PhantomConfig, generate_study
from data_pipeline.text.sequences import place_placeholders
from data_pipeline.text.tokenizer import train_tokenizer, training_texts

SYSTEM = "You are a helpful radiology assistant."


@dataclasses.dataclass
class Chain:
    name: str
    images: np.ndarray          # float32[K, S, S]
    turns: list[Turn]


def _eight_stage(study) -> list[Turn]:
    """The first turn of each stage 1..8 of a phantom study."""
    first_per_stage = {}
    for index, item in enumerate(study.items):
        first_per_stage.setdefault(item.stage, index)
    return [Turn(i, study.items[i].stage, study.items[i].task_type, study.items[i].qtype,
                 study.items[i].question, study.items[i].image_input_count)
            for i in sorted(first_per_stage.values())]


def batch_chains(count: int, image_size: int, first_index: int = 100) -> tuple[list[Chain], list]:
    """The first `count` phantom studies (seed 7, index `first_index` on; current, prior and later
    image) that have all 8 stages, each as an 8-stage chain; and the studies (for the tokenizer)."""
    chains, studies = [], []
    for index in range(first_index, first_index + 20 * count):
        if len(chains) == count:
            break
        study, images = generate_study(7, index, PhantomConfig(
            size=256, prob_prior=1.0, prob_later=1.0, prob_lateral=0.0, turns_per_study=(26, 26)))
        turns = _eight_stage(study)
        if len(turns) != 8:
            continue
        pixels = np.stack([resize_with_pad(images[path], image_size) for path in study.images])
        chains.append(Chain(f"batch-{index}", pixels, turns))
        studies.append(study)
    if len(chains) < count:
        raise RuntimeError(f"found {len(chains)} phantom studies with 8 stages, wanted {count}")
    return chains, studies


def long_chains(count: int, image_size: int, first_index: int = 500) -> tuple[list[Chain], list]:
    """`count` phantom studies (seed 7, index `first_index` on; current, prior and later image),
    each as a chain of its first 26 turns; and the studies."""
    chains, studies = [], []
    for index in range(first_index, first_index + count):
        study, images = generate_study(7, index, PhantomConfig(
            size=256, prob_prior=1.0, prob_later=1.0, prob_lateral=0.0, turns_per_study=(26, 26)))
        turns = [Turn(i, it.stage, it.task_type, it.qtype, it.question, it.image_input_count)
                 for i, it in enumerate(study.items[:26])]
        pixels = np.stack([resize_with_pad(images[path], image_size) for path in study.images])
        chains.append(Chain(f"long-{index}", pixels, turns))
        studies.append(study)
    return chains, studies


def _chains(image_size: int) -> tuple[list[Chain], list]:
    """The 8-stage and 26-turn chains, and the studies (for the tokenizer)."""
    staged, staged_images = generate_study(7, 0, PhantomConfig(
        size=256, prob_prior=1.0, prob_later=1.0, prob_lateral=0.0, turns_per_study=(26, 26)))
    long, long_images = generate_study(7, 1, PhantomConfig(
        size=256, prob_prior=0.0, prob_later=0.0, prob_lateral=0.0, turns_per_study=(26, 26)))

    def pixels(study, images):
        return np.stack([resize_with_pad(images[path], image_size) for path in study.images])

    eight = _eight_stage(staged)
    twenty_six = [Turn(i, it.stage, it.task_type, it.qtype, it.question, it.image_input_count)
                  for i, it in enumerate(long.items[:26])]
    if len(eight) != 8 or len(twenty_six) != 26:
        raise RuntimeError(f"phantom chains have {len(eight)} stages and {len(twenty_six)} turns, expected 8 and 26")
    return ([Chain("8-stage", pixels(staged, staged_images), eight),
             Chain("26-turn", pixels(long, long_images), twenty_six)], [staged, long])


class World:
    """Tokenizer, the small model, its export to PyTorch, and the token plumbing shared by the methods."""

    def __init__(self, new_tokens: int, preset: str = "small", batch: int = 0, large_batch: int = 0,
                 mixed: int = 0):
        config = get_config(preset)
        size = config.vision.image_size
        self.batch = batch
        self.chains, studies = _chains(size)
        staged, batch_studies = batch_chains(max(batch, large_batch, mixed - mixed // 2), size)
        long, long_studies = long_chains(mixed // 2, size)
        self.batch_chains = staged[:batch]
        self.large_batch_chains = staged[:large_batch]
        self.mixed_chains = [chain for pair in zip(staged, long) for chain in pair][:mixed]
        self.tokenizer = train_tokenizer(training_texts(studies + batch_studies + long_studies, SYSTEM),
                                         min(2048, config.vocab_size))
        self.new_tokens = new_tokens
        self.chat = ChatTokens(self.tokenizer, config.tokens_per_image)
        every = self.chains + staged + long
        longest = max(self.cache_length(chain) for chain in every)  # tiny's 512 positions are too few
        images = max(len(chain.images) for chain in every)  # and its 2 image slots
        self.config = override(config, {"image_token_id": self.tokenizer.image_id,
                                        "max_images": max(images, config.max_images),
                                        "text.max_positions": max(longest, config.text.max_positions)})
        self.model = CXRTrekNet(self.config, rngs=nnx.Rngs(0))
        self.graphdef, self.params = nnx.split(self.model)
        self.export_dir = tempfile.mkdtemp(prefix="bench_decode_")
        tok = self.tokenizer
        hf_conversion.save_hf_checkpoint(nnx.state(self.model, nnx.Param), self.config, self.export_dir,
                                         bos_token_id=tok.bos_id, eos_token_id=tok.end_of_turn_id,
                                         pad_token_id=tok.pad_id)
        self.torch_model = LlavaForConditionalGeneration.from_pretrained(self.export_dir).eval()
        self.suppress = [tok.image_id, tok.bos_id, tok.pad_id, *range(tok.vocab_size, self.config.vocab_size)]

    def cache_length(self, chain: Chain) -> int:
        """A cache just big enough for the chain (rounded up to 128 slots)."""
        tokens = len(self.chat.prompt(SYSTEM))
        shown = 0
        for turn in chain.turns:
            new = max(0, turn.image_input_count - shown)
            shown = max(shown, turn.image_input_count)
            tokens += len(self.question_ids(turn, new)) + self.new_tokens
        return -(-tokens // 128) * 128

    def question_ids(self, turn: Turn, new_images: int) -> list[int]:
        return self.chat.question(place_placeholders(turn.question, new_images, self.tokenizer.format.image))

    def decoder(self, *chains: Chain) -> StepwiseDecoder:
        """A decoder whose cache fits the longest of `chains` (decoded together)."""
        spec = DecodeSpec.for_model(self.config, self.tokenizer,
                                    cache_length=max(self.cache_length(chain) for chain in chains),
                                    max_answer_tokens=self.new_tokens,
                                    max_turns=max(len(chain.turns) for chain in chains))
        return StepwiseDecoder(self.graphdef, self.config, spec)


# ----------------------------------------------------------------------------- the four methods


def explicit_state(world: World, chain: Chain) -> Callable[[], list[tuple[int, ...]]]:
    decoder = world.decoder(chain)
    study = ChainStudy(chain.name, chain.images, SYSTEM, functools.partial(fixed_plan, chain.turns))

    def run():
        results = run_chain(decoder, world.params, world.tokenizer, [study], context="own",
                            max_new_tokens=world.new_tokens, min_new_tokens=world.new_tokens)
        return [r.answer_tokens for r in results[0]]

    return run


def jax_reprefill(world: World, chain: Chain) -> Callable[[], list[tuple[int, ...]]]:
    decoder = world.decoder(chain)
    images, mask = stack_images([ChainStudy(chain.name, chain.images, SYSTEM, functools.partial(fixed_plan, []))],
                                world.config.max_images)
    prompt = world.chat.prompt(SYSTEM)

    def run():
        history: list[int] = []
        shown = 0
        answers = []
        for turn in chain.turns:
            history += world.question_ids(turn, max(0, turn.image_input_count - shown))
            shown = max(shown, turn.image_input_count)
            state = decoder.start(world.params, images, mask, [prompt], jax.random.key(0))
            state = decoder.ask(world.params, state, [history], [turn.stage])
            state, tokens = decoder.answer(world.params, state, GREEDY, world.new_tokens, world.new_tokens)
            generated = np.asarray(tokens)[0, : int(state.num_tokens[0])].tolist()
            history += generated
            answers.append(tuple(generated[:-1]))
        return answers

    return run


def _pixels(images: np.ndarray) -> torch.Tensor:
    """float32[K, S, S] in [0, 1] -> SigLIP pixel values [K, 3, S, S] in [-1, 1]."""
    return torch.from_numpy(np.repeat(images[:, None], 3, axis=1) * 2.0 - 1.0)


def hf_generate(world: World, chain: Chain, *, reuse_cache: bool) -> Callable[[], list[tuple[int, ...]]]:
    tok = world.tokenizer
    settings = dict(do_sample=False, max_new_tokens=world.new_tokens - 1, min_new_tokens=world.new_tokens - 1,
                    eos_token_id=tok.end_of_turn_id, pad_token_id=tok.pad_id, suppress_tokens=world.suppress,
                    return_dict_in_generate=True)

    def run():
        ids = world.chat.prompt(SYSTEM)
        shown = 0
        cache = None
        answers = []
        for turn in chain.turns:
            new = max(0, turn.image_input_count - shown)
            ids += world.question_ids(turn, new)
            extra = {}
            if reuse_cache and cache is not None:
                extra["cache"] = cache
            first = shown if reuse_cache else 0  # with a cache, only the images new in this chunk
            if shown + new > first:
                extra["pixel_values"] = _pixels(chain.images[first: shown + new])
            shown += new
            with torch.no_grad():
                out = world.torch_model.generate(input_ids=torch.tensor([ids]), **settings, **extra)
            generated = out.sequences[0, len(ids):].tolist()
            cache = out.cache
            answers.append(tuple(generated))
            ids += generated + [tok.end_of_turn_id]
        return answers

    return run


# ----------------------------------------------------------------------------- batched: N studies at once


def explicit_state_batch(world: World, chains: list[Chain]) -> Callable[[], list[list[tuple[int, ...]]]]:
    """`stream_chain` over the chains, `world.batch` rows at a time (continuous batching) -> per
    chain, its answers."""
    decoder = world.decoder(*chains)
    studies = [ChainStudy(c.name, c.images, SYSTEM, functools.partial(fixed_plan, c.turns)) for c in chains]
    rows = min(world.batch, len(chains)) if world.batch else len(chains)

    def run():
        answers: list[list[tuple[int, ...]]] = [[] for _ in chains]
        for index, results in stream_chain(decoder, world.params, world.tokenizer, studies, batch_size=rows,
                                           context="own", max_new_tokens=world.new_tokens,
                                           min_new_tokens=world.new_tokens):
            answers[index] = [r.answer_tokens for r in results]
        return answers

    return run


def _turn_chunks(world: World, chains: list[Chain], turn: int, shown: list[int]) -> tuple[list[list[int]], list]:
    """Each study's new tokens for `turn` (the closing end-of-turn of its previous answer, or the
    prompt, then the question; nothing once its chain has ended) and its images new at this turn;
    advances `shown`."""
    chunks, pixels = [], []
    for b, chain in enumerate(chains):
        if turn >= len(chain.turns):
            chunks.append([])
            continue
        step = chain.turns[turn]
        new = max(0, step.image_input_count - shown[b])
        head = world.chat.prompt(SYSTEM) if turn == 0 else [world.tokenizer.end_of_turn_id]
        chunks.append(head + world.question_ids(step, new))
        if new:
            pixels.append(chain.images[shown[b]: shown[b] + new])
        shown[b] += new
    return chunks, pixels


def hf_generate_batch(world: World, chains: list[Chain]) -> Callable[[], list[list[tuple[int, ...]]]]:
    """HF `generate` on consecutive groups of `world.batch` chains, turn by turn, reusing the
    cache: each turn's chunks are left-padded to a common width and appended (attention mask 0 on
    the padding); a group runs until its longest chain ends (ended rows get padding only)."""
    tok = world.tokenizer
    settings = dict(do_sample=False, max_new_tokens=world.new_tokens - 1, min_new_tokens=world.new_tokens - 1,
                    eos_token_id=tok.end_of_turn_id, pad_token_id=tok.pad_id, suppress_tokens=world.suppress,
                    return_dict_in_generate=True)
    size = world.batch or len(chains)

    def run_group(group: list[Chain]) -> list[list[tuple[int, ...]]]:
        ids = torch.zeros((len(group), 0), dtype=torch.long)
        mask = torch.zeros_like(ids)
        shown, cache = [0] * len(group), None
        answers: list[list[tuple[int, ...]]] = [[] for _ in group]
        for turn in range(max(len(c.turns) for c in group)):
            chunks, pixels = _turn_chunks(world, group, turn, shown)
            width = max(map(len, chunks))
            ids = torch.cat([ids, torch.tensor([[tok.pad_id] * (width - len(c)) + c for c in chunks])], 1)
            mask = torch.cat([mask, torch.tensor([[0] * (width - len(c)) + [1] * len(c) for c in chunks])], 1)
            extra = {} if cache is None else {"cache": cache}
            if pixels:
                extra["pixel_values"] = _pixels(np.concatenate(pixels))
            with torch.no_grad():
                out = world.torch_model.generate(input_ids=ids, attention_mask=mask, **settings, **extra)
            generated = out.sequences[:, ids.shape[1]:]
            for b, chain in enumerate(group):
                if turn < len(chain.turns):
                    answers[b].append(tuple(generated[b].tolist()))
            ids, cache = out.sequences, out.cache
            mask = torch.cat([mask, torch.ones_like(generated)], 1)
        return answers

    def run():
        return [answers for first in range(0, len(chains), size)
                for answers in run_group(chains[first: first + size])]

    return run


BATCH_METHODS = {
    "explicit state (JAX), batched": explicit_state_batch,
    "HF generate, KV cache reused, batched": hf_generate_batch,
}
JAX_BATCHED, HF_BATCHED = BATCH_METHODS


@dataclasses.dataclass(frozen=True)
class MachineBound:
    """What one core of this machine can do, measured: float32 matmul FLOP/s and read bandwidth."""

    flops_per_s: float
    bytes_per_s: float

    @classmethod
    def measure(cls, repeats: int = 5) -> "MachineBound":
        """Best of `repeats`: a 1024^3 float32 matmul and a sum over 256 MiB, both jitted."""
        import time

        import jax.numpy as jnp

        def best(fn, *args):
            jax.block_until_ready(fn(*args))
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                jax.block_until_ready(fn(*args))
                times.append(time.perf_counter() - start)
            return min(times)

        n = 1024
        a = jnp.ones((n, n), jnp.float32)
        flops = 2.0 * n**3 / best(jax.jit(lambda x, y: x @ y), a, a)
        big = jnp.ones((64 * 1024 * 1024,), jnp.float32)
        bandwidth = big.nbytes / best(jax.jit(jnp.sum), big)
        return cls(flops, bandwidth)


def chain_work(world: World, chain: Chain) -> dict[str, float]:
    """Tokens and images one chain makes the model process (own context, answers of exactly
    `new_tokens`): prefilled tokens (prompt, questions with image tokens, answers' closing
    end-of-turn is generated), generated tokens, answers (LM heads run on prefill) and images."""
    prefill = len(world.chat.prompt(SYSTEM))
    shown = 0
    for turn in chain.turns:
        new = max(0, turn.image_input_count - shown)
        shown = max(shown, turn.image_input_count)
        prefill += len(world.question_ids(turn, new))
    return {"prefill_tokens": prefill, "generated_tokens": len(chain.turns) * world.new_tokens,
            "answers": len(chain.turns), "images": shown}


def bound(world: World, chains: list[Chain], machine: MachineBound, rows: int) -> dict[str, float]:
    """The machine's bound on studies/s for these chains decoded `rows` at a time (see the
    module docstring), with its parts in seconds."""
    cfg = world.config
    work = {key: sum(chain_work(world, c)[key] for c in chains) for key in chain_work(world, chains[0])}
    per_token = forward_flops(cfg, batch=1, seq_len=1, images=0, head_tokens=0).text_dense
    head = forward_flops(cfg, batch=1, seq_len=1, images=0, head_tokens=1).lm_head
    image = forward_flops(cfg, batch=1, seq_len=0, images=1, head_tokens=0)
    prefill_s = (work["prefill_tokens"] * per_token + work["answers"] * head
                 + work["images"] * (image.vision + image.projector)) / machine.flops_per_s
    text_bytes = sum(int(np.prod(x.shape)) * x.dtype.itemsize
                     for x in jax.tree.leaves(nnx.state(world.model.text, nnx.Param)))
    step_compute = (per_token + head) / machine.flops_per_s
    step_weights = text_bytes / (rows * machine.bytes_per_s)
    decode_s = work["generated_tokens"] * max(step_compute, step_weights)
    return {"prefill_and_images_s": prefill_s, "decode_s": decode_s, "bound_s": prefill_s + decode_s,
            "bound_studies_per_s": len(chains) / (prefill_s + decode_s),
            "bound_generated_tokens_per_s": work["generated_tokens"] / (prefill_s + decode_s),
            "decode_only_bound_tokens_per_s": 1.0 / max(step_compute, step_weights), **work}


def bench_batch(world: World, chains: list[Chain], rounds: int, machine: MachineBound,
                alone: dict[str, list[tuple[int, ...]]]) -> dict:
    """The batched methods on `chains`: one untimed run each, compared with every study decoded
    alone by `run_chain` (memoised in `alone` by chain name) and with each other, then `rounds`
    alternating timed rounds; studies/s, the machine's bound and the fraction of it reached."""
    for chain in chains:
        if chain.name not in alone:
            alone[chain.name] = explicit_state(world, chain)()
    expected = [alone[c.name] for c in chains]
    runs = {name: make(world, chains) for name, make in BATCH_METHODS.items()}
    answers = {name: run() for name, run in runs.items()}
    timings = common.alternate(runs, rounds=rounds, warmup=0)
    rows = min(world.batch, len(chains)) if world.batch else len(chains)
    limit = bound(world, chains, machine, rows)
    tokens = limit["generated_tokens"]
    out = {name: dict(timing.to_json(), studies_per_s=len(chains) / timing.median_s,
                      tokens_per_s=tokens / timing.median_s,
                      fraction_of_bound=limit["bound_s"] / timing.median_s,
                      same_answers_as_each_study_alone=answers[name] == expected)
           for name, timing in timings.items()}
    return {"studies": len(chains), "rows": rows, "turns": sorted({len(c.turns) for c in chains}),
            "cache_length": max(world.cache_length(c) for c in chains), "bound": limit, "methods": out,
            "jax_vs_hf": out[JAX_BATCHED]["studies_per_s"] / out[HF_BATCHED]["studies_per_s"],
            "jax_and_hf_same_answers": answers[JAX_BATCHED] == answers[HF_BATCHED]}


METHODS = {
    "explicit state (JAX)": explicit_state,
    "re-prefill per turn (JAX)": jax_reprefill,
    "HF generate, re-encode per turn": lambda w, c: hf_generate(w, c, reuse_cache=False),
    "HF generate, KV cache reused": lambda w, c: hf_generate(w, c, reuse_cache=True),
}


def bench_chain(world: World, chain: Chain, rounds: int) -> dict:
    """Every method on `chain`: one untimed run each (compilation; its answers are compared), then
    `rounds` alternating timed rounds; median seconds, tokens/s and the slowdown against the
    explicit state."""
    runs = {name: make(world, chain) for name, make in METHODS.items()}
    answers = {name: run() for name, run in runs.items()}
    timings = common.alternate(runs, rounds=rounds, warmup=0)
    tokens = len(chain.turns) * world.new_tokens
    base = timings["explicit state (JAX)"].median_s
    reference = answers["explicit state (JAX)"]
    return {name: dict(timing.to_json(), tokens_per_s=tokens / timing.median_s,
                       slowdown_vs_explicit_state=timing.median_s / base,
                       same_answers_as_explicit_state=answers[name] == reference)
            for name, timing in timings.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--new-tokens", type=int, default=16, help="tokens per answer (default 16)")
    parser.add_argument("--preset", default="small", help="model preset (default small; tiny for a smoke run)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per method (median reported)")
    parser.add_argument("--batch", type=int, default=8, help="studies decoded at once in the batched part "
                        "(default 8; 0 skips it)")
    parser.add_argument("--large-batch", type=int, default=32, help="studies in the large batch (default 32; "
                        "0 skips it)")
    parser.add_argument("--mixed", type=int, default=16, help="studies in the stream of 8-stage and 26-turn "
                        "chains, decoded --batch at a time (default 16; 0 skips it)")
    parser.add_argument("--skip-single", action="store_true", help="skip the batch-1 chains")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    if args.new_tokens < 2:
        parser.error("--new-tokens must be >= 2")
    if min(args.batch, args.large_batch, args.mixed) < 0:
        parser.error("--batch, --large-batch and --mixed must be >= 0")
    if args.mixed and not args.batch:
        parser.error("--mixed needs --batch (the rows of the stream)")
    transformers.logging.set_verbosity_error()  # ended rows of a padded HF group trip its right-padding warning
    torch.set_num_threads(len(os.sched_getaffinity(0)))  # the cores this process may use (e.g. under taskset)
    world = World(args.new_tokens, args.preset, args.batch, args.large_batch, args.mixed)
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(world.model, nnx.Param)))
    print(f"{args.preset} model: {n_params / 1e6:.1f}M parameters, {world.config.tokens_per_image} tokens per image; "
          f"jax {jax.__version__} on {jax.device_count()} {jax.devices()[0].device_kind} device, "
          f"torch {torch.__version__} with {torch.get_num_threads()} threads, {os.cpu_count()} CPU cores, "
          f"load average {os.getloadavg()[0]:.1f}")
    report = {"preset": args.preset, "new_tokens_per_answer": args.new_tokens, "rounds": args.rounds,
              "parameters": n_params, "machine": common.machine_info(), "chains": {}}
    for chain in [] if args.skip_single else world.chains:
        rows = bench_chain(world, chain, args.rounds)
        print(f"\n{chain.name} chain: {len(chain.turns)} turns x {args.new_tokens} new tokens, "
              f"cache {world.cache_length(chain)} slots (median of {args.rounds})")
        print(f"  {'method':34s} {'latency s':>10s} {'tokens/s':>9s} {'x explicit':>11s}  same answers")
        for name, row in rows.items():
            same = "yes" if row["same_answers_as_explicit_state"] else "NO"
            print(f"  {name:34s} {row['median_s']:10.2f} {row['tokens_per_s']:9.1f} "
                  f"{row['slowdown_vs_explicit_state']:11.2f}  {same}")
        report["chains"][chain.name] = {"turns": len(chain.turns), "cache_length": world.cache_length(chain),
                                        "methods": rows}
    machine = MachineBound.measure()
    print(f"\nmachine bound (this process, measured now): {machine.flops_per_s / 1e9:.1f} GFLOP/s float32 matmul, "
          f"{machine.bytes_per_s / 1e9:.1f} GB/s read")
    report["machine_bound"] = dataclasses.asdict(machine)
    report["batched"] = {}
    alone: dict[str, list[tuple[int, ...]]] = {}
    cases = (("batch", world.batch_chains, f"{len(world.batch_chains)} studies x 8 stages"),
             ("large_batch", world.large_batch_chains, f"{len(world.large_batch_chains)} studies x 8 stages"),
             ("mixed", world.mixed_chains, f"stream of {len(world.mixed_chains)} studies, 8 and 26 turns, "
                                           f"{world.batch} rows"))
    for key, chains, title in cases:
        if not chains:
            continue
        if key == "large_batch":
            world.batch, saved = len(chains), world.batch
        result = bench_batch(world, chains, args.rounds, machine, alone)
        if key == "large_batch":
            world.batch = saved
        limit = result["bound"]
        print(f"\nbatched, {title} x {args.new_tokens} new tokens (median of {args.rounds}); bound "
              f"{limit['bound_studies_per_s']:.2f} studies/s = {limit['bound_generated_tokens_per_s']:.0f} "
              f"generated tokens/s (prefill + images {limit['prefill_and_images_s']:.2f} s, decoding "
              f"{limit['decode_s']:.2f} s; decoding alone {limit['decode_only_bound_tokens_per_s']:.0f} tokens/s)")
        print(f"  {'method':40s} {'latency s':>10s} {'studies/s':>10s} {'tokens/s':>9s} {'of bound':>9s}"
              "  same answers as alone")
        for name, row in result["methods"].items():
            same = "yes" if row["same_answers_as_each_study_alone"] else "NO"
            print(f"  {name:40s} {row['median_s']:10.2f} {row['studies_per_s']:10.3f} {row['tokens_per_s']:9.1f} "
                  f"{row['fraction_of_bound']:9.0%}  {same}")
        print(f"  JAX studies/s / HF studies/s = {result['jax_vs_hf']:.2f}; JAX and HF answers "
              f"{'identical' if result['jax_and_hf_same_answers'] else 'DIFFER'}")
        report["batched"][key] = result
    report["load_average_end"] = list(os.getloadavg())
    common.write_results(args.out, report)
    if args.out:
        print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
