import pytest

from data_pipeline.schema.stages import (
    STAGE_TASK_TYPES,
    QType,
    Stage,
    is_known_task_type,
    parse_qtype,
    stage_for_task_type,
)


def test_eight_stages_in_order_with_titles():
    assert [int(s) for s in Stage] == list(range(1, 9))
    assert Stage(5).title == "comparison with the prior study"
    assert all(s.title for s in Stage)


@pytest.mark.parametrize("value", [1, "3", 8.0, Stage.REPORT])
def test_stage_parse_accepts_int_like(value):
    assert 1 <= Stage.parse(value) <= 8


@pytest.mark.parametrize("value", [0, 9, "abc", None, True, 2.5, -1])
def test_stage_parse_rejects_with_value_in_message(value):
    with pytest.raises(ValueError, match="stage"):
        Stage.parse(value)


def test_task_types_cover_released_names():
    assert is_known_task_type(1, "View_Information")
    assert is_known_task_type(3, "Findings_Identification")  # released quirk
    assert is_known_task_type(5, "Differences_Comparison[Choice]")
    assert is_known_task_type(8, "Report_Generation[Impression_without_findings]")
    assert not is_known_task_type(2, "Report_Generation")
    assert stage_for_task_type("Findings_Identification") == Stage.FINDINGS
    assert stage_for_task_type("Report_Generation[ALL]") == Stage.REPORT
    assert stage_for_task_type("Something_New") is None
    assert set(STAGE_TASK_TYPES) == set(Stage)


@pytest.mark.parametrize(
    "text,kind,n",
    [
        ("yes_no", "yes_no", None),
        ("single-choice", "single-choice", None),
        ("multi-choice", "multi-choice", None),
        ("multi-choice-4", "multi-choice", 4),
        ("captioning", "captioning", None),
        ("detection", "detection", None),
    ],
)
def test_parse_qtype(text, kind, n):
    q = parse_qtype(text)
    assert (q.kind, q.n_options) == (kind, n)
    assert str(q) == text


@pytest.mark.parametrize("text", ["", "multiple", "multi-choice-1", "multi-choice-x", "Yes_No", 3])
def test_parse_qtype_rejects(text):
    with pytest.raises(ValueError, match="qtype"):
        parse_qtype(text)


def test_closed_qtypes():
    assert QType("yes_no").is_closed and QType("multi-choice", 3).is_closed
    assert not QType("captioning").is_closed and not QType("detection").is_closed
