"""Layer 3, files: CXRTrek JSON, images and TFDS on disk -> `Study` records.

Modules: `cxrtrek_json` (the released JSON format: read, write), `validation` (every problem of a
file, by sample and field), `images` (DICOM/PNG/JPEG loading, resizing), `image_processing` (a checkpoint's
image preprocessing: ours, or a Hugging Face processor's, reproduced), `image_paths` (released
paths -> a local image root), `sources` (random-access study sources over JSON or TFDS),
`split_rule` (the one rule placing a study in train / validation / test), `datasets` (one way to
open a data set, JSON or TFDS, and read its splits by that rule), `atomic_write` (the one
write-then-rename of every file or directory a reader may meet half-written; also used by
`cxrtrek_jax`) and `tfds_builder` (the array_record TFDS build; imports tensorflow_datasets, so
not re-exported here).
"""

from data_pipeline.files.cxrtrek_json import CXRTrekFormatError, iter_studies, read_studies, write_studies
from data_pipeline.files.datasets import Dataset, open_dataset
from data_pipeline.files.image_processing import ImageProcessing
from data_pipeline.files.images import ImageLoadError, load_image
from data_pipeline.files.sources import StudyRecord, open_study_source
from data_pipeline.files.split_rule import SplitConfig, assign_split
from data_pipeline.files.validation import ValidationReport, validate_file

__all__ = [
    "CXRTrekFormatError", "iter_studies", "read_studies", "write_studies",
    "ImageLoadError", "load_image", "ImageProcessing",
    "StudyRecord", "open_study_source",
    "SplitConfig", "assign_split",
    "Dataset", "open_dataset",
    "ValidationReport", "validate_file",
]
