"""Files -> validated staged studies -> batches. Never imports the model (`cxrtrek_jax`).

Sub-packages by layer; a module imports only its own layer and the layers listed before it
(`tests/test_import_graph.py` enforces the order):

1. `schema`   stages, records, boxes, splits, findings
2. `reports`  free-text radiology reports (the CheXpert-style labeller)
3. `files`    CXRTrek JSON, validation, images, image paths, study sources, the TFDS build
4. `phantom`  the procedural phantom (writes `files`; imported by its declared users only)
5. `construct` staged QA built from a user's own reports and radiographs
6. `external` readers of the public evaluation sets (IU X-Ray, MIMIC-CXR, CheXpert, VinDr-CXR, VQA-RAD, SLAKE)
7. `text`     tokenizer, chat templates (ours, a checkpoint's own), training sequences, decisive answers,
              image labels
8. `batches`  the Grain pipeline, packing, augmentation

The schema's core names are re-exported here.
"""

from data_pipeline.schema import (
    IMAGE_PLACEHOLDER,
    NUM_STAGES,
    Box,
    BoxParseError,
    Message,
    QAItem,
    QType,
    Stage,
    Study,
    format_boxes,
    parse_boxes,
    parse_qtype,
)

__all__ = [
    "Box",
    "BoxParseError",
    "format_boxes",
    "parse_boxes",
    "IMAGE_PLACEHOLDER",
    "Message",
    "QAItem",
    "Study",
    "NUM_STAGES",
    "QType",
    "Stage",
    "parse_qtype",
]
