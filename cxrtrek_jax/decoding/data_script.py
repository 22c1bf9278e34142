"""A training data's question script (`data_pipeline.text.question_wording`) as the turns to ask.

    script = read_question_script(run / "question_script.json")
    turns, skipped = script_turns(script, current_images=1, prior_images=1)
    plan = fixed_plan(turns)

The turns are the script's, in its order, for the images given (image order: current, prior,
later):
  - the current images are shown in the first turn: in the script's introducing question when it
    has one (its `{images}` filled with as many placeholders as there are images), else put in
    front of the first question, as training places images for a question without placeholders;
  - a stage-5 turn needs a prior image and a stage-6 turn a later one (`GROUP_STAGES`): without
    it the turn is skipped and returned in `skipped`, as the built-in script
    (`question_script.default_script`) leaves those stages out;
  - the prior (later) images are shown in the first stage-5 (6) turn asked, and stay visible after.
Unlike the built-in script, the questions do not follow the answers: every turn is asked.
"""

from __future__ import annotations

from cxrtrek_jax.decoding.turn_plans import Turn
from data_pipeline.text.question_wording import GROUP_STAGES, QuestionScript, ScriptTurn, fill_images

__all__ = ["script_turns"]


def script_turns(script: QuestionScript, *, current_images: int = 1, prior_images: int = 0,
                 later_images: int = 0) -> tuple[tuple[Turn, ...], tuple[ScriptTurn, ...]]:
    """(the turns to ask, the script turns skipped for want of a prior or later image)."""
    if current_images < 1:
        raise ValueError(f"the question script needs at least one current image, got {current_images}")
    if prior_images < 0 or later_images < 0:
        raise ValueError(f"image counts must be >= 0, got prior {prior_images}, later {later_images}")
    counts = {"current": current_images, "prior": prior_images, "later": later_images}
    needs = {stage: group for group, stage in GROUP_STAGES.items()}
    shown, opened = current_images, set()
    turns: list[Turn] = []
    skipped: list[ScriptTurn] = []
    for entry in script.turns:
        group = needs.get(entry.stage)
        if group is not None and not counts[group]:
            skipped.append(entry)
            continue
        if group is not None and group not in opened:
            opened.add(group)
            shown += counts[group]
        question = entry.question if entry.introduces is None else fill_images(entry.question, counts[entry.introduces])
        turns.append(Turn(turn_index=len(turns), stage=entry.stage, task_type=entry.task_type, qtype=entry.qtype,
                          question=question, image_input_count=shown))
    return tuple(turns), tuple(skipped)
