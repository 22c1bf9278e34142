import pytest

from data_pipeline.schema.boxes import Box, BoxParseError, box_iou, format_box, format_boxes, has_box_markup, map_boxes, parse_boxes

RELEASED = "<|ref|> right apical zone <|/ref|> <|box|>(19.2, 12.5), (43.3, 30.8)<|/box|>"


def test_parse_released_example():
    (box,) = parse_boxes(RELEASED)
    assert box == Box("right apical zone", 19.2, 12.5, 43.3, 30.8)


def test_several_labels_and_boxes_round_trip():
    boxes = (
        Box("left lower zone", 55.0, 60.0, 90.0, 95.0),
        Box("left lower zone", 10.0, 60.0, 40.0, 95.0),
        Box("heart", 30.0, 40.0, 70.0, 80.5),
    )
    text = format_boxes(boxes)
    assert text.count("<|ref|>") == 2 and text.count("<|box|>") == 3
    assert parse_boxes("Findings: " + text + ".") == boxes
    assert has_box_markup(text) and not has_box_markup("No boxes here.")


@pytest.mark.parametrize(
    "text,reason",
    [
        ("<|ref|> a <|/ref|>", "has no box"),
        ("<|box|>(1, 2), (3, 4)<|/box|>", "no preceding"),
        ("<|ref|> a <|/ref|> <|box|>(1, 2), (3, 4)", "never closed"),
        ("<|ref|> a <|/ref|> <|box|>(1, 2)<|/box|>", "is not"),
        ("<|ref|> a <|/ref|> <|box|>(1, 2), (300, 4)<|/box|>", "outside"),
        ("<|ref|> a <|/ref|> <|box|>(50, 2), (30, 4)<|/box|>", "above-left"),
        ("<|ref|>  <|/ref|> <|box|>(1, 2), (3, 4)<|/box|>", "empty"),
        ("<|/box|>", "unexpected closing"),
        ("<|ref|> a <|box|> <|/ref|>", "nested"),
    ],
)
def test_malformed_boxes_name_the_reason(text, reason):
    with pytest.raises(BoxParseError, match=reason):
        parse_boxes(text)


def test_iou_known_values():
    a = Box("x", 0, 0, 10, 10)
    assert box_iou(a, a) == 1.0
    assert box_iou(a, Box("y", 5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert box_iou(a, Box("y", 20, 20, 30, 30)) == 0.0
    assert box_iou(Box("e", 1, 1, 1, 1), Box("e", 1, 1, 1, 1)) == 0.0


def test_format_box_is_the_span_map_boxes_and_format_boxes_write():
    box = Box("heart", 1, 2.26, 30, 40)
    assert format_box(box) == "<|box|>(1.0, 2.3), (30.0, 40.0)<|/box|>"
    assert format_boxes([box]) == "<|ref|> heart <|/ref|> <|box|>(1.0, 2.3), (30.0, 40.0)<|/box|>"
    assert map_boxes("see <|box|>(0, 0), (5, 5)<|/box|>.", lambda b: box, strict=True) == f"see {format_box(box)}."
