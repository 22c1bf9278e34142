"""Does a training recipe make CXRTrekNet use its images, and after how many steps?

A probe, not a trainer: it trains the `small` model on rows dumped once from the real input
pipeline and, every `eval_every` steps, measures on the validation rows

  * the answer-token loss per stage and its *image gain*: the loss increase when every row's
    images are swapped with another row's (`cxrtrek_jax.train.image_reliance.swap_images`), and
  * the teacher-forced accuracy of the first answer token on the binary closed questions of
    stages 1-3: `yn` (answers starting "Yes"/"No") and `view` (answers starting "AP"/"PA"),
    with own and with swapped images. A model that reads its images loses accuracy when they
    are swapped; one that answers from the text alone does not.

    python -m benchmarks.recipe_probe dump --studies 1000 --workdir runs/probe --out runs/probe/rows.npz
    python -m benchmarks.recipe_probe run --rows runs/probe/rows.npz --recipe demo --out runs/probe/demo.jsonl
    python -m benchmarks.recipe_probe summary runs/probe/*.jsonl --steps 120,240,2000

`dump` generates a phantom set (turns 10-12 per study, the demo's), trains its tokenizer and
writes, for the train and validation splits, every study as one staged-context row (`on`) and
every QA pair as its own row (`off`), without augmentation, images as uint8. A recipe (`RECIPES`)
is a list of phases `context:batch:steps`, a peak learning rate (10% warmup, cosine decay), the
loss weighting (`token`: every answer token counts once, as in the trainer; `turn`: every answer
counts once, its tokens weighted 1/length) and the optimiser's `vision_lr_scale`. Rows are cut
or padded to 1024 tokens (`on`) or 384 (`off`). docs/notes/2026-11-recipe-probe.md holds the
figures, the commands that made them and the run logs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from data_pipeline.schema.splits import TRAIN, VALIDATION

__all__ = ["Recipe", "RECIPES", "ROW_FIELDS", "Rows", "answer_starts", "turn_weights", "dump_rows",
           "run_recipe", "summary_table", "main"]

ROW_FIELDS = ("input_tokens", "target_tokens", "stage_ids", "loss_mask")
ROW_LENGTH = {"on": 1024, "off": 384}
# Binary first answer tokens scored at each evaluation: name -> (first word, its opposite).
ANSWER_PAIRS = {"yn": ("Yes", "No"), "view": ("AP", "PA")}
SPLITS = (TRAIN, VALIDATION)


@dataclasses.dataclass(frozen=True)
class Recipe:
    """phases: "context:batch:steps" joined by commas (context "on" = staged rows, "off" = one QA
    pair per row); learning_rate: peak; loss: "token" | "turn"; train_stages: keep only the `off`
    rows of these stages (empty = all)."""

    phases: str
    learning_rate: float = 2e-3
    loss: str = "token"
    vision_lr_scale: float = 1.0
    weight_decay: float = 0.01
    train_stages: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.loss not in ("token", "turn"):
            raise ValueError(f"Recipe.loss must be 'token' or 'turn', got {self.loss!r}")
        for context, _, _ in self.parsed_phases():
            if context not in ROW_LENGTH:
                raise ValueError(f"Recipe phase context must be one of {tuple(ROW_LENGTH)}, got {context!r}")

    def parsed_phases(self) -> list[tuple[str, int, int]]:
        out = []
        for phase in self.phases.split(","):
            parts = phase.split(":")
            if len(parts) != 3 or not parts[1].isdigit() or not parts[2].isdigit():
                raise ValueError(f"Recipe phase {phase!r} is not context:batch:steps")
            out.append((parts[0], int(parts[1]), int(parts[2])))
        return out


RECIPES = {
    "demo": Recipe("on:4:2000"),
    "turn_loss": Recipe("on:4:2000", loss="turn"),
    "turn_loss_lr1e-3": Recipe("on:4:2000", learning_rate=1e-3, loss="turn"),
    "vision_lr_x0.1": Recipe("on:4:2000", vision_lr_scale=0.1),
    "lr5e-4": Recipe("on:4:2000", learning_rate=5e-4),
    "single_qa_first": Recipe("off:16:600,on:4:1400"),
    "single_qa_first_turn": Recipe("off:16:600,on:4:1400", loss="turn"),
    "stages12_single_qa": Recipe("off:16:120", loss="turn", train_stages=(1, 2)),
}


# ---------------------------------------------------------------------------
# Rows
# ---------------------------------------------------------------------------

def dump_rows(workdir: str | Path, studies: int, out: str | Path, *, preset: str = "small",
              on_length: int = ROW_LENGTH["on"]) -> dict:
    """Generate the phantom set under `workdir`, and write its rows to `out` (.npz); studies longer
    than `on_length` tokens are left out (as the trainer does). Returns the row counts."""
    from cxrtrek_jax.train import run as trainer
    from data_pipeline.batches.grain_pipeline import build_eval_iterator, ensure_absl_flags_parsed
    from experiments import get_experiment

    ensure_absl_flags_parsed()
    cfg = get_experiment("baseline", preset).override({
        "data.path": str(Path(workdir) / "phantom"), "data.phantom_studies": studies,
        "data.phantom_size": 256, "data.phantom_turns": (10, 12), "data.length_buckets": (on_length,),
        "data.long_chains": "truncate",  # as the recorded H200 runs (before windowing existed)
        "data.global_batch_size": 1, "tokenizer.vocab_size": 1024})
    data = trainer.prepare_data(cfg)
    tokenizer, _ = trainer.prepare_tokenizer(cfg, data)
    model = trainer.resolve_model_config(cfg.model, tokenizer)
    arrays: dict[str, np.ndarray] = {"vocab_size": np.array(tokenizer.vocab_size),
                                     "image_token_id": np.array(tokenizer.image_id)}
    counts = {}
    for split in SPLITS:
        for context in ROW_LENGTH:
            pcfg = trainer.pipeline_config(cfg.override({"data.context": context}), model, data, split,
                                           training=False)
            iterator = build_eval_iterator(pcfg, tokenizer)
            prefix = f"{split}_{context}_"
            arrays.update({prefix + k: v for k, v in _collect(iterator).items()})
            counts[prefix.rstrip("_")] = int(len(arrays[prefix + "lens"]))
    arrays.update(_pair_token_ids(arrays, tokenizer))
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, **arrays)
    return counts


def _collect(iterator) -> dict[str, np.ndarray]:
    """Rows of a batch-size-1 evaluation iterator: fields concatenated (int16 tokens), lengths, and
    each row's image slots as indices into a de-duplicated uint8 image stack (-1 = empty)."""
    fields = {k: [] for k in ROW_FIELDS}
    lens, slots_of_rows, images, index = [], [], [], {}
    for batch in iterator:
        length = int((batch["segment_ids"][0] > 0).sum())
        if length == 0:
            continue
        study = iterator.last_study_ids[0][0] if iterator.last_study_ids[0] else None
        lens.append(length)
        for k in ROW_FIELDS:
            fields[k].append(batch[k][0, :length])
        slots = []
        for m, present in enumerate(batch["image_mask"][0]):
            if not present:
                slots.append(-1)
                continue
            key = (study, m, float(batch["images"][0, m].sum()))
            if key not in index:
                index[key] = len(images)
                images.append(np.round(batch["images"][0, m] * 255).astype(np.uint8))
            slots.append(index[key])
        slots_of_rows.append(slots)
    if not lens:
        raise ValueError("the input pipeline yielded no rows")
    out = {k: np.concatenate(v).astype(np.float32 if k == "loss_mask" else np.int16) for k, v in fields.items()}
    out.update(lens=np.array(lens, np.int32), img_index=np.array(slots_of_rows, np.int32),
               images=np.stack(images))
    return out


