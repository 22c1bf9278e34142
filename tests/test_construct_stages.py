"""The stage generators and the study assembly of `data_pipeline.construct`, on hand-built report facts.

Each report below is written out with the facts a reader would take from it; the expected items
(answers, targets, options, provenance) are written by hand from the report, not from the code.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from cxrtrek_jax.evaluation.metrics.answer_parsing import parse_closed_answer, parse_options
from data_pipeline.construct.box_annotations import PixelBox
from data_pipeline.construct.report_facts import (
    FindingMention, FindingRelation, ReportFacts, ReportSentence, TechniqueFacts,
)
from data_pipeline.construct.source_study import SourceImage, SourceStudy, TimelineStudy
from data_pipeline.construct.stage1_quality_view import stage1_items
from data_pipeline.construct.stage2_findings import stage2_items
from data_pipeline.construct.stage3_attributes import boxes_on_scale, stage3_items
from data_pipeline.construct.stage4_relationships import stage4_items
from data_pipeline.construct.stage5_comparison import stage5_items
from data_pipeline.construct.stage6_future_trend import stage6_items
from data_pipeline.construct.stage7_advice import stage7_items
from data_pipeline.construct.stage8_report import stage8_items
from data_pipeline.construct.stage_input import StageInput
from data_pipeline.construct.study_assembly import ConstructError, assemble_study, stage_input_for
from data_pipeline.files.cxrtrek_json import study_to_element
from data_pipeline.files.validation import validate_elements
from data_pipeline.schema.boxes import Box, parse_boxes
from data_pipeline.schema.records import thaw


def _facts(sections: dict[str, list[str]], mentions=(), relations=(), recommendations=(), technique=TechniqueFacts()):
    """ReportFacts of a report given as section -> sentences (indices run over the report)."""
    sentences, index = [], 0
    for section, texts in sections.items():
        for text in texts:
            sentences.append(ReportSentence(section, index, text))
            index += 1
    return ReportFacts(sections={k: " ".join(v) for k, v in sections.items()}, sentences=tuple(sentences),
                       mentions=tuple(mentions), relations=tuple(relations),
                       recommendations=tuple(recommendations), technique=technique)


def _m(finding, status, sentence, phrase="", sides=(), regions=(), severity=None, change=None, category="abnormality"):
    return FindingMention(finding, category, status, sentence, phrase or finding, tuple(sides), tuple(regions),
                          severity, change)


# "Portable AP chest. The patient is rotated. Small left pleural effusion. No pneumothorax or
# consolidation. Endotracheal tube in place. Platelike atelectasis at the left base, likely
# reflecting the effusion. Cannot exclude pneumonia." / "Small left effusion. Recommend a
# follow-up radiograph." The report never mentions the heart.
CURRENT = _facts(
    {"findings": ["Portable AP chest.", "The patient is rotated.", "Small left pleural effusion.",
                  "No pneumothorax or consolidation.", "Endotracheal tube in place.",
                  "Platelike atelectasis at the left base, likely reflecting the effusion.",
                  "Cannot exclude pneumonia."],
     "impression": ["Small left effusion.", "Recommend a follow-up radiograph."]},
    mentions=[_m("pleural effusion", "present", 2, "pleural effusion", ["left"], severity="small"),
              _m("pneumothorax", "absent", 3), _m("consolidation", "absent", 3),
              _m("endotracheal tube", "present", 4, category="foreign_body"),
              _m("atelectasis", "present", 5, "platelike atelectasis", ["left"], ["base"]),
              _m("pneumonia", "uncertain", 6),
              _m("pleural effusion", "present", 7, "effusion", ["left"], severity="small")],
    relations=[FindingRelation("likely_reflecting", "atelectasis", "pleural effusion", 5)],
    recommendations=[8],
    technique=TechniqueFacts(view="AP", portable=True, rotated=True, sentences=(0, 1)),
)
# The prior: "No pleural effusion. Small right pneumothorax."
PRIOR = _facts({"findings": ["No pleural effusion.", "Small right pneumothorax."]},
               mentions=[_m("pleural effusion", "absent", 0),
                         _m("pneumothorax", "present", 1, sides=["right"], severity="small")])
# The next study: "The left effusion has resolved. Atelectasis is unchanged. ET tube removed."
NEXT = _facts({"impression": ["The left effusion has resolved.", "Atelectasis is unchanged.", "ET tube removed."]},
              mentions=[_m("pleural effusion", "absent", 0, "effusion", ["left"], change="resolved"),
                        _m("atelectasis", "present", 1, change="unchanged"),
                        _m("endotracheal tube", "absent", 2, "ET tube", change="resolved", category="foreign_body")])


def _study(study_id, images, source="plain", patient="p1"):
    return SourceStudy(source, patient, study_id, "(report)", tuple(images), split="train")


CUR_IMAGES = (SourceImage("p1/s2/frontal.png", "AP", "s2f"), SourceImage("p1/s2/lateral.png", "LATERAL", "s2l"))
PRIOR_STUDY = _study("s1", [SourceImage("p1/s1/frontal.png", "PA", "s1f")])
NEXT_STUDY = _study("s3", [SourceImage("p1/s3/frontal.png", "PA", "s3f")])


def _input(prior=False, next_=False, facts=CURRENT, images=CUR_IMAGES, boxes=None, study_id="s2", seed=0):
    timeline = TimelineStudy(_study(study_id, images), PRIOR_STUDY if prior else None, NEXT_STUDY if next_ else None)
    return StageInput(timeline, facts, PRIOR if prior else None, NEXT if next_ else None, boxes or {}, seed)


def _by_target(items):
    out = {}
    for item in items:
        out.setdefault(item.extras.get("target", ""), []).append(item)
    return out


def _sentences(item):
    return [(s["study"], s["index"], s["text"]) for s in thaw(item.extras["provenance"]).get("sentences", [])]


# ----------------------------------------------------------------------------- stage 2


def test_yes_no_only_for_findings_the_report_states_present_or_absent():
    items = stage2_items(_input()).items
    yes_no = {i.extras["target"]: i.answer.split(".")[0] for i in items if i.qtype == "yes_no"
              and i.extras["target"].startswith(("abnormality_", "foreign_body_"))}
    assert yes_no == {"abnormality_[pleural effusion]": "Yes", "abnormality_[pneumothorax]": "No",
                      "abnormality_[consolidation]": "No", "foreign_body_[endotracheal tube]": "Yes",
                      "abnormality_[atelectasis]": "Yes"}
    # The heart is never mentioned: nothing at all asks about cardiomegaly.
    assert not any("cardiomegaly" in i.question.lower() or "cardiomegaly" in i.answer.lower() for i in items)


def test_an_uncertain_finding_gets_no_closed_item_and_is_named_as_possible():
    result = stage2_items(_input())
    assert not any("pneumonia" in i.question.lower() or "pneumonia" in i.extras.get("target", "")
                   for i in result.items if i.qtype != "captioning")
    caption = [i for i in result.items if i.qtype == "captioning"][0]
    assert caption.answer == ("The X-ray shows small left pleural effusion and atelectasis in the left base. "
                              "Endotracheal tube is in place. Possible pneumonia is also noted.")
    assert result.skipped == ("stage 2: pneumonia is uncertain in the report (sentence 6): no closed item, "
                              "named as possible in the caption",)


def test_presence_answers_cite_the_sentences_that_state_them():
    items = _by_target(stage2_items(_input()).items)
    (effusion,) = [i for i in items["abnormality_[pleural effusion]"] if i.qtype == "yes_no"]
    assert _sentences(effusion) == [("current", 2, "Small left pleural effusion."),
                                    ("current", 7, "Small left effusion.")]
    (pneumothorax,) = items["abnormality_[pneumothorax]"]
    assert _sentences(pneumothorax) == [("current", 3, "No pneumothorax or consolidation.")]


def _chosen_texts(item):
    """The option texts the answer picks, read by the evaluation's own answer parser."""
    options = parse_options(item.question)
    parsed = parse_closed_answer(item.answer, item.question, item.qtype_parsed)
    return {options[int(v.split(":")[1])].text.rstrip(".") for v in parsed.value}, {o.text.rstrip(".") for o in options}


