"""The turns a chain asks, and plans that hand them out one at a time.

A `TurnPlan` is a generator: it yields the next `Turn` and is sent the
decoded answer to it (`plan.send(answer)`), so a plan may choose later
questions from earlier answers (see `question_script.py`); a plan built from a
study's own turns ignores the answers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Generator, Sequence

from data_pipeline.schema.records import Study

__all__ = ["ORDERS", "Turn", "TurnPlan", "study_turns", "fixed_plan"]

# "given": the study's turn order; "canonical": stages 1..8 (stable within a stage).
ORDERS = ("given", "canonical")


@dataclasses.dataclass(frozen=True)
class Turn:
    """One question of a staged conversation.

    turn_index: position of the turn in its study's turn list.
    question: as in the data: `<image>` placeholders where images are introduced.
    image_input_count: images visible at this turn (cumulative, current study first).
    reference: the reference answer, None when unknown.
    """

    turn_index: int
    stage: int
    task_type: str
    qtype: str
    question: str
    image_input_count: int
    reference: str | None = None


TurnPlan = Generator[Turn, str, None]


def study_turns(study: Study, order: str = "given") -> tuple[Turn, ...]:
    """The turns of `study` (its items, references included) in `order` (see `ORDERS`)."""
    if order not in ORDERS:
        raise ValueError(f"unknown turn order {order!r}; expected one of {', '.join(ORDERS)}")
    turns = tuple(
        Turn(turn_index=index, stage=item.stage, task_type=item.task_type, qtype=item.qtype,
             question=item.question, image_input_count=item.image_input_count, reference=item.answer)
        for index, item in enumerate(study.items)
    )
    if order == "canonical":
        turns = tuple(sorted(turns, key=lambda turn: turn.stage))
    return turns


def fixed_plan(turns: Sequence[Turn]) -> TurnPlan:
    """A plan that asks `turns` in order, whatever the answers."""
    for turn in turns:
        yield turn