def _pair_token_ids(arrays: dict[str, np.ndarray], tokenizer) -> dict[str, np.ndarray]:
    """Token ids of the words in ANSWER_PAIRS, read off the first answer tokens of the rows."""
    wanted = {w for pair in ANSWER_PAIRS.values() for w in pair}
    found = {}
    for split in SPLITS:
        p = f"{split}_on_"
        mask = arrays[p + "loss_mask"] > 0
        firsts = answer_starts(mask)
        for token in np.unique(arrays[p + "target_tokens"][firsts]):
            word = tokenizer.decode([int(token)])
            if word in wanted:
                found[word] = int(token)
    missing = sorted(wanted - set(found))
    if missing:
        raise ValueError(f"no answer in the dumped rows starts with the token(s) {missing}")
    return {f"token_{w}": np.array(t) for w, t in found.items()}


class Rows:
    """One split and context of a dump; `batch(idx, length)` builds model batches (the
    `data_pipeline.batches.grain_pipeline` batch fields) of the rows `idx` (indices into the kept rows), cut or padded to `length`."""

    def __init__(self, data, split: str, context: str, stages: Sequence[int] = ()):
        p = f"{split}_{context}_"
        self.lens = data[p + "lens"]
        self.offsets = np.concatenate([[0], np.cumsum(self.lens)])
        self.fields = {k: data[p + k] for k in ROW_FIELDS}
        self.img_index = data[p + "img_index"]
        self.images = data[p + "images"]
        if stages:
            stage_of_row = [int(self.fields["stage_ids"][a:b][self.fields["loss_mask"][a:b] > 0].max(initial=0))
                            for a, b in zip(self.offsets[:-1], self.offsets[1:])]
            self.keep = np.flatnonzero(np.isin(stage_of_row, stages))
        else:
            self.keep = np.arange(len(self.lens))
        self.n = len(self.keep)

    def batch(self, idx: Sequence[int], length: int) -> dict[str, np.ndarray]:
        rows = [int(self.keep[i]) for i in idx]
        b, m, h = len(rows), self.img_index.shape[1], self.images.shape[-1]
        out = {k: np.zeros((b, length), np.float32 if k == "loss_mask" else np.int32) for k in ROW_FIELDS}
        out["segment_ids"] = np.zeros((b, length), np.int32)
        out["positions"] = np.tile(np.arange(length, dtype=np.int32), (b, 1))
        out["images"] = np.zeros((b, m, h, h), np.float32)
        out["image_mask"] = np.zeros((b, m), bool)
        for r, i in enumerate(rows):
            a = self.offsets[i]
            n = min(self.offsets[i + 1] - a, length)
            for k in ROW_FIELDS:
                out[k][r, :n] = self.fields[k][a:a + n]
            out["segment_ids"][r, :n] = 1
            for slot, j in enumerate(self.img_index[i]):
                if j >= 0:
                    out["images"][r, slot] = self.images[j] / 255.0
                    out["image_mask"][r, slot] = True
        return out