def test_choice_distractors_are_only_findings_the_report_rules_out():
    items = [i for i in stage2_items(_input()).items if i.qtype != "yes_no" and i.qtype != "captioning"]
    choices = [i for i in items if set(_chosen_texts(i)[1]) != {"Yes", "No"}]
    assert {i.qtype for i in choices} == {"single-choice", "multi-choice-4"}
    for item in choices:
        chosen, options = _chosen_texts(item)
        assert chosen <= {"Pleural effusion", "Atelectasis"}
        assert options - chosen <= {"Pneumothorax", "Consolidation"}
    (multi,) = [i for i in choices if i.qtype == "multi-choice-4"]
    assert _chosen_texts(multi)[0] == {"Pleural effusion", "Atelectasis"}


def test_no_choice_item_without_a_ruled_out_finding():
    facts = _facts({"findings": ["Small left pleural effusion.", "Mild cardiomegaly."]},
                   mentions=[_m("pleural effusion", "present", 0, sides=["left"]), _m("cardiomegaly", "present", 1)])
    assert not [i for i in stage2_items(_input(facts=facts)).items if "choice" in i.qtype
                and "abnormality_[" in i.extras.get("target", "abnormality_[")]


def test_any_abnormality_is_no_only_when_the_report_rules_out_and_shows_nothing():
    normal = _facts({"findings": ["No focal consolidation, effusion, or pneumothorax."]},
                    mentions=[_m("consolidation", "absent", 0), _m("pleural effusion", "absent", 0),
                              _m("pneumothorax", "absent", 0)])
    items = _by_target(stage2_items(_input(facts=normal)).items)
    (any_abnormality,) = items["yes_no_abnormality"]
    assert any_abnormality.answer.split(".")[0].split()[-1] == "No"
    assert "yes_no_foreign_body" not in items  # no device is mentioned either way
    silent = _facts({"findings": ["The cardiomediastinal silhouette is within normal limits."]})
    result = stage2_items(_input(facts=silent))
    assert result.items == () and result.skipped == ("stage 2: the report mentions no finding",)


