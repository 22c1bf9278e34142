"""The six public evaluation sets in their published layouts, a few items each, images generated.

Each writer builds a set's folder as its users download it (file names, folder layout, field
names as published) and returns the `--root` to give `cxrtrek eval-external`. Where each layout
was checked (public repositories found by code search):
- IU X-Ray, R2Gen: `annotation.json` = {"train", "val", "test"} lists of {"id", "report",
  "image_path", "split"}, images under `images/` (zhjohnchan/R2Gen: `--ann_path
  data/iu_xray/annotation.json --image_dir data/iu_xray/images/`, test_iu_xray.sh; the entry
  `{"id": "CXR2384_IM-0942", ..., "image_path": ["CXR2384_IM-0942/0.png", "CXR2384_IM-0942/1.png"]}`
  as quoted by several forks);
- IU X-Ray, Kaggle CSV export (raddar/chest-xrays-indiana-university): `indiana_reports.csv` =
  `uid,MeSH,Problems,image,indication,comparison,findings,impression`, `indiana_projections.csv`
  = `uid,filename,projection` (Frontal / Lateral), images `images/images_normalized/1_IM-0001-4001.dcm.png`;
- CheXpert: `CheXpert-v1.0-small/valid.csv` with the header below and `Path` relative to the
  folder holding CheXpert-v1.0-small (stanfordmlgroup CheXpert release);
- VinDr-CXR 1.0.0 (PhysioNet; vinbigdata-medical/vindr-cxr): `annotations/annotations_test.csv`
  = `image_id,class_name,x_min,y_min,x_max,y_max`, "No finding" rows with empty coordinates,
  images `test/<image_id>.dicom`;
- VQA-RAD in MEVF's split (data_RAD/testset.json, trainset.json, images/), records like
  `{"qid": 676, "image_name": "synpic31955.jpg", "image_organ": "CHEST", "answer": "Right lung
  hilum", "answer_type": "OPEN", "question_type": "POS", "question": "...", "phrase_type": "frame"}`
  (quoted in microsoft/LLaVA-Med's evaluation code);
- SLAKE (Slake1.0/test.json, train.json, imgs/xmlabN/source.jpg), records like `{"img_id": 384,
  "img_name": "xmlab384/source.jpg", "question": "...", "answer": "Coronal Plane", "q_lang": "en",
  "location": "Lung", "modality": "X-Ray", "answer_type": "OPEN", "base_type": "vqa",
  "content_type": "Plane", "triple": ["vhead", "_", "_"], "qid": 2725}`.
MIMIC-CXR and the Open-i XMLs come from the construct tests' writers (`construct_fixtures`).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from construct_fixtures import write_image

CHEXPERT_HEADER = ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", "No Finding", "Enlarged Cardiomediastinum",
                   "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema", "Consolidation", "Pneumonia", "Atelectasis",
                   "Pneumothorax", "Pleural Effusion", "Pleural Other", "Fracture", "Support Devices")
INDIANA_REPORTS_HEADER = ("uid", "MeSH", "Problems", "image", "indication", "comparison", "findings", "impression")
INDIANA_PROJECTIONS_HEADER = ("uid", "filename", "projection")
VINDR_HEADER = ("image_id", "class_name", "x_min", "y_min", "x_max", "y_max")

REPORTS = ("The heart size is normal. The lungs are clear. No pleural effusion or pneumothorax.",
           "There is a large right pleural effusion. The heart is enlarged.",
           "Cardiomediastinal silhouette within normal limits. No focal consolidation.")


def write_csv(path: Path, header, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def write_iu_annotation(folder: Path) -> Path:
    """R2Gen's iu_xray: annotation.json (2 test studies, 1 train, 1 val) and images/<id>/{0,1}.png."""
    root = folder / "iu_xray"
    entries = {"train": [], "val": [], "test": []}
    for n, (split, study_id) in enumerate((("train", "CXR2384_IM-0942"), ("val", "CXR2056_IM-0694-1001"),
                                           ("test", "CXR1_1_IM-0001"), ("test", "CXR8_IM-2333"))):
        paths = [f"{study_id}/0.png", f"{study_id}/1.png"]
        for k, path in enumerate(paths):
            write_image(root / "images" / path, seed=10 * n + k, size=48)
        entries[split].append({"id": study_id, "report": REPORTS[n % len(REPORTS)], "image_path": paths,
                               "split": split})
    (root / "annotation.json").write_text(json.dumps(entries))
    return root


