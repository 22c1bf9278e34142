"""Run one experiment end to end: data -> tokenizer -> pipeline -> sharded training -> checkpoints.

`train_experiment(cfg, workdir)` is what `cxrtrek train --experiment NAME` calls:

1. data: a phantom set is generated into `data.path` (once; reused when complete) and every
   JSON source is built into a TFDS array_record data set (validated; splits by the one rule of
   `data_pipeline.files.split_rule` with `data.split_rule`, as `cxrtrek eval/infer/report` read
   the same JSON), so training always reads through the Grain pipeline over `tfds.data_source`;
2. tokenizer: the one given (`tokenizer.path`), or a byte-level BPE trained on the training
   split (saved beside the data, reused by later runs with the same vocabulary size);

   In a multi-process job, steps 1-2 (and the workdir's config and tokenizer copy) are done by
   process 0 alone; the others wait at a barrier (`sync_global_devices`) and then check that
   what process 0 made is there and complete (its `.complete` stamps match:
   `cxrtrek_jax.output_stamps`), raising an error naming what is missing otherwise. Those
   directories must be on a file system all processes share.
3. model config: the preset with the tokenizer's vocabulary size and image token id;
4. with `alignment` set, an image-dense first phase in `<workdir>/alignment` (the QA pairs of
   `alignment.stages`, see `cxrtrek_jax.train.config.AlignmentConfig`), whose last parameters start the main
   phase; a main phase that has begun (has a checkpoint) is resumed without repeating it;
5. `run_training` (mesh, sharded state, exact resume, pre-emption, NaN stop) with a
   validation-loss evaluation at every checkpoint, a progress bar (loss, learning rate,
   tokens/s, step time), TensorBoard event files and a JSONL metrics log (overall and per stage).

Workdir layout: `config.json` (the fully resolved experiment), `checkpoints/`, `metrics.jsonl`,
`tensorboard/`, `tokenizer/` (a copy, so the checkpoint dir is self-contained for infer/export),
`question_script.json` (the training data's wording, counted over its first
`QUESTION_SCRIPT_STUDIES` training studies: `data_pipeline.text.question_wording`; `cxrtrek infer`
asks new images in it). The checkpoints' metadata names the tokenizer and the question script
relative to the checkpoint directory.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import os
import pathlib
import shutil
import time
from collections.abc import Mapping

import jax
import numpy as np

from cxrtrek_jax import output_stamps
from cxrtrek_jax.train import checkpointing as ckpt_lib
from cxrtrek_jax.train import sharding as sharding_lib
from cxrtrek_jax.train import loop as train_loop
from cxrtrek_jax.train.process_gather import gather_ints
from cxrtrek_jax.model.config import ModelConfig, override
from data_pipeline.files.atomic_write import replace_directory_atomically, write_text_atomically
from data_pipeline.batches.augment import AugmentConfig
from data_pipeline.batches.grain_pipeline import PipelineConfig, build_eval_iterator, build_train_iterator
from data_pipeline.files.datasets import Dataset, open_dataset
from data_pipeline.files.split_rule import SplitConfig
from data_pipeline.text.question_wording import QUESTION_SCRIPT_FILE
from data_pipeline.text.tokenizer import CXRTrekTokenizer, load_tokenizer
from cxrtrek_jax.train.config import ExperimentConfig

__all__ = ["DataPaths", "prepare_data", "prepare_tokenizer", "resolve_model_config",
           "pipeline_config", "alignment_phase", "train_experiment", "QUESTION_SCRIPT_STUDIES",
           "write_run_question_script"]

log = logging.getLogger(__name__)

_COMPLETE = ".complete"
# The question script of a run is counted over the first this many studies of its training split
# (enough for the most frequent wordings; a bound on the read, not a sample of it).
QUESTION_SCRIPT_STUDIES = 5000


def _barrier(name: str) -> None:
    """Wait until every process of a multi-process job reaches `name` (no-op with one)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def _on_process_0_then_barrier(name: str, make) -> None:
    """Run `make()` on process 0 only, then hold every process at the barrier `name`. Process 0
    reaches the barrier even when `make` fails (then re-raises), so the others do not hang;
    they find its output missing and say so."""
    if jax.process_index() != 0:
        _barrier(name)
        return
    try:
        make()
    finally:
        _barrier(name)