# ----------------------------------------------------------------------------- stages 1, 3, 4, 7, 8


def test_view_from_metadata_else_the_technique_line_else_nothing():
    result = stage1_items(_input())
    caption = [i for i in result.items if i.task_type == "View_Information" and i.qtype == "captioning"][0]
    assert caption.answer == "Anteroposterior (AP) and lateral views."
    assert thaw(caption.extras["provenance"]) == {"rule": "view_from_image_metadata"}
    choice = [i for i in result.items if i.task_type == "View_Information" and i.qtype != "captioning"][0]
    assert _chosen_texts(choice)[0] == {"Anteroposterior (AP) view", "Lateral view"}
    unviewed = (SourceImage("p1/s2/a.png"),)
    caption = stage1_items(_input(images=unviewed)).items[0]
    assert caption.answer == "Anteroposterior (AP) view."
    assert _sentences(caption) == [("current", 0, "Portable AP chest."), ("current", 1, "The patient is rotated.")]
    bare = _facts({"findings": ["No pneumothorax."]}, mentions=[_m("pneumothorax", "absent", 0)])
    result = stage1_items(_input(facts=bare, images=unviewed))
    assert result.items == ()
    assert result.skipped[0].startswith("stage 1: no view")


def test_quality_items_state_only_what_the_report_states():
    items = [i for i in stage1_items(_input()).items if i.task_type == "Quality_Assessment"]
    assert [i.qtype for i in items] == ["yes_no", "yes_no", "captioning"]
    assert items[-1].answer == "The radiograph is a portable study. The patient is rotated."
    assert all(i.answer.startswith("Yes") for i in items[:2])
    # "Low lung volumes. The right costophrenic angle is excluded."
    facts = _facts({"findings": ["Low lung volumes.", "The right costophrenic angle is excluded."]},
                   technique=TechniqueFacts(inspiration="low", excluded_anatomy=("right costophrenic angle",),
                                            sentences=(0, 1)))
    items = stage1_items(_input(facts=facts)).items
    inspiration, excluded = [i for i in items if i.qtype == "yes_no"]
    assert inspiration.answer.split(".")[0].split()[-1] == "No" and excluded.answer.startswith("Yes")
    assert items[-1].answer == ("The lung volumes are low (poor inspiration). The right costophrenic angle is excluded "
                                "from the field of view.")


