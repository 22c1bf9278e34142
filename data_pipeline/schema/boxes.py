"""Detection answers: `<|ref|> label <|/ref|> <|box|>(x1, y1), (x2, y2)<|/box|>`.

Coordinates are on a 0-100 scale of the image (x to the right, y down), the
first point the top-left and the second the bottom-right corner. One answer
may carry several labelled regions; a label may be followed by several boxes.

Answers are parsed strictly (`parse_boxes`). Questions are read leniently
(`literal_boxes`): released detection questions end with a format hint such
as ``output in the format <|box|>(x1, y1), (x2, y2)<|/box|>`` whose body is
placeholder text with no `<|ref|>` label; a `<|box|>` body is a box only when
it is two numeric points, and every other span is text. `map_boxes` rewrites
the numeric boxes of a text (crops) and leaves all else untouched.
"""

from __future__ import annotations

import dataclasses
import re

__all__ = ["Box", "BoxParseError", "MARKUP_TOKENS", "parse_boxes", "literal_boxes", "map_boxes", "format_boxes",
           "format_box", "has_box_markup", "box_iou"]

# The markup's tags: the one definition (the tokenizer adds them as unsplittable tokens).
REF_OPEN, REF_CLOSE, BOX_OPEN, BOX_CLOSE = "<|ref|>", "<|/ref|>", "<|box|>", "<|/box|>"
MARKUP_TOKENS = (REF_OPEN, REF_CLOSE, BOX_OPEN, BOX_CLOSE)

_NUM = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)"
_POINT = rf"\(\s*({_NUM})\s*,\s*({_NUM})\s*\)"
_BOX_BODY = re.compile(rf"^\s*{_POINT}\s*,\s*{_POINT}\s*$")
_TOKEN = re.compile(r"<\|(/?)(ref|box)\|>")
_BOX_SPAN = re.compile(re.escape(BOX_OPEN) + r"(.*?)" + re.escape(BOX_CLOSE), re.DOTALL)


class BoxParseError(ValueError):
    """A detection answer whose `<|ref|>`/`<|box|>` markup is malformed."""


@dataclasses.dataclass(frozen=True)
class Box:
    """A labelled box; coordinates in [0, 100], x1 <= x2 and y1 <= y2."""

    label: str
    x1: float
    y1: float
    x2: float
    y2: float

    @property
    def area(self) -> float:
        return max(0.0, self.x2 - self.x1) * max(0.0, self.y2 - self.y1)


def has_box_markup(text: str) -> bool:
    return bool(_TOKEN.search(text))


def _parse_box_body(body: str, label: str) -> Box:
    match = _BOX_BODY.match(body)
    if not match:
        raise BoxParseError(f"box for {label!r} is not '(x1, y1), (x2, y2)': {body!r}")
    x1, y1, x2, y2 = (float(g) for g in match.groups())
    for name, v in (("x1", x1), ("y1", y1), ("x2", x2), ("y2", y2)):
        if not 0.0 <= v <= 100.0:
            raise BoxParseError(f"box for {label!r}: {name}={v} outside the 0-100 scale")
    if x1 > x2 or y1 > y2:
        raise BoxParseError(
            f"box for {label!r}: first point ({x1}, {y1}) is not above-left of second ({x2}, {y2})"
        )
    return Box(label, x1, y1, x2, y2)


