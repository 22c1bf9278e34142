"""Files -> validated staged studies -> batches. Never imports the model (`cxrtrek_jax`)."""

from data_pipeline.boxes import Box, BoxParseError, format_boxes, parse_boxes
from data_pipeline.records import IMAGE_PLACEHOLDER, Message, QAItem, Study
from data_pipeline.stages import QType, Stage, parse_qtype

__all__ = [
    "Box",
    "BoxParseError",
    "format_boxes",
    "parse_boxes",
    "IMAGE_PLACEHOLDER",
    "Message",
    "QAItem",
    "Study",
    "QType",
    "Stage",
    "parse_qtype",
]