def test_attributes_location_severity_type_of_present_findings_only():
    items = _by_target(stage3_items(_input()).items)
    assert [i.answer for i in items["location_[pleural effusion]"] if i.qtype == "captioning"] == ["Left side."]
    (choice,) = [i for i in items["location_[atelectasis]"] if i.qtype == "single-choice"]
    assert _chosen_texts(choice) == ({"Left base"}, {"Left base", "Right base", "Base on both sides"})
    assert [i.answer for i in items["severity_[pleural effusion]"] if i.qtype == "captioning"] == ["Small."]
    assert [i.answer for i in items["type_[atelectasis]"]] == ["Platelike atelectasis."]
    assert [i.answer for i in items["description_[atelectasis]"]] == ["Atelectasis in the left base."]
    assert not any("pneumothorax" in t or "pneumonia" in t for t in items)  # absent / uncertain: no attributes
    assert "severity_[atelectasis]" not in items  # no severity word
    assert not any(i.qtype == "detection" for i in stage3_items(_input()).items)  # no boxes given


def test_boxes_on_scale_by_hand():
    # A 1200 x 800 image: x / 1200 * 100, y / 800 * 100.
    box = PixelBox("Cardiomegaly", 300.0, 200.0, 900.0, 700.0)
    assert boxes_on_scale("a.png", [box], 1200, 800) == (Box("Cardiomegaly", 25.0, 25.0, 75.0, 87.5),)
    with pytest.raises(ValueError, match=r"a\.png: box 'Cardiomegaly'.*leaves the 1000 x 800 image"):
        boxes_on_scale("a.png", [PixelBox("Cardiomegaly", 300.0, 200.0, 1100.0, 700.0)], 1000, 800)


def test_detection_items_from_pixel_boxes_and_the_image_size(tmp_path):
    path = tmp_path / "p1/s2/frontal.png"
    path.parent.mkdir(parents=True)
    Image.fromarray(np.tile(np.arange(300, dtype=np.uint8), (200, 1))).save(path)  # 300 wide, 200 high
    boxes = {"s2f": (PixelBox("Pleural effusion", 30.0, 50.0, 120.0, 150.0),
                     PixelBox("Pleural effusion", 180.0, 40.0, 270.0, 160.0)),
             "other-image": (PixelBox("Nodule", 1.0, 1.0, 2.0, 2.0),)}
    timeline = TimelineStudy(_study("s2", CUR_IMAGES))
    data = stage_input_for(timeline, lambda text: CURRENT, boxes, tmp_path)
    (item,) = [i for i in stage3_items(data).items if i.qtype == "detection"]
    # 30/300 = 10 %, 50/200 = 25 %, 120/300 = 40 %, 150/200 = 75 %; 180/300 = 60 %, 40/200 = 20 %, ...
    assert item.answer == ("<|ref|> pleural effusion <|/ref|> <|box|>(10.0, 25.0), (40.0, 75.0)<|/box|> "
                           "<|box|>(60.0, 20.0), (90.0, 80.0)<|/box|>")
    assert parse_boxes(item.answer) == (Box("pleural effusion", 10.0, 25.0, 40.0, 75.0),
                                        Box("pleural effusion", 60.0, 20.0, 90.0, 80.0))
    assert item.question.startswith("[detection] In the x-ray 1 of the main study, ")
    assert thaw(item.extras)["bbox_list"] == [[10.0, 25.0, 40.0, 75.0], [60.0, 20.0, 90.0, 80.0]]
    assert item.extras["target"] == "pleural effusion" and item.extras["image_id"] == 1
    with pytest.raises(ConstructError, match="image root"):
        stage_input_for(timeline, lambda text: CURRENT, boxes)