def _check_marker(marker: pathlib.Path, expected: Mapping, what: str) -> None:
    """On processes other than 0, after the barrier: `marker` must hold `expected`."""
    if not marker.exists():
        raise FileNotFoundError(
            f"process {jax.process_index()}: {what} is not complete ({marker} is missing) after "
            "process 0 prepared it; see process 0's error, and check that this directory is on a "
            "file system every process shares")
    if not output_stamps.is_current(marker, expected):
        found = output_stamps.read_stamp(marker)
        raise ValueError(f"process {jax.process_index()}: {what} was made for {found}, this process "
                         f"expects {expected} ({marker}); do all processes run the same config?")


@dataclasses.dataclass(frozen=True)
class DataPaths:
    """tfds_dir: the built TFDS data dir; json_files: the JSON it was built from (if any);
    image_root: where the JSON's relative image paths live."""

    tfds_dir: str
    json_files: tuple[str, ...] = ()
    image_root: str | None = None


def _phantom(cfg: ExperimentConfig) -> pathlib.Path:
    """Generate the phantom set into data.path unless a complete one with the same recipe is there."""
    from data_pipeline.phantom import PhantomConfig, write_phantom_dataset
    from data_pipeline.phantom.splits import parse_splits

    d = cfg.data
    root = pathlib.Path(d.path)
    recipe = _phantom_recipe(cfg)
    marker = root / _COMPLETE
    if output_stamps.is_current(marker, recipe):
        return root / "cxrtrek.json"
    if root.exists() and any(root.iterdir()):
        if not marker.exists():
            log.warning("%s holds an incomplete phantom set; regenerating it", root)
        shutil.rmtree(root)
    splits = parse_splits(d.phantom_splits, d.phantom_studies)
    t0 = time.time()
    path = write_phantom_dataset(root, d.phantom_studies, d.phantom_seed,
                                 PhantomConfig(size=d.phantom_size, turns_per_study=d.phantom_turns),
                                 split=splits)
    log.info("generated %d phantom studies in %s (%.1fs)", d.phantom_studies, root, time.time() - t0)
    output_stamps.write_stamp(marker, recipe)
    return path


def _phantom_recipe(cfg: ExperimentConfig) -> dict:
    """What the phantom set's `.complete` marker records (a set is reused only if it matches)."""
    d = cfg.data
    return {"studies": d.phantom_studies, "seed": d.phantom_seed, "size": d.phantom_size,
            "splits": d.phantom_splits, "turns": list(d.phantom_turns)}


def _tfds_stamp(json_file: pathlib.Path, split_rule: SplitConfig) -> dict:
    """What a TFDS build's `.complete` marker records: the JSON it was built from and the split
    rule of its studies without a `split` field."""
    return {"json": str(json_file.resolve()), "mtime": json_file.stat().st_mtime,
            "split_rule": dataclasses.asdict(split_rule)}


def _build_tfds(json_file: pathlib.Path, image_root: pathlib.Path, tfds_dir: pathlib.Path,
                split_rule: SplitConfig) -> None:
    from data_pipeline.files.tfds_builder import BuildOptions, build_dataset

    marker = tfds_dir / _COMPLETE
    stamp = _tfds_stamp(json_file, split_rule)
    if output_stamps.is_current(marker, stamp):
        return
    summary = build_dataset(BuildOptions(json_files=(str(json_file),), split=split_rule), image_root, tfds_dir,
                            overwrite=True)
    log.info("built TFDS data set in %s: %s", tfds_dir, dict(summary.examples))
    output_stamps.write_stamp(marker, stamp)


