"""VQA-RAD and SLAKE, their chest X-ray questions, for visual question answering.

VQA-RAD (Lau et al. 2018) in the split of MEVF / LLaVA-Med: `testset.json` (and `trainset.json`), a
list of `{"qid", "image_name": "synpic31955.jpg", "image_organ": "CHEST", "answer", "answer_type":
"OPEN" | "CLOSED", "question_type", "question", "phrase_type"}`, images under `images/` (or
`root/`). The chest subset: `image_organ` CHEST (VQA-RAD's chest images are radiographs and a few CTs;
all are kept, as the published chest subsets keep them).

SLAKE (Liu et al. 2021), `Slake1.0`: `test.json` (and `train.json`), a list of `{"img_id",
"img_name": "xmlab102/source.jpg", "question", "answer", "q_lang", "location", "modality",
"answer_type", "base_type", "content_type", "triple", "qid"}`, images under `imgs/`. The chest X-ray
subset: English questions (`q_lang` "en") on images of `modality` "X-Ray" whose `location` is a
chest one (Lung, Chest_heart, Chest_lung, Chest_mediastinal, Mediastinum).

Every question is one item, grouped by its image; answer_type decides closed accuracy or open
recall. Questions outside the subset are counted as skipped by reason.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

from data_pipeline.construct.source_images import ImageRoot
from data_pipeline.construct.source_study import SourceError
from data_pipeline.external.external_items import VQA, ExternalItem, ExternalSet

__all__ = ["SLAKE_CHEST_LOCATIONS", "read_vqa_rad", "read_slake", "read_vqa_answers"]

SLAKE_CHEST_LOCATIONS = ("Lung", "Chest_heart", "Chest_lung", "Chest_mediastinal", "Mediastinum")
_ANSWER_TYPES = {"open": "open", "closed": "closed"}


def _records(path: Path) -> list[Any]:
    if not path.is_file():
        raise SourceError(str(path), "(file)", "no such file")
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise SourceError(str(path), "(file)", f"not JSON: {error}") from None
    if not isinstance(records, list):
        raise SourceError(str(path), "(top level)", f"expected a list of questions, got {type(records).__name__}")
    return records


def _field(record: Any, name: str, origin: str) -> str:
    if not isinstance(record, dict):
        raise SourceError(origin, "(entry)", f"expected an object, got {type(record).__name__}")
    value = record.get(name)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)  # VQA-RAD answers and qids may be numbers
    if not isinstance(value, str) or not value.strip():
        raise SourceError(origin, name, f"expected a non-empty string, got {value!r}")
    return value.strip()


def _answer_type(record: Any, origin: str) -> str:
    value = _field(record, "answer_type", origin).lower()
    if value not in _ANSWER_TYPES:
        raise SourceError(origin, "answer_type", f"expected OPEN or CLOSED, got {record['answer_type']!r}")
    return _ANSWER_TYPES[value]


def _item(record: Any, origin: str, images: ImageRoot, image_field: str) -> ExternalItem:
    image = _field(record, image_field, origin)
    file = os.path.join(images.path, images.existing(image, origin, image_field))
    qid = _field(record, "qid", origin)
    return ExternalItem(item_id=qid, group=image, images=(file,), reference=_field(record, "answer", origin),
                        question=_field(record, "question", origin), answer_type=_answer_type(record, origin))


def _in_vqa_rad(record: Any, origin: str) -> str | None:
    return None if _field(record, "image_organ", origin).upper() == "CHEST" else "image_organ not CHEST"


def _in_slake(record: Any, origin: str) -> str | None:
    if _field(record, "q_lang", origin) != "en":
        return "not English"
    if _field(record, "modality", origin) != "X-Ray":
        return "modality not X-Ray"
    if _field(record, "location", origin) not in SLAKE_CHEST_LOCATIONS:
        return "location not a chest one"
    return None


_SETS = {"vqa-rad": ("testset.json", "image_name", ("images", "."), _in_vqa_rad),
         "slake": ("test.json", "img_name", ("imgs", "."), _in_slake)}


def _read(name: str, root: str | os.PathLike, file: str | None) -> ExternalSet:
    default_file, image_field, image_dirs, keep = _SETS[name]
    root = Path(os.path.abspath(root))
    path = root / (file or default_file)
    images = ImageRoot(next((root / d for d in image_dirs if (root / d).is_dir()), root))
    items, skipped = [], Counter()
    for index, record in enumerate(_records(path)):
        origin = f"{path}: [{index}]"
        reason = keep(record, origin)
        if reason is not None:
            skipped[reason] += 1
            continue
        items.append(_item(record, origin, images, image_field))
    ids = Counter(item.item_id for item in items)
    twice = [qid for qid, n in ids.items() if n > 1]
    if twice:
        raise SourceError(str(path), "qid", f"qid(s) {', '.join(twice[:5])} name more than one question")
    return ExternalSet(name, VQA, f"{path.name} (chest X-ray questions)", tuple(items), len(items), skipped, str(path))


def read_vqa_rad(root: str | os.PathLike, file: str | None = None) -> ExternalSet:
    """The chest questions of VQA-RAD's `testset.json` (or `file`) under `root`."""
    return _read("vqa-rad", root, file)


def read_slake(root: str | os.PathLike, file: str | None = None) -> ExternalSet:
    """The English chest X-ray questions of SLAKE's `test.json` (or `file`) under `root`."""
    return _read("slake", root, file)


def read_vqa_answers(name: str, root: str | os.PathLike, file: str) -> list[tuple[str, str]]:
    """(answer_type, answer) of every question of the set's subset in `file` (e.g. its training
    file), without checking images: what the majority-answer baseline is fitted on."""
    default_file, _, _, keep = _SETS[name]
    path = Path(os.path.abspath(root)) / file
    out = []
    for index, record in enumerate(_records(path)):
        origin = f"{path}: [{index}]"
        if keep(record, origin) is None:
            out.append((_answer_type(record, origin), _field(record, "answer", origin)))
    return out
