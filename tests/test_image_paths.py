"""Released image paths -> local paths under the image root, with escape refusal."""

import os

import pytest

from data_pipeline.files.image_paths import DEFAULT_REMAP_ANCHORS, ImagePathError, resolve_image_path

_MIMIC_TAIL = "files/p10/p10000032/s50414267/02aa804e.jpg"


@pytest.fixture
def root(tmp_path):
    image_root = tmp_path / "images"
    image_root.mkdir()
    return image_root


def test_relative_path_goes_under_root(root):
    assert resolve_image_path("a/b.png", root) == root / "a" / "b.png"
    assert resolve_image_path("./a/b.png", str(root)) == root / "a" / "b.png"


def test_relative_root_is_made_absolute(root, monkeypatch):
    monkeypatch.chdir(root.parent)
    resolved = resolve_image_path("x.png", "images")
    assert resolved.is_absolute() and resolved == root / "x.png"


def test_absolute_path_inside_root_kept(root):
    assert resolve_image_path(root / "sub" / "c.dcm", root) == root / "sub" / "c.dcm"


def test_released_absolute_path_remapped_from_dataset_folder(root):
    released = f"/mnt/data/xyz/mimic_cxr/{_MIMIC_TAIL}"
    assert resolve_image_path(released, root) == root / "mimic_cxr" / _MIMIC_TAIL


def test_anchor_order_decides_then_last_occurrence(root):
    # "files" occurs before "mimic_cxr" in the path, but "mimic_cxr" comes first in the anchors.
    assert resolve_image_path(f"/files/mimic_cxr/{_MIMIC_TAIL}", root) == (
        root / "mimic_cxr" / _MIMIC_TAIL
    )
    # A mount prefix reusing the dataset folder name is dropped: the last occurrence wins.
    assert resolve_image_path(f"/srv/mimic_cxr/mimic_cxr/{_MIMIC_TAIL}", root) == (
        root / "mimic_cxr" / _MIMIC_TAIL
    )
    assert resolve_image_path("/x/chexpert/CheXpert-v1.0/train/p1/view1.jpg", root) == (
        root / "chexpert" / "CheXpert-v1.0" / "train" / "p1" / "view1.jpg"
    )


def test_custom_anchors(root):
    released = f"/mnt/a/mimic-cxr-jpg/2.0.0/{_MIMIC_TAIL}"
    assert resolve_image_path(released, root, remap_from=("files",)) == root / _MIMIC_TAIL
    assert resolve_image_path(released, root) == root / "mimic-cxr-jpg" / "2.0.0" / _MIMIC_TAIL
    assert "mimic_cxr" in DEFAULT_REMAP_ANCHORS


def test_absolute_path_without_anchor_refused(root):
    with pytest.raises(ImagePathError, match=r"/mnt/other/a\.png: absolute path outside"):
        resolve_image_path("/mnt/other/a.png", root)
    # The file name itself is never an anchor.
    with pytest.raises(ImagePathError, match="none of the anchor folders"):
        resolve_image_path("/mnt/other/files", root)


@pytest.mark.parametrize(
    "path",
    ["../secret.png", "a/../../secret.png", "a/../b.png", "/mnt/mimic_cxr/../../etc/passwd"],
)
def test_dotdot_refused(root, path):
    with pytest.raises(ImagePathError, match=r"'\.\.' components are not allowed"):
        resolve_image_path(path, root)


def test_dotdot_in_absolute_path_under_root_refused(root):
    with pytest.raises(ImagePathError, match=r"'\.\.'"):
        resolve_image_path(f"{root}/../outside.png", root)


def test_symlink_escaping_root_refused(root, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "leak.png").write_bytes(b"x")
    os.symlink(outside, root / "link")
    with pytest.raises(ImagePathError, match="outside the image root"):
        resolve_image_path("link/leak.png", root)
    os.symlink(outside / "leak.png", root / "file_link.png")
    with pytest.raises(ImagePathError, match="symlink points out of the root"):
        resolve_image_path("file_link.png", root)


def test_symlink_inside_root_allowed(root):
    (root / "real").mkdir()
    (root / "real" / "a.png").write_bytes(b"x")
    os.symlink(root / "real", root / "alias")
    assert resolve_image_path("alias/a.png", root, require_exists=True) == root / "alias" / "a.png"


def test_require_exists(root):
    assert not resolve_image_path("missing.png", root).exists()
    with pytest.raises(ImagePathError, match=r"missing\.png: no such image file"):
        resolve_image_path("missing.png", root, require_exists=True)
    (root / "there.png").write_bytes(b"x")
    assert resolve_image_path("there.png", root, require_exists=True) == root / "there.png"
    (root / "folder").mkdir()
    with pytest.raises(ImagePathError, match="no such image file"):
        resolve_image_path("folder", root, require_exists=True)


@pytest.mark.parametrize("path", ["", "  ", "."])
def test_empty_or_root_itself_refused(root, path):
    with pytest.raises(ImagePathError, match="empty image path|names the image root itself"):
        resolve_image_path(path, root)