def write_iu_csv(folder: Path) -> Path:
    """The Kaggle export: uids 1, 8 and 14 are test studies under the split rule, 2 and 3 are not;
    uid 14 has no findings (its impression is the reference), uid 3 has neither."""
    root = folder / "indiana"
    reports, projections = [], []
    texts = {1: (REPORTS[0], "Normal chest."), 2: (REPORTS[1], "Effusion."), 3: ("", ""), 8: (REPORTS[1], "Effusion."),
             14: ("", "No acute cardiopulmonary abnormality.")}
    for uid, (findings, impression) in texts.items():
        reports.append([str(uid), "normal", "normal", "Xray Chest PA and Lateral", "Positive TB test", "None.",
                        findings, impression])
        for k, projection in enumerate(("Lateral", "Frontal")):  # lateral listed first: the reader puts frontal first
            name = f"{uid}_IM-{uid:04d}-{1001 + 1000 * k}.dcm.png"
            write_image(root / "images" / "images_normalized" / name, seed=uid * 10 + k, size=48)
            projections.append([str(uid), name, projection])
    write_csv(root / "indiana_reports.csv", INDIANA_REPORTS_HEADER, reports)
    write_csv(root / "indiana_projections.csv", INDIANA_PROJECTIONS_HEADER, projections)
    return root


def write_chexpert(folder: Path) -> Path:
    """CheXpert-v1.0-small/valid.csv: two patients with a frontal and a lateral image each (patient 2:
    an uncertain Atelectasis and a blank Fracture, as the training table has them)."""
    root = folder / "chexpert"
    rows = []
    labels = {1: {"Cardiomegaly": "1.0", "Pleural Effusion": "1.0", "Edema": "0.0"},
              2: {"No Finding": "1.0", "Support Devices": "1.0", "Atelectasis": "-1.0", "Fracture": ""}}
    for patient, positive in labels.items():
        for view, side, projection in ((1, "frontal", "Frontal"), (2, "lateral", "Lateral")):
            path = f"CheXpert-v1.0-small/valid/patient6454{patient}/study1/view{view}_{side}.jpg"
            write_image(root / path, seed=patient * 10 + view, size=48)
            values = [positive.get(name, "0.0") for name in CHEXPERT_HEADER[5:]]
            rows.append([path, "Female", "73", projection, "AP" if side == "frontal" else "", *values])
    write_csv(root / "CheXpert-v1.0-small" / "valid.csv", CHEXPERT_HEADER, rows)
    return root / "CheXpert-v1.0-small"


def dicom_bytes(pixels: np.ndarray) -> bytes:
    """A single-frame 16-bit MONOCHROME2 Explicit VR Little Endian DICOM of `pixels` [H, W]."""
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = np.asarray(pixels, dtype="<u2").tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


VINDR_IMAGES = {"9a5094b2563a1ef3ff50dc5c7ff71345": (80, 60), "3b2b6bbb1f41de3bb1a1b8e5b2a3e8b4": (60, 80)}


def write_vindr(folder: Path) -> Path:
    """Two test images (heights x widths of `VINDR_IMAGES`): one with two Cardiomegaly... boxes, one "No finding"."""
    root = folder / "vindr-cxr" / "1.0.0"
    rng = np.random.default_rng(0)
    for image_id, (height, width) in VINDR_IMAGES.items():
        (root / "test").mkdir(parents=True, exist_ok=True)
        (root / "test" / f"{image_id}.dicom").write_bytes(dicom_bytes(rng.integers(0, 4000, (height, width))))
    first, second = VINDR_IMAGES
    rows = [[first, "Cardiomegaly", "10", "40", "50", "70"], [first, "Pleural effusion", "0", "50", "20", "80"],
            [first, "Pleural effusion", "40", "50", "60", "80"], [second, "No finding", "", "", "", ""]]
    write_csv(root / "annotations" / "annotations_test.csv", VINDR_HEADER, rows)
    return root


