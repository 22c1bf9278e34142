"""`evaluate_external`: ask a checkpoint the questions of a public set and score it as its community does.

    result = evaluate_external("chexpert", "/data/CheXpert-v1.0-small", "runs/x/checkpoints", "runs/x/chexpert")
    result.scores.metrics["mean_auroc_competition5"].value

The set is read by `data_pipeline.external` (its counts of rows used and skipped printed), every
question asked alone (context `none`: the system prompt, the images and the question, as
`decoding.run_chain` asks it; no system prompt for a checkpoint with its own chat template, as
`cxrtrek infer` asks an image), greedily, in batches of groups (a study or an image, whose items
share images; images fitted as the checkpoint's processor does, `decoding.model_loading.
image_processing_of`, else ours; frontal first, at most the model's image slots):
  report     the model's stage-8 question: the checkpoint's question script's (`question_script.json`
             of its run) when it names one, else the built-in script's (`decoding.default_script`);
  presence   a stage-2 yes/no question per observation (`presence_question`); not decoded but
             scored: P("Yes") = softmax over the logits of the first token of "Yes" and of "No" at
             the first answer position (the logits after the question, `ChainState.next_logits`);
  detection  a stage-3 question per finding class (`detection_question`), answered in the box grammar;
  vqa        the set's question as written.
Scores: `evaluation.scores.external_scores`. Written into `out_dir`:
  predictions.jsonl  one line per item: item_id, group, question, reference, answer, p_yes, image_size
  external.json      the set (name, split, source, counts used / skipped), the checkpoint's identity,
                     the settings, and the scores with their intervals and the baseline's
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cxrtrek_jax.evaluation.scores.external_scores import (
    ExternalAnswer, ExternalScores, fit_vqa_majority, format_external_table, score_external,
)
from data_pipeline.external.external_items import DETECTION, PRESENCE, REPORT, VQA, ExternalItem, ExternalSet
from data_pipeline.schema.findings import CHEXPERT_LABELS, PRESENCE_QUESTIONS

__all__ = ["PREDICTIONS_FILE", "RESULT_FILE", "ExternalResult", "evaluate_external", "presence_question",
           "detection_question", "report_question", "limit_groups"]

PREDICTIONS_FILE = "predictions.jsonl"
RESULT_FILE = "external.json"
_MAX_TURNS_PER_CHAIN = 32
# The construct's wording of a presence question (data_pipeline.construct.stage2_findings), for the
# observations the finding vocabulary has no question for.
_PRESENCE_STEM = "Is there any evidence of {f} in the X-ray?"
_VOCABULARY_KIND = {label: kind for kind, label in CHEXPERT_LABELS.items()}
# (stage, task type, qtype) a task's questions are asked as.
_TURN_KIND = {REPORT: (8, "Report_Generation", "captioning"), PRESENCE: (2, "Findings_Identification", "yes_no"),
              DETECTION: (3, "Findings_Detection", "detection")}


@dataclasses.dataclass(frozen=True)
class ExternalResult:
    """The read set, its scores, and the files written (predictions, external.json)."""

    data: ExternalSet
    scores: ExternalScores
    written: tuple[Path, ...]


def presence_question(observation: str) -> str:
    """The finding vocabulary's plain presence question when it has the observation
    (`schema.findings.PRESENCE_QUESTIONS`, the default script's words), else the construct's stem."""
    kind = _VOCABULARY_KIND.get(observation)
    return PRESENCE_QUESTIONS[kind][0] if kind else _PRESENCE_STEM.format(f=observation.lower())


def detection_question(class_name: str) -> str:
    """The default script's stage-3 detection question for a finding class."""
    return f"Locate the {class_name.lower()} in the image."


def report_question(metadata: dict[str, Any], ckpt_dir: str | os.PathLike) -> str:
    """The stage-8 question: the first of the checkpoint's question script, else the built-in script's."""
    from cxrtrek_jax.decoding.model_loading import question_script_of
    from data_pipeline.text.question_wording import read_question_script

    path = question_script_of(metadata, ckpt_dir)
    if path is not None and Path(path).is_file():
        for turn in read_question_script(path).turns:
            if turn.stage == 8 and turn.introduces is None:
                return turn.question
    from cxrtrek_jax.decoding import default_script

    plan = default_script()
    turn = next(plan)
    while turn.stage != 8:
        turn = plan.send("No.")
    return turn.question


def limit_groups(data: ExternalSet, max_groups: int | None) -> ExternalSet:
    """`data` with the items of its first `max_groups` groups only (None: all)."""
    if max_groups is None:
        return data
    if max_groups < 1:
        raise ValueError(f"max_groups must be >= 1, got {max_groups}")
    keep = set(list(dict.fromkeys(item.group for item in data.items))[:max_groups])
    return dataclasses.replace(data, items=tuple(item for item in data.items if item.group in keep))


def _groups(items: Sequence[ExternalItem]) -> list[list[ExternalItem]]:
    by_group: dict[str, list[ExternalItem]] = {}
    for item in items:
        by_group.setdefault(item.group, []).append(item)
    return list(by_group.values())


def _load_group_images(items: list[ExternalItem], image_size: int, max_images: int, blank: float | None,
                       processing: Any = None) -> tuple[np.ndarray, tuple[int, int]]:
    """float32[K, S, S] model images of the group (K <= max_images), fitted by `processing` (the
    checkpoint's `ImageProcessing`, None = ours: resize with padding), and the first image's (height, width)."""
    from data_pipeline.batches.grain_pipeline import blank_images
    from data_pipeline.files.image_processing import model_input
    from data_pipeline.files.images import load_image

    paths = items[0].images[:max_images]
    raw = [load_image(path) for path in paths]
    size = (int(raw[0].shape[0]), int(raw[0].shape[1]))
    if blank is not None:
        return blank_images(len(raw), image_size, blank), size
    return np.stack([model_input(image, image_size, processing) for image in raw]), size


class _Model:
    """The loaded checkpoint with its tokenizer and decoder, and the questions of a task."""

    def __init__(self, checkpoint: str | os.PathLike, max_new_tokens: int, batch_size: int):
        from cxrtrek_jax.decoding import DecodeSpec, StepwiseDecoder
        from cxrtrek_jax.decoding.chain import ChatTokens
        from cxrtrek_jax.decoding.model_loading import image_processing_of, load_checkpoint_model
        from data_pipeline.files.cxrtrek_json import DEFAULT_SYSTEM_PROMPT
        from data_pipeline.text.box_grammar import box_grammar_of
        from data_pipeline.text.tokenizer import load_tokenizer

        self.loaded = load_checkpoint_model(checkpoint)
        if self.loaded.tokenizer_dir is None:
            raise FileNotFoundError(f"checkpoint {checkpoint} names no tokenizer")
        self.tokenizer = load_tokenizer(self.loaded.tokenizer_dir)
        self.config = self.loaded.config
        self.spec = DecodeSpec.for_model(self.config, self.tokenizer, cache_length=self.config.text.max_positions,
                                         max_answer_tokens=max_new_tokens)
        self.decoder = StepwiseDecoder(self.loaded.graphdef, self.config, self.spec,
                                       grammar=box_grammar_of(self.tokenizer, self.config.vocab_size))
        self.chat = ChatTokens(self.tokenizer, self.config.tokens_per_image)
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.report_question = report_question(dict(self.loaded.metadata), checkpoint)
        self.processing = image_processing_of(self.loaded.tokenizer_dir)
        # As `cxrtrek infer` asks a bare image: no system message for a checkpoint rendering through
        # its own chat template (imported: what its users send), the CXRTrek one for a model trained here.
        self.system_prompt = "" if self.tokenizer.template is not None else DEFAULT_SYSTEM_PROMPT

    def question(self, task: str, item: ExternalItem) -> str:
        if task == REPORT:
            return self.report_question
        if task == PRESENCE:
            return presence_question(item.label)
        if task == DETECTION:
            return detection_question(item.label)
        return item.question

    def images(self, group: list[ExternalItem]) -> tuple[np.ndarray, tuple[int, int]]:
        return _load_group_images(group, self.config.vision.image_size, self.config.max_images,
                                  self.loaded.blank_images, self.processing)

    def decode(self, task: str, batch: list[list[ExternalItem]]) -> dict[str, ExternalAnswer]:
        """Greedy answers to every item of the groups in `batch`, each asked alone (context none)."""
        import functools

        import jax

        from cxrtrek_jax.decoding import ChainStudy, Turn, fixed_plan, run_chain

        stage, task_type, default_qtype = _TURN_KIND.get(task, (2, "Findings_Identification", "captioning"))
        chains, owners = [], []
        for group in batch:
            images, size = self.images(group)
            for start in range(0, len(group), _MAX_TURNS_PER_CHAIN):
                part = group[start:start + _MAX_TURNS_PER_CHAIN]
                turns = tuple(Turn(turn_index=i, stage=stage, task_type=task_type,
                                   qtype=("yes_no" if item.answer_type == "closed" else default_qtype) if task == VQA
                                   else default_qtype, question=self.question(task, item),
                                   image_input_count=len(images), reference=item.reference or None)
                              for i, item in enumerate(part))
                chains.append(ChainStudy(study_id=part[0].group, images=images, system_prompt=self.system_prompt,
                                         plan=functools.partial(fixed_plan, turns)))
                owners.append((part, size))
        while len(chains) % self.batch_size:  # a full batch always: one compiled shape for every call
            chains.append(self._empty_study())
        results = run_chain(self.decoder, self.loaded.state, self.tokenizer, chains, context="none",
                            max_new_tokens=self.max_new_tokens, rng=jax.random.key(0))
        answers = {}
        for turns, (part, size) in zip(results, owners):
            for turn, item in zip(turns, part):
                answers[item.item_id] = ExternalAnswer(item.item_id, turn.answer,
                                                       image_size=size if task == DETECTION else None)
        return answers

    def _empty_study(self):
        """A study without images or questions: fills a batch (run_chain leaves it unasked)."""
        from cxrtrek_jax.decoding import ChainStudy, fixed_plan

        size = self.config.vision.image_size
        return ChainStudy("(padding)", np.zeros((0, size, size), np.float32), "", lambda: fixed_plan(()))

    def _question_chunk(self, prompt: list[int], question: str, images: int) -> list[int]:
        """The tokens after `prompt` of a question asked alone, as `run_chain` renders context `none`
        (the system message and the question with its image placeholders, whole, ending with the
        assistant's prefix); ValueError when the rendering does not start with the prompt."""
        from data_pipeline.schema.records import Message
        from data_pipeline.text.sequences import place_placeholders

        text = place_placeholders(question, images, self.tokenizer.format.image)
        ids = self.tokenizer.encode_chat([Message("system", self.system_prompt), Message("user", text)],
                                         tokens_per_image=self.config.tokens_per_image,
                                         add_generation_prompt=True).ids.tolist()
        if ids[:len(prompt)] != prompt:
            raise ValueError("the chat template does not start a conversation with its prompt tokens")
        return ids[len(prompt):]

    def yes_no_tokens(self) -> tuple[int, int]:
        yes, no = self.chat.answer_body("Yes")[0], self.chat.answer_body("No")[0]
        if yes == no:
            raise ValueError(f"the tokenizer starts 'Yes' and 'No' with the same token {yes}")
        return yes, no

    def presence(self, batch: list[list[ExternalItem]]) -> dict[str, ExternalAnswer]:
        """P("Yes") of every item of the groups in `batch` (module docstring): one `start` per group,
        then per question an `ask`, the logits read, and a rewind to the prompt."""
        import jax

        from cxrtrek_jax.decoding import ChainStudy, fixed_plan
        from cxrtrek_jax.decoding.chain import stack_images
        from cxrtrek_jax.decoding.chain_state import StopReason

        yes, no = self.yes_no_tokens()
        studies = [ChainStudy(group[0].group, self.images(group)[0], self.system_prompt, lambda: fixed_plan(()))
                   for group in batch]
        batch = batch + [[]] * (self.batch_size - len(batch))  # a full batch always (one compiled shape)
        studies += [self._empty_study() for _ in range(len(batch) - len(studies))]
        images, mask = stack_images(studies, self.config.max_images)
        prompt = self.chat.prompt(self.system_prompt)
        state = self.decoder.start(self.loaded.state, images, mask, [prompt] * len(batch), jax.random.key(0))
        base = np.asarray(jax.device_get(state.length))
        answers = {}
        for index in range(max(len(group) for group in batch)):
            asked = [group[index] if index < len(group) else None for group in batch]
            chunks = [None if item is None else self._question_chunk(prompt, presence_question(item.label),
                                                                     len(study.images))
                      for item, study in zip(asked, studies)]
            state = self.decoder.ask(self.loaded.state, state, chunks, [0 if c is None else 2 for c in chunks])
            logits, reasons = jax.device_get((state.next_logits, state.stop_reason))
            for b, item in enumerate(asked):
                if item is None:
                    continue
                if int(reasons[b]) == int(StopReason.CACHE_FULL):
                    raise ValueError(f"item {item.item_id!r}: the question does not fit the model's cache")
                margin = float(logits[b, yes]) - float(logits[b, no])
                answers[item.item_id] = ExternalAnswer(item.item_id, "Yes" if margin >= 0 else "No",
                                                       p_yes=float(1.0 / (1.0 + np.exp(-margin))))
            state = self.decoder.rewind(state, base, np.zeros(len(batch), np.int32))
        return answers


def _batches(groups: list, size: int):
    for start in range(0, len(groups), size):
        yield groups[start:start + size]


def _write_predictions(path: Path, data: ExternalSet, answers: dict[str, ExternalAnswer], model: _Model) -> None:
    from data_pipeline.files.atomic_write import open_atomically

    with open_atomically(path) as f:
        for item in data.items:
            answer = answers[item.item_id]
            f.write(json.dumps({"item_id": item.item_id, "group": item.group, "label": item.label,
                                "question": model.question(data.task, item), "reference": item.reference,
                                "answer": answer.answer, "p_yes": answer.p_yes,
                                "image_size": None if answer.image_size is None else list(answer.image_size)}) + "\n")


def evaluate_external(
    set_name: str,
    root: str | os.PathLike,
    checkpoint: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    file: str | None = None,
    uncertain: str = "ignore",
    reports_root: str | os.PathLike | None = None,
    train_file: str | None = None,
    max_groups: int | None = None,
    max_new_tokens: int = 128,
    batch_size: int = 4,
    resamples: int = 1000,
    seed: int = 0,
    meteor: bool = True,
    bertscore_model: str | os.PathLike | None = None,
    bertscore_layer: int | None = None,
    progress: bool = True,
) -> ExternalResult:
    """Read set `set_name` under `root`, ask `checkpoint` its questions, score and write `out_dir`
    (module docstring). file / uncertain / reports_root: `read_external_set`'s options; train_file:
    a VQA set's training file under root (trainset.json / train.json) to fit the majority-answer
    baseline on (None: fitted on the scored items); max_groups: only the first groups (studies or
    images); bertscore_model / bertscore_layer: a Hugging Face encoder directory on disk (and the
    layer) to score BERTScore F1 of reports with (`metrics.bertscore`; None = not available
    offline). Raises `SourceError` for malformed set files, FileNotFoundError for a missing
    checkpoint or tokenizer, ValueError for bad settings, `MeteorUnavailable` when METEOR cannot run."""
    from cxrtrek_jax.evaluation.runs.model_eval import checkpoint_identity
    from data_pipeline.external import read_external_set
    from data_pipeline.external.vqa_sets import read_vqa_answers
    from data_pipeline.files.atomic_write import write_text_atomically

    for name, value in (("max_new_tokens", max_new_tokens), ("batch_size", batch_size)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if not Path(checkpoint).is_dir():
        raise FileNotFoundError(f"checkpoint {checkpoint}: no such directory")
    if train_file is not None and set_name not in ("vqa-rad", "slake"):
        raise ValueError("train_file (the majority baseline's training answers) is an option of vqa-rad and slake")
    if bertscore_model is not None and set_name not in ("iu-xray", "mimic-cxr"):
        raise ValueError("a BERTScore model scores generated reports: iu-xray and mimic-cxr only")
    data = read_external_set(set_name, root, file=file, uncertain=uncertain, reports_root=reports_root)
    print(data.counts_line(), flush=True)
    data = limit_groups(data, max_groups)
    if not data.items:
        raise ValueError(f"{set_name} under {root}: no item to evaluate")
    majority = None if train_file is None else fit_vqa_majority(read_vqa_answers(set_name, root, train_file))
    bertscore = None
    if bertscore_model is not None:  # loaded before decoding: a wrong directory fails fast
        from cxrtrek_jax.evaluation.metrics.bertscore import BertScorer

        bertscore = BertScorer(bertscore_model, bertscore_layer)
    model = _Model(checkpoint, max_new_tokens, batch_size)
    groups = _groups(data.items)
    answers: dict[str, ExternalAnswer] = {}
    for done, batch in enumerate(_batches(groups, batch_size), start=1):
        answers.update(model.presence(batch) if data.task == PRESENCE else model.decode(data.task, batch))
        if progress:
            print(f"  asked {min(done * batch_size, len(groups))}/{len(groups)} groups", flush=True)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    predictions = out / PREDICTIONS_FILE
    _write_predictions(predictions, data, answers, model)
    scores = score_external(data, answers, resamples=resamples, seed=seed, meteor=meteor, vqa_majority=majority,
                            bertscore=bertscore)
    print(format_external_table(scores), flush=True)
    settings = {"file": file, "uncertain": uncertain, "train_file": train_file, "max_groups": max_groups,
                "max_new_tokens": max_new_tokens, "resamples": resamples, "seed": seed, "meteor": meteor,
                "bertscore": None if bertscore is None else bertscore.describe(),
                "context": "none", "report_question": model.report_question if data.task == REPORT else None}
    document = {"set": {"name": data.name, "task": data.task, "split": data.split, "source": data.source,
                        "items": len(data.items), "rows_used": data.used, "skipped": dict(data.skipped)},
                "checkpoint": checkpoint_identity(checkpoint), "settings": settings, "scores": scores.to_json()}
    result_path = out / RESULT_FILE
    write_text_atomically(result_path, json.dumps(document, indent=2) + "\n")
    return ExternalResult(data, scores, (predictions, result_path))
