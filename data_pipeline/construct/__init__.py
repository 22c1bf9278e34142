"""Layer 5, construct: CXRTrek staged QA built from a user's own reports and radiographs.

    cxrtrek data construct --source mimic-cxr --root MIMIC_DIR --out cxrtrek_mimic/

The flow (`construct_run.construct`, one `study_builder.StudyBuilder` call per study):

1. `source_study`    the source side's contract: `SourceStudy` / `SourceImage`, `TimelineStudy`,
                     `SourceError`.
2. source readers    `mimic_cxr_source`, `chexpert_plus_source`, `openi_source`, `plain_source`
                     (an index of studies, reports read one at a time; table `source_readers`);
                     `timeline` links each study to its patient's prior and next study.
3. `report_facts`    the report side's contract; `report_reader.read_report` fills it (sections,
                     sentences, findings with presence/absence/uncertainty, location, severity,
                     change, relations, recommendations, technique; rules in `report_rules/`).
4. stage generators  `stage1_quality_view` .. `stage8_report`: the facts of a study, its prior and
                     its next -> `QAItem`s with provenance; `study_assembly` makes the released-format
                     `Study`; `box_annotations` reads `--boxes`; `llm_polish` is the optional rewrite.

Imports only the schema, reports and files layers (never the phantom, never the model).
"""
