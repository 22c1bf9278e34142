"""Does a recipe make CXRTrekNet read its radiographs? The image-only question benchmark.

Every question here is answered by the image alone. Closed questions (`QUESTIONS`): the view of a
phantom frontal radiograph (AP or PA) and the presence of each phantom finding (yes or no), one
fixed wording per question, balanced 50/50 per question in both splits (so the majority answer
scores 0.5 on held-out studies, and any accuracy above it must come from the pixels). Detection
questions (`grounding_boxes.DETECTION_QUESTIONS`): the box of the heart, the pleural effusion and
the support devices, asked of the studies in which the finding is drawn, answered in the released
box markup. Rows are one QA pair each, encoded with the project's chat template and a BPE
tokenizer trained on these texts (the training rows' box answers included); the images are
rendered at the demo's 256 px and resized with padding to the model's size as the input pipeline
does. Training uses the project's own train step (`train_step.make_train_step`; the loss is on
the answer tokens and their end of turn, box answers alike) and optimiser
(`optimizer.make_optimizer` with the recipe's `OptimConfig`, per-tower schedules included), on
one device; with the recipe's image-label loss (`image_label_weight`) each row also carries its
study's finding labels as the training pipeline derives them: the study's answers to the finding
questions in the set (`row_image_labels`).

Every `eval_every` steps it scores every held-out row, once with the row's own image and once
with another study's image (`cxrtrek_jax.train.image_reliance.swap_images`). A closed row is
scored teacher-forced: the answer is whichever of the question's two answer tokens has the larger
logit at the first answer position. A detection row is answered greedily under the box grammar
(every answer parses) and scored by mean IoU (`grounding_boxes`), beside the blind baseline: the
best constant box answer of the question's training rows. A model that reads its images is right
with its own image and at chance with another's, and its boxes beat the constant box.

    python -m benchmarks.grounding                       # the shipped recipe: `grounded`'s alignment phase, tiny
    python -m benchmarks.grounding --preset compact --questions heart_box,effusion_box,device_box
    python -m benchmarks.grounding --preset small --set alignment.optim.learning_rate=1e-4 --out runs/grounding.json

It prints one line per evaluation, then per closed question: held-out accuracy with own and
swapped images at the last step, the majority-answer accuracy, and the first step at which
own-image accuracy exceeds the majority answer by `--margin` (15 points by default); per detection
question: mean IoU with own and swapped images at the last step, the constant box's, and the
first step at which own beats both; and the detection IoUs by step.
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

from benchmarks.grounding_boxes import (
    DETECTION_QUESTIONS,
    DETECTION_STAGE,
    BoxAnswerer,
    DetectionSet,
    detection_question,
    detection_set,
    mean_iou,
)
from cxrtrek_jax.evaluation.scores.answer_baselines import best_constant_box
from data_pipeline.schema.findings import FINDING_KINDS, PRESENCE_QUESTIONS

__all__ = ["QUESTIONS", "DEFAULT_QUESTIONS", "GroundingSet", "make_grounding_set", "row_image_labels", "run_grounding",
           "first_step_above", "first_step_boxes_above", "result_table", "detection_table", "detection_by_step",
           "main"]

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
# What the benchmark asks unless told otherwise (`--questions`): the view, every finding's presence
# and the detection questions.
DEFAULT_QUESTIONS = ("view", *FINDING_KINDS, *DETECTION_QUESTIONS)
_VIEW_QUESTIONS = ("view", "view_ab", "view_ba")
_VIEW_INDICES = [list(QUESTIONS).index(name) for name in _VIEW_QUESTIONS]
# The tokenizer's largest vocabulary and the model's logits width, whatever the tokenizer learns (a
# fixed width: runs of one preset and image size share their compiled initialisation).
VOCAB_SIZE = 512


def _truth(truth: Mapping) -> dict[str, bool]:
    """Question name -> whether its positive answer holds for a phantom study (its phantom_truth)."""
    current = truth["current"]
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


def _render(num_studies: int, seed: int, image_size: int, render_size: int,
            first_index: int) -> tuple[list[np.ndarray], list[Mapping]]:
    """Phantom studies `first_index ..` (seed `seed`): their frontals rendered at `render_size`,
    resized with padding to float32[image_size, image_size], and their phantom_truth JSON."""
    from data_pipeline.files.images import resize_with_pad
    from data_pipeline.phantom import PhantomConfig, generate_study

    config = PhantomConfig(size=render_size, turns_per_study=(1, 1))
    frontals, truths = [], []
    for index in range(first_index, first_index + num_studies):
        study, images = generate_study(seed, index, config)
        frontals.append(resize_with_pad(images[study.images[0]], image_size).astype(np.float32))
        truths.append(study.cxrtrek_extras["phantom_truth"])
    return frontals, truths


def _closed_set(frontals: Sequence[np.ndarray], truths: Sequence[Mapping], first_index: int, seed: int,
                questions: Sequence[str]) -> GroundingSet:
    """Balanced rows of the asked closed questions (see `make_grounding_set`)."""
    answers = [_truth(t) for t in truths]
    rng = np.random.default_rng([seed, first_index])
    images, question, positive, studies = [], [], [], []
    for q, name in enumerate(QUESTIONS):
        if name not in questions:
            continue
        yes = [i for i, t in enumerate(answers) if t[name]]
        no = [i for i, t in enumerate(answers) if not t[name]]
        n = min(len(yes), len(no))
        for side, pool in ((True, yes), (False, no)):
            for i in sorted(rng.choice(pool, n, replace=False)) if n else []:
                images.append(frontals[i])
                question.append(q)
                positive.append(side)
                studies.append(i + first_index)
    if not question:
        raise ValueError(f"{len(truths)} phantom studies give no balanced question; use more studies")
    order = rng.permutation(len(question))  # mixed order: a batch's swaps pair unrelated studies
    return GroundingSet(np.stack(images)[order], np.array(question, np.int32)[order],
                        np.array(positive, bool)[order], np.array(studies, np.int32)[order])


def make_grounding_set(num_studies: int, seed: int, image_size: int, *, render_size: int = 256,
                       first_index: int = 0, questions: Sequence[str] = DEFAULT_QUESTIONS) -> GroundingSet:
    """Phantom studies `first_index ..` (seed `seed`) -> balanced rows: for every closed question in
    `questions`, as many positive as negative studies (the larger side is subsampled, seeded)."""
    frontals, truths = _render(num_studies, seed, image_size, render_size, first_index)
    return _closed_set(frontals, truths, first_index, seed, questions)


def row_image_labels(data: GroundingSet, studies: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(labels, known) float32[N, K] over `IMAGE_LABEL_KINDS`: for each of `studies` int32[N] (by
    default the rows' own, `data.study`), the study's answers to the finding questions among the
    set's rows (the pipeline's rule: a study's presence answers label its image; a finding the
    study is not asked about is unknown)."""
    from data_pipeline.text.image_labels import IMAGE_LABEL_KINDS

    names = list(QUESTIONS)
    answers: dict[int, dict[int, bool]] = {}
    for study, q, positive in zip(data.study, data.question, data.positive):
        if names[q] in IMAGE_LABEL_KINDS:
            answers.setdefault(int(study), {})[IMAGE_LABEL_KINDS.index(names[q])] = bool(positive)
    studies = data.study if studies is None else studies
    labels = np.zeros((len(studies), len(IMAGE_LABEL_KINDS)), np.float32)
    known = np.zeros_like(labels)
    for row, study in enumerate(studies):
        for k, positive in answers.get(int(study), {}).items():
            labels[row, k], known[row, k] = float(positive), 1.0
    return labels, known


