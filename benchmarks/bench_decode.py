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

Batched (`--batch N`, default 8; 0 skips it): N different phantom studies, each an 8-stage
chain like the one above, decoded together: `run_chain` on the batch (one explicit state, each
study with its own turn plan and progress) against HF `generate` on the same batch with its
KV cache reused (each turn appends every study's new tokens, left-padded within the turn, with
an attention mask; the same answer-length rule). Reported as studies/s (N / whole-batch
latency); the per-study answers must equal those of each study decoded alone by `run_chain`.
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
from flax import nnx
from transformers import LlavaForConditionalGeneration

from benchmarks import common
from cxrtrek_jax.hf import conversion as hf_conversion
from cxrtrek_jax.decoding import GREEDY, ChainStudy, DecodeSpec, StepwiseDecoder, Turn, fixed_plan, run_chain
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


def batch_chains(count: int, image_size: int) -> tuple[list[Chain], list]:
    """The first `count` phantom studies (seed 7, index 100 on; current, prior and later image)
    that have all 8 stages, each as an 8-stage chain; and the studies (for the tokenizer)."""
    chains, studies = [], []
    for index in range(100, 100 + 20 * count):
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

    def __init__(self, new_tokens: int, preset: str = "small", batch: int = 0):
        config = get_config(preset)
        self.chains, studies = _chains(config.vision.image_size)
        self.batch_chains, batch_studies = batch_chains(batch, config.vision.image_size)
        self.tokenizer = train_tokenizer(training_texts(studies + batch_studies, SYSTEM),
                                         min(2048, config.vocab_size))
        self.new_tokens = new_tokens
        self.chat = ChatTokens(self.tokenizer, config.tokens_per_image)
        every = self.chains + self.batch_chains
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
    """`run_chain` on all studies in one batch -> per study, its answers."""
    decoder = world.decoder(*chains)
    studies = [ChainStudy(c.name, c.images, SYSTEM, functools.partial(fixed_plan, c.turns)) for c in chains]

    def run():
        results = run_chain(decoder, world.params, world.tokenizer, studies, context="own",
                            max_new_tokens=world.new_tokens, min_new_tokens=world.new_tokens)
        return [[r.answer_tokens for r in per_study] for per_study in results]

    return run


def _turn_chunks(world: World, chains: list[Chain], turn: int, shown: list[int]) -> tuple[list[list[int]], list]:
    """Each study's new tokens for `turn` (the closing end-of-turn of its previous answer, or the
    prompt, then the question) and its images new at this turn; advances `shown`."""
    chunks, pixels = [], []
    for b, chain in enumerate(chains):
        step = chain.turns[turn]
        new = max(0, step.image_input_count - shown[b])
        head = world.chat.prompt(SYSTEM) if turn == 0 else [world.tokenizer.end_of_turn_id]
        chunks.append(head + world.question_ids(step, new))
        if new:
            pixels.append(chain.images[shown[b]: shown[b] + new])
        shown[b] += new
    return chunks, pixels


def hf_generate_batch(world: World, chains: list[Chain]) -> Callable[[], list[list[tuple[int, ...]]]]:
    """HF `generate` on the batch, turn by turn, reusing the cache: each turn's chunks are
    left-padded to a common width and appended (attention mask 0 on the padding)."""
    tok = world.tokenizer
    settings = dict(do_sample=False, max_new_tokens=world.new_tokens - 1, min_new_tokens=world.new_tokens - 1,
                    eos_token_id=tok.end_of_turn_id, pad_token_id=tok.pad_id, suppress_tokens=world.suppress,
                    return_dict_in_generate=True)
    turns = len(chains[0].turns)
    if any(len(c.turns) != turns for c in chains):
        raise ValueError("the batched HF method needs chains with equal numbers of turns")

    def run():
        ids = torch.zeros((len(chains), 0), dtype=torch.long)
        mask = torch.zeros_like(ids)
        shown, cache = [0] * len(chains), None
        answers: list[list[tuple[int, ...]]] = [[] for _ in chains]
        for turn in range(turns):
            chunks, pixels = _turn_chunks(world, chains, turn, shown)
            width = max(map(len, chunks))
            ids = torch.cat([ids, torch.tensor([[tok.pad_id] * (width - len(c)) + c for c in chunks])], 1)
            mask = torch.cat([mask, torch.tensor([[0] * (width - len(c)) + [1] * len(c) for c in chunks])], 1)
            extra = {} if cache is None else {"cache": cache}
            if pixels:
                extra["pixel_values"] = _pixels(np.concatenate(pixels))
            with torch.no_grad():
                out = world.torch_model.generate(input_ids=ids, attention_mask=mask, **settings, **extra)
            generated = out.sequences[:, ids.shape[1]:]
            for b in range(len(chains)):
                answers[b].append(tuple(generated[b].tolist()))
            ids, cache = out.sequences, out.cache
            mask = torch.cat([mask, torch.ones_like(generated)], 1)
        return answers

    return run


