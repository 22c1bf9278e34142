"""Per-stage counts and closed-question accuracy of a set of report turns."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from cxrtrek_jax.case_report.report_turns import ReportTurn
from data_pipeline.schema.stages import Stage

__all__ = ["StageSummary", "summarize_stages", "summarize_all"]


@dataclasses.dataclass(frozen=True)
class StageSummary:
    """Counts of one stage (stage None: all stages together).

    turns: all turns; closed: closed-question turns; scored: closed turns with
    a verdict (closed minus those whose reference does not parse); correct:
    scored turns marked correct.
    """

    stage: int | None
    turns: int = 0
    closed: int = 0
    scored: int = 0
    correct: int = 0

    @property
    def title(self) -> str:
        return "all stages" if self.stage is None else Stage(self.stage).title

    @property
    def accuracy(self) -> float | None:
        """correct / scored in [0, 1]; None when no closed turn is scored."""
        return self.correct / self.scored if self.scored else None

    def add(self, turn: ReportTurn) -> "StageSummary":
        verdict = turn.verdict
        return dataclasses.replace(
            self,
            turns=self.turns + 1,
            closed=self.closed + int(verdict.is_closed),
            scored=self.scored + int(verdict.correct is not None),
            correct=self.correct + int(verdict.correct is True),
        )


def summarize_stages(turns: Iterable[ReportTurn]) -> tuple[StageSummary, ...]:
    """One summary per stage present, ascending by stage."""
    by_stage: dict[int, StageSummary] = {}
    for turn in turns:
        stage = turn.record.stage
        by_stage[stage] = by_stage.get(stage, StageSummary(stage)).add(turn)
    return tuple(by_stage[s] for s in sorted(by_stage))


def summarize_all(per_stage: Iterable[StageSummary]) -> StageSummary:
    """The sum of per-stage summaries (stage None)."""
    total = StageSummary(None)
    for s in per_stage:
        total = dataclasses.replace(
            total,
            turns=total.turns + s.turns,
            closed=total.closed + s.closed,
            scored=total.scored + s.scored,
            correct=total.correct + s.correct,
        )
    return total