def parse_boxes(text: str) -> tuple[Box, ...]:
    """All labelled boxes of a detection answer, in order.

    Raises BoxParseError for unbalanced tags, a box before any label, an
    empty label, a label without a box, or a malformed/out-of-range box.
    Text outside the tags is ignored.
    """
    boxes: list[Box] = []
    label: str | None = None
    label_has_box = True
    pos = 0
    while True:
        match = _TOKEN.search(text, pos)
        if match is None:
            break
        closing, kind = match.group(1) == "/", match.group(2)
        if closing:
            raise BoxParseError(f"unexpected closing <|/{kind}|> at offset {match.start()}")
        end = text.find(f"<|/{kind}|>", match.end())
        if end < 0:
            raise BoxParseError(f"<|{kind}|> at offset {match.start()} is never closed")
        body = text[match.end() : end]
        if _TOKEN.search(body):
            raise BoxParseError(f"nested tag inside <|{kind}|> at offset {match.start()}")
        if kind == "ref":
            if not label_has_box:
                raise BoxParseError(f"label {label!r} has no box")
            label = body.strip()
            if not label:
                raise BoxParseError(f"empty <|ref|> label at offset {match.start()}")
            label_has_box = False
        else:
            if label is None:
                raise BoxParseError(f"<|box|> at offset {match.start()} has no preceding <|ref|> label")
            boxes.append(_parse_box_body(body, label))
            label_has_box = True
        pos = end + len(f"<|/{kind}|>")
    if not label_has_box:
        raise BoxParseError(f"label {label!r} has no box")
    return tuple(boxes)


def literal_boxes(text: str, where: str = "text") -> tuple[Box, ...]:
    """The numeric boxes of a question-like text, in order, each labelled "".

    A `<|box|>` span whose body is not two numeric points (a format hint such as
    ``(x1, y1), (x2, y2)``) is not a box and is skipped; a numeric body must be a valid
    box (0-100 scale, top-left first), else BoxParseError naming `where`.
    """
    boxes = []
    for match in _BOX_SPAN.finditer(text):
        if _BOX_BODY.match(match.group(1)):
            try:
                boxes.append(_parse_box_body(match.group(1), ""))
            except BoxParseError as err:
                raise BoxParseError(f"{where}: {err}") from None
    return tuple(boxes)


def map_boxes(text: str, fn, *, strict: bool, where: str = "text") -> str:
    """`text` with the body of every numeric `<|box|>` replaced by `fn(box)` rendered at one
    decimal, the rest kept as is.

    strict (answers): every `<|box|>` body must be two numeric points, else BoxParseError
    naming `where`; not strict (questions): other bodies are text and stay untouched.
    fn: Box -> Box on the new 0-100 scale.
    """

    def replace(match: re.Match) -> str:
        body = match.group(1)
        if not _BOX_BODY.match(body):
            if strict:
                raise BoxParseError(f"{where}: box is not '(x1, y1), (x2, y2)': {body!r}")
            return match.group(0)
        x1, y1, x2, y2 = (float(g) for g in _BOX_BODY.match(body).groups())
        return format_box(fn(Box("", x1, y1, x2, y2)))

    return _BOX_SPAN.sub(replace, text)


def _fmt(v: float) -> str:
    return f"{v:.1f}"


def format_box(box: Box) -> str:
    """One box's `<|box|>(x1, y1), (x2, y2)<|/box|>` span, coordinates at one decimal (label left out)."""
    return f"{BOX_OPEN}({_fmt(box.x1)}, {_fmt(box.y1)}), ({_fmt(box.x2)}, {_fmt(box.y2)}){BOX_CLOSE}"


def format_boxes(boxes: tuple[Box, ...] | list[Box]) -> str:
    """Render boxes in the released markup; consecutive boxes of a label share one ref."""
    parts: list[str] = []
    previous: str | None = None
    for box in boxes:
        body = format_box(box)
        if box.label != previous:
            parts.append(f"{REF_OPEN} {box.label} {REF_CLOSE} {body}")
        else:
            parts[-1] += f" {body}"
        previous = box.label
    return " ".join(parts)


def box_iou(a: Box, b: Box) -> float:
    """Intersection over union of two boxes (labels ignored); 0 when both are empty."""
    ix = max(0.0, min(a.x2, b.x2) - max(a.x1, b.x1))
    iy = max(0.0, min(a.y2, b.y2) - max(a.y1, b.y1))
    inter = ix * iy
    union = a.area + b.area - inter
    return inter / union if union > 0 else 0.0
