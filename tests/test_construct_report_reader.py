"""The report reader (data_pipeline.construct.report_reader) against hand-written expectations.

- a table of real-style sentences (tests/data/report_reader_sentences.json) labelled by hand:
  every finding each mentions, with status, sides, severity, change (and regions where given);
- the labeller's reference sentences (tests/data/labeller_sentences.json): the reader's findings,
  mapped to CheXpert observations, give the labels listed there;
- sections of a MIMIC-CXR-layout report, an IU-style report and a report without headers;
  sentence splitting edge cases; relations; recommendations; technique; rule errors; speed.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from pathlib import Path

import pytest

from data_pipeline.construct.report_facts import ABSENT, PRESENT, SECTIONS, STATUSES, UNCERTAIN, FindingRelation
from data_pipeline.construct.report_reader import ReportReader, default_reader, read_report
from data_pipeline.construct.report_rules import RULES_DIR, load_reader_rules
from data_pipeline.construct.report_scan import tokenize
from data_pipeline.reports.chexpert_labeller import CHEXPERT_OBSERVATIONS, labeller_tokens
from cxrtrek_jax.evaluation.metrics.labeller_agreement import expected_labels, load_reference

DATA = Path(__file__).parent / "data"
TABLE = json.loads((DATA / "report_reader_sentences.json").read_text(encoding="utf-8"))["sentences"]
LABELLER_REFERENCE = load_reference(DATA / "labeller_sentences.json")


def summary(facts, finding: str) -> dict:
    """A finding's status over the report and the modifiers of its mentions with that status."""
    status = facts.status(finding)
    mentions = [m for m in facts.mentions if m.finding == finding and m.status == status]
    sides = sorted({s for m in mentions for s in m.sides})
    return {
        "status": status,
        "sides": sides,
        "regions": sorted({r for m in mentions for r in m.regions}),
        "severity": next((m.severity for m in mentions if m.severity), None),
        "change": next((m.change for m in mentions if m.change), None),
    }


# ---------------------------------------------------------------- the hand-labelled sentence table


@pytest.mark.parametrize("entry", TABLE, ids=[e["text"][:60] for e in TABLE])
def test_sentence_table(entry):
    facts = read_report(entry["text"])
    assert len(facts.sentences) == 1 and facts.sentences[0].section == "findings"
    assert {m.finding for m in facts.mentions} == set(entry["findings"]), "findings mentioned"
    for finding, expected in entry["findings"].items():
        got = summary(facts, finding)
        want = {"status": expected["status"], "sides": sorted(expected.get("sides", [])),
                "severity": expected.get("severity"), "change": expected.get("change")}
        assert {k: got[k] for k in want} == want, finding
        if "regions" in expected:
            assert got["regions"] == sorted(expected["regions"]), finding


def test_sentence_table_coverage():
    assert len(TABLE) >= 80
    texts = [e["text"].lower() for e in TABLE]
    for phrase in ("no change in", "cannot exclude", "cannot be excluded", "resolved", "no longer", "may represent",
                   "possible", "probable", "likely", "unchanged", "stable", "again seen", "new", "increase", "decreased",
                   "improved", "worsening", "removed", "interval", "no evidence of", "neither", " or ", "picc", "tube"):
        assert any(phrase in t for t in texts), phrase
    statuses = {f["status"] for e in TABLE for f in e["findings"].values()}
    assert statuses == set(STATUSES)
    rules = default_reader().rules
    devices = {name for e in TABLE for name in e["findings"] if rules.findings[name].category == "foreign_body"}
    assert len(devices) >= 10
    changes = {f.get("change") for e in TABLE for f in e["findings"].values()} - {None}
    assert changes == {"new", "increased", "decreased", "unchanged", "resolved", "improved", "worsened"}
    assert {s for e in TABLE for f in e["findings"].values() for s in f.get("sides", [])} == {"left", "right", "bilateral"}


def test_every_table_finding_is_a_rule_finding():
    rules = default_reader().rules
    names = {name for e in TABLE for name in e["findings"]}
    assert names <= set(rules.findings), names - set(rules.findings)


# ---------------------------------------------------------------- agreement with the labeller's reference set

_VALUE = {PRESENT: 1, ABSENT: 0, UNCERTAIN: -1}


