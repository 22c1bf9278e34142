"""Files -> validated staged studies -> batches. Never imports the model (`cxrtrek_jax`)."""

from data_pipeline.boxes import Box, BoxParseError, format_boxes, parse_boxes
from data_pipeline.records import IMAGE_PLACEHOLDER, Message, QAItem, Study
from data_pipeline.stages import NUM_STAGES, QType, Stage, parse_qtype

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
