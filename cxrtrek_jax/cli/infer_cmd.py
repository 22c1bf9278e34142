"""`cxrtrek infer`: staged reasoning on new radiographs or CXRTrek studies, printed and written as JSONL.

    cxrtrek infer --checkpoint CKPT --image a.dcm [--prior b.png]      # the questions of the training data
    cxrtrek infer --checkpoint CKPT --data test.json --context teacher --out predictions.jsonl
    cxrtrek infer --checkpoint CKPT --data TFDS_DIR --split test --out predictions.jsonl

--data takes the data arguments every command shares (`cxrtrek_jax.cli.data_args`: a CXRTrek JSON
file or a TFDS data dir, --image-root, --split (default all) and the split-rule flags), so
`infer --split test` decodes the studies `eval --split test` does.

Questions for images that come without (--image, or --data studies without questions): the
checkpoint's training data's question script when its run kept one (`RUN/question_script.json`,
named in the checkpoint's metadata: `cxrtrek_jax.decoding.data_script`), unless that data asks its
findings in the built-in script's words (the phantom's, `ScriptSource.asks_in_builtin_words`), else
the built-in phantom-wording script (`cxrtrek_jax.decoding.question_script`); a line says which, and which
turns were skipped for want of a prior or later image.

Each output line is a predictions record (`cxrtrek_jax.evaluation.scores.predictions`),
so `cxrtrek eval --predictions` scores it; the reference is "" when unknown.

On a device mesh, as training shards the model: `--set mesh.fsdp=4 --set mesh.tensor=2` (training's
mesh keys; `cxrtrek_jax.cli.mesh_args`), across processes with --coordinator/--num-processes/
--process-id (every process runs the same command; process 0 prints and writes --out). The answers
are those of one device.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import functools
import sys
import time
from pathlib import Path

from cxrtrek_jax.cli import CLIError
from cxrtrek_jax.cli.data_args import add_data_arguments, open_data, split_from, split_rule_from
from cxrtrek_jax.cli.mesh_args import add_mesh_arguments, decode_mesh_from
from cxrtrek_jax.contexts import CHAIN_CONTEXTS
from data_pipeline.files.datasets import EVERY_SPLIT

# `cxrtrek_jax.decoding.ORDERS`, spelled out here so that registering the command imports no JAX.
_ORDERS = ("given", "canonical")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "infer", help="run the staged reasoning chain on radiographs or CXRTrek studies",
        description=("Decode a staged conversation per study with the KV cache carried from stage to stage. "
                     "With --image, the questions of the checkpoint's training data are asked (its "
                     "question_script.json; a checkpoint without one gets the built-in 8-stage script, whose "
                     "later questions follow the model's answers); with --data, each study's own questions "
                     "(studies without questions get the script). "
                     "Prints the reasoning trace and optionally writes one JSON "
                     "line per turn."))
    parser.add_argument("--checkpoint", required=True, help="checkpoint directory (Orbax, with metadata)")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: the newest)")
    parser.add_argument("--tokenizer", default=None,
                        help="tokenizer directory (default: the one named in the checkpoint's metadata)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--image", nargs="+", metavar="FILE", help="current-study image(s): PNG, JPEG or DICOM")
    add_data_arguments(parser, split_default=EVERY_SPLIT, data_help="studies to decode", data_container=source)
    parser.add_argument("--prior", nargs="+", default=[], metavar="FILE", help="prior-study image(s) (with --image)")
    parser.add_argument("--later", nargs="+", default=[], metavar="FILE",
                        help="later (follow-up) study image(s) for stage 6 (with --image)")
    parser.add_argument("--question", action="append", default=None, metavar="TEXT",
                        help="ask this question (repeatable: one chain of the given questions, each seeing the "
                             "earlier ones and their answers) instead of the question script; with --image")
    parser.add_argument("--system-prompt", default=None, metavar="TEXT",
                        help="the system message of --image chains (default: none for a checkpoint imported "
                             "from Hugging Face, which renders through its own chat template; the CXRTrek "
                             "system prompt for models trained here)")
    parser.add_argument("--context", choices=CHAIN_CONTEXTS, default="own",
                        help="what earlier turns hold: the model's answers (own), the references (teacher) "
                             "or nothing (none); default own")
    parser.add_argument("--order", choices=_ORDERS, default="given",
                        help="turn order of --data studies: as given, or canonical stages 1..8 (default given)")
    parser.add_argument("--max-new-tokens", type=int, default=128,
                        help="most tokens an answer writes, as generate's max_new_tokens (an answer that "
                             "reaches it is closed with the end-of-turn token after them; default 128)")
    parser.add_argument("--cache-length", type=int, default=None,
                        help="KV-cache slots per study (default: the model's max_positions)")
    parser.add_argument("--batch-size", type=int, default=4, help="studies decoded together (default 4)")
    parser.add_argument("--max-studies", type=int, default=None, help="decode only the first N studies of --data")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    parser.add_argument("--top-k", type=int, default=0, help="sample from the k most likely tokens (0 = all)")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1.0 = off)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")
    parser.add_argument("--out", default=None, help="write the turns as predictions JSONL here")
    add_mesh_arguments(parser)
    parser.set_defaults(func=_infer)


def _check_args(args: argparse.Namespace) -> None:
    if args.image is None and (args.prior or args.later):
        raise CLIError("--prior and --later go with --image (studies in --data list their own images)")
    if args.image is not None and (args.image_root is not None or split_rule_from(args) is not None
                                   or args.split != EVERY_SPLIT):
        raise CLIError("--image-root, --split and the split flags go with --data")
    if args.image is None and (args.question or args.system_prompt is not None):
        raise CLIError("--question and --system-prompt go with --image (studies in --data have their own)")
    if args.question and args.out:
        raise CLIError("--out writes prediction records, scored per stage; the questions of --question have "
                       "no stage: leave out --out (the answers are printed)")
    if args.question and any(not q.strip() for q in args.question):
        raise CLIError("--question needs a non-empty question")
    if args.image is not None and args.context == "teacher":
        raise CLIError("--context teacher needs reference answers: use --data with studies that have them")
    for name in ("max_new_tokens", "batch_size"):
        if getattr(args, name) < 1:
            raise CLIError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.max_studies is not None and args.max_studies < 1:
        raise CLIError(f"--max-studies must be >= 1, got {args.max_studies}")
    if args.cache_length is not None and args.cache_length < 1:
        raise CLIError(f"--cache-length must be >= 1, got {args.cache_length}")


def _load_model(args: argparse.Namespace, mesh=None):
    from cxrtrek_jax.decoding.model_loading import CheckpointMismatchError, load_checkpoint_model

    if not Path(args.checkpoint).is_dir():
        raise CLIError(f"checkpoint directory {args.checkpoint} does not exist")
    try:
        return load_checkpoint_model(args.checkpoint, args.step, mesh=mesh)
    except CheckpointMismatchError as err:
        raise CLIError(str(err)) from None
    except (FileNotFoundError, ValueError, KeyError) as err:
        raise CLIError(f"cannot load checkpoint {args.checkpoint}: {err}") from None


def _load_tokenizer(args: argparse.Namespace, loaded):
    from data_pipeline.text.tokenizer import load_tokenizer

    path = args.tokenizer or loaded.tokenizer_dir
    if path is None:
        raise CLIError(f"checkpoint {args.checkpoint} names no tokenizer; pass --tokenizer DIR")
    try:
        return load_tokenizer(path)
    except (FileNotFoundError, ValueError) as err:
        raise CLIError(f"cannot load the tokenizer: {err}") from None


def _question_script(args: argparse.Namespace, loaded):
    """(the training data's question script the checkpoint keeps, None when it keeps none; the
    line saying which questions infer asks)."""
    from cxrtrek_jax.decoding.model_loading import question_script_of
    from data_pipeline.text.question_wording import read_question_script

    path = question_script_of(loaded.metadata, args.checkpoint)
    if path is None:
        return None, ("questions: the built-in phantom-wording script (this checkpoint keeps no question "
                      "script: trained before this version or imported from Hugging Face)")
    try:
        script = read_question_script(path)
    except FileNotFoundError:
        raise CLIError(f"checkpoint {args.checkpoint} names the question script {path} (metadata "
                       "question_script_path), which is missing: copy the run directory whole") from None
    except ValueError as err:  # QuestionScriptError: names the file and the field
        raise CLIError(str(err)) from None
    source = script.source
    if source.asks_in_builtin_words:
        return None, (f"questions: the built-in script, in the words of this checkpoint's training data "
                      f"({source.builtin_presence_turns:,} of its {source.presence_turns:,} stage-2 yes/no turns ask "
                      f"in them: {Path(path).resolve()}); it follows up each answer, which a counted script does not")
    return script, (f"questions: the training data's wording ({Path(path).resolve()}, from "
                    f"{source.studies:,} studies of {source.data})")


def _script_plan(script, current: int, prior: int, later: int):
    """(a plan factory asking `script`'s questions, the built-in script's when None, of a study with
    these image counts; what it skips for want of a prior or later image, one line a group)."""
    from cxrtrek_jax.decoding import default_script, fixed_plan
    from cxrtrek_jax.decoding.data_script import script_turns
    from data_pipeline.schema.stages import Stage
    from data_pipeline.text.question_wording import GROUP_STAGES

    counts = dict(current_images=current, prior_images=prior, later_images=later)
    missing = {group: stage for group, stage in GROUP_STAGES.items() if not counts[f"{group}_images"]}
    if script is None:
        return (functools.partial(default_script, **counts),
                [f"no {group} image: stage {stage} ({Stage(stage).title})" for group, stage in missing.items()])
    turns, skipped = script_turns(script, **counts)
    lines = [f"no {group} image: " + ", ".join(f"stage {t.stage} {t.task_type}" for t in skipped if t.stage == stage)
             for group, stage in missing.items() if any(t.stage == stage for t in skipped)]
    return functools.partial(fixed_plan, turns), lines


def _image_studies(args: argparse.Namespace, image_size: int, script, line: str, tokenizer, processing=None):
    from cxrtrek_jax.decoding import ChainStudy

    images = _load_images([*args.image, *args.prior, *args.later], image_size, processing)
    if args.question:
        plan = functools.partial(_question_plan, tuple(args.question), len(images))
        print(f"questions: the {len(args.question)} given with --question, in one chain")
    else:
        plan, skipped = _script_plan(script, len(args.image), len(args.prior), len(args.later))
        print(line)
        for what in skipped:
            print(f"skipped, {what}")
    return [ChainStudy(study_id=Path(args.image[0]).stem, images=images, system_prompt=_system_prompt(args, tokenizer),
                       plan=plan)]


def _question_plan(questions: tuple[str, ...], images: int):
    """The plan of --question: each question a turn (no stage: 0), every image shown with the first."""
    from cxrtrek_jax.decoding import Turn, fixed_plan

    return fixed_plan([Turn(turn_index=k, stage=0, task_type="question", qtype="open", question=question,
                            image_input_count=images) for k, question in enumerate(questions)])


def _system_prompt(args: argparse.Namespace, tokenizer) -> str:
    """--system-prompt; else none for a checkpoint rendering through its own chat template (imported:
    what its users send), the CXRTrek system prompt for a model trained here."""
    from data_pipeline.files.cxrtrek_json import DEFAULT_SYSTEM_PROMPT

    if args.system_prompt is not None:
        return args.system_prompt
    return "" if tokenizer.template is not None else DEFAULT_SYSTEM_PROMPT


def _load_images(paths, image_size: int, processing=None):
    from cxrtrek_jax.decoding import load_study_images
    from data_pipeline.files.images import ImageLoadError

    try:
        return load_study_images(paths, image_size) if processing is None else \
            load_study_images(paths, image_size, processing=processing)
    except ImageLoadError as err:
        raise CLIError(f"unreadable image: {err}") from None


def _data_studies(args: argparse.Namespace, image_size: int, script, line: str, processing=None):
    """The studies of --data's --split (at most --max-studies) as chains: each study's own
    questions, or `script`'s (`_script_plan`) for a study without any (then `line` is printed,
    and what was skipped, with its number of studies)."""
    from cxrtrek_jax.evaluation.runs.model_eval import record_images
    from data_pipeline.files.images import ImageLoadError

    dataset, split = open_data(args), split_from(args)
    out, scripted = [], []
    try:
        for record in dataset.records(split):
            if args.max_studies is not None and len(out) >= args.max_studies:
                break
            if not record.study.images:
                raise CLIError(f"study {record.study.key!r} has no images")
            try:
                images = record_images(record, image_size, processing)
            except ImageLoadError as err:
                raise CLIError(f"unreadable image: {err}") from None
            out.append(_chain_study(args, record.study, images, script, scripted))
    except ValueError as err:  # CXRTrekFormatError, ImagePathError, a study the split rule cannot place
        raise CLIError(str(err)) from None
    if not out:
        raise CLIError(f"{args.data} holds no studies" + ("" if split is None else f" in split {split!r}"))
    if scripted:
        print(f"{line}; for the {len(scripted)} studies without questions")
        for what, studies in collections.Counter(what for skipped in scripted for what in skipped).items():
            print(f"skipped in {studies} of them, {what}")
    return out


def _chain_study(args: argparse.Namespace, study, images, script, scripted: list):
    """A ChainStudy of `study` with its loaded `images`: its own questions in --order, or
    `script`'s when it has none (not with --context teacher: no references; what that skipped is
    appended to `scripted`)."""
    from cxrtrek_jax.decoding import ChainStudy, fixed_plan, study_turns
    from data_pipeline.text.sequences import current_image_count, system_prompt_of

    if study.items:
        plan = functools.partial(fixed_plan, study_turns(study, args.order))
    elif args.context == "teacher":
        raise CLIError(f"study {study.key!r} has no questions, so no reference answers for "
                       "--context teacher")
    else:
        current = current_image_count(study)
        plan, skipped = _script_plan(script, current, len(images) - current, 0)
        scripted.append(skipped)
    return ChainStudy(study_id=study.key, images=images, system_prompt=system_prompt_of(study), plan=plan)


def _image_processing(args: argparse.Namespace, loaded):
    """The checkpoint's own image processing (imported from Hugging Face), None for ours."""
    from cxrtrek_jax.decoding.model_loading import image_processing_of

    try:
        processing = image_processing_of(args.tokenizer or loaded.tokenizer_dir)
    except ValueError as err:
        raise CLIError(str(err)) from None
    if processing is not None:
        print(f"images: {processing.describe()}")
    return processing


