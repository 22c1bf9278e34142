"""Does a recipe make CXRTrekNet read its radiographs? The image-only question benchmark.

Every question here is answered by the image alone: the view of a phantom frontal radiograph
(AP or PA) and the presence of each phantom finding (yes or no), one fixed wording per question,
balanced 50/50 per question in both splits (so the majority answer scores 0.5 on held-out
studies, and any accuracy above it must come from the pixels). Rows are one QA pair each,
encoded with the project's chat template and a BPE tokenizer trained on these texts; the images
are rendered at the demo's 256 px and resized with padding to the model's size as the input
pipeline does. Training uses the project's own train step (`train_step.make_train_step`) and
optimiser (`optimizer.make_optimizer` with the recipe's `OptimConfig`, per-tower schedules
included), on one device; with the recipe's image-label loss (`image_label_weight`) each row also
carries its study's finding labels as the training pipeline derives them: the study's answers to the
finding questions in the set (`row_image_labels`).

Every `eval_every` steps it scores every held-out row teacher-forced: the answer is whichever of
the question's two answer tokens has the larger logit at the first answer position, once with
the row's own image and once with another study's image
(`cxrtrek_jax.train.image_reliance.swap_images`).
A model that reads its images is right with its own image and at chance with another's.

    python -m benchmarks.grounding                       # the shipped recipe: `grounded`'s alignment phase, tiny
    python -m benchmarks.grounding --preset small --set alignment.optim.learning_rate=1e-4 --out runs/grounding.json

It prints one line per evaluation, then per question: held-out accuracy with own and swapped
images at the last step, the majority-answer accuracy, and the first step at which own-image
accuracy exceeds the majority answer by `--margin` (15 points by default).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from data_pipeline.schema.findings import FINDING_KINDS, PRESENCE_QUESTIONS

__all__ = ["QUESTIONS", "DEFAULT_QUESTIONS", "GroundingSet", "make_grounding_set", "row_image_labels", "run_grounding",
           "first_step_above", "result_table", "main"]

# name -> (question, positive answer, negative answer). The view questions' "positive" is AP.
# `view_ab` / `view_ba` ask the view as the phantom's single-choice turns do, with the options in
# either order: the answer letter is then the exclusive-or of the option order (in the text) and
# the view (in the image), so neither alone predicts it (the demo's view check is of this kind).
QUESTIONS: dict[str, tuple[str, str, str]] = {
    "view": ("Is this frontal radiograph a PA or an AP view?", "AP", "PA"),
    **{kind: (PRESENCE_QUESTIONS[kind][0], "Yes", "No") for kind in FINDING_KINDS},
    "view_ab": ("Is this frontal radiograph a PA or an AP view? A. posteroanterior (PA) "
                "B. anteroposterior (AP)", "B", "A"),
    "view_ba": ("Is this frontal radiograph a PA or an AP view? A. anteroposterior (AP) "
                "B. posteroanterior (PA)", "A", "B"),
}
# What the benchmark asks unless told otherwise (`--questions`): the view and every finding.
DEFAULT_QUESTIONS = ("view", *FINDING_KINDS)
_VIEW_QUESTIONS = ("view", "view_ab", "view_ba")
_VIEW_INDICES = [list(QUESTIONS).index(name) for name in _VIEW_QUESTIONS]


def _truth(study) -> dict[str, bool]:
    """Question name -> whether its positive answer holds for this phantom study."""
    current = study.cxrtrek_extras["phantom_truth"]["current"]
    kinds = {f["kind"] for f in current["findings"]}
    out = {name: current["acquisition"]["view"] == "AP" for name in _VIEW_QUESTIONS}
    out.update({name: name in kinds for name in QUESTIONS if name not in _VIEW_QUESTIONS})
    return out


@dataclasses.dataclass(frozen=True)
class GroundingSet:
    """One split: images float32[N, S, S] (one per row), question index int32[N] (into QUESTIONS),
    positive bool[N] (the row's answer is the question's positive answer), study int32[N]."""

    images: np.ndarray
    question: np.ndarray
    positive: np.ndarray
    study: np.ndarray

    def __len__(self) -> int:
        return len(self.question)


def make_grounding_set(num_studies: int, seed: int, image_size: int, *, render_size: int = 256,
                       first_index: int = 0, questions: Sequence[str] = DEFAULT_QUESTIONS) -> GroundingSet:
    """Phantom studies `first_index ..` (seed `seed`) -> balanced rows: for every question in
    `questions`, as many positive as negative studies (the larger side is subsampled, seeded)."""
    from data_pipeline.files.images import resize_with_pad
    from data_pipeline.phantom import PhantomConfig, generate_study

    config = PhantomConfig(size=render_size, turns_per_study=(1, 1))
    frontals, truths = [], []
    for index in range(first_index, first_index + num_studies):
        study, images = generate_study(seed, index, config)
        frontals.append(resize_with_pad(images[study.images[0]], image_size).astype(np.float32))
        truths.append(_truth(study))
    rng = np.random.default_rng([seed, first_index])
    images, question, positive, studies = [], [], [], []
    for q, name in enumerate(QUESTIONS):
        if name not in questions:
            continue
        yes = [i for i, t in enumerate(truths) if t[name]]
        no = [i for i, t in enumerate(truths) if not t[name]]
        n = min(len(yes), len(no))
        for side, pool in ((True, yes), (False, no)):
            for i in sorted(rng.choice(pool, n, replace=False)) if n else []:
                images.append(frontals[i])
                question.append(q)
                positive.append(side)
                studies.append(i + first_index)
    if not question:
        raise ValueError(f"{num_studies} phantom studies give no balanced question; use more studies")
    order = rng.permutation(len(question))  # mixed order: a batch's swaps pair unrelated studies
    return GroundingSet(np.stack(images)[order], np.array(question, np.int32)[order],
                        np.array(positive, bool)[order], np.array(studies, np.int32)[order])


def row_image_labels(data: GroundingSet) -> tuple[np.ndarray, np.ndarray]:
    """(labels, known) float32[N, K] over `IMAGE_LABEL_KINDS`: for each row, its study's answers to
    the finding questions among the set's rows (the pipeline's rule: a study's presence answers
    label its image; a finding the study is not asked about is unknown)."""
    from data_pipeline.text.image_labels import IMAGE_LABEL_KINDS

    names = list(QUESTIONS)
    answers: dict[int, dict[int, bool]] = {}
    for study, q, positive in zip(data.study, data.question, data.positive):
        if names[q] in IMAGE_LABEL_KINDS:
            answers.setdefault(int(study), {})[IMAGE_LABEL_KINDS.index(names[q])] = bool(positive)
    labels = np.zeros((len(data), len(IMAGE_LABEL_KINDS)), np.float32)
    known = np.zeros_like(labels)
    for row, study in enumerate(data.study):
        for k, positive in answers.get(int(study), {}).items():
            labels[row, k], known[row, k] = float(positive), 1.0
    return labels, known


def _tokenizer(vocab_size: int):
    from data_pipeline.files.cxrtrek_json import DEFAULT_SYSTEM_PROMPT
    from data_pipeline.text.tokenizer import train_tokenizer

    texts = [DEFAULT_SYSTEM_PROMPT] + [t for q in QUESTIONS.values() for t in q] * 4
    return train_tokenizer(texts, vocab_size, min_frequency=1)


def _encoded_rows(tokenizer, tokens_per_image: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Per (question, answer side): token ids [Q, 2, T] (padded), the first-answer position [Q, 2]
    (index into input positions), the two answer tokens [Q, 2] (positive, negative), and T."""
    from data_pipeline.files.cxrtrek_json import DEFAULT_SYSTEM_PROMPT
    from data_pipeline.schema.records import IMAGE_PLACEHOLDER

    encoded, first, answer_tokens = [], [], []
    for question, pos, neg in QUESTIONS.values():
        pair, where, tokens = [], [], []
        for answer in (pos, neg):
            chat = tokenizer.encode_chat(
                [{"role": "system", "content": DEFAULT_SYSTEM_PROMPT},
                 {"role": "user", "content": f"{IMAGE_PLACEHOLDER}\n{question}"},
                 {"role": "assistant", "content": answer}], tokens_per_image=tokens_per_image)
            span = chat.spans[2]
            pair.append(chat.ids[: span.end])
            where.append(span.content_start - 1)  # the input position that predicts the first answer token
            tokens.append(int(chat.ids[span.content_start]))
        if tokens[0] == tokens[1]:
            raise ValueError(f"answers {pos!r} and {neg!r} start with the same token")
        encoded.append(pair)
        first.append(where)
        answer_tokens.append(tokens)
    length = max(len(ids) for pair in encoded for ids in pair) - 1
    ids = np.zeros((len(encoded), 2, length + 1), np.int32)
    for q, pair in enumerate(encoded):
        for a, row in enumerate(pair):
            ids[q, a, : len(row)] = row
    return ids, np.array(first, np.int32), np.array(answer_tokens, np.int32), length


