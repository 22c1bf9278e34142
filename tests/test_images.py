"""Radiograph loading (DICOM/PNG/JPEG), 16-bit PNG encoding, and resize-with-pad geometry."""

import io

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import apply_modality_lut, apply_windowing
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEGLosslessSV1,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from data_pipeline.schema.boxes import Box
from data_pipeline.files.images import (
    ImageLoadError,
    encode_png16,
    is_dicom,
    load_image,
    load_image_bytes,
    resize_square,
    resize_with_pad,
    resize_with_pad_params,
)

# ----------------------------------------------------------------------------- fixtures


def _dicom_bytes(pixels, *, photometric="MONOCHROME2", bits_stored=12, **elements) -> bytes:
    """A single-frame 16-bit unsigned Explicit VR Little Endian DICOM of `pixels` [H, W]."""
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.Rows, ds.Columns = np.shape(pixels)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    ds.PixelData = np.asarray(pixels, dtype="<u2").tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _png_bytes(pil: Image.Image, fmt: str = "PNG", **save_args) -> bytes:
    buffer = io.BytesIO()
    pil.save(buffer, format=fmt, **save_args)
    return buffer.getvalue()


_RAMP = np.array([[0, 1000, 2000], [3000, 3500, 4000]], dtype=np.uint16)


@pytest.fixture(scope="module")
def rg1():
    """The pydicom-data chest radiograph, uncompressed and lossless JPEG 2000."""
    paths = {name: get_testdata_file(f"RG1_{name}.dcm") for name in ("UNCR", "J2KR")}
    raw = {name: pydicom.dcmread(path).pixel_array for name, path in paths.items()}
    loaded = {name: load_image(path) for name, path in paths.items()}
    return paths, raw, loaded


# ----------------------------------------------------------------------------- real DICOMs


def test_rg1_lossless_j2k_matches_uncompressed(rg1):
    _, raw, loaded = rg1
    assert raw["UNCR"].shape == (1955, 1841)
    np.testing.assert_array_equal(raw["J2KR"], raw["UNCR"])
    np.testing.assert_array_equal(loaded["J2KR"], loaded["UNCR"])


def test_rg1_dtype_range_and_window(rg1):
    _, raw, loaded = rg1
    image = loaded["UNCR"]
    assert image.dtype == np.float32 and image.shape == (1955, 1841)
    assert 0.0 <= image.min() < image.max() <= 1.0
    # Window centre 15000 / width 30000 (LINEAR), then MONOCHROME1 inversion.
    windowed = np.clip((raw["UNCR"] - 14999.5) / 29999.0 + 0.5, 0.0, 1.0)
    np.testing.assert_allclose(image, 1.0 - windowed, atol=1e-6)


def test_rg1_polarity_lungs_darker_than_mediastinum(rg1):
    image = rg1[2]["UNCR"]
    h, w = image.shape

    def region(y0, y1, x0, x1):
        return image[int(y0 * h) : int(y1 * h), int(x0 * w) : int(x1 * w)].mean()

    right_lung, left_lung = region(0.15, 0.40, 0.18, 0.35), region(0.15, 0.35, 0.62, 0.80)
    mediastinum = region(0.15, 0.60, 0.46, 0.54)
    assert right_lung < mediastinum - 0.15 and left_lung < mediastinum - 0.15


@pytest.mark.parametrize("name", ["JPEG-LL.dcm", "JPGLosslessP14SV1_1s_1f_8b.dcm"])
def test_jpeg_lossless_dicom_decodes(name):
    path = get_testdata_file(name)
    ds = pydicom.dcmread(path)
    assert ds.file_meta.TransferSyntaxUID == JPEGLosslessSV1
    image = load_image(path)
    assert image.dtype == np.float32 and image.shape == (ds.Rows, ds.Columns)
    stored = ds.pixel_array.astype(np.float64)
    if "WindowCenter" in ds:  # 8-bit file: LINEAR window 127 / 254.
        expected = np.clip((stored - 126.5) / 253.0 + 0.5, 0.0, 1.0)
    else:
        expected = (stored - stored.min()) / (stored.max() - stored.min())
    np.testing.assert_allclose(image, expected, atol=1e-6)
    assert image.std() > 0.01


