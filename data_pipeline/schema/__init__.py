"""Layer 1, the schema: what a CXRTrek study is, independent of any file.

Modules: `stages` (the eight stages, task types, question types), `records` (immutable
`Study` / `QAItem` / `Message`), `boxes` (the detection-answer grammar), `splits` (split names
and spellings), `findings` (the finding vocabulary). Imports nothing else of the project.
"""

from data_pipeline.schema.boxes import Box, BoxParseError, format_boxes, parse_boxes
from data_pipeline.schema.records import IMAGE_PLACEHOLDER, Message, QAItem, Study
from data_pipeline.schema.splits import SPLIT_NAMES, TEST, TRAIN, VALIDATION
from data_pipeline.schema.stages import NUM_STAGES, QType, Stage, parse_qtype

__all__ = [
    "Box", "BoxParseError", "format_boxes", "parse_boxes",
    "IMAGE_PLACEHOLDER", "Message", "QAItem", "Study",
    "SPLIT_NAMES", "TEST", "TRAIN", "VALIDATION",
    "NUM_STAGES", "QType", "Stage", "parse_qtype",
]
