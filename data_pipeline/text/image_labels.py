"""Finding labels of a study's current image, read from its own stage-2 answers.

An auxiliary image-label loss (`cxrtrek_jax.train.step`, `image_label_weight`) needs, per
training row, which findings the current radiograph shows. The data already says so: stage 2
asks about findings and answers them. A study's labels are those answers for the six kinds of
`data_pipeline.schema.findings`, in the order of `IMAGE_LABEL_KINDS`; a kind its stage 2 does not
answer (or answers both ways) is unknown (mask 0). The same rule serves the phantom and the
released CXRTrek files: nothing here reads the phantom's ground truth.

How one closed stage-2 turn is read (`turn_labels`):

1. The asking clause: each sentence of the question that ends in "?" and, after a lead-in up to
   its last colon or opening quote ("Pick yes or no: ...", "Reply to '...' ..."), starts as a
   yes/no question does ("Is", "Are", "Can", "Does", "Any", ...). `<image>` placeholders, image
   introductions, format hints and option lists are other sentences and are not read; a "What
   ...?" question is not a yes/no question and gives no label, nor does one asking about findings
   other than those it names ("besides consolidation?", `OTHER_THAN_PHRASES`).
2. What it asks: the project's CheXpert-style labeller (`data_pipeline.reports.chexpert_labeller`,
   its rules in `labeller_rules/*.json`) finds the mentions in that clause, on whole words, with
   their negation and uncertainty; the kinds are those whose CheXpert observation
   (`CHEXPERT_LABELS`) is mentioned. A `normal` phrase ("Is the heart size normal?") asks about an
   organ, not a finding, and is not read. A negated mention ("free of X", "the absence of X")
   asks for the finding's absence; an uncertain one ("a possible X", "suggesting X") still asks
   for its presence. Mentions negated and not negated in one question: no label.
3. The decision: with options that are exactly Yes and No (`choice_options.parse_options`: "A. No.
   or B. Yes.", "[ 1. Yes. or 2. No. ]", one per line, ...), the option the answer names by its
   key, its text, or both when they agree ("B. Yes."); otherwise, for a yes_no turn, the answer's
   leading "Yes"/"No".
4. The claim: the answer says the asked finding present when it says "Yes" to a question asking
   for presence or "No" to one asking for absence, and absent otherwise. A presence claim about
   several kinds at once ("effusion or pneumothorax?" "Yes.") says no kind for sure: no label;
   an absence claim holds for each kind. An absence claim holds only when the question names the
   whole kind (`WHOLE_KIND_MENTIONS`) and does not narrow it (`QUALIFYING_WORDS`, a place other
   than the whole radiograph: `WHOLE_IMAGE_WORDS`): "No." to a hydropneumothorax, an ET tube or a
   mass says nothing about every pneumothorax, device or nodule, and "No." to a finding "in the
   left lung", "in the heart", a "large" one or a "correctly positioned" one denies only that.
   (A hydropneumothorax is a pneumothorax by the labeller's rules, so its "Yes." is a pneumothorax.)
5. The answer's body (what follows the decision) is read by the same labeller, its first sentence
   (where the answer states its finding; later sentences reason around it): a mention of the kind
   whose status contradicts the claim ("Yes. There is no ... tubes") or is uncertain ("Yes.
   Possible small effusion.") leaves the kind unknown.

`image_label_counts` counts how many studies carry labels (and which), and `format_image_label_counts`
says so on the console (the trainer prints it when the image-label loss is on), with a warning when
fewer than `FEW_LABELLED_FRACTION` of the studies carry one.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections import Counter
from collections.abc import Iterable, Mapping

import numpy as np

from data_pipeline.reports.chexpert_labeller import Mention, default_labeller, labeller_tokens
from data_pipeline.schema.findings import CHEXPERT_LABELS, FINDING_KINDS
from data_pipeline.schema.records import IMAGE_PLACEHOLDER, Study
from data_pipeline.text.choice_options import OPTION_KEY, parse_options

__all__ = ["IMAGE_LABEL_KINDS", "LABEL_STAGE", "WHOLE_KIND_MENTIONS", "QUALIFYING_WORDS", "WHOLE_IMAGE_WORDS",
           "OTHER_THAN_PHRASES", "FEW_LABELLED_FRACTION", "ImageLabelCounts", "turn_labels", "presence_answers",
           "study_image_labels", "image_label_counts", "format_image_label_counts"]

IMAGE_LABEL_KINDS = FINDING_KINDS
LABEL_STAGE = 2  # findings identification
# Mentions (labeller phrases of the kind's observation; "..." a gap of a few words) that name the whole
# kind, so that a "No." about them says the kind is absent. Other mentions of the observation name a part.
WHOLE_KIND_MENTIONS = {
    "support_devices": ("support device", "medical device", "device", "tube", "hardware", "line and tube",
                        "tubes and line", "lines and tube"),
    "cardiomegaly": ("cardiomegaly", "enlarged heart", "heart enlargement", "enlargement of the heart",
                     "cardiac enlargement", "enlarged cardiac silhouette", "enlargement of the cardiac silhouette",
                     "enlarged heart size", "increased heart size", "enlarged cardiac size", "enlarged cardiac contour",
                     "heart ... enlarged", "heart size ... enlarged", "heart size ... increased", "heart ... large",
                     "heart size ... large", "cardiac silhouette ... enlarged", "cardiac silhouette ... large",
                     "cardiac silhouette ... increased", "cardiac size ... enlarged", "cardiac size ... increased",
                     "cardiac contour ... enlarged"),
    "pleural_effusion": ("pleural effusion", "effusion", "pleural fluid", "hydrothorax", "pleural collection"),
    "pneumothorax": ("pneumothorax", "pneumothoraces", "pneumothoraxes", "ptx"),
    "consolidation": ("consolidation", "airspace consolidation", "air space consolidation"),
    "nodule": ("nodule", "lung nodule", "pulmonary nodule", "lesion", "lung lesion"),
}
# Words that narrow what a question asks about a finding: where it is ("in the left lung", "lower lobe",
# "in the posterior mediastinum"), how large, how many, how new, where its tip lies. A "No." then may deny
# only the narrowing. As the labeller tokenises them (singular); words of a mention itself do not count.
QUALIFYING_WORDS = frozenset({
    "left", "right", "bilateral", "upper", "lower", "middle", "mid", "lobe", "lobar", "zone", "base", "basal",
    "basilar", "bibasilar", "bibasal", "apex", "apical", "apice", "hilar", "perihilar", "retrocardiac", "lingula",
    "lingular", "costophrenic", "anterior", "posterior", "mediastinum", "mediastinal", "axilla", "axillary", "wall",
    "rib", "neck", "abdomen", "small", "large", "moderate", "mild", "severe", "massive", "tiny", "trace",
    "significant", "subtle", "multiple", "new", "metastatic", "loculated", "positioned", "position", "located",
    "placed", "placement", "tip",
})
# After "in", "within", "at", "on" or "over", the words that place a question in the whole radiograph ("in the
# main study X-ray", "on this radiograph", "in the lungs"); any other word there narrows it ("in the heart",
# "in the pulmonary vasculature").
WHOLE_IMAGE_WORDS = frozenset({
    "the", "this", "these", "a", "an", "any", "x", "ray", "xray", "s", "image", "radiograph", "radiographic", "film",
    "scan", "study", "exam", "examination", "view", "main", "current", "frontal", "chest", "thorax", "thoracic",
    "lung", "both", "patient", "picture",
})
_LOCATIVES = frozenset({"in", "within", "inside", "at", "on", "over"})
# Phrases by which a question asks about findings other than those it names ("besides consolidation").
OTHER_THAN_PHRASES = ("besides", "apart from", "aside from", "other than", "distinct from", "coexisting with",
                      "excluding", "except", "in addition to", "beyond", "along with")
# Below this fraction of studies with a label the trainer warns that the image-label loss barely acts.
FEW_LABELLED_FRACTION = 0.10

_KIND_OF_OBSERVATION = {CHEXPERT_LABELS[kind]: kind for kind in IMAGE_LABEL_KINDS}
_SENTENCE_BREAK = re.compile(r"(?<=[.?!])\s+|\n")
_LEAD_IN = re.compile(r"^.*(?::\s*|(?<!\w)')")
_ASKING = re.compile(r"(?:is|are|was|were|do|does|did|can|could|would|will|should|has|have|had|may|might|any)\b",
                     re.IGNORECASE)
_OPTION_KEY_ANSWER = re.compile(rf"\s*\(?({OPTION_KEY})(?:[.)]+|\s*$)")
_YES_NO_ANSWER = re.compile(r"\s*(yes|no)\b[.,;:!]*", re.IGNORECASE)


def _closed(qtype: str) -> bool:
    """Whether a turn of `qtype` is closed (answered by a choice of yes/no or of options)."""
    return qtype in ("yes_no", "single-choice") or qtype.startswith("multi-choice")


def _asking_clauses(question: str) -> list[str]:
    """The question's yes/no clauses (step 1 of the module docstring)."""
    clauses = []
    for sentence in _SENTENCE_BREAK.split(question.replace(IMAGE_PLACEHOLDER, " ")):
        sentence = sentence.strip()
        if sentence.endswith("?"):
            clause = _LEAD_IN.sub("", sentence).strip()
            if _ASKING.match(clause):
                clauses.append(clause)
    return clauses


