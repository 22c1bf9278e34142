"""`construct`: a report source -> CXRTrek JSON shards in the released format, with a summary.

    summary = construct(ConstructConfig(source="plain", inputs={"input": "studies.jsonl",
                                                                "image_root": "images"},
                                        out_dir="cxrtrek_plain"))

Streams: the reader yields studies, the timeline links each to its patient's prior and next
study, and each study is read and turned into QA (`build_study`) in `processes` worker
processes, in order; finished studies are written `shard_size` at a time to
`out_dir/cxrtrek-NNNNN.json`, so memory is bounded by the timeline's index and one shard.
The shards are what `cxrtrek data build-tfds --json out_dir/cxrtrek-*.json` reads (image paths
stay relative to the source's image root: build with `--image-root` that root).
`out_dir/construct_summary.json` records the counts `ConstructSummary` prints.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from data_pipeline.construct.study_assembly import ConstructError
from data_pipeline.construct.study_builder import StudyBuilder, StudyCounts
from data_pipeline.files.atomic_write import write_text_atomically
from data_pipeline.files.cxrtrek_json import write_element_texts
from data_pipeline.files.ordered_map import ordered_map

__all__ = ["SHARD_PATTERN", "SUMMARY_FILE", "ConstructConfig", "ConstructSummary", "construct", "shard_paths"]

SHARD_PATTERN = "cxrtrek-{:05d}.json"
SUMMARY_FILE = "construct_summary.json"


@dataclasses.dataclass(frozen=True)
class ConstructConfig:
    """What to construct from and how.

    source: a reader name ("mimic-cxr", "chexpert-plus", "openi", "plain").
    inputs: the reader's paths by name (e.g. {"root": ..., "reports_root": ...} for MIMIC-CXR,
        {"csv": ..., "image_root": ...} for CheXpert Plus); `image_root` is where the written
        relative image paths live.
    boxes: a VinDr-CXR-style box CSV (stage-3 detection only for the images it lists), or None.
    processes: worker processes that read reports and build QA (1: in this process).
    shard_size: studies per output JSON file.
    skip_invalid: drop (and list) source rows that cannot be read instead of stopping.
    seed: the wording seed (with the study ids: the same inputs give byte-identical output).
    llm: a local Hugging Face causal LM directory that rewrites wording (checked, with fallback),
        or None for the rule text alone.
    """

    source: str
    inputs: Mapping[str, str]
    out_dir: str
    boxes: str | None = None
    processes: int = 1
    shard_size: int = 10_000
    skip_invalid: bool = False
    seed: int = 0
    llm: str | None = None

    def __post_init__(self) -> None:
        for name in ("processes", "shard_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ConstructConfig.{name} must be a positive integer, got {value!r}")
        object.__setattr__(self, "inputs", dict(self.inputs))


@dataclasses.dataclass
class ConstructSummary:
    """What a construction made, and what it skipped and why."""

    studies: int = 0
    qa_per_stage: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    qa_per_qtype: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    findings_present: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    with_prior: int = 0
    with_next: int = 0
    items_left_out: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    skipped: list[dict[str, str]] = dataclasses.field(default_factory=list)
    shards: list[str] = dataclasses.field(default_factory=list)
    seconds: float = 0.0

    @property
    def reports_per_second(self) -> float:
        return self.studies / self.seconds if self.seconds > 0 else 0.0

    def add(self, counts: StudyCounts, left_out: Iterable[str] = ()) -> None:
        """Count one written study and the lines its stages gave for what they left out."""
        self.studies += 1
        self.items_left_out.update(line.split(" (", 1)[0] for line in left_out)
        self.qa_per_stage.update(str(stage) for stage in counts.stages)
        self.qa_per_qtype.update(counts.qtypes)
        self.findings_present.update(counts.present)
        self.with_prior += counts.has_prior
        self.with_next += counts.has_next

    def to_json(self) -> dict[str, Any]:
        return {
            "studies": self.studies,
            "qa_pairs": sum(self.qa_per_stage.values()),
            "qa_per_stage": dict(sorted(self.qa_per_stage.items())),
            "qa_per_qtype": dict(sorted(self.qa_per_qtype.items())),
            "findings_present": dict(self.findings_present.most_common()),
            "studies_with_prior": self.with_prior,
            "studies_with_next": self.with_next,
            "items_left_out": dict(self.items_left_out.most_common()),
            "skipped": self.skipped,
            "shards": self.shards,
            "seconds": round(self.seconds, 3),
            "reports_per_second": round(self.reports_per_second, 2),
        }

    def format(self) -> str:
        """The console summary: counts per stage and qtype, findings found, skips with reasons."""
        data = self.to_json()
        lines = [f"studies: {data['studies']}  QA pairs: {data['qa_pairs']}  "
                 f"with a prior: {data['studies_with_prior']}  with a later study: {data['studies_with_next']}",
                 "QA per stage: " + "  ".join(f"{k}:{v}" for k, v in data["qa_per_stage"].items()),
                 "QA per qtype: " + "  ".join(f"{k}:{v}" for k, v in data["qa_per_qtype"].items()),
                 "findings present (studies): " + ", ".join(
                     f"{k} {v}" for k, v in list(data["findings_present"].items())[:20])]
        if self.items_left_out:
            lines.append("items not made (studies): " + "; ".join(
                f"{reason} {n}" for reason, n in self.items_left_out.most_common(12)))
        if self.skipped:
            reasons = collections.Counter(s["reason"] for s in self.skipped)
            lines.append(f"skipped {len(self.skipped)} source row(s) or stud(ies): " + "; ".join(
                f"{n} x {reason}" for reason, n in reasons.most_common()))
            lines += [f"  {s['origin']}: {s['field']}: {s['reason']}" for s in self.skipped[:20]]
            if len(self.skipped) > 20:
                lines.append(f"  ... and {len(self.skipped) - 20} more (all in {SUMMARY_FILE})")
        lines.append(f"time: {data['seconds']:.1f} s ({data['reports_per_second']:.1f} reports/s); "
                     f"{len(self.shards)} shard(s)")
        return "\n".join(lines)


def shard_paths(out_dir: str | os.PathLike) -> list[Path]:
    """The JSON shards a construction wrote into `out_dir`, in order."""
    return sorted(Path(out_dir).glob(SHARD_PATTERN.replace("{:05d}", "[0-9]" * 5)))


class _ShardWriter:
    """Writes element texts `shard_size` at a time as JSON list files under `out_dir`."""

    def __init__(self, out_dir: Path, shard_size: int):
        self.out_dir, self.shard_size = out_dir, shard_size
        self.pending: list[str] = []
        self.written: list[str] = []

    def add(self, text: str) -> None:
        self.pending.append(text)
        if len(self.pending) == self.shard_size:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            path = self.out_dir / SHARD_PATTERN.format(len(self.written))
            write_element_texts(path, self.pending)
            self.written.append(path.name)
            self.pending = []


def _progress(items: Iterable[Any], enabled: bool) -> Iterable[Any]:
    if not enabled:
        return items
    from tqdm import tqdm

    return tqdm(items, unit=" reports", desc="construct", smoothing=0.05)


def construct(config: ConstructConfig, *, progress: bool = False) -> ConstructSummary:
    """Read the source, build every study's QA and write the shards and the summary.

    Raises SourceError (file, row, field, reason) for an unreadable source row, and
    ConstructError for a study no question can be made from (e.g. an empty report), unless
    `config.skip_invalid`, which lists them in the summary instead. Refuses an `out_dir` that
    already holds shards (FileExistsError): a construction never mixes with an older one.
    """
    from data_pipeline.construct.source_readers import open_source
    from data_pipeline.construct.timeline import study_timeline

    out_dir = Path(config.out_dir)
    if shard_paths(out_dir):
        raise FileExistsError(f"{out_dir} already holds constructed shards ({SHARD_PATTERN.format(0)}, ...); "
                              "choose an empty folder")
    source = open_source(config.source, config.inputs, skip_invalid=config.skip_invalid)
    image_root = str(config.inputs.get("image_root") or config.inputs.get("root") or "")
    out_dir.mkdir(parents=True, exist_ok=True)
    summary, began = ConstructSummary(), time.perf_counter()
    writer = _ShardWriter(out_dir, config.shard_size)
    builder = StudyBuilder(image_root, config.boxes, config.seed, config.llm)
    for built in ordered_map(builder, _progress(study_timeline(source), progress), config.processes, chunksize=16):
        if built.counts is None:
            if not config.skip_invalid:
                raise ConstructError(f"{built.origin}: {built.error} (use --skip-invalid to drop such studies)")
            summary.skipped.append({"origin": built.origin, "field": "report", "reason": built.error})
            continue
        summary.add(built.counts, built.skipped)
        writer.add(built.text)
    writer.flush()
    summary.skipped[:0] = [{"origin": r.origin, "field": r.field, "reason": r.reason} for r in source.skipped]
    summary.shards, summary.seconds = writer.written, time.perf_counter() - began
    write_text_atomically(out_dir / SUMMARY_FILE, json.dumps(summary.to_json(), indent=2) + "\n")
    return summary