def _print_trace(results) -> None:
    from data_pipeline.schema.stages import Stage

    for turns in results:
        if not turns:
            continue
        print(f"== study {turns[0].study_id} ({turns[0].context} context)")
        for turn in turns:
            title = Stage.parse(turn.stage).title if turn.stage else f"question {turn.turn_index + 1}"
            note = "" if turn.stop_reason == "end_of_turn" else f"  [stopped: {turn.stop_reason}]"
            print(f"[stage {turn.stage}: {title}] Q: {turn.question}" if turn.stage else f"[{title}] Q: {turn.question}")
            print(f"    A: {turn.answer}{note}")
            if turn.reference is not None:
                print(f"    reference: {turn.reference}")


def _infer(args: argparse.Namespace) -> int:
    _check_args(args)
    mesh = decode_mesh_from(args)  # joins the processes first, before anything touches a device
    import jax

    from cxrtrek_jax.decoding import DecodeSpec, SamplingConfig, StepwiseDecoder, run_chain
    from cxrtrek_jax.decoding.placement import writes_outputs
    from data_pipeline.text.box_grammar import box_grammar_of
    from cxrtrek_jax.evaluation.scores.predictions import PredictionWriter, prediction_from_turn

    writes = writes_outputs()
    loaded = _load_model(args, mesh)
    tokenizer = _load_tokenizer(args, loaded)
    config = loaded.config
    image_size = config.vision.image_size
    script, line = _question_script(args, loaded)
    processing = _image_processing(args, loaded)
    studies = (_image_studies(args, image_size, script, line, tokenizer, processing) if args.image is not None
               else _data_studies(args, image_size, script, line, processing))
    if loaded.blank_images is not None:  # a text-only model: fed the constant images it trained on
        from data_pipeline.batches.grain_pipeline import blank_images

        print(f"images blanked: the checkpoint was trained with every image blanked to {loaded.blank_images} "
              "(data.pipeline.blank_images, a text-only model); its images here are blanked too", file=sys.stderr)
        studies = [dataclasses.replace(s, images=blank_images(len(s.images), image_size, loaded.blank_images))
                   for s in studies]
    try:
        sampling = SamplingConfig(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
        budget = args.max_new_tokens + 1  # the answer's tokens and the end-of-turn that closes it
        spec = DecodeSpec.for_model(config, tokenizer, cache_length=args.cache_length or config.text.max_positions,
                                    max_answer_tokens=budget)
    except ValueError as err:
        raise CLIError(str(err)) from None
    decoder = StepwiseDecoder(loaded.graphdef, config, spec, mesh=mesh,
                              grammar=box_grammar_of(tokenizer, config.vocab_size))
    rng = jax.random.key(args.seed)
    began = time.perf_counter()
    turns = 0
    with PredictionWriter(args.out) if args.out and writes else contextlib.nullcontext() as writer:
        for first in range(0, len(studies), args.batch_size):
            rng, batch_rng = jax.random.split(rng)
            try:
                results = run_chain(decoder, loaded.state, tokenizer, studies[first: first + args.batch_size],
                                    context=args.context, max_new_tokens=budget, sampling=sampling,
                                    rng=batch_rng)
            except ValueError as err:
                raise CLIError(str(err)) from None
            if writes:
                _print_trace(results)
            for study_results in results:
                turns += len(study_results)
                for turn in study_results if writer is not None else ():
                    writer.write(prediction_from_turn(turn))
    elapsed = time.perf_counter() - began
    if not writes:
        print(f"process {jax.process_index()} of {jax.process_count()}: decoded {len(studies)} studies with the "
              "others; process 0 prints and writes them")
        return 0
    where = f"; wrote {args.out}" if args.out else ""
    print(f"{len(studies)} studies, {turns} turns in {elapsed:.1f} s{where}")
    return 0
