"""The question script of a data set: the words its studies ask in, kept beside a run's checkpoints.

A model understands questions in the words it was trained on. `cxrtrek infer` asks a radiograph
that comes without questions in the wording of the checkpoint's training data when the run kept
that data's script (`RUN/question_script.json`, written by `cxrtrek_jax.train.run`; read by
`cxrtrek_jax.decoding.data_script`).

    script = count_question_script(studies, data="data/mimic.json", split="train")   # one pass
    write_question_script(run / QUESTION_SCRIPT_FILE, script)
    script = read_question_script(path)      # QuestionScriptError naming the file and field

What is counted, streaming, over the studies' turns:
  - the wording of each (stage, task type): the (question, qtype) asked most often without
    introducing images (ties: the one met first), with `asked` (turns asking it) and `of` (turns of
    that stage and task type);
  - the introducing turn of each image group, kept whole as the data writes it: the question most
    often asked showing the current images (the study's first turn that shows images), the prior
    images (a stage-5 turn showing new images) and the later study's (stage 6), its run of
    `<image>` placeholders as `{images}` (filled with as many as the user gives);
  - the order: the current images' introducing turn first, then stages 1..8 (images come current,
    prior, later), a group's introducing turn first in its stage; within a stage, one task type
    before another when the studies asking both ask it first more often (each ranked by how many
    others it so precedes minus how many precede it; ties in the order first met).
A wording found inside its group's introducing question (same stage and task type) is not asked
twice. A (stage, task type) only ever asked introducing images, and not the introducing turn
chosen, has no wording to ask: it is listed under `left_out`, and the trainer prints it.

File format (JSON, `QUESTION_SCRIPT_FORMAT`):

    {"format": "cxrtrek-question-script/1",
     "source": {"data": "data/mimic.json", "split": "train", "studies": 2400, "turns": 61230,
                "presence_turns": 9120, "builtin_presence_turns": 0},
     "turns": [{"stage": 1, "task_type": "View_Information", "qtype": "single-choice", "introduces": "current",
                "question": "Here is the current X-ray image: {images} . Which projection ...? A. PA B. AP",
                "asked": 310, "of": 2400},
               {"stage": 1, "task_type": "Quality_Assessment", "qtype": "captioning", "introduces": null,
                "question": "Assess the technical quality of this radiograph.", "asked": 1830, "of": 2400},
               ...],
     "left_out": ["stage 3 Region_Review: its 12 turn(s) all hold images, and none is the introducing turn chosen"]}

`asked` / `of` of an introducing turn: the group's introductions asking it / all of them.
`presence_turns` / `builtin_presence_turns`: the stage-2 yes/no turns, and those asking in the words of
`data_pipeline.schema.findings.PRESENCE_QUESTIONS` (the built-in script's and the phantom's); files
without them read as 0.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

from data_pipeline.files.atomic_write import write_text_atomically
from data_pipeline.schema.findings import PRESENCE_QUESTIONS
from data_pipeline.schema.records import IMAGE_PLACEHOLDER, Study
from data_pipeline.schema.stages import Stage, parse_qtype
from data_pipeline.text.sequences import current_image_count

__all__ = ["QUESTION_SCRIPT_FILE", "QUESTION_SCRIPT_FORMAT", "IMAGE_SLOT", "IMAGE_GROUPS", "GROUP_STAGES",
           "QuestionScriptError", "ScriptSource", "ScriptTurn", "QuestionScript", "count_question_script",
           "fill_images", "write_question_script", "read_question_script"]

# The file's name in a run directory, beside `checkpoints/` and `tokenizer/`.
QUESTION_SCRIPT_FILE = "question_script.json"
QUESTION_SCRIPT_FORMAT = "cxrtrek-question-script/1"
# Where an introducing question shows its images.
IMAGE_SLOT = "{images}"
# The image groups of a study, in image order, and the stage that introduces each after the first.
IMAGE_GROUPS = ("current", "prior", "later")
GROUP_STAGES = {"prior": int(Stage.COMPARISON), "later": int(Stage.FUTURE_TREND)}

# A run of placeholders: `<image>` tokens separated by white space only.
_PLACEHOLDER_RUN = re.compile(re.escape(IMAGE_PLACEHOLDER) + r"(?:\s*" + re.escape(IMAGE_PLACEHOLDER) + r")*")


class QuestionScriptError(ValueError):
    """A question script file that cannot be read: names the file, the field and why."""


@dataclasses.dataclass(frozen=True)
class ScriptSource:
    """Where a script was counted: `data` as the run named it, its `split`, and how many
    `studies` and `turns` were read."""

    data: str
    split: str
    studies: int
    turns: int
    presence_turns: int = 0
    builtin_presence_turns: int = 0

    @property
    def asks_in_builtin_words(self) -> bool:
        """Whether the data asks its findings in the built-in script's words (`PRESENCE_QUESTIONS`,
        the phantom's): at least `BUILTIN_WORDING_SHARE` of its stage-2 yes/no turns. The built-in
        script then speaks the checkpoint's language and, unlike a counted script, follows up each
        answer (`cxrtrek infer` prefers it)."""
        return self.presence_turns > 0 and self.builtin_presence_turns >= BUILTIN_WORDING_SHARE * self.presence_turns


@dataclasses.dataclass(frozen=True)
class ScriptTurn:
    """One question of the script, in the data's words.

    introduces: the image group (`IMAGE_GROUPS`) this turn shows first, its `question` holding
        `IMAGE_SLOT` once where the data puts them; None for a turn showing no new images (no slot).
    asked / of: how often the data asks this question / the turns it was chosen among (module docstring).
    """

    stage: int
    task_type: str
    qtype: str
    introduces: str | None
    question: str
    asked: int
    of: int


@dataclasses.dataclass(frozen=True)
class QuestionScript:
    """A data set's question script (module docstring): its turns in order, and the (stage, task
    type) left out for want of a wording that does not introduce images."""

    source: ScriptSource
    turns: tuple[ScriptTurn, ...]
    left_out: tuple[str, ...] = ()


def fill_images(text: str, count: int) -> str:
    """`text` with its `IMAGE_SLOT` replaced by `count` placeholders (space-separated)."""
    return text.replace(IMAGE_SLOT, " ".join([IMAGE_PLACEHOLDER] * count))


def _slotted(question: str) -> str | None:
    """The question with its one run of placeholders as `IMAGE_SLOT`; None with several runs."""
    if len(_PLACEHOLDER_RUN.findall(question)) != 1:
        return None
    return _PLACEHOLDER_RUN.sub(IMAGE_SLOT, question)


def _group(stage: int, shown: int, current: int, visible: int) -> str | None:
    """The image group a turn with placeholders shows first: the current images when it is the
    study's first turn showing images; later, the prior's in a stage-5 turn and the later study's
    in a stage-6 turn showing new images; None otherwise."""
    if shown == 0:
        return "current" if 0 < visible <= current else None
    if visible > shown:
        return next((group for group, at in GROUP_STAGES.items() if stage == at), None)
    return None


# A data set whose stage-2 yes/no turns ask at least this share in the built-in words is asked by
# the built-in script (`ScriptSource.asks_in_builtin_words`).
BUILTIN_WORDING_SHARE = 0.9


def _bare_words(question: str) -> str:
    """A question's lower-cased words without image placeholders and their introductions' punctuation."""
    return " ".join(re.findall(r"[a-z0-9]+", question.replace(IMAGE_PLACEHOLDER, " ").lower()))


_BUILTIN_PRESENCE = frozenset(_bare_words(q) for questions in PRESENCE_QUESTIONS.values() for q in questions)


class _Tally:
    """The streaming counts of `count_question_script`."""

    def __init__(self) -> None:
        self.bare: dict[tuple[int, str], Counter] = defaultdict(Counter)      # key -> (question, qtype)
        self.introducing: Counter = Counter()                                 # key -> turns with placeholders
        self.introduced: dict[str, Counter] = defaultdict(Counter)            # group -> (key, slotted, qtype)
        self.met: dict[tuple[int, str], None] = {}                             # keys in the order first met
        self.precedes: Counter = Counter()                                     # (key, key) -> studies
        self.studies = self.turns = self.presence_turns = self.builtin_presence_turns = 0

    def add(self, study: Study) -> None:
        self.studies += 1
        current, shown = current_image_count(study), 0
        seen: list[tuple[int, str]] = []
        for item in study.items:
            self.turns += 1
            if item.stage == 2 and item.qtype == "yes_no":
                self.presence_turns += 1
                self.builtin_presence_turns += _bare_words(item.question) in _BUILTIN_PRESENCE
            key = (int(item.stage), item.task_type)
            self.met.setdefault(key)
            if key not in seen:
                self.precedes.update((earlier, key) for earlier in seen if earlier[0] == key[0])
                seen.append(key)
            if not item.num_placeholders:
                self.bare[key][(item.question, item.qtype)] += 1
            else:
                self.introducing[key] += 1
                slotted, group = _slotted(item.question), _group(item.stage, shown, current, item.image_input_count)
                if slotted is not None and group is not None:
                    self.introduced[group][(key, slotted, item.qtype)] += 1
            shown = max(shown, item.image_input_count)

    def introduction(self, group: str) -> ScriptTurn | None:
        if not self.introduced[group]:
            return None
        ((stage, task_type), question, qtype), asked = self.introduced[group].most_common(1)[0]
        return ScriptTurn(stage=stage, task_type=task_type, qtype=qtype, introduces=group, question=question,
                          asked=asked, of=sum(self.introduced[group].values()))

    def wording(self, key: tuple[int, str]) -> ScriptTurn:
        (question, qtype), asked = self.bare[key].most_common(1)[0]
        return ScriptTurn(stage=key[0], task_type=key[1], qtype=qtype, introduces=None, question=question,
                          asked=asked, of=sum(self.bare[key].values()) + self.introducing[key])

    def order(self) -> list[tuple[int, str]]:
        """The (stage, task type) keys in the module docstring's order."""
        def rank(key: tuple[int, str]) -> int:  # how many go before it minus how many after
            others = [other for other in self.met if other[0] == key[0] and other != key]
            before = sum(self.precedes[(other, key)] > self.precedes[(key, other)] for other in others)
            after = sum(self.precedes[(key, other)] > self.precedes[(other, key)] for other in others)
            return before - after

        return sorted(self.met, key=lambda key: (key[0], rank(key)))