BATCH_METHODS = {
    "explicit state (JAX), batched": explicit_state_batch,
    "HF generate, KV cache reused, batched": hf_generate_batch,
}


def bench_batch(world: World, rounds: int) -> dict:
    """The batched methods on `world.batch_chains`: one untimed run each, compared with every
    study decoded alone by `run_chain`, then `rounds` alternating timed rounds; studies/s."""
    chains = world.batch_chains
    alone = [explicit_state(world, chain)() for chain in chains]
    runs = {name: make(world, chains) for name, make in BATCH_METHODS.items()}
    answers = {name: run() for name, run in runs.items()}
    timings = common.alternate(runs, rounds=rounds, warmup=0)
    tokens = sum(len(c.turns) for c in chains) * world.new_tokens
    return {name: dict(timing.to_json(), studies_per_s=len(chains) / timing.median_s,
                       tokens_per_s=tokens / timing.median_s,
                       same_answers_as_each_study_alone=answers[name] == alone)
            for name, timing in timings.items()}


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
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    if args.new_tokens < 2:
        parser.error("--new-tokens must be >= 2")
    if args.batch < 0:
        parser.error("--batch must be >= 0")
    torch.set_num_threads(len(os.sched_getaffinity(0)))  # the cores this process may use (e.g. under taskset)
    world = World(args.new_tokens, args.preset, args.batch)
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(world.model, nnx.Param)))
    print(f"{args.preset} model: {n_params / 1e6:.1f}M parameters, {world.config.tokens_per_image} tokens per image; "
          f"jax {jax.__version__} on {jax.device_count()} {jax.devices()[0].device_kind} device, "
          f"torch {torch.__version__} with {torch.get_num_threads()} threads, {os.cpu_count()} CPU cores, "
          f"load average {os.getloadavg()[0]:.1f}")
    report = {"preset": args.preset, "new_tokens_per_answer": args.new_tokens, "rounds": args.rounds,
              "parameters": n_params, "machine": common.machine_info(), "chains": {}}
    for chain in world.chains:
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
    if world.batch_chains:
        rows = bench_batch(world, args.rounds)
        print(f"\nbatched: {len(world.batch_chains)} studies x 8 stages x {args.new_tokens} new tokens at once "
              f"(median of {args.rounds})")
        print(f"  {'method':40s} {'latency s':>10s} {'studies/s':>10s} {'tokens/s':>9s}  same answers as alone")
        for name, row in rows.items():
            same = "yes" if row["same_answers_as_each_study_alone"] else "NO"
            print(f"  {name:40s} {row['median_s']:10.2f} {row['studies_per_s']:10.3f} {row['tokens_per_s']:9.1f}  {same}")
        jax_row, hf_row = rows["explicit state (JAX), batched"], rows["HF generate, KV cache reused, batched"]
        print(f"  JAX studies/s / HF studies/s = {jax_row['studies_per_s'] / hf_row['studies_per_s']:.2f}")
        report["batched"] = {"studies": len(world.batch_chains), "turns_per_study": 8,
                             "cache_length": max(world.cache_length(c) for c in world.batch_chains),
                             "methods": rows}
    report["load_average_end"] = list(os.getloadavg())
    common.write_results(args.out, report)
    if args.out:
        print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
