"""The grounding benchmark's detection questions: where is a large finding, answered with boxes.

Three questions ask for the box of a finding that is large on a phantom frontal radiograph: the
heart (cardiomegaly, labelled "enlarged cardiac silhouette"), pleural effusion (one box per side)
and the support devices (endotracheal tube, central venous catheter: a box each). The wording is
the phantom's first detection wording (`data_pipeline/phantom/questions.py` `_detection`: "Locate
the {name} in the image.") and the answer is what the phantom answers: the finding's drawn regions
(`StudyTruth.regions_of(kind)`, each `LabelledRegion.box`) in the released markup
(`schema.boxes.format_boxes`), on the 0-100 scale of the square frontal (resizing it to the model's
size keeps the scale). Rows are the studies in which the finding is drawn, one row each.

Scoring (`BoxAnswerer`, `mean_iou`): the answer is decoded greedily under the box grammar
(`data_pipeline.text.box_grammar` in the `StepwiseDecoder`), so it always parses, and scored with
the evaluation's own scorer (`detection_metrics.score_detection`): mean IoU pooled over the matched,
missed and spurious box pairs of all rows (sum of IoUs / pairs, as the evaluation's `mean_iou`).
The blind baseline is the best constant box answer per question, chosen as the evaluation chooses it
(`answer_baselines.best_constant_box`: the training answer with the highest mean IoU against all the
training answers of its question).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

from cxrtrek_jax.evaluation.metrics.detection_metrics import score_detection
from data_pipeline.schema.boxes import Box, format_boxes
from data_pipeline.schema.findings import FINDING_NAMES

__all__ = ["DETECTION_QUESTIONS", "DETECTION_STAGE", "DetectionSet", "detection_question", "detection_set",
           "mean_iou", "BoxAnswerer"]

# name -> the finding kind whose box it asks for.
DETECTION_QUESTIONS: dict[str, str] = {
    "heart_box": "cardiomegaly",
    "effusion_box": "pleural_effusion",
    "device_box": "support_devices",
}
DETECTION_STAGE = 3  # CXRTrek stage 3 (findings detection) asks for boxes


def detection_question(name: str) -> str:
    """The question text of detection question `name` (the phantom's first detection wording)."""
    return f"Locate the {FINDING_NAMES[DETECTION_QUESTIONS[name]]} in the image."


@dataclasses.dataclass(frozen=True)
class DetectionSet:
    """One split's detection rows: images float32[N, S, S], question int32[N] (index into
    DETECTION_QUESTIONS), answers (N released-format box answers), study int32[N]."""

    images: np.ndarray
    question: np.ndarray
    answers: tuple[str, ...]
    study: np.ndarray

    def __len__(self) -> int:
        return len(self.question)

    def answers_of(self, q: int) -> list[str]:
        return [a for a, k in zip(self.answers, self.question) if k == q]


def _regions(truth: Mapping, kind: str) -> list[Box]:
    """The boxes of `kind` drawn on the current frontal (`StudyTruth.regions_of(kind)` as the
    study's phantom_truth JSON records them), in drawing order."""
    return [Box(r["label"], *r["box"]) for r in truth["regions"] if r["kind"] == kind]


def detection_set(frontals: Sequence[np.ndarray], truths: Sequence[Mapping], first_index: int, seed: int,
                  questions: Sequence[str], log=print) -> DetectionSet:
    """Rows for the asked detection questions (names in DETECTION_QUESTIONS) from studies
    `first_index ..` (their frontals float32[S, S] and phantom_truth JSON): one row per study in
    which the finding is present, in a seeded mixed order. A study with the finding present but no
    drawn region is left out and counted on the console; ValueError when no row remains."""
    images, question, answers, studies = [], [], [], []
    for q, name in enumerate(DETECTION_QUESTIONS):
        if name not in questions:
            continue
        kind, undrawn = DETECTION_QUESTIONS[name], 0
        for i, truth in enumerate(truths):
            if kind not in {f["kind"] for f in truth["current"]["findings"]}:
                continue
            boxes = _regions(truth, kind)
            if not boxes:
                undrawn += 1
                continue
            images.append(frontals[i])
            question.append(q)
            answers.append(format_boxes(boxes))
            studies.append(i + first_index)
        if undrawn:
            log(f"{name}: {undrawn} studies with {kind} present have no drawn region; not asked")
    if not question:
        raise ValueError(f"{len(truths)} phantom studies give no detection row for {list(questions)}; "
                         "use more studies")
    order = np.random.default_rng([seed, first_index, 1]).permutation(len(question))
    return DetectionSet(np.stack(images)[order], np.array(question, np.int32)[order],
                        tuple(answers[i] for i in order), np.array(studies, np.int32)[order])


def mean_iou(references: Sequence[str], predictions: Sequence[str]) -> float:
    """Mean IoU of predictions against references (`score_detection` per row; pooled: the sum of
    IoUs over all rows' box pairs / the number of pairs). An unparseable prediction misses all its
    reference boxes. NaN with no rows."""
    if len(references) != len(predictions):
        raise ValueError(f"{len(references)} references but {len(predictions)} predictions")
    scores = [score_detection(r, p) for r, p in zip(references, predictions)]
    pairs = sum(s.num_pairs for s in scores)
    return sum(s.iou_sum for s in scores) / pairs if pairs else float("nan")


class BoxAnswerer:
    """Greedy box answers of detection rows: a `StepwiseDecoder` with the tokenizer's box grammar
    over the model of `model_config` (one image slot), asked the system prompt, then the row's
    question after its image, then decoding under the grammar. Compiled once; every call takes
    the current parameters."""

    def __init__(self, model_config, tokenizer, system_prompt: str, max_answer_tokens: int,
                 batch_size: int = 32):
        from cxrtrek_jax.decoding import DecodeSpec, StepwiseDecoder
        from cxrtrek_jax.decoding.chain import ChatTokens
        from cxrtrek_jax.decoding.model_loading import split_for_decoding
        from data_pipeline.schema.records import IMAGE_PLACEHOLDER
        from data_pipeline.text.box_grammar import BoxGrammar

        if model_config.max_images != 1:
            raise ValueError(f"BoxAnswerer asks one image per row; the model has {model_config.max_images} slots")
        self.model_config, self.tokenizer, self.batch_size = model_config, tokenizer, batch_size
        self.grammar = BoxGrammar.build(tokenizer, model_config.vocab_size)
        self.budget = max(max_answer_tokens, self.grammar.min_tokens)
        chat = ChatTokens(tokenizer, model_config.tokens_per_image)
        self.prompt = chat.prompt(system_prompt)
        self.questions = [chat.question(f"{IMAGE_PLACEHOLDER}\n{detection_question(name)}")
                          for name in DETECTION_QUESTIONS]
        needed = len(self.prompt) + max(map(len, self.questions)) + self.budget
        self.spec = DecodeSpec.for_model(model_config, tokenizer, cache_length=-(-needed // 16) * 16,
                                         max_answer_tokens=self.budget, max_turns=1)
        self._split, self._decoder_class = split_for_decoding, StepwiseDecoder
        self.decoder = None  # built on the first call, from the graph of the parameters it gets

    def __call__(self, params, images: np.ndarray, question: np.ndarray) -> list[str]:
        """params: the model's parameters (nested dict, the train state's); images float32[N, S, S];
        question int32[N] (index into DETECTION_QUESTIONS) -> N answer texts."""
        import jax

        from cxrtrek_jax.decoding import SamplingConfig

        graphdef, state_params = self._split(self.model_config, params)
        if self.decoder is None:
            self.decoder = self._decoder_class(graphdef, self.model_config, self.spec, grammar=self.grammar)
        texts: list[str] = []
        b = self.batch_size
        for start in range(0, len(question), b):
            rows = np.arange(start, min(start + b, len(question)))
            padded = np.resize(rows, b)  # a fixed batch: one compiled shape, the tail repeats rows
            state = self.decoder.start(state_params, images[padded][:, None], np.ones((b, 1), bool),
                                       [self.prompt] * b, jax.random.key(0))
            state = self.decoder.ask(state_params, state, [self.questions[q] for q in question[padded]],
                                     [DETECTION_STAGE] * b, constrained=[True] * b)
            state, tokens = self.decoder.answer(state_params, state, SamplingConfig(), self.budget)
            tokens, counts = jax.device_get((tokens, state.num_tokens))
            texts += [self.tokenizer.decode(tokens[k, : counts[k]]) for k in range(len(rows))]
        return texts