def _open_data(cfg: ExperimentConfig) -> Dataset:
    """data.path (with data.image_root and data.split_rule) opened as `cxrtrek eval/infer/report`
    open --data (`open_dataset`), and checked to be of the form data.kind ("json"/"tfds") says."""
    d = cfg.data
    try:
        dataset = open_dataset(d.path, image_root=d.image_root,
                               split_rule=d.split_rule if d.kind == "json" else None)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"data.path / data.image_root: {err}") from None
    except ValueError as err:
        raise ValueError(f"data.kind={d.kind}: {err}") from None
    if dataset.form != d.kind:
        raise ValueError(f"data.path {d.path} is a {'TFDS data dir' if dataset.form == 'tfds' else 'JSON file'}, "
                         f"not what data.kind={d.kind} reads; set data.kind={dataset.form}")
    return dataset


def prepare_data(cfg: ExperimentConfig) -> DataPaths:
    """The TFDS data dir to train from, generating/building what is missing (idempotent; done by
    process 0 alone, the other processes wait for it and check its markers)."""
    d = cfg.data
    if d.kind == "tfds":
        return DataPaths(tfds_dir=_open_data(cfg).path)
    if d.kind == "phantom":
        root = pathlib.Path(d.path)
        json_file, image_root, tfds_dir = root / "cxrtrek.json", root, root / "tfds"
    else:
        dataset = _open_data(cfg)
        json_file, image_root = pathlib.Path(dataset.path), pathlib.Path(dataset.image_root)
        tfds_dir = pathlib.Path("runs") / "tfds_cache" / json_file.stem

    def make() -> None:
        if d.kind == "phantom":
            _phantom(cfg)
        _build_tfds(json_file, image_root, tfds_dir, d.split_rule)

    _on_process_0_then_barrier("cxrtrek_prepare_data", make)
    if jax.process_index() != 0:
        if d.kind == "phantom":
            _check_marker(pathlib.Path(d.path) / _COMPLETE, _phantom_recipe(cfg), f"the phantom set {d.path}")
        _check_marker(tfds_dir / _COMPLETE, _tfds_stamp(json_file, d.split_rule), f"the TFDS build {tfds_dir}")
    return DataPaths(tfds_dir=str(tfds_dir), json_files=(str(json_file),), image_root=str(image_root))


def prepare_tokenizer(cfg: ExperimentConfig, data: DataPaths) -> tuple[CXRTrekTokenizer, str]:
    """(tokenizer, its directory): the configured one, or one trained on the training split
    (by process 0 alone, written to a temporary directory and renamed, so a directory that
    exists is complete; the other processes wait for it and load it)."""
    if cfg.tokenizer.path:
        return load_tokenizer(cfg.tokenizer.path), cfg.tokenizer.path
    directory = pathlib.Path(data.tfds_dir) / f"tokenizer-bpe{cfg.tokenizer.vocab_size}"

    def make() -> None:
        if directory.is_dir():
            return
        from data_pipeline.files.sources import TfdsStudySource
        from data_pipeline.text.tokenizer import train_tokenizer, training_texts

        source = TfdsStudySource(data.tfds_dir, cfg.data.train_split)
        studies = (source[i].study for i in range(len(source)))
        tok = train_tokenizer(training_texts(studies), cfg.tokenizer.vocab_size,
                              min_frequency=cfg.tokenizer.min_frequency)
        replace_directory_atomically(directory, tok.save)
        log.info("trained a %d-token BPE tokenizer on %d training studies -> %s",
                 tok.vocab_size, len(source), directory)

    _on_process_0_then_barrier("cxrtrek_prepare_tokenizer", make)
    if not (directory / "tokenizer.json").exists():
        raise FileNotFoundError(
            f"process {jax.process_index()}: the tokenizer {directory} is missing after process 0 "
            "trained it; see process 0's error, and check that the data dir is on a file system "
            "every process shares")
    return load_tokenizer(directory), str(directory)


