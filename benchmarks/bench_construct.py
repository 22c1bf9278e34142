"""Construction benchmark: reports/s of `data construct`, images/s of `data build-tfds`, by processes.

    make bench-construct   # = python -m benchmarks.bench_construct --out benchmarks/results/construct.json

Data: the phantom exported as a hospital would (`data_pipeline.phantom.plain_source`: free-text
reports, dated studies per patient, 64-px PNGs), at least `--reports` reports. `construct` reads
every report, links each study to its prior and next, makes the eight stages and writes the shards;
it is timed with 1 and 2 worker processes (one run each, after a warm-up run on 200 reports).

The TFDS build's cost is reading and decoding images, so it is measured on radiographs of the real
size: `--tfds-studies` studies whose images are rewritten as 8-bit JPEGs of `--image-size` (MIMIC-
CXR-JPG's are about 2544 x 3056, quality 95), constructed, then built with `--processes` 1 and 2.

The projection for MIMIC-CXR (227,827 reports, 377,110 images) on one machine is reports / rate +
images / rate at 2 processes on this 2-core machine, and for a 64-core machine the same with the
per-process rate of the 1-process case times 64 (assumes the work scales with processes, as both
steps are independent per study; the shard writer and the TFDS writer are single and not timed
apart).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import machine_info, write_results

MIMIC_REPORTS, MIMIC_IMAGES = 227_827, 377_110


def _phantom_plain(folder: Path, reports: int) -> Path:
    """The phantom's plain export with at least `reports` reports; returns studies.jsonl."""
    from data_pipeline.phantom import PhantomConfig
    from data_pipeline.phantom.plain_source import write_plain_source

    studies = max(1, int(reports / 1.8))  # a phantom study is 1-3 dated exams
    while True:
        path = write_plain_source(folder, studies, seed=0, config=PhantomConfig(size=64))
        count = sum(1 for _ in path.open())
        if count >= reports:
            return path
        shutil.rmtree(folder)
        studies = int(studies * reports / count) + 1


def _construct(plain: Path, out: Path, processes: int) -> dict[str, Any]:
    from data_pipeline.construct.construct_run import ConstructConfig, construct

    shutil.rmtree(out, ignore_errors=True)
    config = ConstructConfig(source="plain", inputs={"input": str(plain), "image_root": str(plain.parent)},
                             out_dir=str(out), processes=processes)
    began = time.perf_counter()
    summary = construct(config)
    seconds = time.perf_counter() - began
    return {"processes": processes, "reports": summary.studies, "qa_pairs": sum(summary.qa_per_stage.values()),
            "seconds": seconds, "reports_per_s": summary.studies / seconds}


def _full_size_copy(plain: Path, folder: Path, studies: int, size: tuple[int, int]) -> tuple[Path, int]:
    """The first `studies` lines of `plain` with every image rewritten as a JPEG of `size` (w, h)."""
    from PIL import Image

    lines, images = [], 0
    for line in plain.open():
        if len(lines) == studies:
            break
        row = json.loads(line)
        for image in row["images"]:
            target = Path(image["path"]).with_suffix(".jpg")
            (folder / target).parent.mkdir(parents=True, exist_ok=True)
            Image.open(plain.parent / image["path"]).convert("L").resize(size, Image.BILINEAR).save(
                folder / target, quality=95)
            image["path"], images = target.as_posix(), images + 1
        lines.append(json.dumps(row))
    path = folder / "studies.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path, images


def _build_tfds(shards: list[Path], image_root: Path, out: Path, processes: int, images: int) -> dict[str, Any]:
    from data_pipeline.files.tfds_builder import BuildOptions, SplitConfig, build_dataset

    shutil.rmtree(out, ignore_errors=True)
    options = BuildOptions(json_files=tuple(map(str, shards)), split=SplitConfig(0.1, 0.1), processes=processes)
    began = time.perf_counter()
    build_dataset(options, image_root, out)
    seconds = time.perf_counter() - began
    return {"processes": processes, "images": images, "seconds": seconds, "images_per_s": images / seconds}


def _projection(construct_runs: list[dict], tfds_runs: list[dict]) -> dict[str, float]:
    by = {r["processes"]: r for r in construct_runs}, {r["processes"]: r for r in tfds_runs}
    here = MIMIC_REPORTS / by[0][2]["reports_per_s"] + MIMIC_IMAGES / by[1][2]["images_per_s"]
    wide = MIMIC_REPORTS / (64 * by[0][1]["reports_per_s"]) + MIMIC_IMAGES / (64 * by[1][1]["images_per_s"])
    return {"mimic_cxr_hours_this_machine_2_processes": here / 3600, "mimic_cxr_hours_64_cores": wide / 3600}


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    import tensorflow_datasets as tfds

    tfds.disable_progress_bar()
    work = Path(tempfile.mkdtemp(prefix="bench_construct_"))
    try:
        plain = _phantom_plain(work / "plain", args.reports)
        warmup = plain.with_name("warmup.jsonl")  # first calls and imports, off the clock
        warmup.write_text("".join(line for _, line in zip(range(200), plain.open())))
        _construct(warmup, work / "warmup", 1)
        construct_runs = [_construct(plain, work / f"out{p}", p) for p in (1, 2)]
        full, images = _full_size_copy(plain, work / "full", args.tfds_studies, tuple(args.image_size))
        _construct(full, work / "full_out", 1)
        shards = sorted((work / "full_out").glob("cxrtrek-*.json"))
        tfds_runs = [_build_tfds(shards, full.parent, work / f"tfds{p}", p, images) for p in (1, 2)]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"machine": machine_info(with_jax=False), "construct": construct_runs, "build_tfds": tfds_runs,
            "image_size": list(args.image_size), "projection": _projection(construct_runs, tfds_runs)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reports", type=int, default=10_000, help="reports to construct (default 10000)")
    parser.add_argument("--tfds-studies", type=int, default=120, help="studies in the TFDS build (default 120)")
    parser.add_argument("--image-size", type=int, nargs=2, default=(2544, 3056), metavar=("W", "H"))
    parser.add_argument("--out", help="results JSON")
    args = parser.parse_args(argv)
    results = run_benchmark(args)
    for run in results["construct"]:
        print(f"construct  {run['processes']} process(es): {run['reports']} reports in {run['seconds']:.1f} s "
              f"= {run['reports_per_s']:.1f} reports/s")
    for run in results["build_tfds"]:
        print(f"build-tfds {run['processes']} process(es): {run['images']} images in {run['seconds']:.1f} s "
              f"= {run['images_per_s']:.2f} images/s")
    projection = results["projection"]
    print(f"MIMIC-CXR ({MIMIC_REPORTS} reports, {MIMIC_IMAGES} images): "
          f"{projection['mimic_cxr_hours_this_machine_2_processes']:.1f} h here (2 processes), "
          f"{projection['mimic_cxr_hours_64_cores']:.2f} h on 64 cores")
    write_results(args.out, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
