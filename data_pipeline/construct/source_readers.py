"""The table of source readers: `cxrtrek data construct --source NAME` -> its reader and options.

    mimic-cxr      --root DIR [--reports-root DIR]   MimicCxrSource
    chexpert-plus  --csv FILE --image-root DIR       ChexpertPlusSource
    openi          --reports DIR --image-root DIR    OpenISource
    plain          --input FILE --image-root DIR     PlainSource

Options are named as the command line names them, with '_' for '-' ("reports_root"); every
reader also takes `skip_invalid`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping

from data_pipeline.construct.chexpert_plus_source import ChexpertPlusSource
from data_pipeline.construct.mimic_cxr_source import MimicCxrSource
from data_pipeline.construct.openi_source import OpenISource
from data_pipeline.construct.plain_source import PlainSource
from data_pipeline.construct.source_index import StudySource

__all__ = ["SourceReader", "SOURCE_READERS", "SOURCE_NAMES", "open_source"]


@dataclasses.dataclass(frozen=True)
class SourceReader:
    """One `--source` choice: its reader class, the options it needs and those it may take.

    required / optional: option names with '_' ("image_root" is `--image-root`), in the order
        of the reader's parameters.
    layout: one line on what the options point at, for `--help`.
    """

    name: str
    make: Callable[..., StudySource]
    required: tuple[str, ...]
    optional: tuple[str, ...]
    layout: str

    def flags(self) -> str:
        """The options as the command line spells them: "--csv FILE --image-root DIR"."""
        return " ".join([f"--{o.replace('_', '-')}" for o in self.required]
                        + [f"[--{o.replace('_', '-')}]" for o in self.optional])


SOURCE_READERS: dict[str, SourceReader] = {reader.name: reader for reader in (
    SourceReader("mimic-cxr", MimicCxrSource, ("root",), ("reports_root",),
                 "MIMIC-CXR-JPG root (files/, mimic-cxr-2.0.0-metadata.csv[.gz], -split.csv[.gz]); reports "
                 "files/pXX/pSUBJECT/sSTUDY.txt under --reports-root (default: --root)"),
    SourceReader("chexpert-plus", ChexpertPlusSource, ("csv", "image_root"), (),
                 "df_chexpert_plus_240401.csv and the folder its path_to_image is relative to"),
    SourceReader("openi", OpenISource, ("reports", "image_root"), (),
                 "the ecgen-radiology/ folder of report XMLs and the folder of <parentImage id>.png/.jpg"),
    SourceReader("plain", PlainSource, ("input", "image_root"), (),
                 "JSON Lines, one study a line {patient_id, study_id, study_date, report, images: [{path, view}]}"),
)}
SOURCE_NAMES = tuple(SOURCE_READERS)


def open_source(name: str, options: Mapping[str, str | os.PathLike | None], skip_invalid: bool = False) -> StudySource:
    """The reader `name` on `options` (unset options may be given as None).

    Raises ValueError naming an unknown source, a required option that is missing, or an option
    the source does not take.
    """
    reader = SOURCE_READERS.get(name)
    if reader is None:
        raise ValueError(f"unknown source {name!r}; expected one of {', '.join(SOURCE_NAMES)}")
    given = {key: value for key, value in options.items() if value is not None}
    missing = [option for option in reader.required if option not in given]
    if missing:
        flags = ", ".join(f"--{option.replace('_', '-')}" for option in missing)
        raise ValueError(f"--source {name} needs {flags} ({reader.flags()})")
    extra = sorted(set(given) - set(reader.required) - set(reader.optional))
    if extra:
        flags = ", ".join(f"--{option.replace('_', '-')}" for option in extra)
        raise ValueError(f"--source {name} does not take {flags} ({reader.flags()})")
    return reader.make(skip_invalid=skip_invalid, **given)