def write_run_question_script(cfg: ExperimentConfig, data: DataPaths, path: pathlib.Path) -> None:
    """Write the training data's question script to `path` unless it is there (counted over the
    first `QUESTION_SCRIPT_STUDIES` studies of the training split), and print what it holds."""
    from data_pipeline.files.sources import TfdsStudySource
    from data_pipeline.text.question_wording import count_question_script, write_question_script

    if path.exists():
        return
    source = TfdsStudySource(data.tfds_dir, cfg.data.train_split)
    studies = (source[i].study for i in range(min(len(source), QUESTION_SCRIPT_STUDIES)))
    script = count_question_script(studies, data=cfg.data.path, split=cfg.data.train_split)
    write_question_script(path, script)
    print(f"question script: {len(script.turns)} questions in the wording of {script.source.studies:,} "
          f"{cfg.data.train_split} studies of {cfg.data.path} -> {path}", flush=True)
    for what in script.left_out:
        print(f"question script: left out {what}", flush=True)


def resolve_model_config(model: ModelConfig, tokenizer: CXRTrekTokenizer) -> ModelConfig:
    """The model config with the tokenizer's vocabulary size and image token id. A preset that
    already fits the tokenizer (same image token id, at least its ids: a pretrained model such as
    `medgemma-4b` with its embedding rows padded beyond the tokenizer's ids) is kept as it is."""
    if model.image_token_id == tokenizer.image_id and model.vocab_size >= tokenizer.vocab_size:
        return model
    return override(model, {"text.vocab_size": tokenizer.vocab_size,
                            "image_token_id": tokenizer.image_id})


def pipeline_config(cfg: ExperimentConfig, model: ModelConfig, data: DataPaths, split: str,
                    *, training: bool) -> PipelineConfig:
    """`cfg.data.pipeline` for reading `split` of the prepared data: the source set to its TFDS
    dir, the image geometry to the model's; image labels when training with
    `train.image_label_weight` > 0; for evaluation (`training=False`) without augmentation,
    worker processes and labels."""
    p = cfg.data.pipeline
    sequence = dataclasses.replace(p.sequence, tokens_per_image=model.tokens_per_image,
                                   max_images=model.max_images)
    return dataclasses.replace(
        p, source=data.tfds_dir, source_kind="tfds", split=split, image_root=None,
        image_size=model.vision.image_size, sequence=sequence,
        num_workers=p.num_workers if training else 0,
        augment=p.augment if training else AugmentConfig.none(),
        image_labels=training and cfg.train.image_label_weight > 0,
    )


def _print_coverage(pcfg: PipelineConfig, tokenizer: CXRTrekTokenizer, max_studies: int) -> None:
    """Print (process 0) how many turns of each stage the run trains, windows and drops."""
    from data_pipeline.batches.chain_coverage import chain_coverage, format_coverage

    if jax.process_index() == 0:
        print(format_coverage(chain_coverage(pcfg, tokenizer, max_studies)), flush=True)


def _print_image_labels(pcfg: PipelineConfig, max_studies: int) -> None:
    """Print (process 0), when the run trains the image-label loss, how many of the first
    `max_studies` training studies (0 = all) carry finding labels, and a warning when few do
    (`data_pipeline.text.image_labels.format_image_label_counts`)."""
    from data_pipeline.files.sources import open_study_source
    from data_pipeline.text.image_labels import format_image_label_counts, image_label_counts

    if not pcfg.image_labels or jax.process_index() != 0:
        return
    source = open_study_source(pcfg.source_kind, pcfg.source, image_root=pcfg.image_root, split=pcfg.split)
    count = len(source) if max_studies <= 0 else min(max_studies, len(source))
    what = f"training studies (split {pcfg.split!r}{'' if count == len(source) else f', the first {count:,}'})"
    print(format_image_label_counts(image_label_counts(source[i].study for i in range(count)), what), flush=True)