def test_relationships_from_the_linking_sentence():
    (item,) = stage4_items(_input()).items
    assert item.answer == "The atelectasis likely reflects the pleural effusion."
    assert _sentences(item) == [
        ("current", 5, "Platelike atelectasis at the left base, likely reflecting the effusion.")]
    assert stage4_items(_input(facts=PRIOR)).items == ()


def test_advice_quotes_the_recommendation_and_marks_rule_table_advice():
    report, rules = stage7_items(_input()).items
    assert report.answer == "Recommend a follow-up radiograph."
    assert thaw(report.extras["provenance"]) == {"sentences": [{"study": "current", "index": 8,
                                                                "text": "Recommend a follow-up radiograph."}]}
    assert thaw(rules.extras["provenance"])["rule"] == (
        "advice_table:pleural effusion + advice_table:atelectasis + advice_table:endotracheal tube")
    assert rules.answer.startswith("Ultrasound evaluation of the pleural effusion")


def test_report_variants_follow_the_sections():
    both = stage8_items(_input()).items
    assert both[0].task_type == "Report_Generation[ALL]"
    assert both[0].answer == ("Impression: Small left effusion. Recommend a follow-up radiograph. Findings: "
                              + CURRENT.sections["findings"])
    assert both[1].task_type in ("Report_Generation[Findings]", "Report_Generation[Impression_with_findings]",
                                 "Report_Generation[Impression_without_findings]")
    (findings_only,) = stage8_items(_input(facts=PRIOR)).items
    assert findings_only.task_type == "Report_Generation[Findings]"
    assert findings_only.answer == "No pleural effusion. Small right pneumothorax."
    (impression_only,) = stage8_items(_input(facts=NEXT)).items
    assert impression_only.task_type == "Report_Generation[Impression]"


# ----------------------------------------------------------------------------- stages 5 and 6


def test_stage5_only_with_a_prior_and_what_changed():
    assert stage5_items(_input()).items == ()
    items = stage5_items(_input(prior=True)).items
    overview = items[0]
    # Effusion: absent before, present now -> new. Pneumothorax: present before, absent now -> resolved.
    assert overview.answer == ("Compared with the prior study: The pleural effusion is new. "
                               "The pneumothorax has resolved.")
    per_finding = {i.extras["target"]: i.answer for i in items[1:] if i.qtype == "captioning"}
    assert per_finding == {"change_[pleural effusion]": "The pleural effusion is new.",
                           "change_[pneumothorax]": "The pneumothorax has resolved."}
    cited = _sentences([i for i in items if i.extras.get("target") == "change_[pneumothorax]"][0])
    assert cited == [("prior", 1, "Small right pneumothorax."), ("current", 3, "No pneumothorax or consolidation.")]


def test_stage6_only_with_a_later_study_said_as_the_expected_course():
    assert stage6_items(_input(prior=True)).items == ()
    items = stage6_items(_input(next_=True)).items
    # In the order of the kinds of change: resolved (effusion, tube), then unchanged (atelectasis).
    assert items[0].answer == ("The pleural effusion is expected to resolve. The endotracheal tube is expected to "
                               "be removed. The atelectasis is expected to remain stable.")
    assert all(i.image_input_count == 0 and "<image>" not in i.question for i in items)


