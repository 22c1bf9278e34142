"""Stage 2, findings identification: what the report says is there and what it rules out.

Rules (each item's provenance cites the sentences that state it):
  - a yes/no item for every finding the report states present ("Yes") or absent ("No"), target
    `abnormality_[name]` / `foreign_body_[name]`; never one for a finding the report does not
    mention (the report's silence is not a "No");
  - an uncertain finding ("cannot exclude", "possible") gets no closed item at all, neither
    "Yes" nor "No" being the report's word: it is named as "possible ..." in the caption and
    listed in `skipped`;
  - `yes_no_abnormality` / `yes_no_foreign_body`: "Yes" when one is present; "No" only when the
    report rules at least one out and states none present or uncertain;
  - `other_abnormalities`: "besides X and Y, anything else?" over the present abnormalities;
  - single- and multi-choice "which of these is seen": the correct options are present
    findings, every distractor a finding the report rules out (none invented);
  - a caption listing the abnormalities and devices.
"""

from __future__ import annotations

from data_pipeline.construct.finding_summary import (
    ABSENT, PRESENT, UNCERTAIN, FindingSummary, describe_finding, summarise_findings,
)
from data_pipeline.construct.stage_input import StageInput
from data_pipeline.construct.stage_items import Provenance, StageResult, choice_item, cite, qa_item, yes_no_item
from data_pipeline.construct.stage_questions import Wording, capitalise, caption_hint, join_phrases

__all__ = ["stage2_items", "presence_target", "YES_NO_ABNORMALITY", "YES_NO_FOREIGN_BODY", "OTHER_ABNORMALITIES"]

STAGE = 2
TASK = "Findings_Identification"
YES_NO_ABNORMALITY, YES_NO_FOREIGN_BODY = "yes_no_abnormality", "yes_no_foreign_body"
OTHER_ABNORMALITIES = "other_abnormalities"
_PRESENCE_STEMS = (
    "Is there any evidence of {f} in the X-ray?",
    "Does the X-ray reveal the presence of {f}?",
    "Can you verify if {f} is present in the X-ray?",
    "Are there any indications of {f} in the X-ray image?",
    "Can you detect {f} in the X-ray image?",
    "Is {f} visible in this X-ray?",
)
_ABNORMALITY_STEMS = ("Does this X-ray show any abnormal findings?", "Are there any abnormalities in the image?",
                      "Can you identify any pathologies or irregularities in the X-ray image?")
_DEVICE_STEMS = ("Does the X-ray image show any foreign bodies or medical equipment?",
                 "Are there any foreign bodies such as medical devices or tubes in the X-ray image?",
                 "Can you confirm if any foreign bodies are present in the X-ray image?")
_OTHER_STEMS = ("Besides the {f}, are there other abnormalities in this X-ray?",
                "Are there any imaging findings distinct from {f} in the X-ray?",
                "Does the radiograph demonstrate abnormalities in addition to {f}?")
_LIST_CAPTIONS = ("What abnormalities and foreign bodies are seen in the X-ray?",
                  "Identify any abnormal findings or foreign objects on the chest X-ray.",
                  "What are the notable findings on the current chest X-ray study?",
                  "List the abnormalities and devices visible on this radiograph.")
_SINGLE_STEMS = ("Which of the following findings is seen on this chest X-ray?",
                 "Which of the following abnormalities is demonstrated on this X-ray?")
_MULTI_STEMS = ("Which of the following findings are present on this chest X-ray?",
                "What abnormalities can you detect in the X-ray image?")


def presence_target(summary: FindingSummary) -> str:
    """The authors' stage-2 target: `abnormality_[name]` or `foreign_body_[name]`."""
    return f"{summary.category}_[{summary.finding}]"


def _sentences(summaries: list[FindingSummary]) -> list[int]:
    return sorted({i for s in summaries for i in s.sentences})


def _presence_item(data: StageInput, wording: Wording, summary: FindingSummary):
    yes = summary.status == PRESENT
    detail = (f"There is evidence of {describe_finding(summary)}." if yes
              else f"There is no evidence of {summary.finding} on the X-ray.")
    stem = wording.pick(_PRESENCE_STEMS).format(f=summary.finding)
    return yes_no_item(wording, STAGE, TASK, stem, yes, detail, cite(data.facts, summary.sentences),
                       presence_target(summary))


def _any_item(data: StageInput, wording: Wording, summaries: list[FindingSummary], category: str):
    """`yes_no_abnormality` / `yes_no_foreign_body`, as yes/no or as a Yes/No choice; None when
    the report neither shows one nor rules one out."""
    mine = [s for s in summaries if s.category == category]
    present = [s for s in mine if s.status == PRESENT]
    if not present and (not any(s.status == ABSENT for s in mine) or any(s.status == UNCERTAIN for s in mine)):
        return None
    cited = present or [s for s in mine if s.status == ABSENT]
    provenance = cite(data.facts, _sentences(cited))
    target = YES_NO_ABNORMALITY if category == "abnormality" else YES_NO_FOREIGN_BODY
    stem = wording.pick(_ABNORMALITY_STEMS if category == "abnormality" else _DEVICE_STEMS)
    if wording.chance(0.3):
        correct = "Yes" if present else "No"
        return choice_item(wording, STAGE, TASK, stem, ["Yes", "No"], [correct], provenance, target=target)
    detail = (capitalise(f"{join_phrases([describe_finding(s) for s in present])} "
                         f"{'is' if len(present) == 1 else 'are'} seen.") if present else "")
    return yes_no_item(wording, STAGE, TASK, stem, bool(present), detail, provenance, target)


