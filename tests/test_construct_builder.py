"""`StudyBuilder`, the step `data construct` maps over the timeline: one released-format element per
study, its counts, and the LLM polish applied inside it (with a stand-in rewriter here; the real
model's mechanics are tested in test_construct_polish)."""

import json

from construct_fixtures import write_plain
from data_pipeline.construct.plain_source import PlainSource
from data_pipeline.construct.study_builder import StudyBuilder
from data_pipeline.construct.timeline import study_timeline
from data_pipeline.files.cxrtrek_json import parse_study


def _entries(tmp_path):
    fixture = write_plain(tmp_path)
    source = PlainSource(fixture.options["input"], fixture.options["image_root"])
    return fixture, list(study_timeline(source))


def test_each_entry_becomes_its_released_element_with_counts(tmp_path):
    fixture, entries = _entries(tmp_path)
    builder = StudyBuilder(fixture.options["image_root"])
    for entry in entries:
        built = builder(entry)
        element = json.loads(built.text)
        study = parse_study(element)
        assert (study.pat_id, study.study_id) == entry.study.key
        assert element["image"] and all(path.startswith(fixture.options["image_root"]) for path in element["image"])
        assert built.counts.stages == tuple(item.stage for item in study.items)
        assert built.counts.has_prior == (entry.prior is not None) and built.counts.has_next == (entry.next is not None)


def test_with_an_llm_every_open_item_is_polished_or_flagged_inside_the_builder(tmp_path):
    fixture, entries = _entries(tmp_path)
    builder = StudyBuilder(fixture.options["image_root"], llm="unused: the rewriter below stands in")
    builder._rewriter = lambda kind, text: text.replace("X-ray", "radiograph")  # a faithful rewrite
    plain = StudyBuilder(fixture.options["image_root"])
    polished = parse_study(json.loads(builder(entries[0]).text))
    original = parse_study(json.loads(plain(entries[0]).text))
    assert all("polish_flag" in item.extras for item in polished.items)
    changed = [(a, b) for a, b in zip(original.items, polished.items) if a.question != b.question]
    assert changed and all(b.extras["polish_flag"] is True for _, b in changed)
    assert all(b.question == a.question.replace("X-ray", "radiograph") for a, b in changed)
    assert [m.content for m in polished.messages[1::2]] == [item.question for item in polished.items]