def answer_starts(mask: np.ndarray) -> np.ndarray:
    """Indices where a run of answer tokens begins in a 1-D loss mask (> 0 = answer token)."""
    on = np.asarray(mask) > 0
    return np.flatnonzero(on & ~np.concatenate([[False], on[:-1]]))


def turn_weights(mask: np.ndarray) -> np.ndarray:
    """loss_mask float[B, L] -> weights float[B, L]: each answer (a run of masked tokens) gets total
    weight 1, spread evenly over its tokens."""
    weights = np.zeros_like(mask)
    for r in range(mask.shape[0]):
        on = mask[r] > 0
        starts = answer_starts(on)
        ends = np.flatnonzero(on & ~np.concatenate([on[1:], [False]]))
        for s, e in zip(starts, ends):
            weights[r, s:e + 1] = 1.0 / (e - s + 1)
    return weights


# ---------------------------------------------------------------------------
# Training and evaluation
# ---------------------------------------------------------------------------

def run_recipe(rows_file: str | Path, recipe: Recipe, out: str | Path, *, name: str = "", preset: str = "small",
               eval_every: int = 100, val_rows: int = 0, deadline_s: float = float("inf"),
               seed: int = 0, model_overrides: dict | None = None,
               row_length: dict[str, int] | None = None) -> list[dict]:
    """Train under `recipe`, writing a header line and one record per evaluation to `out` (JSONL).
    Returns the evaluation records. Stops early (and says so in the log) after `deadline_s`.
    row_length: tokens per row by context (default ROW_LENGTH)."""
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    from cxrtrek_jax.train.image_reliance import swap_images
    from cxrtrek_jax.model import CXRTrekNet
    from cxrtrek_jax.model.config import get_config, override
    from cxrtrek_jax.train.optimizer import OptimConfig, TowerSchedule, make_optimizer
    from cxrtrek_jax.train.step import token_metric_sums
    from data_pipeline.schema.stages import NUM_STAGES

    began = time.time()
    lengths = {**ROW_LENGTH, **(row_length or {})}
    data = np.load(rows_file)
    cfg = override(get_config(preset), {"text.vocab_size": int(data["vocab_size"]),
                                        "image_token_id": int(data["image_token_id"])})
    if model_overrides:
        cfg = override(cfg, model_overrides)
    phases = recipe.parsed_phases()
    total = sum(steps for _, _, steps in phases)
    rows = {c: Rows(data, "train", c, recipe.train_stages if c == "off" else ()) for c in {p[0] for p in phases}}
    val = Rows(data, "validation", "on")
    if val_rows:
        val.n = min(val.n, val_rows)
    pairs = {k: (int(data[f"token_{a}"]), int(data[f"token_{b}"])) for k, (a, b) in ANSWER_PAIRS.items()}

    graphdef, params, rest = nnx.split(CXRTrekNet(cfg, rngs=nnx.Rngs(seed)), nnx.Param, ...)
    params = nnx.to_pure_dict(params)
    tx = make_optimizer(OptimConfig(learning_rate=recipe.learning_rate, warmup_steps=max(total // 10, 1),
                                    total_steps=total + 1, weight_decay=recipe.weight_decay,
                                    vision=TowerSchedule(recipe.learning_rate * recipe.vision_lr_scale),
                                    projector=TowerSchedule(recipe.learning_rate * recipe.vision_lr_scale)))
    opt_state = tx.init(params)

    def logits_fn(params, batch):
        model = nnx.merge(graphdef, params, rest)
        logits, _ = model(batch["input_tokens"], batch["images"], batch["image_mask"], batch["positions"],
                          batch["segment_ids"])
        return logits

    def loss_fn(params, batch, weights):
        token_loss = optax.softmax_cross_entropy_with_integer_labels(logits_fn(params, batch), batch["target_tokens"])
        return jnp.sum(token_loss * weights) / jnp.maximum(jnp.sum(weights), 1e-6)

    @jax.jit
    def train_step(params, opt_state, batch, weights):
        loss, grads = jax.value_and_grad(loss_fn)(params, batch, weights)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    @jax.jit
    def eval_sums(params, batch):
        logits = logits_fn(params, batch)
        target, mask, stage = batch["target_tokens"], batch["loss_mask"], batch["stage_ids"]
        metric_sums = token_metric_sums(logits, target, mask, stage)
        sums = {"loss": metric_sums["stage_loss_sum"], "tokens": metric_sums["stage_answer_tokens"]}
        first = mask * (1 - jnp.pad(mask[:, :-1], ((0, 0), (1, 0))))
        for key, (a, b) in pairs.items():
            scored = ((target == a) | (target == b)) * first
            correct = ((logits[..., a] > logits[..., b]) == (target == a)) * scored
            scored_by_stage = jax.nn.one_hot(stage - 1, 8) * scored[..., None]
            sums[f"{key}_correct"] = jnp.einsum("bl,bls->s", correct, scored_by_stage)
            sums[f"{key}_n"] = scored_by_stage.sum((0, 1))
        return sums

    def evaluate(params, step: int) -> dict:
        own = swapped = None
        for k, start in enumerate(range(0, val.n, 10)):
            batch = val.batch(list(range(start, min(start + 10, val.n))), lengths["on"])
            s = jax.device_get(eval_sums(params, batch))
            own = s if own is None else {x: own[x] + s[x] for x in s}
            s = jax.device_get(eval_sums(params, swap_images(batch, seed=k)))
            swapped = s if swapped is None else {x: swapped[x] + s[x] for x in s}
        loss = own["loss"].sum() / own["tokens"].sum()
        rec = {"name": name, "step": step, "time": round(time.time() - began, 1), "val_loss": float(loss),
               "image_gain": float(swapped["loss"].sum() / swapped["tokens"].sum() - loss)}
        for s in range(NUM_STAGES):
            if own["tokens"][s]:
                rec[f"s{s + 1}_loss"] = float(own["loss"][s] / own["tokens"][s])
                rec[f"s{s + 1}_gain"] = float((swapped["loss"][s] - own["loss"][s]) / own["tokens"][s])
            for key in pairs:
                if s < 3 and own[f"{key}_n"][s]:
                    rec[f"s{s + 1}_{key}_acc"] = float(own[f"{key}_correct"][s] / own[f"{key}_n"][s])
                    rec[f"s{s + 1}_{key}_acc_swapped"] = float(swapped[f"{key}_correct"][s] / swapped[f"{key}_n"][s])
                    rec[f"s{s + 1}_{key}_n"] = int(own[f"{key}_n"][s])
        return rec

    rng = np.random.default_rng(seed)
    records, step, recent = [], 0, []
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w") as log:
        log.write(json.dumps({"name": name, "recipe": dataclasses.asdict(recipe), "pairs": pairs,
                              "device": str(jax.devices()[0]), "train_rows": {c: r.n for c, r in rows.items()},
                              "val_rows": val.n}) + "\n")
        log.flush()
        for context, batch_size, steps in phases:
            order = np.array([], int)
            for _ in range(steps):
                if len(order) < batch_size:
                    order = np.concatenate([order, rng.permutation(rows[context].n)])
                idx, order = order[:batch_size], order[batch_size:]
                batch = rows[context].batch(idx, lengths[context])
                weights = batch["loss_mask"] if recipe.loss == "token" else turn_weights(batch["loss_mask"])
                params, opt_state, loss = train_step(params, opt_state, batch, weights)
                step += 1
                recent.append(float(loss))
                if step % eval_every == 0 or step == total:
                    rec = {**evaluate(params, step), "train_loss": float(np.mean(recent[-eval_every:])),
                           "ctx": context}
                    records.append(rec)
                    log.write(json.dumps(rec) + "\n")
                    log.flush()
                    print(_brief(rec), flush=True)
                if time.time() - began > deadline_s:
                    log.write(json.dumps({"name": name, "stopped_at": step, "deadline": True}) + "\n")
                    return records
    return records


def _brief(rec: dict) -> str:
    keys = ("name", "step", "time", "val_loss", "image_gain", "s1_gain", "s2_gain", "s1_view_acc", "s1_yn_acc",
            "s2_yn_acc")
    return json.dumps({k: round(rec[k], 3) if isinstance(rec[k], float) else rec[k] for k in keys if k in rec})


# ---------------------------------------------------------------------------
# Summary
# ---------------------------------------------------------------------------

def summary_table(logs: Sequence[str | Path], steps: Sequence[int]) -> str:
    """Markdown table: per log and requested step (-1 = the log's last evaluation, when not already
    listed), the val loss, image gain (all / stage 1 / stage 2) and first-token accuracy own / swapped
    for stage-1 view, stage-1 yes/no and stage-2 yes/no."""
    lines = ["| run | recipe | step | val loss | image gain | stage-1 gain | stage-2 gain | "
             "s1 view acc (own / swapped) | s1 yes/no | s2 yes/no |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for path in logs:
        records = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
        header, evals = records[0], {r["step"]: r for r in records[1:] if "step" in r}
        recipe = header["recipe"]
        desc = f"{recipe['phases']}, lr {recipe['learning_rate']:g}, {recipe['loss']} loss"
        if recipe.get("vision_lr_scale", 1.0) != 1.0:
            desc += f", vision lr x{recipe['vision_lr_scale']:g}"
        if recipe.get("train_stages"):
            desc += f", stages {','.join(map(str, recipe['train_stages']))}"
        chosen = [s for s in steps if s in evals]
        if -1 in steps and evals and max(evals) not in chosen:
            chosen.append(max(evals))
        for step in chosen:
            r = evals[step]

            def acc(key):
                if key not in r:
                    return "-"
                return f"{r[key]:.2f} / {r[key + '_swapped']:.2f}"

            lines.append(f"| {header['name']} | {desc} | {step} | {r['val_loss']:.3f} | {r['image_gain']:+.3f} | "
                         f"{r.get('s1_gain', 0.0):+.3f} | {r.get('s2_gain', 0.0):+.3f} | {acc('s1_view_acc')} | "
                         f"{acc('s1_yn_acc')} | {acc('s2_yn_acc')} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.recipe_probe", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    d = sub.add_parser("dump", help="generate the phantom set and dump its rows")
    d.add_argument("--studies", type=int, default=1000)
    d.add_argument("--workdir", default="runs/probe")
    d.add_argument("--out", default="runs/probe/rows.npz")
    d.add_argument("--preset", default="small")
    r = sub.add_parser("run", help="train one recipe and log its evaluations")
    r.add_argument("--rows", default="runs/probe/rows.npz")
    r.add_argument("--recipe", required=True, choices=sorted(RECIPES))
    r.add_argument("--out", required=True)
    r.add_argument("--preset", default="small")
    r.add_argument("--eval-every", type=int, default=50)
    r.add_argument("--val-rows", type=int, default=0, help="evaluate on the first N validation rows (0 = all)")
    r.add_argument("--deadline-s", type=float, default=float("inf"))
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="model config override")
    s = sub.add_parser("summary", help="markdown table of finished logs")
    s.add_argument("logs", nargs="+")
    s.add_argument("--steps", default="100,250,1000,2000,-1", help="comma-separated; -1 = last evaluation")
    args = ap.parse_args(argv)
    if args.command == "dump":
        print(json.dumps(dump_rows(args.workdir, args.studies, args.out, preset=args.preset)))
    elif args.command == "run":
        overrides = {}
        for item in args.set:
            key, sep, value = item.partition("=")
            if not sep:
                ap.error(f"--set {item!r}: expected KEY=VALUE")
            overrides[key] = value
        run_recipe(args.rows, RECIPES[args.recipe], args.out, name=args.recipe, preset=args.preset,
                   eval_every=args.eval_every, val_rows=args.val_rows, deadline_s=args.deadline_s,
                   model_overrides=overrides)
    else:
        print(summary_table(args.logs, [int(x) for x in args.steps.split(",")]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