class MetricsLog:
    """JSONL + TensorBoard + a tqdm progress bar; only process 0 writes.

    `start(step)` opens it once training knows where it starts (the restored checkpoint's step,
    0 when fresh): records of later steps — written by a run that stopped before checkpointing
    them, so they are redone — are dropped first (the file rewritten atomically, the count
    logged), so every step is logged once however often training is interrupted."""

    def __init__(self, workdir: pathlib.Path, total_steps: int, *, progress: bool):
        self.active = jax.process_index() == 0
        self.path = pathlib.Path(workdir) / "metrics.jsonl"
        self._total_steps, self._progress = total_steps, progress
        self._jsonl = self._tb = self._bar = None

    def start(self, step: int) -> None:
        """Drop the records after `step`, then open the log for appending."""
        if not self.active:
            return
        if self.path.exists():
            self._drop_after(step)
        self._jsonl = open(self.path, "a")
        from tensorboardX import SummaryWriter

        self._tb = SummaryWriter(str(self.path.parent / "tensorboard"))
        if self._progress:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self._total_steps, initial=step, unit="step", dynamic_ncols=True)

    def _drop_after(self, step: int) -> None:
        text = self.path.read_text()
        kept, dropped, partial = [], 0, 0
        for line in text.splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                partial += 1  # a line cut short by a kill
                continue
            if record.get("step", 0) > step:
                dropped += 1
            else:
                kept.append(line)
        if not (dropped or partial or (text and not text.endswith("\n"))):
            return
        write_text_atomically(self.path, "".join(f"{line}\n" for line in kept))
        message = (f"{self.path}: dropped {dropped} records of steps after {step} (the run that "
                   f"wrote them stopped before checkpointing them; they are redone)")
        if partial:
            message += f" and {partial} incomplete line(s)"
        log.warning("%s", message)
        print(message, flush=True)

    def write(self, split: str, step: int, values: Mapping[str, float]) -> None:
        if not self.active:
            return
        if self._jsonl is None:
            raise RuntimeError(f"MetricsLog.write({split!r}, step {step}) before start()")
        record = {"split": split, "step": step, "time": time.time(), **values}
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        for key, value in values.items():
            self._tb.add_scalar(f"{split}/{key}", value, step)
        if split == "train" and self._bar is not None:
            self._bar.n = step
            self._bar.set_postfix(loss=f"{values['loss']:.3f}", lr=f"{values['learning_rate']:.1e}",
                                  tok_s=f"{values.get('tokens_per_s', 0):.0f}",
                                  step_s=f"{values.get('step_time_s', 0):.2f}", refresh=True)
        elif split != "train" and self._bar is not None:
            self._bar.write(f"step {step} {split}: " + " ".join(
                f"{k}={v:.4f}" for k, v in values.items() if "/" not in k))

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._tb is not None:
            self._tb.close()
        if self._jsonl is not None:
            self._jsonl.close()


def _validation(cfg: ExperimentConfig, model: ModelConfig, data: DataPaths,
                tokenizer: CXRTrekTokenizer, mesh_config: sharding_lib.MeshConfig,
                log_: MetricsLog, *, devices: list[jax.Device] | None = None):
    """(params, step) -> {"val_loss", "val_accuracy", "val_image_gain", per stage}: the loss over up to
    `eval_batches` validation batches (in order, no augmentation), and how much worse it gets
    with the images swapped between studies (`train.image_reliance`), as a `run_training`
    evaluate callback (it runs at every checkpoint save; `step`, the step of the checkpoint
    saved with it, labels the log record)."""
    from cxrtrek_jax.train import step as step_lib
    from cxrtrek_jax.train.image_reliance import image_gain, swap_images

    if cfg.train.eval_batches == 0:
        return None
    pcfg = pipeline_config(cfg, model, data, cfg.data.validation_split, training=False)
    eval_step = step_lib.make_eval_step(model, sharding_lib.make_mesh(mesh_config, devices))

    def evaluate(params, step: int) -> dict[str, float]:
        iterator = build_eval_iterator(pcfg, tokenizer, jax.process_index(), jax.process_count())
        batches = list(itertools.islice(iterator, cfg.train.eval_batches))
        swapped = [swap_images(batch, seed=index) for index, batch in enumerate(batches)]
        # Every process must run the same eval steps (they are collectives): the batch count
        # and whether a batch has a swapped twin are agreed on first.
        counts = gather_ints([len(batches)] + [int(s is not None) for s in swapped]
                              + [0] * (cfg.train.eval_batches - len(batches)))
        usable = int(counts[:, 0].min())
        if usable == 0:
            empty = [i for i, row in enumerate(counts) if row[0] == 0]
            raise ValueError(f"validation split {cfg.data.validation_split!r} yielded no batch on "
                             f"process(es) {empty} (of {len(counts)}); it needs at least one "
                             "global batch of studies")
        if usable < len(batches):
            log.warning("validation: %d batches on this process, %d on the one with fewest; "
                        "evaluating %d", len(batches), usable, usable)
        total = swapped_total = None
        for index, batch in enumerate(batches[:usable]):
            sums = eval_step(params, batch)
            total = sums if total is None else jax.tree.map(np.add, total, sums)
            if counts[:, 1 + index].all():
                sums = eval_step(params, swapped[index])
                swapped_total = sums if swapped_total is None else jax.tree.map(np.add, swapped_total, sums)
        summary = step_lib.summarize_sums(total)
        if swapped_total is not None:
            summary.update(image_gain(summary, step_lib.summarize_sums(swapped_total)))
        values = {f"val_{k}": v for k, v in summary.items()}
        log_.write("validation", step, values)
        return values

    return evaluate