def _yes_no_options(question: str) -> dict[str | None, bool] | None:
    """option key (None when unlabelled) -> says yes, when the options are exactly Yes and No."""
    options = parse_options(question)
    texts = [option.text.rstrip(".").strip().lower() for option in options]
    if sorted(texts) != ["no", "yes"]:
        return None
    return {option.key: text == "yes" for option, text in zip(options, texts)}


def _decision(question: str, qtype: str, answer: str) -> tuple[bool, str] | None:
    """(the answer says yes, the answer's body after the decision), or None when it decides nothing."""
    options = _yes_no_options(question)
    rest, by_key = answer, None
    if options is not None:
        keyed = _OPTION_KEY_ANSWER.match(answer)
        if keyed:
            if keyed.group(1) not in options:
                return None
            by_key, rest = options[keyed.group(1)], answer[keyed.end():]
    elif qtype != "yes_no":
        return None
    worded = _YES_NO_ANSWER.match(rest)
    by_word = worded.group(1).lower() == "yes" if worded else None
    rest = rest[worded.end():] if worded else rest
    said = {value for value in (by_key, by_word) if value is not None}
    return (said.pop(), rest.strip()) if len(said) == 1 else None  # none said, or key and word disagree


def _names_whole_kind(kind: str, mention: Mention) -> bool:
    """Whether the mention is one of the kind's `WHOLE_KIND_MENTIONS` ("..." spanning any words)."""
    words = mention.text.split()
    for phrase in WHOLE_KIND_MENTIONS[kind]:
        before, gap, after = phrase.partition("...")
        head, tail = labeller_tokens(before), labeller_tokens(after)
        if not gap and words == head:
            return True
        if gap and len(words) >= len(head) + len(tail) and words[:len(head)] == head and words[-len(tail):] == tail:
            return True
    return False