def chexpert_labels(facts) -> dict:
    """CheXpert labels from the reader's findings (positive over uncertain over negative; No Finding
    positive when nothing but support devices is positive or uncertain): CheXpert's own rule."""
    rules = default_reader().rules
    labels = {o: None for o in CHEXPERT_OBSERVATIONS}
    for observation in CHEXPERT_OBSERVATIONS[1:]:
        values = {_VALUE[m.status] for m in facts.mentions if rules.findings[m.finding].chexpert == observation}
        labels[observation] = next((v for v in (1, -1, 0) if v in values), None)
    if not any(labels[o] in (1, -1) for o in CHEXPERT_OBSERVATIONS[1:] if o != "Support Devices"):
        labels["No Finding"] = 1
    return labels


def test_agrees_with_labeller_reference_set():
    wrong, widened = [], []
    for sentence in LABELLER_REFERENCE:
        expected, got = expected_labels(sentence), chexpert_labels(read_report(sentence.text))
        wrong += [(sentence.text, o, expected[o], got[o]) for o in sentence.labels if got[o] != expected[o]]
        extra = [(o, got[o]) for o in CHEXPERT_OBSERVATIONS[1:] if o not in sentence.labels and got[o] is not None]
        if extra:
            widened.append((sentence.text, extra))
    assert wrong == []
    # The one intended difference: "the lungs are clear" also rules out consolidation.
    assert all(extra == [("Consolidation", 0)] and "clear" in text.lower() for text, extra in widened), widened
    assert len(widened) == 9


# ---------------------------------------------------------------- sections

MIMIC_REPORT = """WET READ: ___ ___ ___ 2:14 AM
  Small left pneumothorax.  No other acute process.
 ______________________________________________________________________________
                                 FINAL REPORT
 EXAMINATION:  CHEST (PORTABLE AP)
 
 INDICATION:  ___ year old man with left chest tube, evaluate for pneumothorax.
 
 TECHNIQUE:  Single portable view of the chest.
 
 COMPARISON:  Chest radiograph from ___.
 
 FINDINGS: 
 
 Left chest tube is unchanged in position.  The previously seen small left apical
 pneumothorax is no longer visualized.  There is no change in the small left
 pleural effusion with adjacent atelectasis.  Heart size is normal.  Mediastinal
 and hilar contours are unremarkable.  The patient is rotated to the right and
 lung volumes are low.
 
 IMPRESSION: 
 
 1.  Resolved left pneumothorax.
 2.  Small left pleural effusion, unchanged.  Recommend follow-up radiograph
 after chest tube removal.
 
 NOTIFICATION:  The findings were discussed with Dr. ___ by telephone at 9:10 a.m.
"""


def test_mimic_layout_sections_and_sentences():
    facts = read_report(MIMIC_REPORT)
    assert list(facts.sections) == ["wet_read", "examination", "indication", "technique", "comparison", "findings",
                                    "impression", "notification"]
    assert facts.sections["examination"] == "CHEST (PORTABLE AP)"
    assert facts.sections["indication"] == "___ year old man with left chest tube, evaluate for pneumothorax."
    assert facts.sections["impression"].startswith("1. Resolved left pneumothorax. 2. Small left pleural effusion")
    findings = [s.text for s in facts.sentences if s.section == "findings"]
    assert findings == [
        "Left chest tube is unchanged in position.",
        "The previously seen small left apical pneumothorax is no longer visualized.",
        "There is no change in the small left pleural effusion with adjacent atelectasis.",
        "Heart size is normal.",
        "Mediastinal and hilar contours are unremarkable.",
        "The patient is rotated to the right and lung volumes are low.",
    ]
    assert [s.text for s in facts.sentences if s.section == "impression"] == [
        "Resolved left pneumothorax.",
        "Small left pleural effusion, unchanged.",
        "Recommend follow-up radiograph after chest tube removal.",
    ]
    assert [s.index for s in facts.sentences] == list(range(len(facts.sentences)))