def alignment_phase(cfg: ExperimentConfig) -> ExperimentConfig:
    """The experiment of `cfg`'s alignment phase: its data as the QA pairs of the alignment
    stages (one row per pair or per study, `alignment.context`; its closed answers as
    `alignment.closed_answers` in `alignment.decisive_stages`, weighted per
    `alignment.loss_weighting`; no packing), its batch, buckets, optimiser, length and image-label
    loss weight; no alignment."""
    a = cfg.alignment
    if a is None:
        raise ValueError(f"experiment {cfg.name!r} has no alignment phase")
    return dataclasses.replace(
        cfg, name=f"{cfg.name}/alignment", alignment=None,
        data=dataclasses.replace(cfg.data, pipeline=dataclasses.replace(
            cfg.data.pipeline, packing=False, global_batch_size=a.global_batch_size,
            length_buckets=a.length_buckets,
            sequence=dataclasses.replace(cfg.data.pipeline.sequence, context=a.context, stages=a.stages,
                                         closed_answers=a.closed_answers,
                                         decisive_stages=a.decisive_stages,
                                         loss_weighting=a.loss_weighting))),
        optim=dataclasses.replace(a.optim, total_steps=a.num_steps + 1,
                                  warmup_steps=min(a.optim.warmup_steps, a.num_steps)),
        train=dataclasses.replace(cfg.train, num_steps=a.num_steps, image_label_weight=a.image_label_weight),
        checkpoint=dataclasses.replace(cfg.checkpoint, directory="", save_every=a.num_steps),
    )


def train_experiment(cfg: ExperimentConfig, workdir: str | os.PathLike, *, progress: bool = True,
                     devices: list[jax.Device] | None = None) -> train_loop.TrainResult:
    """Train `cfg` in `workdir` (resuming from its newest checkpoint if any): its alignment
    phase first when it has one and the main phase has not begun, then the main phase."""
    workdir = pathlib.Path(workdir)
    init_from = cfg.train.init_from or None
    if cfg.alignment is not None:
        main_checkpoints = cfg.checkpoint.directory or str(workdir / "checkpoints")
        begun = ckpt_lib.Checkpointer(dataclasses.replace(cfg.checkpoint, directory=main_checkpoints))
        main_begun = bool(begun.steps())
        begun.close()
        align_dir = workdir / "alignment"
        if not main_begun:
            print(f"alignment phase: {cfg.alignment.num_steps} steps of QA pairs of stages "
                  f"{','.join(map(str, cfg.alignment.stages))}, one row per "
                  f"{'study' if cfg.alignment.context == 'on' else 'pair'} -> {align_dir}", flush=True)
            result = _train_phase(alignment_phase(cfg), align_dir, init_from, progress=progress,
                                  devices=devices)
            if result.stop_reason != "completed":
                return result
            print(f"alignment phase done at step {result.final_step}; main phase from its parameters",
                  flush=True)
        init_from = str(align_dir / "checkpoints")
    return _train_phase(cfg, workdir, init_from, progress=progress, devices=devices)