def _script_turns(tally: _Tally) -> tuple[list[ScriptTurn], list[str]]:
    """(the turns in order, the keys left out), as the module docstring orders them."""
    intros = {group: tally.introduction(group) for group in IMAGE_GROUPS}
    turns = [intros["current"]] if intros["current"] else []
    left_out = []
    for key in tally.order():
        later_intro = next((intro for group, intro in intros.items() if group != "current" and intro
                            and intro.stage == key[0] and intro not in turns), None)
        if later_intro is not None:
            turns.append(later_intro)
        same = [intro for intro in intros.values() if intro and (intro.stage, intro.task_type) == key]
        if not tally.bare[key]:
            if not same:
                left_out.append(f"stage {key[0]} {key[1]}: its {tally.introducing[key]} turn(s) all hold images, "
                                "and none is the introducing turn chosen")
            continue
        turn = tally.wording(key)
        if not any(turn.question in intro.question for intro in same):
            turns.append(turn)
    return turns, left_out


def count_question_script(studies: Iterable[Study], *, data: str, split: str) -> QuestionScript:
    """The question script of `studies` (one pass; module docstring), its source named
    `data` / `split`. ValueError when the studies hold no turns."""
    tally = _Tally()
    for study in studies:
        tally.add(study)
    if not tally.turns:
        raise ValueError(f"{data} ({split}): {tally.studies} studies and no turns to count a question script from")
    turns, left_out = _script_turns(tally)
    return QuestionScript(source=ScriptSource(data=data, split=split, studies=tally.studies, turns=tally.turns,
                                              presence_turns=tally.presence_turns,
                                              builtin_presence_turns=tally.builtin_presence_turns),
                          turns=tuple(turns), left_out=tuple(left_out))


