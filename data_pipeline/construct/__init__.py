"""Layer 5, construct: CXRTrek staged QA built from a user's own reports and radiographs.

    cxrtrek data construct --source mimic-cxr --root MIMIC_DIR --out cxrtrek_mimic/

The flow, one module per step (each imports only the contracts before it):

1. `source_study`  the contract of the source side: `SourceStudy` / `SourceImage` (one study as
                   a source gives it), `TimelineStudy` (with its prior and next study), `SourceError`.
2. source readers  one module per source layout (MIMIC-CXR, CheXpert Plus, Open-i, plain JSONL),
                   each yielding `SourceStudy` records; `timeline` groups them by patient and date.
3. `report_facts`  the contract of the report side: `ReportFacts` (sections, sentences, finding
                   mentions with presence/absence/uncertainty, location, severity, change,
                   relations, recommendations, technique), read from a report's free text.
4. stage generators  `ReportFacts` of a study, its prior and its next -> `QAItem`s of the eight
                   stages, each with its provenance; assembled into a released-format `Study`.

Imports only the schema, reports and files layers (never the phantom, never the model).
"""