def _asked(clauses: str) -> dict[str, list[Mention]]:
    """finding kind -> its mentions in the asking clauses (`normal` phrases left out)."""
    asked: dict[str, list[Mention]] = {}
    for mention in default_labeller().label(clauses).mentions:
        kind = _KIND_OF_OBSERVATION.get(mention.observation)
        if kind is not None and not mention.normal:
            asked.setdefault(kind, []).append(mention)
    return asked


def _placed_words(tokens: list[str]) -> list[str]:
    """The words after a locative ("in the left lower lobe") up to the end of their clause."""
    placed, after_locative = [], False
    for token in tokens:
        if not token[0].isalnum():
            after_locative = False
        elif after_locative:
            placed.append(token)
        elif token in _LOCATIVES:
            after_locative = True
    return placed


def _qualified(clauses: str, asked: dict[str, list[Mention]]) -> bool:
    """Whether the clauses narrow the asked finding: a `QUALIFYING_WORDS` word outside its mentions,
    or a place other than the whole radiograph (`WHOLE_IMAGE_WORDS`)."""
    tokens = labeller_tokens(clauses)
    outside = Counter(tokens) - Counter(w for ms in asked.values() for m in ms for w in m.text.split())
    return not QUALIFYING_WORDS.isdisjoint(outside) or not WHOLE_IMAGE_WORDS.issuperset(_placed_words(tokens))


def _asks_other_than(clauses: str) -> bool:
    """Whether the clauses ask about findings other than those they name (`OTHER_THAN_PHRASES`)."""
    padded = f" {' '.join(labeller_tokens(clauses))} "
    return any(f" {' '.join(labeller_tokens(phrase))} " in padded for phrase in OTHER_THAN_PHRASES)


def _claims(asked: dict[str, list[Mention]], says_yes: bool, qualified: bool) -> dict[str, bool]:
    """kind -> present, what the decision says about the asked kinds (step 4 of the module docstring)."""
    negated = {mention.status == "negative" for mentions in asked.values() for mention in mentions}
    if len(negated) != 1:
        return {}
    present = says_yes != negated.pop()
    if present:
        return {kind: True for kind in asked} if len(asked) == 1 else {}
    if qualified:
        return {}
    return {kind: False for kind, mentions in asked.items() if any(_names_whole_kind(kind, m) for m in mentions)}


def _body_agrees(body: str, kind: str, present: bool) -> bool:
    """Whether the first sentence of the answer's body says nothing of `kind` against `present`
    and nothing uncertain (later sentences reason around the finding, and are not read)."""
    statuses = {m.status for m in default_labeller().label(body).mentions
                if m.sentence == 0 and m.observation == CHEXPERT_LABELS[kind]}
    against = {"negative", "uncertain"} if present else {"positive", "uncertain"}
    return not statuses & against


def turn_labels(question: str, qtype: str, answer: str) -> dict[str, bool]:
    """finding kind -> present, what one closed question and its answer say (module docstring);
    {} for a turn that says nothing for sure (or is not closed)."""
    return dict(_read_turn(question, qtype, answer)) if _closed(qtype) else {}