def write_vqa_rad(folder: Path) -> Path:
    """data_RAD: testset.json (3 chest questions on 2 images, 1 head question), trainset.json, images/."""
    root = folder / "data_RAD"
    for n, name in enumerate(("synpic31955.jpg", "synpic42202.jpg", "synpic100176.jpg")):
        write_image(root / "images" / name, seed=50 + n, size=48)
    def record(qid, image, organ, question, answer, answer_type):
        return {"qid": qid, "image_name": image, "image_organ": organ, "answer": answer, "answer_type": answer_type,
                "question_type": "PRES", "question": question, "phrase_type": "freeform"}
    test = [record(676, "synpic31955.jpg", "CHEST", "Where is the lesion located?", "Right lung hilum", "OPEN"),
            record(677, "synpic31955.jpg", "CHEST", "Is there a pleural effusion?", "Yes", "CLOSED"),
            record(678, "synpic42202.jpg", "CHEST", "Is the heart enlarged?", "No", "CLOSED"),
            record(679, "synpic100176.jpg", "HEAD", "Is there a hemorrhage?", "No", "CLOSED")]
    train = [record(1, "synpic42202.jpg", "CHEST", "Is this a PA film?", "yes", "CLOSED"),
             record(2, "synpic42202.jpg", "CHEST", "Is there a pneumothorax?", "yes", "CLOSED"),
             record(3, "synpic42202.jpg", "CHEST", "What organ is enlarged?", "heart", "OPEN")]
    (root / "testset.json").write_text(json.dumps(test))
    (root / "trainset.json").write_text(json.dumps(train))
    return root


def write_slake(folder: Path) -> Path:
    """Slake1.0: test.json (English chest X-ray questions, a Chinese one, a CT one), train.json, imgs/."""
    root = folder / "Slake1.0"
    for n in (384, 102):
        write_image(root / "imgs" / f"xmlab{n}" / "source.jpg", seed=n, size=48)
    def record(qid, img, question, answer, lang, location, modality, answer_type):
        return {"img_id": img, "img_name": f"xmlab{img}/source.jpg", "question": question, "answer": answer,
                "q_lang": lang, "location": location, "modality": modality, "answer_type": answer_type,
                "base_type": "vqa", "content_type": "Plane", "triple": ["vhead", "_", "_"], "qid": qid}
    test = [record(2725, 384, "What scanning plane does this image belong to?", "Coronal Plane", "en", "Lung",
                   "X-Ray", "OPEN"),
            record(2726, 384, "Is the lung healthy?", "No", "en", "Lung", "X-Ray", "CLOSED"),
            record(2727, 384, "肺部健康吗？", "不", "zh", "Lung", "X-Ray", "CLOSED"),
            record(11934, 102, "What modality is used to take this image?", "CT", "en", "Lung", "CT", "OPEN")]
    train = [record(1, 384, "Does the picture contain lung?", "Yes", "en", "Chest_lung", "X-Ray", "CLOSED")]
    (root / "test.json").write_text(json.dumps(test, ensure_ascii=False))
    (root / "train.json").write_text(json.dumps(train, ensure_ascii=False))
    return root


def write_openi_xmls(folder: Path) -> Path:
    """ecgen-radiology/<uid>.xml and NLMCXR_png/ for uids 1 and 8 (test studies under the split
    rule) and 2 (not), in the construct tests' Open-i format."""
    from construct_fixtures import FIXTURE_STUDIES, openi_xml

    root = folder / "openi"
    for uid, study in zip((1, 2, 8), FIXTURE_STUDIES):
        image_ids = [f"CXR{uid}_IM-{uid:04d}-{1001 + 1000 * k}" for k in range(len(study.views))]
        for k, image_id in enumerate(image_ids):
            write_image(root / "NLMCXR_png" / f"{image_id}.png", seed=uid * 10 + k, size=48)
        (root / "ecgen-radiology").mkdir(parents=True, exist_ok=True)
        (root / "ecgen-radiology" / f"{uid}.xml").write_text(openi_xml(uid, study, image_ids), encoding="utf-8")
    return root