def _batch(data: GroundingSet, rows: np.ndarray, ids: np.ndarray, tokenizer,
           image_labels: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """The batch contract's fields for `rows` of `data` (loss on the answer and its end of turn),
    plus the image-label fields when `image_labels` (`row_image_labels(data)`) is given."""
    chosen = ids[data.question[rows], (~data.positive[rows]).astype(np.int32)]  # [B, T + 1]
    inputs, targets = chosen[:, :-1], chosen[:, 1:]
    real = inputs != tokenizer.pad_id
    assistant = np.cumsum(inputs == tokenizer.prefix_ids("assistant")[-1], axis=1) >= 1
    loss_mask = (assistant & (targets != tokenizer.pad_id)).astype(np.float32)
    b, length = inputs.shape
    labels = {} if image_labels is None else {"image_labels": image_labels[0][rows],
                                              "image_label_mask": image_labels[1][rows]}
    return labels | {
        "input_tokens": inputs, "target_tokens": targets, "loss_mask": loss_mask,
        "stage_ids": np.where(real, np.where(np.isin(data.question[rows, None], _VIEW_INDICES), 1, 2),
                              0).astype(np.int32),
        "segment_ids": real.astype(np.int32),
        "positions": np.tile(np.arange(length, dtype=np.int32), (b, 1)),
        "images": data.images[rows][:, None], "image_mask": np.ones((b, 1), bool),
    }


def first_step_above(records: Sequence[Mapping], name: str, threshold: float) -> int | None:
    """The first evaluated step whose own-image accuracy on question `name` exceeds `threshold`."""
    for record in records:
        if record["own"][name] > threshold:
            return record["step"]
    return None


def run_grounding(optim, *, preset: str = "small", steps: int = 150, batch_size: int = 16,
                  train_studies: int = 500, test_studies: int = 100, eval_every: int = 10,
                  seed: int = 0, model_overrides: Mapping[str, object] | None = None,
                  questions: Sequence[str] = DEFAULT_QUESTIONS, image_label_weight: float = 0.0,
                  log=print) -> dict:
    """Train `preset` on the image-only questions under `optim` (an `OptimConfig`; its
    `total_steps` is set to `steps` + 1 and warmups are capped below it) on `questions` (names in
    QUESTIONS), with the image-label loss at `image_label_weight` (0 = off), and evaluate every
    `eval_every` steps. Returns {"records": [{"step", "loss", "own": {q: acc}, "swapped": {q: acc}}],
    "majority": {q: held-out accuracy of the training majority}, "rows": {...}, "seconds"}."""
    import jax
    from flax import nnx

    from cxrtrek_jax.train import optimizer as optimizer_lib
    from cxrtrek_jax.train import sharding as sharding_lib
    from cxrtrek_jax.train import step as step_lib
    from cxrtrek_jax.train.image_reliance import swap_images
    from cxrtrek_jax.model import CXRTrekNet
    from cxrtrek_jax.model.config import get_config, override

    began = time.time()
    tokenizer = _tokenizer(512)
    model_cfg = override(get_config(preset), {"text.vocab_size": tokenizer.vocab_size,
                                              "image_token_id": tokenizer.image_id, "max_images": 1,
                                              **(model_overrides or {})})
    ids, first, answer_tokens, _ = _encoded_rows(tokenizer, model_cfg.tokens_per_image)
    size = model_cfg.vision.image_size
    unknown = sorted(set(questions) - set(QUESTIONS))
    if unknown:
        raise ValueError(f"unknown grounding questions {unknown}; known: {list(QUESTIONS)}")
    train = make_grounding_set(train_studies, seed, size, questions=questions)
    test = make_grounding_set(test_studies, seed, size, first_index=train_studies, questions=questions)
    names = list(QUESTIONS)
    majority = {}
    for q, name in enumerate(names):
        if name not in questions:
            continue
        train_positive = train.positive[train.question == q]
        guess = bool(train_positive.mean() >= 0.5) if train_positive.size else True
        held = test.positive[test.question == q]
        majority[name] = float((held == guess).mean()) if held.size else float("nan")

    optim = dataclasses.replace(optim, total_steps=steps + 1, warmup_steps=min(optim.warmup_steps, steps))
    optim = dataclasses.replace(optim, **{
        t: dataclasses.replace(getattr(optim, t), warmup_steps=min(getattr(optim, t).warmup_steps, steps))
        for t in optimizer_lib.TOWER_NAMES if getattr(optim, t).warmup_steps is not None})
    mesh = sharding_lib.make_mesh(sharding_lib.MeshConfig(), jax.devices()[:1])

    def model_fn(rngs):
        return CXRTrekNet(model_cfg, rngs=rngs)

    split = step_lib.split_abstract_model(model_fn)
    tx = optimizer_lib.make_optimizer(optim)
    shardings = step_lib.state_shardings(split, tx, mesh)
    state = step_lib.create_train_state(step_lib.init_params(model_fn, seed, shardings.params), tx, shardings)
    train_step = step_lib.make_train_step(split, tx, optim, shardings, seed=seed,
                                          image_label_weight=image_label_weight)
    train_labels = row_image_labels(train) if image_label_weight > 0 else None

    @jax.jit
    def answer_logits(params, batch):
        model = nnx.merge(split.graphdef, params, step_lib._rest_placeholder(split.rest))
        model.eval()
        logits, _ = model(batch["input_tokens"], batch["images"], batch["image_mask"], batch["positions"],
                          batch["segment_ids"])
        return logits

    def accuracy(params, swapped: bool) -> dict[str, float]:
        correct = np.zeros(len(names)), np.zeros(len(names))
        for k, start in enumerate(range(0, len(test), 32)):
            rows = np.arange(start, min(start + 32, len(test)))
            batch = _batch(test, rows, ids, tokenizer)
            if swapped:
                # rows of one study hold the same image, so they are never swapped with each other
                batch = swap_images(batch, seed=k) or batch
            logits = np.asarray(answer_logits(params, jax.device_put(batch)))
            q = test.question[rows]
            at = logits[np.arange(len(rows)), first[q, 0]]
            says_positive = at[np.arange(len(rows)), answer_tokens[q, 0]] > at[np.arange(len(rows)), answer_tokens[q, 1]]
            np.add.at(correct[0], q, says_positive == test.positive[rows])
            np.add.at(correct[1], q, 1)
        return {name: float(c / max(n, 1)) for name, c, n in zip(names, *correct) if name in questions}

    rng = np.random.default_rng(seed)
    order = np.array([], int)
    records, losses = [], []
    for step in range(1, steps + 1):
        if len(order) < batch_size:
            order = np.concatenate([order, rng.permutation(len(train))])
        rows, order = order[:batch_size], order[batch_size:]
        batch = sharding_lib.put_batch(_batch(train, rows, ids, tokenizer, train_labels), mesh)
        state, metrics = train_step(state, batch)
        losses.append(float(metrics["loss"]))
        if step % eval_every == 0 or step == steps:
            record = {"step": step, "loss": float(np.mean(losses[-eval_every:])),
                      "own": accuracy(state.params, False), "swapped": accuracy(state.params, True),
                      "seconds": round(time.time() - began, 1)}
            records.append(record)
            log(f"step {step:4d} loss {record['loss']:.3f}  own "
                + " ".join(f"{n[:7]}={v:.2f}" for n, v in record["own"].items())
                + "  swapped " + " ".join(f"{v:.2f}" for v in record["swapped"].values()))
    return {"records": records, "majority": majority, "seconds": round(time.time() - began, 1),
            "rows": {"train": len(train), "test": len(test),
                     "test_per_question": {n: int((test.question == q).sum()) for q, n in enumerate(names)
                                           if n in questions}},
            "optim": dataclasses.asdict(optim), "preset": preset, "batch_size": batch_size,
            "image_label_weight": image_label_weight}


def result_table(result: Mapping, margin: float = 0.15) -> str:
    """Markdown: per question, held-out rows, accuracy own / swapped at the last step, majority, and
    the first step at which own accuracy exceeds the majority by `margin`."""
    last = result["records"][-1]
    lines = [f"| question | held-out rows | own image (step {last['step']}) | swapped image | majority | "
             f"first step own > majority + {margin:.2f} |", "|---|---|---|---|---|---|"]
    for name in result["majority"]:
        step = first_step_above(result["records"], name, result["majority"][name] + margin)
        lines.append(f"| {name} | {result['rows']['test_per_question'][name]} | {last['own'][name]:.2f} | "
                     f"{last['swapped'][name]:.2f} | {result['majority'][name]:.2f} | {step or 'never'} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.grounding", description=__doc__.split("\n\n")[0])
    ap.add_argument("--experiment", default="grounded",
                    help="whose recipe: its alignment phase's optimiser and image-label weight, else its "
                         "main phase's")
    ap.add_argument("--preset", default="tiny", help="the model (default: the demo's)")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--train-studies", type=int, default=1000)
    ap.add_argument("--test-studies", type=int, default=100)
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--margin", type=float, default=0.15)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--questions", default=",".join(DEFAULT_QUESTIONS),
                    help=f"comma-separated, from {', '.join(QUESTIONS)}")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="experiment config override, e.g. optim.vision.learning_rate=1e-4")
    ap.add_argument("--out", default="", help="write the records and the table as JSON here")
    args = ap.parse_args(argv)
    from cxrtrek_jax.cli.train_cmd import parse_overrides
    from experiments import get_experiment

    overrides = parse_overrides(args.set)
    cfg = get_experiment(args.experiment, args.preset).override(overrides)
    alignment = cfg.alignment
    optim = alignment.optim if alignment is not None else cfg.optim
    weight = alignment.image_label_weight if alignment is not None else cfg.train.image_label_weight
    print(f"recipe: {args.experiment} ({'alignment phase' if alignment is not None else 'main phase'}) "
          f"optimiser {optim}, image_label_weight {weight}")
    result = run_grounding(optim, preset=args.preset, steps=args.steps, batch_size=args.batch_size,
                           train_studies=args.train_studies, test_studies=args.test_studies,
                           eval_every=args.eval_every, seed=args.seed,
                           model_overrides={key[len("model."):]: value for key, value in overrides.items()
                                            if key.startswith("model.")},
                           questions=tuple(q for q in args.questions.split(",") if q),
                           image_label_weight=weight)
    table = result_table(result, args.margin)
    print(table)
    print(f"total {result['seconds']:.0f} s")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({**result, "table": table}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