def _train_phase(cfg: ExperimentConfig, workdir: pathlib.Path, init_from: str | None, *, progress: bool,
                 devices: list[jax.Device] | None) -> train_loop.TrainResult:
    """One phase: `cfg` trained in `workdir` (resumed from its newest checkpoint if any, else
    started from the params checkpoint `init_from` when given)."""
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    data = prepare_data(cfg)
    tokenizer, tokenizer_dir = prepare_tokenizer(cfg, data)
    model = resolve_model_config(cfg.model, tokenizer)
    resolved = dataclasses.replace(
        cfg, model=model,
        checkpoint=dataclasses.replace(cfg.checkpoint,
                                       directory=cfg.checkpoint.directory or str(workdir / "checkpoints")),
    )

    def write_workdir() -> None:
        (workdir / "config.json").write_text(resolved.to_json() + "\n")
        local_tok = workdir / "tokenizer"
        if not local_tok.exists():
            replace_directory_atomically(local_tok, lambda tmp: shutil.copytree(tokenizer_dir, tmp))
        write_run_question_script(cfg, data, workdir / QUESTION_SCRIPT_FILE)

    _on_process_0_then_barrier("cxrtrek_workdir", write_workdir)
    train_pcfg = pipeline_config(resolved, model, data, cfg.data.train_split, training=True)
    _print_coverage(train_pcfg, tokenizer, cfg.data.coverage_studies)
    _print_image_labels(train_pcfg, cfg.data.coverage_studies)
    iterators: list = []

    def make_batches():
        iterators.append(build_train_iterator(train_pcfg, tokenizer, jax.process_index(),
                                              jax.process_count()))
        return iterators[-1]

    metrics_log = MetricsLog(workdir, cfg.train.num_steps, progress=progress)
    clock = {"t": time.time(), "step": 0}

    def on_start(step: int) -> None:
        metrics_log.start(step)
        clock.update(t=time.time(), step=step)

    def on_log(step: int, summary: dict[str, float]) -> None:
        """Adds throughput over the steps since the last log line: tokens/s = steps x (real,
        non-padding tokens per batch, running mean of this process's batches x process count)
        / wall time; the first interval includes compilation."""
        stats = iterators[-1].stats
        now, steps = time.time(), max(step - clock["step"], 1)
        elapsed = max(now - clock["t"], 1e-9)
        tokens_per_batch = stats.batches.tokens / max(stats.batches.batches, 1) * jax.process_count()
        seen = stats.studies
        values = dict(summary, tokens_per_s=steps * tokens_per_batch / elapsed,
                      step_time_s=elapsed / steps,
                      truncated_turns=float(seen.turns_dropped_truncation),
                      windowed_turns=float(seen.turns_windowed),
                      dropped_turns=float(seen.turns_dropped))
        clock.update(t=now, step=step)
        metrics_log.write("train", step, values)

    evaluate = _validation(resolved, model, data, tokenizer, resolved.mesh, metrics_log,
                           devices=devices)
    try:
        return train_loop.run_training(
            train_loop.TrainSpec(model, optim=resolved.optim, mesh_config=resolved.mesh,
                                 seed=cfg.train.seed, image_label_weight=cfg.train.image_label_weight),
            checkpoint=resolved.checkpoint,
            make_batches=make_batches,
            num_steps=cfg.train.num_steps,
            init_params_from=init_from,
            # tokenizer_path: relative to the checkpoint dir, so a moved run dir stays whole.
            metadata={"experiment": resolved.to_dict(), "tfds_dir": data.tfds_dir,
                      "tokenizer_path": os.path.relpath(workdir / "tokenizer",
                                                        resolved.checkpoint.directory),
                      "question_script_path": os.path.relpath(workdir / QUESTION_SCRIPT_FILE,
                                                              resolved.checkpoint.directory)},
            hooks=train_loop.TrainHooks(on_log=on_log, log_every=cfg.train.log_every,
                                        on_start=on_start, evaluate=evaluate),
            devices=devices,
        )
    finally:
        metrics_log.close()
