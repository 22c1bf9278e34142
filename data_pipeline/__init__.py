"""Files -> validated staged studies -> batches. Never imports the model (`cxrtrek_jax`).

Sub-packages by layer; a module imports only its own layer and the layers listed before it
(`tests/test_import_graph.py` enforces the order):

1. `schema`   stages, records, boxes, splits, findings
2. `reports`  free-text radiology reports (the CheXpert-style labeller)
3. `files`    CXRTrek JSON, validation, images, image paths, study sources, the TFDS build
4. `phantom`  the procedural phantom (writes `files`; imported by its declared users only)
5. `text`     tokenizer, chat template, training sequences, decisive answers, image labels
6. `batches`  the Grain pipeline, packing, augmentation

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