@functools.lru_cache(maxsize=1 << 16)  # data sets repeat their wordings: a turn read once per process
def _read_turn(question: str, qtype: str, answer: str) -> tuple[tuple[str, bool], ...]:
    """`turn_labels` of a closed turn, as (kind, present) pairs."""
    # The clauses that ask about a finding ("Is X evident? Can you elaborate on that?": the first).
    clauses = "\n".join(clause for clause in _asking_clauses(question) if _asked(clause))
    asked = _asked(clauses) if clauses and not _asks_other_than(clauses) else {}
    decision = _decision(question, qtype, answer) if asked else None
    if decision is None:
        return ()
    says_yes, body = decision
    claims = _claims(asked, says_yes, _qualified(clauses, asked))
    return tuple((kind, present) for kind, present in claims.items() if _body_agrees(body, kind, present))


def _stage2_readings(study: Study) -> list[dict[str, bool]]:
    """One `turn_labels` per closed stage-2 turn of the study."""
    return [turn_labels(item.question, item.qtype, item.answer) for item in study.items
            if item.stage == LABEL_STAGE and _closed(item.qtype)]


def _agreed(readings: Iterable[dict[str, bool]]) -> dict[str, bool]:
    """kind -> present over a study's turn readings, in `IMAGE_LABEL_KINDS` order; a kind read both ways is left out."""
    seen: dict[str, set[bool]] = {}
    for labels in readings:
        for kind, present in labels.items():
            seen.setdefault(kind, set()).add(present)
    return {kind: values.pop() for kind in IMAGE_LABEL_KINDS if len(values := seen.get(kind, set())) == 1}


def presence_answers(study: Study) -> dict[str, bool]:
    """finding kind -> present, from the study's closed stage-2 turns (`turn_labels`); a kind
    answered both ways is left out."""
    return _agreed(_stage2_readings(study))


def study_image_labels(study: Study) -> tuple[np.ndarray, np.ndarray]:
    """(labels, known), both float32[K] over `IMAGE_LABEL_KINDS`: 1 = present, 0 = absent, and
    1 where the study's stage 2 answers it, 0 where the label is unknown."""
    answers = presence_answers(study)
    labels = np.array([float(answers.get(kind, False)) for kind in IMAGE_LABEL_KINDS], np.float32)
    known = np.array([float(kind in answers) for kind in IMAGE_LABEL_KINDS], np.float32)
    return labels, known


@dataclasses.dataclass(frozen=True)
class ImageLabelCounts:
    """What the image labels of a set of studies hold.

    studies / labelled_studies: studies read / those with at least one known label.
    present / absent: finding kind -> studies labelled present / absent (every kind listed).
    closed_turns / read_turns: closed stage-2 turns / those that gave at least one label.
    """

    studies: int
    labelled_studies: int
    present: Mapping[str, int]
    absent: Mapping[str, int]
    closed_turns: int
    read_turns: int

    @property
    def few(self) -> bool:
        """Fewer than `FEW_LABELLED_FRACTION` of the studies carry a label (or there are none)."""
        return self.labelled_studies < FEW_LABELLED_FRACTION * self.studies or not self.studies


def image_label_counts(studies: Iterable[Study]) -> ImageLabelCounts:
    """The counts of `ImageLabelCounts` over `studies` (one pass)."""
    n_studies = labelled = closed = read = 0
    present = dict.fromkeys(IMAGE_LABEL_KINDS, 0)
    absent = dict.fromkeys(IMAGE_LABEL_KINDS, 0)
    for study in studies:
        readings = _stage2_readings(study)
        answers = _agreed(readings)
        n_studies += 1
        labelled += bool(answers)
        closed += len(readings)
        read += sum(bool(labels) for labels in readings)
        for kind, is_present in answers.items():
            (present if is_present else absent)[kind] += 1
    return ImageLabelCounts(n_studies, labelled, present, absent, closed, read)


def format_image_label_counts(counts: ImageLabelCounts, what: str = "training studies") -> str:
    """The console lines: studies with a label and the labels per kind, the closed stage-2 turns
    read, and a WARNING line when few studies carry a label (`ImageLabelCounts.few`)."""
    kinds = ", ".join(f"{kind} {counts.present[kind] + counts.absent[kind]:,} ({counts.present[kind]:,} present)"
                      for kind in IMAGE_LABEL_KINDS)
    lines = [f"image labels: {counts.labelled_studies:,} of {counts.studies:,} {what} carry at least one finding "
             f"label ({kinds}); {counts.read_turns:,} of {counts.closed_turns:,} closed stage-2 turns read"]
    if counts.few:
        share = counts.labelled_studies / counts.studies if counts.studies else 0.0
        lines.append(f"  WARNING: only {counts.labelled_studies:,} of {counts.studies:,} {what} ({share:.1%}) carry a "
                     f"finding label: the image-label loss will barely act")
    return "\n".join(lines)