def test_colour_and_multiframe_dicoms_refused():
    with pytest.raises(ImageLoadError, match=r"US1_UNCR\.dcm.*'RGB' is not a grayscale"):
        load_image(get_testdata_file("US1_UNCR.dcm"))
    with pytest.raises(ImageLoadError, match=r"emri_small\.dcm.*multi-frame DICOM \(10 frames\)"):
        load_image(get_testdata_file("emri_small.dcm"))


# ----------------------------------------------------------------------------- synthetic DICOMs


def test_min_max_without_window_and_inversion():
    m2 = load_image_bytes(_dicom_bytes(_RAMP), "m2.dcm")
    np.testing.assert_allclose(m2, _RAMP / 4000.0, atol=1e-7)
    m1 = load_image_bytes(_dicom_bytes(_RAMP, photometric="MONOCHROME1"), "m1.dcm")
    np.testing.assert_allclose(m1, 1.0 - _RAMP / 4000.0, atol=1e-7)


def test_negative_rescale_slope_flips_min_max():
    flipped = load_image_bytes(
        _dicom_bytes(_RAMP, RescaleSlope=-1, RescaleIntercept=4095), "slope.dcm"
    )
    np.testing.assert_allclose(flipped, 1.0 - _RAMP / 4000.0, atol=1e-7)


def test_bits_stored_masks_unused_high_bits():
    dirty = _RAMP | np.uint16(0xF000)
    clean = load_image_bytes(_dicom_bytes(_RAMP), "clean.dcm")
    np.testing.assert_array_equal(load_image_bytes(_dicom_bytes(dirty), "dirty.dcm"), clean)


@pytest.mark.parametrize("function", ["LINEAR", "LINEAR_EXACT", "SIGMOID"])
@pytest.mark.parametrize("photometric", ["MONOCHROME1", "MONOCHROME2"])
def test_window_after_rescale_matches_pydicom(function, photometric):
    pixels = np.arange(0, 4096, 64, dtype=np.uint16).reshape(8, 8)
    elements = dict(
        RescaleSlope=2,
        RescaleIntercept=-1000,
        WindowCenter=2500,
        WindowWidth=3001,
        VOILUTFunction=function,
    )
    data = _dicom_bytes(pixels, photometric=photometric, **elements)
    image = load_image_bytes(data, "window.dcm")
    ds = pydicom.dcmread(io.BytesIO(data))
    # pydicom's window output spans the rescaled stored range [0, 4095] * 2 - 1000.
    y_min, y_max = -1000.0, 4095 * 2 - 1000.0
    reference = (apply_windowing(apply_modality_lut(pixels, ds), ds) - y_min) / (y_max - y_min)
    if photometric == "MONOCHROME1":
        reference = 1.0 - reference
    np.testing.assert_allclose(image, reference, atol=1e-6)
    # The window really clips: modality values 2 v - 1000 below 1000 are black (MONOCHROME2).
    below = 2 * pixels.astype(float) - 1000 < 1000
    if function != "SIGMOID":
        assert np.all(image[below] == (1.0 if photometric == "MONOCHROME1" else 0.0))


def test_multi_valued_window_uses_first_value():
    first = load_image_bytes(
        _dicom_bytes(_RAMP, WindowCenter=[2000, 100], WindowWidth=[2001, 50]), "multi.dcm"
    )
    single = load_image_bytes(_dicom_bytes(_RAMP, WindowCenter=2000, WindowWidth=2001), "one.dcm")
    np.testing.assert_array_equal(first, single)


def test_voi_lut_sequence_preferred_over_window():
    lut = (4095 - np.arange(4096)) // 2  # a decreasing 12-bit LUT, max 2047.
    item = Dataset()
    item.add_new("LUTDescriptor", "US", [4096, 0, 12])
    item.add_new("LUTData", "OW", lut.astype("<u2").tobytes())
    data = _dicom_bytes(_RAMP, VOILUTSequence=[item], WindowCenter=100, WindowWidth=10)
    np.testing.assert_allclose(load_image_bytes(data, "voi.dcm"), lut[_RAMP] / 4095.0, atol=1e-7)


def test_invalid_window_width_refused():
    with pytest.raises(ImageLoadError, match=r"w\.dcm: Window Width 0\.5 must be >= 1 for LINEAR"):
        load_image_bytes(_dicom_bytes(_RAMP, WindowCenter=10, WindowWidth=0.5), "w.dcm")


