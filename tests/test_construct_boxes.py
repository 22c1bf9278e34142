"""VinDr-CXR-style box CSVs (`annotations_test.csv` layout; the train file adds `rad_id`)."""

import pytest

from data_pipeline.construct.box_annotations import PixelBox, read_box_annotations
from data_pipeline.construct.source_study import SourceError

# Rows in the published layout: image ids are hashes, "No finding" rows have empty coordinates.
TEST_CSV = """image_id,class_name,x_min,y_min,x_max,y_max
002a34c58c5b758217ed1f584ccbcfe9,Aortic enlargement,1323.0,676.0,1593.0,991.0
002a34c58c5b758217ed1f584ccbcfe9,Cardiomegaly,932.0,1597.0,2145.0,2077.0
004f33259ee4aef671c2b95d54e4be68,No finding,,,,
"""
TRAIN_CSV = """image_id,rad_id,class_name,x_min,y_min,x_max,y_max
9a5094b2563a1ef3ff50dc5c7ff71345,R10,Pleural effusion,2212.0,1662.0,2481.0,2092.0
"""


def test_boxes_are_grouped_by_image_in_file_order(tmp_path):
    path = tmp_path / "annotations_test.csv"
    path.write_text("\ufeff" + TEST_CSV)  # a byte-order mark, as spreadsheet exports write
    boxes = read_box_annotations(path)
    assert boxes == {
        "002a34c58c5b758217ed1f584ccbcfe9": (PixelBox("Aortic enlargement", 1323.0, 676.0, 1593.0, 991.0),
                                             PixelBox("Cardiomegaly", 932.0, 1597.0, 2145.0, 2077.0)),
        "004f33259ee4aef671c2b95d54e4be68": (),
    }


def test_the_train_layout_with_rad_id_reads_the_same(tmp_path):
    path = tmp_path / "annotations_train.csv"
    path.write_text(TRAIN_CSV)
    assert read_box_annotations(path) == {
        "9a5094b2563a1ef3ff50dc5c7ff71345": (PixelBox("Pleural effusion", 2212.0, 1662.0, 2481.0, 2092.0),)}


@pytest.mark.parametrize("row, field, reason", [
    ("abc,Cardiomegaly,10,20,5,30", "x_max/y_max", "an empty box"),
    ("abc,Cardiomegaly,10,twenty,50,30", "y_min", "not a number"),
    ("abc,Cardiomegaly,-1,20,50,30", "x_min", "non-negative"),
    ("abc,,10,20,50,30", "class_name", "empty"),
    (",Cardiomegaly,10,20,50,30", "image_id", "empty"),
])
def test_a_bad_row_names_file_row_and_field(tmp_path, row, field, reason):
    path = tmp_path / "boxes.csv"
    path.write_text("image_id,class_name,x_min,y_min,x_max,y_max\nok,Nodule/Mass,1,2,3,4\n" + row + "\n")
    with pytest.raises(SourceError, match=reason) as error:
        read_box_annotations(path)
    assert error.value.origin == f"{path}:3" and error.value.field == field


def test_a_missing_column_is_named(tmp_path):
    path = tmp_path / "boxes.csv"
    path.write_text("image_id,label,x_min,y_min,x_max,y_max\n")
    with pytest.raises(SourceError, match="class_name.*missing column"):
        read_box_annotations(path)