def _other_item(data: StageInput, wording: Wording, summaries: list[FindingSummary]):
    """"Besides X, anything else?" over the present abnormalities; "No" only when nothing is
    uncertain."""
    present = [s for s in summaries if s.category == "abnormality" and s.status == PRESENT]
    uncertain = any(s.category == "abnormality" and s.status == UNCERTAIN for s in summaries)
    if len(present) < 2 and not (present and not uncertain):
        return None
    held_back = 1 if len(present) >= 2 and (uncertain or wording.chance(0.6)) else 0
    named, rest = present[:len(present) - held_back], present[len(present) - held_back:]
    stem = wording.pick(_OTHER_STEMS).format(f=join_phrases([s.finding for s in named]))
    detail = (capitalise(f"{join_phrases([describe_finding(s) for s in rest])} is also present.") if rest
              else "No other abnormality is reported.")
    return yes_no_item(wording, STAGE, TASK, stem, bool(rest), detail, cite(data.facts, _sentences(present)),
                       OTHER_ABNORMALITIES)


def _choice_items(data: StageInput, wording: Wording, summaries: list[FindingSummary]) -> list:
    """Single choice (one present abnormality among ruled-out ones) and, with two or more
    present, multi-choice over all of them; distractors only from ruled-out findings."""
    present = [s for s in summaries if s.category == "abnormality" and s.status == PRESENT]
    ruled_out = [s for s in summaries if s.category == "abnormality" and s.status == ABSENT]
    if not present or not ruled_out:
        return []
    items = []
    pick = present[wording.sample(range(len(present)), 1)[0]]
    distractors = wording.sample(ruled_out, 3)
    items.append(choice_item(
        wording, STAGE, TASK, wording.pick(_SINGLE_STEMS), [capitalise(s.finding) for s in [pick] + distractors],
        [capitalise(pick.finding)], cite(data.facts, _sentences([pick] + distractors)),
        target=presence_target(pick)))
    if len(present) >= 2:
        shown = present[:4]
        distractors = wording.sample(ruled_out, 6 - len(shown))
        items.append(choice_item(
            wording, STAGE, TASK, wording.pick(_MULTI_STEMS), [capitalise(s.finding) for s in shown + distractors],
            [capitalise(s.finding) for s in shown], cite(data.facts, _sentences(shown + distractors)), multi=True))
    return items


def _list_caption(data: StageInput, wording: Wording, summaries: list[FindingSummary]):
    groups = (("abnormal", "abnormality", PRESENT), ("devices", "foreign_body", PRESENT),
              ("possible", "abnormality", UNCERTAIN), ("possible_devices", "foreign_body", UNCERTAIN))
    by_kind = {kind: [s for s in summaries if s.category == cat and s.status == status] for kind, cat, status in groups}
    parts = []
    if by_kind["abnormal"]:
        parts.append(f"The X-ray shows {join_phrases([describe_finding(s) for s in by_kind['abnormal']])}.")
    if by_kind["devices"]:
        parts.append(capitalise(f"{join_phrases([describe_finding(s) for s in by_kind['devices']])} "
                                f"{'is' if len(by_kind['devices']) == 1 else 'are'} in place."))
    possible = by_kind["possible"] + by_kind["possible_devices"]
    if possible:
        parts.append(capitalise(f"possible {join_phrases([s.finding for s in possible])} "
                                f"{'is' if len(possible) == 1 else 'are'} also noted."))
    cited = [s for group in by_kind.values() for s in group]
    if not parts:
        parts.append("No abnormality or foreign body is seen.")
        cited = [s for s in summaries if s.status == ABSENT]
    answer = " ".join(parts)
    question = caption_hint(wording, wording.pick(_LIST_CAPTIONS), answer)
    return qa_item(STAGE, TASK, "captioning", question, answer, cite(data.facts, _sentences(cited)))


def stage2_items(data: StageInput) -> StageResult:
    """The stage-2 items of a study (see the module docstring for the rules)."""
    summaries = list(summarise_findings(data.facts))
    if not summaries:
        return StageResult(skipped=("stage 2: the report mentions no finding",))
    wording = data.wording(STAGE)
    items = [_presence_item(data, wording, s) for s in summaries if s.status in (PRESENT, ABSENT)]
    items += [item for item in (_any_item(data, wording, summaries, "abnormality"),
                                _any_item(data, wording, summaries, "foreign_body"),
                                _other_item(data, wording, summaries)) if item is not None]
    items += _choice_items(data, wording, summaries)
    items.append(_list_caption(data, wording, summaries))
    skipped = tuple(f"stage 2: {s.finding} is uncertain in the report (sentence "
                    f"{', '.join(map(str, s.sentences))}): no closed item, named as possible in the caption"
                    for s in summaries if s.status == UNCERTAIN)
    return StageResult(tuple(items), skipped)
