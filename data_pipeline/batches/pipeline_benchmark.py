"""Throughput of the training input pipeline for a few worker counts (a one-off measurement).

    python -m data_pipeline.batches.pipeline_benchmark --source DIR/cxrtrek.json --image-root DIR \\
        --tokenizer TOK_DIR --workers 0 1 2

prints, per worker count, the start-up time (to the first batch) and the
steady rate after `--warmup` batches: studies (examples) and batches per
second, and the host CPU seconds spent per example (this process and its
worker processes together). Reads the same `PipelineConfig` fields the
trainer uses.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time

from data_pipeline.batches.grain_pipeline import PipelineConfig, build_train_iterator
from data_pipeline.text.sequences import SequenceConfig
from data_pipeline.text.tokenizer import CXRTrekTokenizer, load_tokenizer

__all__ = ["Throughput", "measure_throughput", "process_tree_cpu_seconds", "main"]


@dataclasses.dataclass(frozen=True)
class Throughput:
    """startup_s: seconds to the first batch; the rates cover `batches` batches after the warm-up;
    cpu_s_per_example: CPU seconds (user + system, all processes of the pipeline) per study in
    that window."""

    num_workers: int
    startup_s: float
    batches: int
    examples_per_s: float
    batches_per_s: float
    cpu_s_per_example: float


def process_tree_cpu_seconds() -> float:
    """User + system CPU seconds of this process, its live descendants (worker processes) and
    its reaped children. Compare two readings taken with the same workers alive."""
    import psutil

    me = psutil.Process()
    total = sum(me.cpu_times()[:4])  # user, system, children_user, children_system
    for child in me.children(recursive=True):
        try:
            times = child.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def measure_throughput(
    cfg: PipelineConfig, tokenizer: CXRTrekTokenizer, batches: int, warmup: int = 2
) -> Throughput:
    """Run the training iterator for `warmup + batches` batches and time the last `batches`."""
    if batches < 1 or warmup < 1:
        raise ValueError(f"need batches >= 1 and warmup >= 1, got {batches}, {warmup}")
    start = time.perf_counter()
    iterator = build_train_iterator(cfg, tokenizer)
    try:
        next(iterator)
        startup = time.perf_counter() - start
        for _ in range(warmup - 1):
            next(iterator)
        studies_before = iterator.stats.studies.studies
        cpu_before = process_tree_cpu_seconds()
        timed_start = time.perf_counter()
        for _ in range(batches):
            next(iterator)
        elapsed = time.perf_counter() - timed_start
        cpu = process_tree_cpu_seconds() - cpu_before
        studies = iterator.stats.studies.studies - studies_before
    finally:
        iterator.close()
    return Throughput(cfg.num_workers, startup, batches, studies / elapsed, batches / elapsed, cpu / studies)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m data_pipeline.batches.pipeline_benchmark", description=__doc__.split("\n")[0])
    parser.add_argument("--source", required=True, help="CXRTrek JSON file, or TFDS data dir with --source-kind tfds")
    parser.add_argument("--source-kind", choices=("json", "tfds"), default="json")
    parser.add_argument("--image-root", help="image root of a JSON source")
    parser.add_argument("--tokenizer", required=True, help="tokenizer directory")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batches", type=int, default=20, help="timed batches per worker count")
    parser.add_argument("--warmup", type=int, default=3, help="untimed batches first (worker start-up)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--tokens-per-image", type=int, default=64)
    parser.add_argument("--max-images", type=int, default=4)
    parser.add_argument("--buckets", type=int, nargs="+", default=[512, 1024, 2048])
    parser.add_argument("--packing", action="store_true")
    parser.add_argument("--read-threads", type=int, default=2)
    parser.add_argument("--worker-buffer", type=int, default=2, help="prepared studies each worker keeps ready")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    tokenizer = load_tokenizer(args.tokenizer)
    base = PipelineConfig(
        source=args.source,
        source_kind=args.source_kind,
        image_root=args.image_root,
        image_size=args.image_size,
        global_batch_size=args.batch_size,
        length_buckets=tuple(args.buckets),
        packing=args.packing,
        read_threads=args.read_threads,
        worker_buffer_size=args.worker_buffer,
        sequence=SequenceConfig(tokens_per_image=args.tokens_per_image, max_images=args.max_images,
                                drop_unfittable=True),
    )
    for workers in args.workers:
        result = measure_throughput(dataclasses.replace(base, num_workers=workers), tokenizer, args.batches, args.warmup)
        print(
            f"workers={workers}: start-up {result.startup_s:.1f} s, "
            f"{result.examples_per_s:.1f} examples/s, {result.batches_per_s:.2f} batches/s, "
            f"{result.cpu_s_per_example * 1e3:.1f} CPU-ms/example "
            f"(batch {args.batch_size}, {args.image_size} px, {result.batches} batches timed)",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
