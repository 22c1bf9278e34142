"""Input-pipeline benchmark: the Grain training pipeline vs an equivalent `torch.utils.data.DataLoader`.

    make bench-input      # = python -m benchmarks.bench_input --out benchmarks/results/input.json

Data: a phantom CXRTrek set (`data_pipeline.phantom`, `--image-px` square radiographs, PNG),
and a copy of it whose image files hold the same pixels as 12-bit MONOCHROME2 DICOM (Explicit
VR Little Endian, with a VOI window), so the two decoders are measured on the same studies.
A byte-level BPE tokenizer is trained on the set's text.

Per example (study) both loaders do the same work, with the same code: decode every used image,
draw the training augmentation (crop window + intensity change), resize with padding to the
model input, tokenise the study's conversation through the chat template
(`data_pipeline.batches.grain_pipeline.PrepareStudy`); per batch: choose the length bucket, pad the rows,
place the images in their slots and stack (`data_pipeline.batches.packing`). Grain runs its pipeline
(`build_train_iterator`, via `data_pipeline.batches.pipeline_benchmark.measure_throughput`); the
DataLoader wraps the same source and `PrepareStudy` in a map-style dataset with a collate
function. Each uses 0, 1 and 2 worker processes (Grain with `read_threads` threads per process,
1 by default so that 0 workers means one thread on both sides).

Reported per case (median over alternating rounds): examples/s, and host CPU seconds per example
(user + system of the main process and its workers, `process_tree_cpu_seconds`), the figure that
sizes the input hosts: hosts = ceil(examples/s needed x CPU-s/example / usable cores per host).
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from data_pipeline.batches.grain_pipeline import BatchLayout, PipelineConfig, PreparedStudy, PrepareStudy
from data_pipeline.batches.packing import choose_bucket, pad_sequence, row_images, stack_rows
from data_pipeline.text.sequences import SequenceConfig

__all__ = [
    "InputBenchConfig",
    "BenchData",
    "prepare_data",
    "dicom_bytes",
    "TorchStudyDataset",
    "CollateStudies",
    "measure_torch_loader",
    "run_benchmark",
    "main",
]


@dataclasses.dataclass(frozen=True)
class InputBenchConfig:
    """num_studies phantom studies of image_px pixels; model input image_size, tokens_per_image,
    max_images; batch_size rows; per case `warmup` untimed then `batches` timed batches, in
    `rounds` alternating rounds; workers: worker-process counts; formats: "png", "dicom"."""

    num_studies: int = 48
    image_px: int = 1024
    image_size: int = 128
    tokens_per_image: int = 64
    max_images: int = 4
    batch_size: int = 8
    length_buckets: tuple[int, ...] = (512, 1024, 2048)
    vocab_size: int = 4096
    workers: tuple[int, ...] = (0, 1, 2)
    formats: tuple[str, ...] = ("png", "dicom")
    read_threads: int = 1
    warmup: int = 6
    batches: int = 12
    rounds: int = 3
    seed: int = 0

    def __post_init__(self):
        unknown = sorted(set(self.formats) - {"png", "dicom"})
        if unknown:
            raise ValueError(f"unknown image formats {unknown}; known: png, dicom")
        if self.batches < 1 or self.warmup < 1 or self.rounds < 1:
            raise ValueError(f"need batches, warmup, rounds >= 1, got {self.batches}, {self.warmup}, {self.rounds}")


@dataclasses.dataclass(frozen=True)
class BenchData:
    """Where the prepared data lie: JSON + image root per format, and the tokenizer directory."""

    json: dict[str, str]
    image_root: dict[str, str]
    tokenizer_dir: str


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def dicom_bytes(image: np.ndarray, bits_stored: int = 12) -> bytes:
    """float [H, W] in [0, 1] -> a MONOCHROME2 DICOM (16-bit allocated, `bits_stored` used, Explicit
    VR Little Endian) whose window covers the full stored range, so it decodes to the same image
    up to quantisation."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian, generate_uid

    top = 2**bits_stored - 1
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = DigitalXRayImageStorageForPresentation
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = image.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    ds.WindowCenter = top / 2
    ds.WindowWidth = top + 1
    ds.PixelData = np.round(np.clip(image, 0.0, 1.0) * top).astype("<u2").tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def prepare_data(root: str | os.PathLike, bench: InputBenchConfig, log: Callable[[str], None] = _log) -> BenchData:
    """Write the phantom set (PNG), its DICOM twin (same relative paths, DICOM content: the
    loader detects the format by content) and a tokenizer under `root`."""
    from data_pipeline.files.cxrtrek_json import read_studies
    from data_pipeline.files.images import load_image
    from data_pipeline.phantom import PhantomConfig, write_phantom_dataset
    from data_pipeline.text.tokenizer import train_tokenizer, training_texts

    root = Path(root)
    log(f"writing {bench.num_studies} phantom studies ({bench.image_px} px)")
    json_path = write_phantom_dataset(root / "png", bench.num_studies, seed=bench.seed,
                                      config=PhantomConfig(size=bench.image_px))
    paths = {"png": str(json_path)}
    roots = {"png": str(root / "png")}
    if "dicom" in bench.formats:
        shutil.copytree(root / "png", root / "dicom")
        for image_file in sorted((root / "dicom" / "images").rglob("*.png")):
            image_file.write_bytes(dicom_bytes(load_image(image_file)))
        paths["dicom"] = str(root / "dicom" / json_path.name)
        roots["dicom"] = str(root / "dicom")
    tokenizer = train_tokenizer(training_texts(read_studies(json_path)), bench.vocab_size)
    tokenizer_dir = root / "tokenizer"
    tokenizer.save(tokenizer_dir)
    return BenchData(json=paths, image_root=roots, tokenizer_dir=str(tokenizer_dir))