def test_mimic_layout_facts():
    facts = read_report(MIMIC_REPORT)
    # The wet read says "small left pneumothorax" and the indication asks about one: neither is read.
    assert facts.status("pneumothorax") == ABSENT
    assert summary(facts, "pneumothorax")["change"] == "resolved"
    assert summary(facts, "pleural effusion") == {"status": PRESENT, "sides": ["left"], "regions": [],
                                                  "severity": "small", "change": "unchanged"}
    assert facts.status("chest tube") == PRESENT and facts.status("cardiomegaly") == ABSENT
    assert facts.status("hilar enlargement") == ABSENT and facts.status("atelectasis") == PRESENT
    assert FindingRelation("associated_with", "pleural effusion", "atelectasis", 8) in facts.relations
    recommended = [facts.sentences[i].text for i in facts.recommendations]
    assert recommended == ["Recommend follow-up radiograph after chest tube removal."]
    technique = facts.technique
    assert (technique.view, technique.portable, technique.rotated, technique.inspiration) == ("AP", True, True, "low")


IU_REPORT = ("Comparison: None. Indication: Positive TB test. Findings: The heart is normal in size. The mediastinum "
             "is unremarkable. The lungs are clear. There is a calcified granuloma in the right upper lobe. "
             "Impression: No acute disease.")


def test_iu_style_inline_headers():
    facts = read_report(IU_REPORT)
    assert dict(facts.sections) == {
        "comparison": "None.",
        "indication": "Positive TB test.",
        "findings": "The heart is normal in size. The mediastinum is unremarkable. The lungs are clear. There is a "
                    "calcified granuloma in the right upper lobe.",
        "impression": "No acute disease.",
    }
    assert facts.findings(PRESENT) == ("granuloma",)
    assert set(facts.findings(ABSENT)) == {"cardiomegaly", "lung opacity", "consolidation"}


def test_report_without_headers_is_all_findings():
    text = "PA and lateral views of the chest.\nThe lungs are clear.  No pleural effusion or pneumothorax.\n"
    facts = read_report(text)
    assert list(facts.sections) == ["findings"]
    assert [s.text for s in facts.sentences] == [
        "PA and lateral views of the chest.", "The lungs are clear.", "No pleural effusion or pneumothorax."]
    assert facts.technique.view == "PA" and facts.technique.portable is None
    assert facts.status("pneumothorax") == ABSENT


@pytest.mark.parametrize(
    "text, sections",
    [
        ("CLINICAL HISTORY: Cough.\nFINDINGS: Clear lungs.\nCONCLUSION: Normal.", ["indication", "findings", "impression"]),
        ("REASON FOR EXAM: Fever.\n\nIMPRESSION\nNo pneumonia.", ["indication", "impression"]),
        ("HISTORY: Dyspnea. Findings: No effusion. Impression: Normal.", ["indication", "findings", "impression"]),
        ("EXAMINATION: Chest PA and lateral\nTECHNIQUE: Two views.\nCOMPARISON: ___\nRECOMMENDATION(S): CT chest.",
         ["examination", "technique", "comparison", "recommendation"]),
        ("INDICATION: eval.\n\nHeart size is normal.\n\nIMPRESSION: Normal.", ["indication", "findings", "impression"]),
        ("CHEST (PA AND LAT)\n\nFINDINGS: No effusion.", ["examination", "findings"]),
        (" UNDERLYING MEDICAL CONDITION:\n  ___ year old man\n REASON FOR THIS EXAMINATION:\n  eval ptx\n"
         " ______\n FINAL REPORT\n FINDINGS: No ptx.\n FINAL ADDENDUM: Clips noted.", ["indication", "findings", "addendum"]),
        ("The heart size is normal: findings are stable. Impression: stable.", ["findings", "impression"]),
        ("The heart size is normal. Findings are stable: no change.", ["findings"]),
    ],
)
def test_header_variants(text, sections):
    assert list(read_report(text).sections) == sections


def test_indication_question_is_not_a_finding():
    facts = read_report("INDICATION: Evaluate for pneumonia.\nFINDINGS: No consolidation.")
    assert facts.status("pneumonia") is None and facts.status("consolidation") == ABSENT


def test_status_over_sentences_is_present_over_uncertain_over_absent():
    facts = read_report("No pleural effusion on the right. Small left pleural effusion. Possible pneumonia.")
    assert facts.status("pleural effusion") == PRESENT and facts.status("pneumonia") == UNCERTAIN
    assert facts.findings(PRESENT) == ("pleural effusion",) and facts.findings(UNCERTAIN) == ("pneumonia",)


def test_sections_are_canonical_and_empty_text_is_empty():
    assert set(read_report(MIMIC_REPORT).sections) <= set(SECTIONS)
    empty = read_report("   \n ")
    assert (dict(empty.sections), empty.sentences, empty.mentions) == ({}, (), ())