# ----------------------------------------------------------------------------- assembly


def _element(data, **kwargs):
    return study_to_element(assemble_study(data, **kwargs).study)


def test_assembled_studies_validate_with_zero_errors_and_count_their_images(tmp_path):
    boxes = {"p1/s2/frontal.png": (Box("Pleural effusion", 60.0, 55.0, 90.0, 80.0),)}
    elements = [_element(_input()), _element(_input(prior=True, next_=True, study_id="s2b", boxes={})),
                _element(StageInput(TimelineStudy(_study("s2c", CUR_IMAGES)), CURRENT, boxes=boxes))]
    report = validate_elements(elements)
    assert report.errors == () and report.studies == 3
    study = assemble_study(_input(prior=True, next_=True)).study
    assert study.images == ("p1/s2/frontal.png", "p1/s2/lateral.png", "p1/s1/frontal.png")
    assert (study.pat_id, study.study_id, study.ref_study_id, study.pos_study_id) == ("p1", "s2", "s1", "s3")
    assert study.items[0].image_input_count == 2 and study.items[0].question.count("<image>") == 2
    first5 = next(i for i in study.items if i.stage == 5)
    assert first5.image_input_count == 3 and first5.question.count("<image>") == 1
    assert [i.stage for i in study.items] == sorted(i.stage for i in study.items)
    assert study.cxrtrek_extras["split"] == "train"
    assert [m.content for m in study.messages[1::2]] == [i.question for i in study.items]


def test_every_item_cites_verbatim_sentences_or_names_its_rule():
    study = assemble_study(_input(prior=True, next_=True)).study
    texts = {"current": CURRENT, "prior": PRIOR, "next": NEXT}
    for item in study.items:
        provenance = thaw(item.extras["provenance"])
        assert provenance.get("sentences") or provenance.get("rule")
        for s in provenance.get("sentences", []):
            assert texts[s["study"]].sentences[s["index"]].text == s["text"]


def test_every_closed_item_parses_to_its_answer_list():
    study = assemble_study(_input(prior=True, next_=True)).study
    closed = [i for i in study.items if "choice" in i.qtype]
    assert len(closed) >= 5
    for item in closed:
        options = [o.rstrip(".") for o in thaw(item.extras["option_list"])]
        chosen = {o.rstrip(".") for o in thaw(item.extras["answer_list"])}
        parsed = parse_closed_answer(item.answer, item.question, item.qtype_parsed)
        assert {options[int(v.split(":")[1])] for v in parsed.value} == chosen, item.question


def test_same_input_same_bytes_and_the_seed_varies_the_wording():
    first = json.dumps(_element(_input(prior=True, next_=True)))
    assert json.dumps(_element(_input(prior=True, next_=True))) == first
    others = {json.dumps(_element(_input(prior=True, next_=True, seed=seed))) for seed in range(1, 4)}
    assert first not in others and len(others) == 3


def test_a_study_without_any_item_is_refused_by_name():
    silent = _facts({"comparison": ["None."]})
    with pytest.raises(ConstructError, match="plain/p1/s2.*no question could be made"):
        assemble_study(_input(facts=silent, images=(SourceImage("p1/s2/a.png"),)))


def test_a_measured_size_is_asked_as_a_size_without_a_scale_to_choose_from():
    facts = _facts({"findings": ["A 1.5 cm nodule in the right upper lobe."]},
                   mentions=[_m("nodule", "present", 0, "nodule", ["right"], ["upper lobe"], severity="1.5 cm")])
    (size,) = _by_target(stage3_items(_input(facts=facts)).items)["severity_[nodule]"]
    assert size.question.startswith("What is the size of the nodule?") and size.answer == "1.5 cm."