def pipeline_config(bench: InputBenchConfig, data: BenchData, fmt: str, workers: int) -> PipelineConfig:
    """The Grain pipeline configuration of one case (training: shuffled, augmented, endless)."""
    return PipelineConfig(
        source=data.json[fmt], source_kind="json", image_root=data.image_root[fmt], image_size=bench.image_size,
        global_batch_size=bench.batch_size, length_buckets=bench.length_buckets, seed=bench.seed,
        num_workers=workers, read_threads=bench.read_threads,
        sequence=SequenceConfig(tokens_per_image=bench.tokens_per_image, max_images=bench.max_images,
                                drop_unfittable=True))


class TorchStudyDataset:
    """Map-style dataset: study index -> `PreparedStudy`, augmentation drawn from (seed, index)."""

    def __init__(self, source, prepare: PrepareStudy, seed: int):
        self.source = source
        self.prepare = prepare
        self.seed = seed

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> PreparedStudy:
        return self.prepare(self.source[index], np.random.default_rng([self.seed, int(index)]))


class CollateStudies:
    """Prepared studies -> one batch dict (bucketed length, padded rows, image slots)."""

    def __init__(self, layout: BatchLayout):
        self.layout = layout

    def __call__(self, studies: list[PreparedStudy]) -> dict[str, np.ndarray]:
        layout = self.layout
        items = [(seq, study.images) for study in studies for seq in study.sequences]
        if not items:
            raise ValueError(f"a batch of {len(studies)} studies holds no sequence that fits {layout.length_buckets}")
        length = choose_bucket(max(len(seq) for seq, _ in items), layout.length_buckets)
        rows = [pad_sequence(seq, length, layout.max_images, layout.pad_id, n) for n, (seq, _) in enumerate(items)]
        images = np.stack([row_images(row, [imgs for _, imgs in items], layout.image_shape) for row in rows])
        return stack_rows(rows, images)


def _torch_loader(cfg: PipelineConfig, tokenizer, workers: int):
    import torch

    from data_pipeline.files.sources import open_study_source

    source = open_study_source(cfg.source_kind, cfg.source, image_root=cfg.image_root, split=cfg.split)
    prepare = PrepareStudy(tokenizer, cfg.sequence_config(), cfg.image_size, cfg.augment)
    layout = BatchLayout(batch_size=cfg.global_batch_size, length_buckets=cfg.length_buckets,
                         max_images=cfg.max_images, image_shape=cfg.image_shape, pad_id=tokenizer.pad_id)
    return torch.utils.data.DataLoader(
        TorchStudyDataset(source, prepare, cfg.seed), batch_size=cfg.global_batch_size, shuffle=True,
        generator=torch.Generator().manual_seed(cfg.seed), num_workers=workers, collate_fn=CollateStudies(layout),
        persistent_workers=workers > 0, prefetch_factor=2 if workers > 0 else None)


def measure_torch_loader(cfg: PipelineConfig, tokenizer, workers: int, batches: int, warmup: int):
    """Like `measure_throughput`, for the DataLoader: startup to the first batch, then the rate
    and CPU per example over `batches` batches after `warmup`."""
    from data_pipeline.batches.pipeline_benchmark import Throughput, process_tree_cpu_seconds

    start = time.perf_counter()
    loader = _torch_loader(cfg, tokenizer, workers)

    def endless(batches):
        while True:
            yield from batches

    iterator = endless(loader)
    next(iterator)
    startup = time.perf_counter() - start
    for _ in range(warmup - 1):
        next(iterator)
    cpu_before = process_tree_cpu_seconds()
    timed_start = time.perf_counter()
    examples = 0
    for _ in range(batches):
        examples += int(np.count_nonzero(next(iterator)["segment_ids"].any(axis=1)))
    elapsed = time.perf_counter() - timed_start
    cpu = process_tree_cpu_seconds() - cpu_before
    iterator.close()
    del loader  # ends persistent workers
    return Throughput(workers, startup, batches, examples / elapsed, batches / elapsed, cpu / examples)