def test_non_text_is_refused():
    with pytest.raises(TypeError, match="expected the report text as str, got bytes"):
        read_report(b"No effusion.")


# ---------------------------------------------------------------- sentences


@pytest.mark.parametrize(
    "text, sentences",
    [
        ("A 1.5 cm nodule. It is unchanged.", ["A 1.5 cm nodule.", "It is unchanged."]),
        ("Discussed with Dr. ___ at 10:30 a.m. on ___. No effusion.",
         ["Discussed with Dr. ___ at 10:30 a.m. on ___.", "No effusion."]),
        ("Seen at 9 a.m. The tube is in place.", ["Seen at 9 a.m.", "The tube is in place."]),
        ("Nodule measures approx. 8 mm. No mass.", ["Nodule measures approx. 8 mm.", "No mass."]),
        ("1. Cardiomegaly. 2. Small effusion.", ["Cardiomegaly.", "Small effusion."]),
        ("1. Cardiomegaly 2. Small effusion", ["Cardiomegaly", "Small effusion"]),
        ("1.  No pneumothorax.\n 2.  Stable effusion\n with atelectasis.", ["No pneumothorax.", "Stable effusion with atelectasis."]),
        ("Devices (e.g. the ET tube) are in place. Lungs clear.", ["Devices (e.g. the ET tube) are in place.", "Lungs clear."]),
        ("Heart size is\n normal.  Lungs are\n clear", ["Heart size is normal.", "Lungs are clear"]),
        ("No effusion\n\nNo pneumothorax", ["No effusion", "No pneumothorax"]),
        ("Is there a pneumothorax? No. Lungs clear!", ["Is there a pneumothorax?", "No.", "Lungs clear!"]),
        ("Findings per Dr. J. Smith. Stable.", ["Findings per Dr. J. Smith.", "Stable."]),
    ],
)
def test_sentence_splitting(text, sentences):
    assert [s.text for s in read_report(text).sentences] == sentences


# ---------------------------------------------------------------- relations and recommendations


@pytest.mark.parametrize(
    "text, relations",
    [
        ("Small right pleural effusion with associated atelectasis.", [("associated_with", "pleural effusion", "atelectasis")]),
        ("Bilateral perihilar opacities likely reflecting pulmonary edema.", [("likely_reflecting", "lung opacity", "edema")]),
        ("Retrocardiac opacity may represent atelectasis or pneumonia.",
         [("likely_reflecting", "lung opacity", "atelectasis"), ("likely_reflecting", "lung opacity", "pneumonia")]),
        ("Left basilar opacity, likely atelectasis.", [("likely_reflecting", "lung opacity", "atelectasis")]),
        ("Atelectasis due to the large left pleural effusion.", [("due_to", "atelectasis", "pleural effusion")]),
        ("Increased interstitial markings consistent with pulmonary edema.",
         [("consistent_with", "interstitial abnormality", "edema")]),
        ("The lungs are hyperinflated, consistent with COPD.", [("consistent_with", "hyperinflation", "emphysema")]),
        ("Mass in the right upper lobe concerning for malignancy.", [("likely_reflecting", "mass", "malignancy")]),
        ("The heart is enlarged, consistent with cardiomegaly.", []),
        ("Left lower lobe collapse due to mucus plugging.", []),
        ("No effusion, consistent with resolution.", []),
        ("Findings are consistent with pneumonia.", []),
    ],
)
def test_relations(text, relations):
    assert [(r.kind, r.source, r.target) for r in read_report(text).relations] == relations


@pytest.mark.parametrize(
    "text, recommended",
    [
        ("IMPRESSION: Nodule. Recommend chest CT for further evaluation.", ["Recommend chest CT for further evaluation."]),
        ("FINDINGS: Opacity. IMPRESSION: Follow-up radiographs after treatment are advised.",
         ["Follow-up radiographs after treatment are advised."]),
        ("Opacity in the right base. Correlate clinically for pneumonia.", ["Correlate clinically for pneumonia."]),
        ("Nodule. If clinically indicated, CT of the chest could be considered.",
         ["If clinically indicated, CT of the chest could be considered."]),
        ("RECOMMENDATION(S): Chest CT in 3 months.", ["Chest CT in 3 months."]),
        ("INDICATION: Follow-up of pneumonia.\nFINDINGS: Resolved pneumonia.", []),
        ("Findings suggest pneumonia.", []),
    ],
)
def test_recommendations(text, recommended):
    facts = read_report(text)
    assert [facts.sentences[i].text for i in facts.recommendations] == recommended