# ----------------------------------------------------------------------------- PNG / JPEG


def test_png_8bit_round_trip(tmp_path):
    pixels = np.arange(256, dtype=np.uint8).reshape(16, 16)
    path = tmp_path / "gray8.png"
    Image.fromarray(pixels).save(path)
    image = load_image(path)
    assert image.dtype == np.float32
    np.testing.assert_array_equal(image, (pixels / 255.0).astype(np.float32))


def test_png_16bit_keeps_full_precision(tmp_path):
    pixels = np.array([[0, 1, 2], [32768, 65534, 65535]], dtype=np.uint16)
    path = tmp_path / "gray16.png"
    Image.fromarray(pixels).save(path)
    image = load_image(path)
    np.testing.assert_array_equal(image, (pixels / 65535.0).astype(np.float32))
    assert len(np.unique(image)) == 6


def test_jpeg_round_trip_is_close(tmp_path):
    gradient = np.add.outer(np.arange(64), np.arange(64)).astype(np.float64) / 126.0
    path = tmp_path / "gray.jpg"
    Image.fromarray(np.rint(gradient * 255).astype(np.uint8)).save(path, quality=95)
    np.testing.assert_allclose(load_image(path), gradient, atol=3 / 255)


def test_rgb_becomes_luminance():
    rgb = np.zeros((2, 2, 3), dtype=np.uint8)
    rgb[0, 0] = (255, 0, 0)
    rgb[0, 1] = (0, 255, 0)
    rgb[1, 0] = (0, 0, 255)
    image = load_image_bytes(_png_bytes(Image.fromarray(rgb)), "rgb.png")
    np.testing.assert_allclose(image, [[0.299, 0.587], [0.114, 0.0]], atol=1e-6)
    opaque = np.concatenate([rgb, np.full((2, 2, 1), 255, np.uint8)], axis=-1)
    np.testing.assert_array_equal(
        load_image_bytes(_png_bytes(Image.fromarray(opaque)), "rgba.png"), image
    )


def test_palette_and_gray_alpha_pngs():
    gray = np.array([[0, 128], [200, 255]], dtype=np.uint8)
    expected = gray / 255.0
    palette = Image.fromarray(gray).convert("P")
    np.testing.assert_allclose(load_image_bytes(_png_bytes(palette), "p.png"), expected, atol=1e-6)
    la = Image.merge("LA", [Image.fromarray(gray), Image.new("L", (2, 2), 255)])
    np.testing.assert_allclose(load_image_bytes(_png_bytes(la), "la.png"), expected, atol=1e-6)


def test_transparency_refused():
    rgba = np.full((2, 2, 4), 255, dtype=np.uint8)
    rgba[..., :3] = 200
    rgba[0, 0, 3] = 10
    with pytest.raises(ImageLoadError, match=r"t\.png: 1 pixel\(s\) are not fully opaque"):
        load_image_bytes(_png_bytes(Image.fromarray(rgba)), "t.png")


def test_content_not_extension_decides_format(tmp_path):
    png_named_dcm = tmp_path / "actually_png.dcm"
    Image.fromarray(np.array([[0, 255]], dtype=np.uint8)).save(png_named_dcm, format="PNG")
    np.testing.assert_array_equal(load_image(png_named_dcm), [[0.0, 1.0]])
    dicom = _dicom_bytes(_RAMP)
    assert is_dicom(dicom) and not is_dicom(png_named_dcm.read_bytes())
    dicom_named_png = tmp_path / "actually_dicom.png"
    dicom_named_png.write_bytes(dicom)
    np.testing.assert_allclose(load_image(dicom_named_png), _RAMP / 4000.0, atol=1e-7)


# ----------------------------------------------------------------------------- encode_png16


def test_encode_png16_round_trip_within_half_a_level():
    rng = np.random.default_rng(0)
    image = rng.random((17, 23))
    image[0, 0], image[0, 1] = 0.0, 1.0
    decoded = load_image_bytes(encode_png16(image), "enc.png")
    assert np.abs(decoded - image).max() <= 0.5 / 65535 + 1e-7
    on_grid = np.rint(image * 65535) / 65535
    np.testing.assert_array_equal(
        load_image_bytes(encode_png16(on_grid), "grid.png"), on_grid.astype(np.float32)
    )


