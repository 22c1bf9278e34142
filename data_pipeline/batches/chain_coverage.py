"""How much of each stage's turns a pipeline config trains: trained, windowed and dropped.

A released CXRTrek chain (about 1,900 text tokens at the median, plus 1-4 images) can be longer
than the longest training sequence. `chain_coverage` builds the training sequences of a split's
studies exactly as the input pipeline does (`build_sequences` with the config's
`sequence_config()`, no images decoded, no augmentation) and adds up their `SequenceStats`;
`format_coverage` is the table the trainer prints at the start of every run, so a chain
policy that loses the report stage is seen before any step is spent:

    chains of split 'train': 1000 of 40000 studies, longest sequence 1024 tokens, long_chains=window
      stage   turns  trained  windowed  dropped
          1    3000     3000         0        0
        ...
          8    1000     1000       920        0

trained: turns that carry loss in some sequence; windowed: of those, turns trained in a window
that does not hold the whole earlier chain; dropped: turns trained nowhere (too long even alone,
more images than the model has, `no_prior`), never the turns the `stages` filter excludes.
With `closed_answers` "decisive" or "decisive_if_carried" a last line (`format_cut`) says what
the closed-answer cut did to those studies:

      closed-answer cut (stage 2): 1,139 answers cut, 133 kept whole (detail not carried by stage 3)
"""

from __future__ import annotations

from data_pipeline.batches.grain_pipeline import PipelineConfig
from data_pipeline.text.sequences import SequenceStats, build_sequences
from data_pipeline.files.sources import open_study_source
from data_pipeline.text.tokenizer import CXRTrekTokenizer

__all__ = ["ChainCoverage", "chain_coverage", "format_coverage", "format_cut"]


class ChainCoverage:
    """The summed stats of the first `studies` of `total` studies of a split."""

    def __init__(self, stats: SequenceStats, studies: int, total: int, config: PipelineConfig):
        self.stats, self.studies, self.total, self.config = stats, studies, total, config

    def to_json(self) -> dict:
        return {"split": self.config.split, "studies": self.studies, "of": self.total,
                "max_length": self.config.max_length, "long_chains": self.config.sequence.long_chains,
                "per_stage": {str(k): v for k, v in self.stats.per_stage().items()},
                "turns_dropped": self.stats.turns_dropped}


def chain_coverage(config: PipelineConfig, tokenizer: CXRTrekTokenizer, max_studies: int = 0) -> ChainCoverage:
    """Coverage of the first `max_studies` studies of `config.split` (0 = all of them)."""
    source = open_study_source(config.source_kind, config.source, image_root=config.image_root,
                               split=config.split)
    total = len(source)
    count = total if max_studies <= 0 else min(max_studies, total)
    sequence_config = config.sequence_config()
    stats = SequenceStats()
    for index in range(count):
        stats += build_sequences(source[index].study, tokenizer, sequence_config)[1]
    return ChainCoverage(stats, count, total, config)


def format_coverage(coverage: ChainCoverage) -> str:
    """The per-stage table (module docstring)."""
    c, stats = coverage.config, coverage.stats
    lines = [f"chains of split {c.split!r}: {coverage.studies} of {coverage.total} studies, longest "
             f"sequence {c.max_length} tokens, long_chains={c.sequence.long_chains}",
             f"  {'stage':>5}  {'turns':>6}  {'trained':>7}  {'windowed':>8}  {'dropped':>7}"]
    for stage, row in stats.per_stage().items():
        turns = row["trained"] + row["dropped"]
        lines.append(f"  {stage:>5}  {turns:>6}  {row['trained']:>7}  {row['windowed']:>8}  {row['dropped']:>7}")
    dropped = stats.turns_dropped
    if dropped:
        reasons = {"cut by truncate or too long even alone": stats.turns_dropped_truncation,
                   "more images than the model has": stats.turns_dropped_image_limit,
                   "no_prior": stats.turns_dropped_no_prior}
        listed = ", ".join(f"{n} {why}" for why, n in reasons.items() if n)
        lines.append(f"  WARNING: {dropped} turn(s) are trained nowhere ({listed})")
    if c.sequence.closed_answers != "full":
        lines.append("  " + format_cut(stats, c.sequence.closed_answers, c.sequence.decisive_stages))
    return "\n".join(lines)


def format_cut(stats: SequenceStats, closed_answers: str, stages: tuple[int, ...] | None) -> str:
    """One line: the closed answers of `stages` (None = all) the cut shortened and, with
    "decisive_if_carried", those kept whole; with "decisive", how many of the cut ones lost a
    detail that stage 3 does not carry (`data_pipeline.text.decisive_answers`)."""
    where = "every stage" if stages is None else f"stage {','.join(map(str, stages))}"
    line = f"closed-answer cut ({where}): {stats.answers_cut:,} answers cut"
    if closed_answers == "decisive_if_carried":
        return line + f", {stats.answers_kept_whole:,} kept whole (detail not carried by stage 3)"
    return line + (f", {stats.answers_cut_uncarried:,} of them losing a detail stage 3 does not carry "
                   "(closed_answers=decisive_if_carried keeps those whole)")