def _tokenizer(vocab_size: int, box_answers: Sequence[str] = ()):
    """The benchmark's BPE: trained on the system prompt, the questions and their answers, and the
    training rows' box answers (so numbers get merges as in the demo's tokenizer)."""
    from data_pipeline.files.cxrtrek_json import DEFAULT_SYSTEM_PROMPT
    from data_pipeline.text.tokenizer import train_tokenizer

    texts = ([DEFAULT_SYSTEM_PROMPT] + [t for q in QUESTIONS.values() for t in q] * 4
             + [detection_question(name) for name in DETECTION_QUESTIONS] * 4 + list(box_answers))
    return train_tokenizer(texts, vocab_size, min_frequency=1)


def _chat_ids(tokenizer, tokens_per_image: int, question: str, answer: str) -> tuple[np.ndarray, int]:
    """(ids of system, user (image then question) and assistant turns up to the answer's end of
    turn, the index of the answer's first token)."""
    from data_pipeline.files.cxrtrek_json import DEFAULT_SYSTEM_PROMPT
    from data_pipeline.schema.records import IMAGE_PLACEHOLDER

    chat = tokenizer.encode_chat(
        [{"role": "system", "content": DEFAULT_SYSTEM_PROMPT},
         {"role": "user", "content": f"{IMAGE_PLACEHOLDER}\n{question}"},
         {"role": "assistant", "content": answer}], tokens_per_image=tokens_per_image)
    span = chat.spans[2]
    return chat.ids[: span.end], span.content_start