# ---------------------------------------------------------------- technique


@pytest.mark.parametrize(
    "text, view, portable, rotated, inspiration, excluded",
    [
        ("PA and lateral views of the chest.", "PA", None, None, None, ()),
        ("AP portable chest radiograph.", "AP", True, None, None, ()),
        ("Single portable view of the chest.", "AP", True, None, None, ()),
        ("EXAMINATION: CHEST (PA AND LAT)\nFINDINGS: No effusion.", "PA", None, None, None, ()),
        ("Supine frontal radiograph.", "AP", None, None, None, ()),
        ("Lateral view only.", "LATERAL", None, None, None, ()),
        ("Compared to the prior AP radiograph, no change.", None, None, None, None, ()),
        ("The patient is rotated.", None, None, True, None, ()),
        ("There is no patient rotation.", None, None, False, None, ()),
        ("Low lung volumes.", None, None, None, "low", ()),
        ("Shallow inspiration limits evaluation of the bases.", None, None, None, "low", ()),
        ("Lung volumes are normal.", None, None, None, "adequate", ()),
        ("The right costophrenic angle is excluded from the field of view.", None, None, None, None,
         ("right costophrenic angle",)),
        ("The left lung base is not included on the film.", None, None, None, None, ("left lung base",)),
        ("A left pneumothorax cannot be excluded at the apex.", None, None, None, None, ()),
        ("Increased AP diameter of the chest.", None, None, None, None, ()),
    ],
)
def test_technique(text, view, portable, rotated, inspiration, excluded):
    t = read_report(text).technique
    assert (t.view, t.portable, t.rotated, t.inspiration, t.excluded_anatomy) == (view, portable, rotated,
                                                                                 inspiration, excluded)


def test_technique_sentences_are_named():
    facts = read_report("COMPARISON: PA view of ___.\nFINDINGS: AP portable view. Heart size is normal. Low lung volumes.")
    assert facts.technique.view == "AP"
    assert [facts.sentences[i].text for i in facts.technique.sentences] == ["AP portable view.", "Low lung volumes."]


# ---------------------------------------------------------------- tokens, phrases, rules


@pytest.mark.parametrize("text", ["Heart size is mildly enlarged.", "Left-sided PICC; 1.5 cm nodule, ___ x-ray",
                                  "ETT 4.5 cm above the carina: approx. stable!"])
def test_tokens_are_the_labellers(text):
    tokens, offsets = tokenize(text)
    assert list(tokens) == [t for t in labeller_tokens(text) if t not in (".", "!", "?", "\n")]
    assert [text[a:b].lower().replace("-", " ") for a, b in offsets][:2] == [t for t in labeller_tokens(text)][:2]


def test_mention_phrase_is_verbatim():
    facts = read_report("The Heart Is Mildly Enlarged. Left-sided PICC line.")
    assert [m.phrase for m in facts.mentions] == ["Heart Is Mildly Enlarged", "PICC line"]


def _copy_rules(tmp_path: Path) -> Path:
    target = tmp_path / "rules"
    shutil.copytree(RULES_DIR, target)
    return target


def _edit(path: Path, change) -> None:
    rules = json.loads(path.read_text())
    change(rules)
    path.write_text(json.dumps(rules))


