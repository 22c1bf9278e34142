"""Read a free-text chest X-ray report: `read_report(text) -> ReportFacts`.

    facts = read_report(open("s50414267.txt").read())
    facts.status("pleural effusion")   # "present" / "absent" / "uncertain" / None (not mentioned)

Steps: sections by their headers (`report_sections`; MIMIC-CXR's layout, IU/Open-i style inline
headers, reports without headers), sentences (`report_sentences`), then per sentence one scan
(`report_scan`) giving finding mentions with status, sides, regions, severity and change
(`report_mentions`), relations (`report_relations`), recommendations and technique
(`report_technique`). Rules: `report_rules/findings.json` and `report_rules/context.json`.

Which sentences give which facts:
- findings, relations: the findings, impression, recommendation, notification and addendum
  sections (never the indication's question "eval for pneumonia", the comparison or the wet read);
- recommendations: a sentence of those sections with a recommendation phrase ("recommend",
  "follow-up", "correlate clinically", "CT ... could be considered"), and every sentence of the
  recommendation section;
- technique: every section but the indication, the comparison and the wet read.

Why the project's labeller and not negspacy/medspacy: the reader reuses the CheXpert-style
labeller (`data_pipeline.reports.chexpert_labeller`): its tokeniser, phrase matcher, cue lists and
scope logic, with finer-grained finding phrases, extra cues and context words in its own rule
files. So a report's presence/absence/uncertainty agrees with the labeller's CheXpert labels, which
this project's clinical-efficacy scores already use and which are checked against a published-
pattern sentence set (`tests/data/labeller_sentences.json`); there is one negation engine to keep,
not two that drift apart. negspacy and medspacy (ConText) were considered: both need spaCy, which
is not a project dependency; negspacy needs a spaCy pipeline with an entity recogniser (model
packages come from outside the package index, so not installable offline) to find the findings it
negates, and medspacy's target rules would be a second phrase list and its ConText a second set of
negation rules beside the labeller's. The labeller's engine is also fast enough in pure Python
(hundreds of reports a second on one core, `tests/test_construct_report_reader.py`).
"""

from __future__ import annotations

import functools

from data_pipeline.construct.report_facts import FindingMention, FindingRelation, ReportFacts, ReportSentence
from data_pipeline.construct.report_mentions import roles, sentence_mentions
from data_pipeline.construct.report_relations import sentence_relations
from data_pipeline.construct.report_rules import ReaderRules, default_rules
from data_pipeline.construct.report_scan import SentenceScan, SentenceScanner
from data_pipeline.construct.report_sections import header_pattern, split_sections
from data_pipeline.construct.report_sentences import split_sentences
from data_pipeline.construct.report_technique import technique_facts

__all__ = ["READ_SECTIONS", "UNSCANNED_SECTIONS", "ReportReader", "read_report", "default_reader"]

READ_SECTIONS = ("findings", "impression", "recommendation", "notification", "addendum")
UNSCANNED_SECTIONS = ("indication", "comparison", "wet_read")


class ReportReader:
    """Reads reports with one set of rules (see the module docstring); `read` is `read_report`."""

    def __init__(self, rules: ReaderRules | None = None):
        self.rules = rules or default_rules()
        self.scanner = SentenceScanner(self.rules)
        self._headers = header_pattern(self.rules)

    def _sentences(self, text: str) -> tuple[dict[str, str], list[ReportSentence]]:
        sections: dict[str, list[str]] = {}
        sentences: list[ReportSentence] = []
        for section, body in split_sections(text, self.rules, self._headers):
            sections.setdefault(section, []).append(" ".join(body.split()))
            for sentence in split_sentences(body, self.rules):
                sentences.append(ReportSentence(section, len(sentences), sentence))
        return {name: " ".join(parts) for name, parts in sections.items()}, sentences

    @staticmethod
    def _is_recommendation(sentence: ReportSentence, scan: SentenceScan) -> bool:
        if sentence.section == "recommendation":
            return True
        return sentence.section in READ_SECTIONS and any(
            role == "recommend" for span in scan.context for role, _ in roles(span.kind)
        )

    def read(self, text: str) -> ReportFacts:
        """The facts of one report's free text (any layout; empty text gives empty facts)."""
        if not isinstance(text, str):
            raise TypeError(f"read_report: expected the report text as str, got {type(text).__name__}")
        sections, sentences = self._sentences(text)
        scans = {s.index: self.scanner.scan(s.text) for s in sentences if s.section not in UNSCANNED_SECTIONS}
        mentions: list[FindingMention] = []
        relations: list[FindingRelation] = []
        for index, scan in scans.items():
            if sentences[index].section in READ_SECTIONS:
                mentions += sentence_mentions(self.scanner, scan, index)
                relations += sentence_relations(self.scanner, scan, index)
        return ReportFacts(
            sections=sections,
            sentences=tuple(sentences),
            mentions=tuple(mentions),
            relations=tuple(relations),
            recommendations=tuple(i for i, scan in scans.items() if self._is_recommendation(sentences[i], scan)),
            technique=technique_facts(self.scanner, list(scans.items())),
        )


@functools.lru_cache(maxsize=1)
def default_reader() -> ReportReader:
    """The reader with the shipped rules (cached)."""
    return ReportReader()


def read_report(text: str) -> ReportFacts:
    """The facts of one report's free text, read with the shipped rules (see the module docstring)."""
    return default_reader().read(text)
