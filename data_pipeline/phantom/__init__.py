"""A procedural chest X-ray phantom: a learnable, fully known CXRTrek world.

Radiograph-like images (PA/AP frontal, optional lateral, prior and later exams
of the same patient) with drawn ground-truth findings, and staged QA for all
eight CXRTrek stages generated from that truth. See `generator` for the study
layout and `questions` for the QA design; `plain_source` writes the same studies as a hospital
would export them (reports and radiographs, `construct --source plain`), with the truth beside them.
"""

from data_pipeline.phantom.config import PhantomConfig, Prevalences
from data_pipeline.phantom.findings import (
    CHANGES,
    KINDS,
    Acquisition,
    ExamTruth,
    Finding,
    LabelledRegion,
    StudyTruth,
)
from data_pipeline.phantom.anatomy import PatientAnatomy, render_frontal, render_lateral, sample_anatomy
from data_pipeline.phantom.generator import DATASET_FILENAME, generate_study, study_ids, write_phantom_dataset
from data_pipeline.phantom.plain_source import PLAIN_STUDIES_FILENAME, PLAIN_TRUTH_FILENAME, write_plain_source

__all__ = [
    "PhantomConfig",
    "Prevalences",
    "CHANGES",
    "KINDS",
    "Acquisition",
    "ExamTruth",
    "Finding",
    "LabelledRegion",
    "StudyTruth",
    "PatientAnatomy",
    "render_frontal",
    "render_lateral",
    "sample_anatomy",
    "DATASET_FILENAME",
    "generate_study",
    "study_ids",
    "write_phantom_dataset",
    "PLAIN_STUDIES_FILENAME",
    "PLAIN_TRUTH_FILENAME",
    "write_plain_source",
]