@pytest.mark.parametrize(
    "file, change, message",
    [
        ("findings.json", lambda r: r["findings"]["nodule"].update(category="lesion"), r"findings\['nodule'\]: category"),
        ("findings.json", lambda r: r["findings"]["nodule"].update(chexpert="Lung Mass"), "not a labeller observation"),
        ("findings.json", lambda r: r["findings"]["mass"]["mentions"].append("pulmonary nodule"),
         "claimed by 'nodule' and 'mass'"),
        ("findings.json", lambda r: r["findings"]["hernia"]["mentions"].append("pneumothorax"),
         "'hernia' claims the labeller's Pneumothorax phrase"),
        ("findings.json", lambda r: r["inherit"].pop("Fracture"), "inherit must name a finding"),
        ("findings.json", lambda r: r["normals"][0]["findings"].append("lung cyst"), "unknown: \\['lung cyst'\\]"),
        ("findings.json", lambda r: r["normals"][0].update(findings=["consolidation"]), "must keep 'lung opacity'"),
        ("findings.json", lambda r: r["cues"].update(negation_sideways=["no"]), "not a labeller cue kind"),
        ("findings.json", lambda r: r.pop("normals"), "missing field 'normals'"),
        ("context.json", lambda r: r["changes"].update(vanished={"pre": ["gone"], "post": []}), "changes\\['vanished'\\]"),
        ("context.json", lambda r: r["relations"].update(causes=["causes"]), "unknown relation value"),
        ("context.json", lambda r: r["headers"].update(summary=["SUMMARY"]), "headers\\['summary'\\] is not a section"),
        ("context.json", lambda r: r["headers"]["findings"].append("IMPRESSION"), "names 'findings' and 'impression'"),
        ("context.json", lambda r: r["technique"]["view"].update(PA=["pa ..."]), "starts/ends with '...'"),
    ],
)
def test_bad_rules_are_refused_by_file_and_entry(tmp_path, file, change, message):
    rules_dir = _copy_rules(tmp_path)
    _edit(rules_dir / file, change)
    with pytest.raises(ValueError, match=message) as error:
        load_reader_rules(rules_dir)
    assert str(rules_dir / file) in str(error.value)


def test_unreadable_rules_are_refused(tmp_path):
    rules_dir = _copy_rules(tmp_path)
    (rules_dir / "context.json").write_text("{not json")
    with pytest.raises(ValueError, match="cannot read report reader rules .*context.json"):
        load_reader_rules(rules_dir)


def test_reader_with_edited_rules(tmp_path):
    rules_dir = _copy_rules(tmp_path)
    _edit(rules_dir / "findings.json", lambda r: r["findings"]["nodule"]["mentions"].append("spiculated density"))
    reader = ReportReader(load_reader_rules(rules_dir))
    assert reader.read("A spiculated density in the left upper lobe.").status("nodule") == PRESENT
    assert read_report("A spiculated density in the left upper lobe.").status("nodule") is None


def test_rules_package_data_is_declared():
    setup = (Path(__file__).parents[1] / "setup.cfg").read_text()
    assert "data_pipeline.construct = report_rules/*.json" in setup


# ---------------------------------------------------------------- speed

_TEMPLATE = """                                 FINAL REPORT
 EXAMINATION:  CHEST ({view})
 
 INDICATION:  ___ year old {sex} with {reason}
 
 TECHNIQUE:  {technique}
 
 COMPARISON:  {comparison}
 
 FINDINGS: 
 
 {findings}
 
 IMPRESSION: 
 
 {impression}
"""


def realistic_reports(count: int, seed: int = 0) -> list[str]:
    """MIMIC-layout reports with varied findings and impressions drawn from the sentence tables."""
    rng = random.Random(seed)
    pool = [e["text"] for e in TABLE] + [s.text for s in LABELLER_REFERENCE]
    reports = []
    for _ in range(count):
        findings = " ".join(rng.sample(pool, rng.randint(4, 9)))
        wrapped = "\n ".join(findings[i : i + 78] for i in range(0, len(findings), 78))
        reports.append(_TEMPLATE.format(
            view=rng.choice(["PA AND LAT", "PORTABLE AP"]), sex=rng.choice(["man", "woman"]),
            reason=rng.choice(["dyspnea", "fever, eval for pneumonia", "line placement"]),
            technique=rng.choice(["Chest PA and lateral", "Single portable view of the chest."]),
            comparison=rng.choice(["None.", "___"]), findings=wrapped,
            impression=" ".join(f"{i + 1}. {s}" for i, s in enumerate(rng.sample(pool, rng.randint(1, 3)))),
        ))
    return reports


def test_reading_speed(capsys):
    reports = realistic_reports(2000)
    reader = default_reader()
    reader.read(reports[0])
    start = time.process_time()
    facts = [reader.read(r) for r in reports]
    rate = len(reports) / (time.process_time() - start)
    with capsys.disabled():
        print(f"\nreport reader: {rate:.0f} reports/s (CPU time, one core, {len(reports)} MIMIC-layout reports)")
    assert sum(len(f.mentions) for f in facts) > 10 * len(reports)
    assert rate > 100  # a floor far below the measured rate: it catches a many-fold slowdown, not noise