@pytest.mark.parametrize(
    "image, reason",
    [
        (np.zeros((2, 2, 3)), "non-empty"),
        (np.zeros((0, 4)), "non-empty"),
        (np.array([[0.0, np.nan]]), "NaN"),
        (np.array([[0.0, 1.5]]), "outside"),
    ],
)
def test_encode_png16_rejects_bad_input(image, reason):
    with pytest.raises(ValueError, match=reason):
        encode_png16(image)


# ----------------------------------------------------------------------------- bad input


def _float_pixel_dicom(values) -> bytes:
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = Dataset()
    ds.file_meta = meta
    ds.Rows, ds.Columns = np.shape(values)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 32
    ds.FloatPixelData = np.asarray(values, dtype="<f4").tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_missing_directory_and_empty_files(tmp_path):
    with pytest.raises(ImageLoadError, match=r"nope\.png: file not found"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(ImageLoadError, match="is a directory"):
        load_image(tmp_path)
    (tmp_path / "empty.dcm").write_bytes(b"")
    with pytest.raises(ImageLoadError, match=r"empty\.dcm: empty file"):
        load_image(tmp_path / "empty.dcm")


@pytest.mark.filterwarnings("ignore:End of file reached before delimiter")
@pytest.mark.parametrize("name", ["RG1_UNCR.dcm", "RG1_J2KR.dcm"])
def test_truncated_dicom(name):
    with open(get_testdata_file(name), "rb") as f:
        data = f.read()
    with pytest.raises(ImageLoadError, match=rf"half_{name}: .*(truncated|pixel data)"):
        load_image_bytes(data[: len(data) // 2], f"half_{name}")


def test_dicom_without_pixel_data():
    with pytest.raises(ImageLoadError, match=r"rtplan\.dcm: DICOM has no pixel data"):
        load_image(get_testdata_file("rtplan.dcm"))


def test_multi_frame_synthetic_refused():
    frames = np.stack([_RAMP, _RAMP])
    data = _dicom_bytes(frames.reshape(4, 3), NumberOfFrames=2)
    with pytest.raises(ImageLoadError, match=r"mf\.dcm: multi-frame DICOM \(2 frames\)"):
        load_image_bytes(data, "mf.dcm")


@pytest.mark.parametrize("name", ["notes.dcm", "notes.png", "notes.jpg"])
def test_non_image_file_with_image_extension(tmp_path, name):
    path = tmp_path / name
    path.write_text("patient notes, not an image\n" * 20)
    with pytest.raises(ImageLoadError, match=rf"{name}: neither DICOM .* nor an image"):
        load_image(path)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_png_and_jpeg(fmt):
    noise = np.random.default_rng(1).integers(0, 256, (64, 64), dtype=np.uint8)
    data = _png_bytes(Image.fromarray(noise), fmt)
    with pytest.raises(ImageLoadError, match=rf"cut\.img: cannot decode {fmt} data: .*truncated"):
        load_image_bytes(data[: len(data) // 2], "cut.img")


def test_unsupported_format_refused():
    data = _png_bytes(Image.fromarray(np.array([[0, 255]], dtype=np.uint8)), "BMP")
    with pytest.raises(ImageLoadError, match=r"x\.bmp: unsupported image format BMP"):
        load_image_bytes(data, "x.bmp")


def test_nan_pixels_refused():
    with pytest.raises(ImageLoadError, match=r"nan\.dcm: .*NaN"):
        load_image_bytes(_float_pixel_dicom([[0.0, np.nan], [1.0, 2.0]]), "nan.dcm")


def test_float_pixel_data_min_max():
    image = load_image_bytes(_float_pixel_dicom([[-1.0, 0.0], [1.0, 3.0]]), "f.dcm")
    np.testing.assert_allclose(image, [[0.0, 0.25], [0.5, 1.0]])


def test_constant_images_refused():
    with pytest.raises(ImageLoadError, match=r"flat\.dcm: constant image"):
        load_image_bytes(_dicom_bytes(np.full((4, 4), 7)), "flat.dcm")
    flat_png = _png_bytes(Image.new("L", (4, 4), 90))
    with pytest.raises(ImageLoadError, match=r"flat\.png: constant image"):
        load_image_bytes(flat_png, "flat.png")
    # A window that maps every pixel to black leaves nothing either.
    with pytest.raises(ImageLoadError, match=r"dark\.dcm: constant image"):
        load_image_bytes(_dicom_bytes(_RAMP, WindowCenter=9000, WindowWidth=10), "dark.dcm")


def test_zero_size_dicom_refused():
    data = _dicom_bytes(np.zeros((0, 4), dtype=np.uint16))
    with pytest.raises(ImageLoadError, match=r"zero\.dcm: zero-size image \(Rows=0, Columns=4\)"):
        load_image_bytes(data, "zero.dcm")


# ----------------------------------------------------------------------------- resizing


@pytest.mark.parametrize(
    "shape, size, content, offsets",
    [
        ((100, 50), 64, (64, 32), (0, 16)),
        ((50, 100), 64, (32, 64), (16, 0)),
        ((100, 51), 64, (64, 33), (0, 15)),
        ((64, 64), 64, (64, 64), (0, 0)),
        ((30, 40), (60, 100), (60, 80), (0, 10)),
    ],
)
def test_resize_with_pad_params(shape, size, content, offsets):
    params = resize_with_pad_params(shape, size)
    assert (params.content_h, params.content_w) == content
    assert (params.offset_y, params.offset_x) == offsets
    assert params.scale_y == content[0] / shape[0] and params.scale_x == content[1] / shape[1]


def test_resize_with_pad_places_content_and_padding():
    image = np.linspace(0.2, 0.9, 100 * 50, dtype=np.float32).reshape(100, 50)
    out = resize_with_pad(image, 64, pad_value=0.125)
    assert out.shape == (64, 64) and out.dtype == np.float32
    assert np.all(out[:, :16] == 0.125) and np.all(out[:, 48:] == 0.125)
    content = out[:, 16:48]
    assert content.min() >= 0.2 - 1e-6 and content.max() <= 0.9 + 1e-6
    np.testing.assert_array_equal(content, resize_square(image, (64, 32)))
    np.testing.assert_array_equal(resize_with_pad(image, 64, pad_value=0.125), out)


def test_resize_is_antialiased():
    checker = (np.indices((128, 128)).sum(axis=0) % 2).astype(np.float32)
    small = resize_square(checker, 16)
    assert small.shape == (16, 16)
    assert abs(small.mean() - 0.5) < 0.02 and small.std() < 0.05


def test_resize_identity_at_same_size():
    image = np.random.default_rng(2).random((8, 8)).astype(np.float32)
    np.testing.assert_array_equal(resize_with_pad(image, 8), image)


def test_box_mapping_follows_the_pixels():
    image = np.zeros((200, 100), dtype=np.float32)
    image[50:100, 20:60] = 1.0  # rows 25-50 %, columns 20-60 % of the image.
    box = Box("lesion", 20.0, 25.0, 60.0, 50.0)
    params = resize_with_pad_params(image.shape, 80)
    out = resize_with_pad(image, 80)
    mapped = params.box_to_output(box)
    rows, cols = np.nonzero(out > 0.5)
    assert rows.min() / 80 * 100 == pytest.approx(mapped.y1, abs=100 / 80)
    assert (rows.max() + 1) / 80 * 100 == pytest.approx(mapped.y2, abs=100 / 80)
    assert cols.min() / 80 * 100 == pytest.approx(mapped.x1, abs=100 / 80)
    assert (cols.max() + 1) / 80 * 100 == pytest.approx(mapped.x2, abs=100 / 80)
    back = params.box_to_source(mapped)
    for name in ("x1", "y1", "x2", "y2"):
        assert getattr(back, name) == pytest.approx(getattr(box, name))
    whole = params.box_to_output(Box("all", 0.0, 0.0, 100.0, 100.0))
    assert (whole.x1, whole.x2) == (pytest.approx(25.0), pytest.approx(75.0))
    in_padding = params.box_to_source(Box("pad", 0.0, 0.0, 10.0, 100.0))
    assert (in_padding.x1, in_padding.x2) == (0.0, 0.0)


def test_resize_rejects_bad_sizes():
    with pytest.raises(ValueError, match="positive"):
        resize_with_pad(np.ones((4, 4), np.float32), 0)
    with pytest.raises(ValueError, match="empty image"):
        resize_with_pad_params((0, 4), 8)
    with pytest.raises(ValueError, match=r"\[H, W\]"):
        resize_square(np.ones((4, 4, 3), np.float32), 2)
