"""The patient timeline: each study's prior (stage 5) and next (stage 6), ties and missing dates,
and streaming one patient at a time (data_pipeline/construct/timeline.py)."""

import itertools

import pytest

from construct_fixtures import SOURCE_WRITERS
from data_pipeline.construct.source_index import StudyEntry, StudySource
from data_pipeline.construct.source_readers import open_source
from data_pipeline.construct.source_study import SourceImage, SourceStudy
from data_pipeline.construct.timeline import patient_groups, patient_timeline, study_timeline


def _study(study_id, order_key, patient="p1"):
    return SourceStudy(source="plain", patient_id=patient, study_id=study_id, report=f"report of {study_id}",
                       images=(SourceImage(f"{study_id}.png"),), order_key=order_key, origin=f"f.jsonl:{study_id}")


def _links(timeline):
    """(study, prior, next) ids, None where there is none."""
    return [(t.study.study_id, t.prior.study_id if t.prior else None, t.next.study_id if t.next else None)
            for t in timeline]


def test_three_dated_studies_get_their_prior_and_next_in_date_order():
    studies = [_study("s50414267", ("2180-06-26", "16:55:00")), _study("s56699142", ("2180-08-05", "08:05:56")),
               _study("s53189527", ("2180-05-06", "21:30:14"))]
    assert _links(patient_timeline(studies)) == [("s53189527", None, "s50414267"),
                                                 ("s50414267", "s53189527", "s56699142"),
                                                 ("s56699142", "s50414267", None)]


def test_the_prior_and_next_are_the_full_studies_with_their_reports_and_images():
    first, second = _study("a", (1,)), _study("b", (2,))
    later, earlier = patient_timeline([second, first])[::-1]
    assert later.prior is first and earlier.next is second


def test_ties_are_ordered_by_study_id_in_natural_order_and_linked():
    studies = [_study("s10", ("2021-01-01", "")), _study("s9", ("2021-01-01", "")), _study("s2", ("2020-12-31", ""))]
    assert _links(patient_timeline(studies)) == [("s2", None, "s9"), ("s9", "s2", "s10"), ("s10", "s9", None)]


def test_undated_studies_have_no_prior_or_next_and_the_dated_are_linked_past_them():
    studies = [_study("s3", None), _study("s2", ("2021-02-01", "")), _study("s1", None),
               _study("s4", ("2021-01-01", ""))]
    assert _links(patient_timeline(studies)) == [("s4", None, "s2"), ("s2", "s4", None), ("s1", None, None),
                                                 ("s3", None, None)]


def test_a_source_without_order_links_nothing():
    assert _links(patient_timeline([_study("CXR2", None), _study("CXR10", None)])) == [("CXR2", None, None),
                                                                                         ("CXR10", None, None)]


def test_the_timeline_does_not_depend_on_the_order_studies_come_in():
    studies = [_study("s1", (3,)), _study("s2", (1,)), _study("s3", (1,)), _study("s4", None), _study("s5", (2,))]
    expected = [("s2", None, "s3"), ("s3", "s2", "s5"), ("s5", "s3", "s1"), ("s1", "s5", None), ("s4", None, None)]
    for permutation in itertools.permutations(studies):
        assert _links(patient_timeline(list(permutation))) == expected


def test_one_patient_and_each_study_once():
    with pytest.raises(ValueError, match="one patient's studies, got patients \\['p1', 'p2'\\]"):
        patient_timeline([_study("s1", (1,)), _study("s2", (2,), patient="p2")])
    with pytest.raises(ValueError, match="study \\('p1', 's1'\\) appears twice: f.jsonl:s1 and f.jsonl:s1"):
        patient_timeline([_study("s1", (1,)), _study("s1", (2,))])


def _entry(patient, study):
    return StudyEntry(patient_id=patient, study_id=study, order_key=None, origin=f"idx:{patient}/{study}", locator=())


def test_patient_groups_keeps_patients_together_or_groups_an_interleaved_index():
    together = [_entry("a", "1"), _entry("a", "2"), _entry("b", "1")]
    assert [[e.key for e in g] for g in patient_groups(together, True)] == [[("a", "1"), ("a", "2")], [("b", "1")]]
    interleaved = [_entry("a", "1"), _entry("b", "1"), _entry("a", "2")]
    assert [[e.key for e in g] for g in patient_groups(interleaved, False)] == [[("a", "1"), ("a", "2")],
                                                                                [("b", "1")]]
    with pytest.raises(ValueError, match="patient 'a' comes back at idx:a/2 after other patients"):
        list(patient_groups(interleaved, True))


class _RecordingSource(StudySource):
    """Four studies of two patients; records when the index is read and which studies are loaded."""

    name = "plain"

    def __init__(self, together):
        super().__init__()
        self.patients_together = together
        self.events = []
        self.rows = [("a", "s1", (2,)), ("a", "s2", (1,)), ("b", "s1", (1,)), ("b", "s2", (2,))]
        if not together:
            self.rows = [self.rows[i] for i in (0, 2, 1, 3)]

    def entries(self):
        for patient, study, order in self.rows:
            self.events.append(f"index {patient}/{study}")
            yield StudyEntry(patient, study, order, f"rows:{patient}/{study}", locator=(patient, study))

    def load(self, entry):
        self.events.append(f"load {entry.patient_id}/{entry.study_id}")
        return _study(entry.study_id, entry.order_key, patient=entry.patient_id)


def test_a_source_with_patients_together_is_read_one_patient_at_a_time():
    source = _RecordingSource(together=True)
    timeline = study_timeline(source)
    first_patient = [next(timeline), next(timeline)]
    assert _links(first_patient) == [("s2", None, "s1"), ("s1", "s2", None)]
    assert source.events == ["index a/s1", "index a/s2", "index b/s1", "load a/s1", "load a/s2"]  # b not loaded yet
    assert _links(timeline) == [("s1", None, "s2"), ("s2", "s1", None)]


def test_an_interleaved_source_is_indexed_first_then_loaded_one_patient_at_a_time():
    source = _RecordingSource(together=False)
    timeline = study_timeline(source)
    next(timeline)
    assert source.events == ["index a/s1", "index b/s1", "index a/s2", "index b/s2", "load a/s1", "load a/s2"]
    assert [t.study.key for t in timeline] == [("a", "s1"), ("b", "s1"), ("b", "s2")]


@pytest.mark.parametrize("name", ["mimic-cxr", "chexpert-plus", "plain"])
def test_the_fixture_patient_with_three_dated_studies_gets_prior_and_next_from_its_source(tmp_path, name):
    fixture = SOURCE_WRITERS[name](tmp_path)
    timeline = list(study_timeline(open_source(fixture.source, fixture.options)))
    first, middle, last = fixture.timeline
    links = {t.study.study_id: t for t in timeline if t.study.key in fixture.study_keys[:3]}  # patient A
    assert _links(links[s] for s in fixture.timeline) == [(first, None, middle), (middle, first, last),
                                                          (last, middle, None)]
    single = [t for t in timeline if t.study.key == fixture.study_keys[3]]
    assert _links(single) == [(fixture.study_keys[3][1], None, None)]
    assert len(timeline) == 4


def test_openi_reports_have_no_prior_or_next(tmp_path):
    fixture = SOURCE_WRITERS["openi"](tmp_path)
    timeline = list(study_timeline(open_source(fixture.source, fixture.options)))
    assert _links(timeline) == [("CXR2", None, None), ("CXR10", None, None), ("CXR11", None, None),
                                ("CXR37", None, None)]