def _to_json(script: QuestionScript) -> dict[str, Any]:
    return {"format": QUESTION_SCRIPT_FORMAT, "source": dataclasses.asdict(script.source),
            "turns": [dataclasses.asdict(t) for t in script.turns], "left_out": list(script.left_out)}


def write_question_script(path: str | os.PathLike, script: QuestionScript) -> None:
    """Write `script` to `path` as JSON (whole or not at all)."""
    write_text_atomically(path, json.dumps(_to_json(script), indent=1, ensure_ascii=False) + "\n")


class _Reader:
    """Field checks of `read_question_script`, each error naming the file and the field."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = os.fspath(path)

    def fail(self, field: str, why: str) -> QuestionScriptError:
        return QuestionScriptError(f"question script {self.path}: {field}: {why}")

    def mapping(self, value: Any, field: str, keys: Iterable[str]) -> Mapping[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(field, f"must be an object, got {type(value).__name__}")
        missing = [key for key in keys if key not in value]
        if missing:
            raise self.fail(field, f"missing {', '.join(missing)}")
        return value

    def text(self, value: Any, field: str) -> str:
        if not isinstance(value, str) or not value.strip():
            raise self.fail(field, f"must be a non-empty string, got {value!r}")
        return value

    def count(self, value: Any, field: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise self.fail(field, f"must be an integer >= 1, got {value!r}")
        return value

    def tally(self, value: Any, field: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise self.fail(field, f"must be an integer >= 0, got {value!r}")
        return value

    def turn(self, value: Any, field: str) -> ScriptTurn:
        value = self.mapping(value, field, [f.name for f in dataclasses.fields(ScriptTurn)])
        try:
            stage = int(Stage.parse(value["stage"]))
        except ValueError as err:
            raise self.fail(f"{field}.stage", str(err)) from None
        qtype = self.text(value["qtype"], f"{field}.qtype")
        try:
            parse_qtype(qtype)
        except ValueError as err:
            raise self.fail(f"{field}.qtype", str(err)) from None
        introduces = value["introduces"]
        if introduces is not None and introduces not in IMAGE_GROUPS:
            raise self.fail(f"{field}.introduces", f"must be null or one of {', '.join(IMAGE_GROUPS)}, "
                                                   f"got {introduces!r}")
        if introduces in GROUP_STAGES and stage != GROUP_STAGES[introduces]:
            raise self.fail(f"{field}.introduces", f"the {introduces} images come in stage "
                                                   f"{GROUP_STAGES[introduces]}, not stage {stage}")
        question = self.text(value["question"], f"{field}.question")
        slots = 0 if introduces is None else 1
        if IMAGE_PLACEHOLDER in question or question.count(IMAGE_SLOT) != slots:
            raise self.fail(f"{field}.question", f"must hold {IMAGE_SLOT} {slots} time(s) (introduces "
                                                 f"{introduces}) and no {IMAGE_PLACEHOLDER}, got {question!r}")
        of, asked = self.count(value["of"], f"{field}.of"), self.count(value["asked"], f"{field}.asked")
        if asked > of:
            raise self.fail(f"{field}.asked", f"{asked} is more than of ({of})")
        return ScriptTurn(stage=stage, task_type=self.text(value["task_type"], f"{field}.task_type"), qtype=qtype,
                          introduces=introduces, question=question, asked=asked, of=of)

    def order(self, turns: tuple[ScriptTurn, ...]) -> None:
        """The module docstring's order: the current images' introducing turn first, then stage
        order, the prior's (later's) introducing turn first in its stage; each group introduced once."""
        first = 1 if turns[0].introduces == "current" else 0
        for index, turn in enumerate(turns):
            field = f"turns[{index}]"
            if turn.introduces == "current" and index != 0:
                raise self.fail(f"{field}.introduces", "the current images come in the first turn")
            if index > first and turn.stage < turns[index - 1].stage:
                raise self.fail(f"{field}.stage", f"stage {turn.stage} after stage {turns[index - 1].stage}: "
                                                  "the turns go in stage order")
            if turn.introduces in GROUP_STAGES and index > first and turns[index - 1].stage == turn.stage:
                raise self.fail(f"{field}.introduces", f"the turn introducing the {turn.introduces} images "
                                                       f"comes first in stage {turn.stage}")
        groups = [turn.introduces for turn in turns if turn.introduces]
        if len(groups) != len(set(groups)):
            raise self.fail("turns", f"an image group introduced twice: {groups}")


def read_question_script(path: str | os.PathLike) -> QuestionScript:
    """The script in `path`; QuestionScriptError naming the file, the field and why when it is not
    one (FileNotFoundError when there is no file)."""
    check = _Reader(path)
    try:
        raw = json.loads(pathlib.Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise check.fail("(file)", f"not JSON: {err}") from None
    raw = check.mapping(raw, "(top level)", ("format", "source", "turns", "left_out"))
    if raw["format"] != QUESTION_SCRIPT_FORMAT:
        raise check.fail("format", f"expected {QUESTION_SCRIPT_FORMAT!r}, got {raw['format']!r}")
    source = check.mapping(raw["source"], "source", ("data", "split", "studies", "turns"))
    if not isinstance(raw["turns"], list) or not raw["turns"]:
        raise check.fail("turns", f"must be a non-empty list, got {raw['turns']!r}")
    turns = tuple(check.turn(value, f"turns[{index}]") for index, value in enumerate(raw["turns"]))
    check.order(turns)
    if not isinstance(raw["left_out"], list):
        raise check.fail("left_out", f"must be a list, got {raw['left_out']!r}")
    return QuestionScript(
        source=ScriptSource(data=check.text(source["data"], "source.data"),
                            split=check.text(source["split"], "source.split"),
                            studies=check.count(source["studies"], "source.studies"),
                            turns=check.count(source["turns"], "source.turns"),
                            presence_turns=check.tally(source.get("presence_turns", 0), "source.presence_turns"),
                            builtin_presence_turns=check.tally(source.get("builtin_presence_turns", 0),
                                                               "source.builtin_presence_turns")),
        turns=turns,
        left_out=tuple(check.text(item, f"left_out[{index}]") for index, item in enumerate(raw["left_out"])))