def _pad(rows: Sequence[np.ndarray], width: int) -> np.ndarray:
    out = np.zeros((len(rows), width), np.int32)  # pad id 0
    for k, row in enumerate(rows):
        out[k, : len(row)] = row
    return out


def _encoded_rows(tokenizer, tokens_per_image: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Per (question, answer side): token ids [Q, 2, T] (padded), the first-answer position [Q, 2]
    (index into input positions), the two answer tokens [Q, 2] (positive, negative), and T."""
    encoded, first, answer_tokens = [], [], []
    for question, pos, neg in QUESTIONS.values():
        pair, where, tokens = [], [], []
        for answer in (pos, neg):
            ids, start = _chat_ids(tokenizer, tokens_per_image, question, answer)
            pair.append(ids)
            where.append(start - 1)  # the input position that predicts the first answer token
            tokens.append(int(ids[start]))
        if tokens[0] == tokens[1]:
            raise ValueError(f"answers {pos!r} and {neg!r} start with the same token")
        encoded.append(pair)
        first.append(where)
        answer_tokens.append(tokens)
    length = max(len(ids) for pair in encoded for ids in pair) - 1
    ids = _pad([ids for pair in encoded for ids in pair], length + 1).reshape(len(encoded), 2, length + 1)
    return ids, np.array(first, np.int32), np.array(answer_tokens, np.int32), length


@dataclasses.dataclass(frozen=True)
class _Rows:
    """Rows in the batch contract's terms: images float32[N, S, S], tokens int32[N, T + 1] (the
    conversation through the answer's end of turn, padded), stage int32[N], and the image-label
    fields (labels, known) float32[N, K] or None."""

    images: np.ndarray
    tokens: np.ndarray
    stage: np.ndarray
    labels: tuple[np.ndarray, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.stage)


def _closed_rows(data: GroundingSet, ids: np.ndarray, with_labels: bool) -> _Rows:
    tokens = ids[data.question, (~data.positive).astype(np.int32)]
    stage = np.where(np.isin(data.question, _VIEW_INDICES), 1, 2).astype(np.int32)
    return _Rows(data.images, tokens, stage, row_image_labels(data) if with_labels else None)


def _detection_rows(data: DetectionSet, tokenizer, tokens_per_image: int,
                    labels: tuple[np.ndarray, np.ndarray] | None) -> _Rows:
    names = list(DETECTION_QUESTIONS)
    tokens = [_chat_ids(tokenizer, tokens_per_image, detection_question(names[q]), answer)[0]
              for q, answer in zip(data.question, data.answers)]
    return _Rows(data.images, _pad(tokens, max(map(len, tokens))), np.full(len(data), DETECTION_STAGE, np.int32),
                 labels)


def _joined(parts: Sequence[_Rows], width: int | None = None) -> _Rows:
    """The rows of `parts` one after another, their tokens padded to `width` + 1 (None: the
    longest); ValueError when a row is longer."""
    longest = max(p.tokens.shape[1] for p in parts)
    width = longest if width is None else width + 1
    if longest > width:
        raise ValueError(f"rows of up to {longest - 1} input tokens do not fit row_tokens={width - 1}")
    labelled = [p.labels for p in parts if p.labels is not None]
    if labelled and len(labelled) != len(parts):
        raise ValueError("either every part of the rows carries image labels or none does")
    return _Rows(np.concatenate([p.images for p in parts]),
                 np.concatenate([_pad(p.tokens, width) for p in parts]),
                 np.concatenate([p.stage for p in parts]),
                 tuple(np.concatenate(x) for x in zip(*labelled)) if labelled else None)


def _batch(rows: _Rows, index: np.ndarray, tokenizer) -> dict[str, np.ndarray]:
    """The batch contract's fields for `rows[index]` (loss on the answer and its end of turn),
    plus the image-label fields when the rows carry them."""
    chosen = rows.tokens[index]  # [B, T + 1]
    inputs, targets = chosen[:, :-1], chosen[:, 1:]
    real = inputs != tokenizer.pad_id
    assistant = np.cumsum(inputs == tokenizer.prefix_ids("assistant")[-1], axis=1) >= 1
    loss_mask = (assistant & (targets != tokenizer.pad_id)).astype(np.float32)
    b, length = inputs.shape
    labels = {} if rows.labels is None else {"image_labels": rows.labels[0][index],
                                             "image_label_mask": rows.labels[1][index]}
    return labels | {
        "input_tokens": inputs, "target_tokens": targets, "loss_mask": loss_mask,
        "stage_ids": np.where(real, rows.stage[index, None], 0).astype(np.int32),
        "segment_ids": real.astype(np.int32),
        "positions": np.tile(np.arange(length, dtype=np.int32), (b, 1)),
        "images": rows.images[index][:, None], "image_mask": np.ones((b, 1), bool),
    }


def first_step_above(records: Sequence[Mapping], name: str, threshold: float) -> int | None:
    """The first evaluated step whose own-image accuracy on question `name` exceeds `threshold`."""
    for record in records:
        if record["own"][name] > threshold:
            return record["step"]
    return None


def first_step_boxes_above(records: Sequence[Mapping], name: str, baseline: float) -> int | None:
    """The first evaluated step whose own-image IoU on detection question `name` exceeds both its
    swapped-image IoU and `baseline` (the constant box's)."""
    for record in records:
        if record["iou_own"][name] > max(record["iou_swapped"][name], baseline):
            return record["step"]
    return None


def _schedule(optim, steps: int):
    """`optim` with `total_steps` = steps + 1 and every warmup capped at `steps`."""
    from cxrtrek_jax.train import optimizer as optimizer_lib

    optim = dataclasses.replace(optim, total_steps=steps + 1, warmup_steps=min(optim.warmup_steps, steps))
    return dataclasses.replace(optim, **{
        t: dataclasses.replace(getattr(optim, t), warmup_steps=min(getattr(optim, t).warmup_steps, steps))
        for t in optimizer_lib.TOWER_NAMES if getattr(optim, t).warmup_steps is not None})


def run_grounding(optim, *, preset: str = "small", steps: int = 150, batch_size: int = 16,
                  train_studies: int = 500, test_studies: int = 100, eval_every: int = 10,
                  seed: int = 0, model_overrides: Mapping[str, object] | None = None,
                  questions: Sequence[str] = DEFAULT_QUESTIONS, image_label_weight: float = 0.0,
                  row_tokens: int | None = None, log=print) -> dict:
    """Train `preset` on the image-only questions under `optim` (an `OptimConfig`; its
    `total_steps` is set to `steps` + 1 and warmups are capped below it) on `questions` (names in
    QUESTIONS and DETECTION_QUESTIONS), with the image-label loss at `image_label_weight` (0 = off),
    rows padded to `row_tokens` input tokens (None: the longest row; runs with equal shapes, steps
    and seed share their compiled train step), and evaluate every `eval_every` steps.
    Returns {"records": [{"step", "loss", "own": {q: acc}, "swapped": {q: acc}, "iou_own": {q: IoU},
    "iou_swapped": {q: IoU}, "parsed": fraction of box answers that parse}],
    "majority": {q: held-out accuracy of the training majority},
    "constant_box": {q: held-out IoU of the constant box answer}, "constant_answer": {q: its text},
    "examples": {q: [[reference, own answer, swapped answer]] at the last step}, "rows", "seconds"}."""
    import jax
    from flax import nnx

    from cxrtrek_jax.train import optimizer as optimizer_lib
    from cxrtrek_jax.train import sharding as sharding_lib
    from cxrtrek_jax.train import step as step_lib
    from cxrtrek_jax.train.image_reliance import swap_images
    from cxrtrek_jax.model import CXRTrekNet
    from cxrtrek_jax.model.config import get_config, override
    from data_pipeline.files.cxrtrek_json import DEFAULT_SYSTEM_PROMPT
    from data_pipeline.schema.boxes import parse_boxes

    began = time.time()
    unknown = sorted(set(questions) - set(QUESTIONS) - set(DETECTION_QUESTIONS))
    if unknown:
        raise ValueError(f"unknown grounding questions {unknown}; known: {[*QUESTIONS, *DETECTION_QUESTIONS]}")
    closed = [name for name in QUESTIONS if name in questions]
    boxes = [name for name in DETECTION_QUESTIONS if name in questions]
    size = override(get_config(preset), dict(model_overrides or {})).vision.image_size
    split_sets = {}
    for split, count, first_index in (("train", train_studies, 0), ("test", test_studies, train_studies)):
        frontals, truths = _render(count, seed, size, 256, first_index)
        split_sets[split] = (_closed_set(frontals, truths, first_index, seed, closed) if closed else None,
                             detection_set(frontals, truths, first_index, seed, boxes, log) if boxes else None)
    (train, train_boxes), (test, test_boxes) = split_sets["train"], split_sets["test"]
    tokenizer = _tokenizer(VOCAB_SIZE, train_boxes.answers if boxes else ())
    model_cfg = override(get_config(preset), {"text.vocab_size": VOCAB_SIZE,
                                              "image_token_id": tokenizer.image_id, "max_images": 1,
                                              **(model_overrides or {})})
    ids, first, answer_tokens, _ = _encoded_rows(tokenizer, model_cfg.tokens_per_image)
    names = list(QUESTIONS)
    majority = {}
    for q, name in enumerate(names):
        if name not in closed:
            continue
        train_positive = train.positive[train.question == q]
        guess = bool(train_positive.mean() >= 0.5) if train_positive.size else True
        held = test.positive[test.question == q]
        majority[name] = float((held == guess).mean()) if held.size else float("nan")
    constant, constant_box = {}, {}
    for q, name in enumerate(DETECTION_QUESTIONS):
        if name in boxes:
            constant[name] = best_constant_box(list(train_boxes.answers_of(q)))
            held = test_boxes.answers_of(q)
            constant_box[name] = mean_iou(held, [constant[name]] * len(held))

    with_labels = image_label_weight > 0
    parts = [_closed_rows(train, ids, with_labels)] if closed else []
    if boxes:
        labels = None
        if with_labels:  # the study's closed finding answers (none asked: every label unknown)
            labels = (row_image_labels(train, train_boxes.study) if closed else
                      row_image_labels(GroundingSet(*[np.zeros(0)] * 4), train_boxes.study))
        parts.append(_detection_rows(train_boxes, tokenizer, model_cfg.tokens_per_image, labels))
    train_rows = _joined(parts, row_tokens)
    test_rows = _joined([_closed_rows(test, ids, False)], row_tokens) if closed else None

    optim = _schedule(optim, steps)
    mesh = sharding_lib.make_mesh(sharding_lib.MeshConfig(), jax.devices()[:1])

    def model_fn(rngs):
        return CXRTrekNet(model_cfg, rngs=rngs)

    split = step_lib.split_abstract_model(model_fn)
    tx = optimizer_lib.make_optimizer(optim)
    shardings = step_lib.state_shardings(split, tx, mesh)
    state = step_lib.create_train_state(step_lib.init_params(model_fn, seed, shardings.params), tx, shardings)
    train_step = step_lib.make_train_step(split, tx, optim, shardings, seed=seed,
                                          image_label_weight=image_label_weight)

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
            batch = _batch(test_rows, np.resize(rows, 32), tokenizer)  # one shape: the tail repeats rows
            if swapped:
                # rows of one study hold the same image, so they are never swapped with each other
                batch = swap_images(batch, seed=k) or batch
            logits = np.asarray(answer_logits(params, jax.device_put(batch)))[: len(rows)]
            q = test.question[rows]
            at = logits[np.arange(len(rows)), first[q, 0]]
            says_positive = at[np.arange(len(rows)), answer_tokens[q, 0]] > at[np.arange(len(rows)), answer_tokens[q, 1]]
            np.add.at(correct[0], q, says_positive == test.positive[rows])
            np.add.at(correct[1], q, 1)
        return {name: float(c / max(n, 1)) for name, c, n in zip(names, *correct) if name in closed}

    if boxes:
        answerer = BoxAnswerer(model_cfg, tokenizer, DEFAULT_SYSTEM_PROMPT,
                               max(len(tokenizer.encode_text(a)) for a in train_boxes.answers) + 1)
        # rows of one study (several findings) hold the same image: swapped, they take another study's
        swapped_images = swap_images({"images": test_boxes.images[:, None],
                                      "image_mask": np.ones((len(test_boxes), 1), bool)})["images"][:, 0]

    def box_scores(params) -> dict:
        own = answerer(params, test_boxes.images, test_boxes.question)
        other = answerer(params, swapped_images, test_boxes.question)
        out = {"iou_own": {}, "iou_swapped": {}, "examples": {}}
        for q, name in enumerate(DETECTION_QUESTIONS):
            if name in boxes:
                rows = np.flatnonzero(test_boxes.question == q)
                references = [test_boxes.answers[r] for r in rows]
                out["iou_own"][name] = mean_iou(references, [own[r] for r in rows])
                out["iou_swapped"][name] = mean_iou(references, [other[r] for r in rows])
                out["examples"][name] = [[test_boxes.answers[r], own[r], other[r]] for r in rows[:3]]
        out["parsed"] = float(np.mean([_parses(parse_boxes, a) for a in own + other]))
        return out

    rng = np.random.default_rng(seed)
    order = np.array([], int)
    records, losses, examples = [], [], {}
    for step in range(1, steps + 1):
        if len(order) < batch_size:
            order = np.concatenate([order, rng.permutation(len(train_rows))])
        rows, order = order[:batch_size], order[batch_size:]
        batch = sharding_lib.put_batch(_batch(train_rows, rows, tokenizer), mesh)
        state, metrics = train_step(state, batch)
        losses.append(float(metrics["loss"]))
        if step % eval_every == 0 or step == steps:
            record = {"step": step, "loss": float(np.mean(losses[-eval_every:])),
                      "own": accuracy(state.params, False) if closed else {},
                      "swapped": accuracy(state.params, True) if closed else {}}
            if boxes:
                scores = box_scores(state.params)
                examples = scores.pop("examples")
                record.update(scores)
            record["seconds"] = round(time.time() - began, 1)
            records.append(record)
            log(f"step {step:4d} loss {record['loss']:.3f}  own "
                + " ".join(f"{n[:7]}={v:.2f}" for n, v in record["own"].items())
                + "  swapped " + " ".join(f"{v:.2f}" for v in record["swapped"].values())
                + ("  IoU own/swapped " + " ".join(f"{n}={record['iou_own'][n]:.3f}/{record['iou_swapped'][n]:.3f}"
                                                   for n in boxes) if boxes else ""))
    per_question = {n: int((test.question == q).sum()) for q, n in enumerate(names) if n in closed}
    per_question |= {n: int((test_boxes.question == q).sum()) for q, n in enumerate(DETECTION_QUESTIONS)
                     if n in boxes}
    return {"records": records, "majority": majority, "constant_box": constant_box, "constant_answer": constant,
            "examples": examples, "seconds": round(time.time() - began, 1),
            "rows": {"train": len(train_rows), "test": len(test_rows or ()) + len(test_boxes or ()),
                     "test_per_question": per_question},
            "optim": dataclasses.asdict(optim), "preset": preset, "image_size": size, "batch_size": batch_size,
            "image_label_weight": image_label_weight}


def _parses(parse, text: str) -> bool:
    try:
        return bool(parse(text))
    except ValueError:
        return False


def result_table(result: Mapping, margin: float = 0.15) -> str:
    """Markdown: per closed question, held-out rows, accuracy own / swapped at the last step,
    majority, and the first step at which own accuracy exceeds the majority by `margin`."""
    last = result["records"][-1]
    lines = [f"| question | held-out rows | own image (step {last['step']}) | swapped image | majority | "
             f"first step own > majority + {margin:.2f} |", "|---|---|---|---|---|---|"]
    for name in result["majority"]:
        step = first_step_above(result["records"], name, result["majority"][name] + margin)
        lines.append(f"| {name} | {result['rows']['test_per_question'][name]} | {last['own'][name]:.2f} | "
                     f"{last['swapped'][name]:.2f} | {result['majority'][name]:.2f} | {step or 'never'} |")
    return "\n".join(lines)


def detection_table(result: Mapping) -> str:
    """Markdown: per detection question, held-out rows, mean IoU own / swapped at the last step, the
    constant box's, and the first step at which own beats both."""
    last = result["records"][-1]
    lines = [f"| question | held-out rows | IoU own image (step {last['step']}) | swapped image | constant box | "
             "first step own > swapped and constant |", "|---|---|---|---|---|---|"]
    for name, baseline in result["constant_box"].items():
        step = first_step_boxes_above(result["records"], name, baseline)
        lines.append(f"| {name} | {result['rows']['test_per_question'][name]} | {last['iou_own'][name]:.3f} | "
                     f"{last['iou_swapped'][name]:.3f} | {baseline:.3f} | {step or 'never'} |")
    return "\n".join(lines)


def detection_by_step(result: Mapping) -> str:
    """Markdown: per evaluated step, the training loss and each detection question's mean IoU own /
    swapped (the constant box's in the header)."""
    names = list(result["constant_box"])
    lines = ["| step | loss | " + " | ".join(f"{n} own / swapped (constant {result['constant_box'][n]:.3f})"
                                            for n in names) + " |",
             "|---|---|" + "---|" * len(names)]
    for record in result["records"]:
        lines.append(f"| {record['step']} | {record['loss']:.3f} | " + " | ".join(
            f"{record['iou_own'][n]:.3f} / {record['iou_swapped'][n]:.3f}" for n in names) + " |")
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
                    help=f"comma-separated, from {', '.join([*QUESTIONS, *DETECTION_QUESTIONS])}")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="experiment config override, e.g. optim.vision.learning_rate=1e-4")
    ap.add_argument("--out", default="", help="write the records and the tables as JSON here")
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
    tables = {}
    if result["majority"]:
        tables["table"] = result_table(result, args.margin)
    if result["constant_box"]:
        tables["detection_table"] = detection_table(result)
        tables["detection_by_step"] = detection_by_step(result)
    for table in tables.values():
        print(table)
    print(f"total {result['seconds']:.0f} s")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({**result, **tables}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