def run_benchmark(bench: InputBenchConfig, work_dir: str | os.PathLike,
                  log: Callable[[str], None] = _log) -> dict[str, Any]:
    """Prepare the data under `work_dir` and measure every (loader, format, workers) case."""
    from benchmarks import common
    from data_pipeline.batches.grain_pipeline import ensure_absl_flags_parsed
    from data_pipeline.batches.pipeline_benchmark import measure_throughput
    from data_pipeline.text.tokenizer import load_tokenizer

    ensure_absl_flags_parsed()
    machine = common.machine_info(with_jax=False)  # load average at the start
    data = prepare_data(work_dir, bench, log)
    tokenizer = load_tokenizer(data.tokenizer_dir)
    cases = {}
    for fmt in bench.formats:
        for workers in bench.workers:
            cfg = pipeline_config(bench, data, fmt, workers)
            cases[f"grain/{fmt}/w{workers}"] = (
                lambda cfg=cfg: measure_throughput(cfg, tokenizer, bench.batches, bench.warmup))
            cases[f"torch/{fmt}/w{workers}"] = (
                lambda cfg=cfg, w=workers: measure_torch_loader(cfg, tokenizer, w, bench.batches, bench.warmup))
    samples: dict[str, list] = {name: [] for name in cases}
    names = list(cases)
    for r in range(bench.rounds):
        log(f"round {r + 1}/{bench.rounds}")
        for k in range(len(names)):
            name = names[(r + k) % len(names)]
            samples[name].append(cases[name]())
    results: dict[str, Any] = {"machine": machine, "config": dataclasses.asdict(bench), "cases": {}}
    for name, runs in samples.items():
        loader, fmt, workers = name.split("/")
        results["cases"][name] = {
            "loader": loader, "format": fmt, "workers": int(workers[1:]),
            "examples_per_s": statistics.median(t.examples_per_s for t in runs),
            "cpu_s_per_example": statistics.median(t.cpu_s_per_example for t in runs),
            "startup_s": statistics.median(t.startup_s for t in runs),
            "samples_examples_per_s": [t.examples_per_s for t in runs],
        }
    results["load_average_end"] = list(os.getloadavg())
    return results


def format_report(results: dict[str, Any]) -> str:
    c, m = results["config"], results["machine"]
    lines = [
        f"machine: {m['cpu']} ({m['usable_cpus']} usable CPUs, load {m['load_average'][0]:.1f} -> "
        f"{results['load_average_end'][0]:.1f}); grain {m['versions']['grain']}, torch {m['versions']['torch']}",
        f"config: {c['num_studies']} phantom studies, {c['image_px']} px -> {c['image_size']} px, batch "
        f"{c['batch_size']}, buckets {c['length_buckets']}, read_threads {c['read_threads']}; "
        f"{c['rounds']} alternating rounds of {c['batches']} batches after {c['warmup']}",
        "| format | workers | Grain ex/s | DataLoader ex/s | Grain / DataLoader | Grain CPU-ms/ex | DataLoader CPU-ms/ex |",
        "|---|---|---|---|---|---|---|",
    ]
    cases = results["cases"]
    for fmt in c["formats"]:
        for w in c["workers"]:
            g, t = cases[f"grain/{fmt}/w{w}"], cases[f"torch/{fmt}/w{w}"]
            lines.append(f"| {fmt} | {w} | {g['examples_per_s']:.1f} | {t['examples_per_s']:.1f} | "
                         f"{g['examples_per_s'] / t['examples_per_s']:.2f} | {g['cpu_s_per_example'] * 1e3:.1f} | "
                         f"{t['cpu_s_per_example'] * 1e3:.1f} |")
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    d = InputBenchConfig()
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_input", description=__doc__.split("\n")[0])
    parser.add_argument("--num-studies", type=int, default=d.num_studies)
    parser.add_argument("--image-px", type=int, default=d.image_px, help="phantom image side in pixels")
    parser.add_argument("--batch-size", type=int, default=d.batch_size)
    parser.add_argument("--workers", type=int, nargs="+", default=list(d.workers))
    parser.add_argument("--formats", nargs="+", default=list(d.formats), choices=("png", "dicom"))
    parser.add_argument("--read-threads", type=int, default=d.read_threads)
    parser.add_argument("--batches", type=int, default=d.batches)
    parser.add_argument("--warmup", type=int, default=d.warmup)
    parser.add_argument("--rounds", type=int, default=d.rounds)
    parser.add_argument("--work-dir", help="where to write the data (default: a temporary directory)")
    parser.add_argument("--out", help="write the results as JSON here")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # the DataLoader forks after tokenising
    bench = InputBenchConfig(
        num_studies=args.num_studies, image_px=args.image_px, batch_size=args.batch_size,
        workers=tuple(args.workers), formats=tuple(args.formats), read_threads=args.read_threads,
        batches=args.batches, warmup=args.warmup, rounds=args.rounds)
    from benchmarks import common

    if args.work_dir:
        results = run_benchmark(bench, args.work_dir)
    else:
        with tempfile.TemporaryDirectory() as work_dir:
            results = run_benchmark(bench, work_dir)
    common.write_results(args.out, results)
    print(format_report(results), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
