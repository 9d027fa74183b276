"""Tests for tfblip.ops.image: in-graph decoding and resizing, checked against Pillow.

Pillow is the ground truth: the Python image processor opens files with it.
"""

import dataclasses
import io
import random
import subprocess
import sys
from collections.abc import Callable

import numpy as np
import PIL.Image
import pytest
import skimage.data
import tensorflow as tf

from tfblip.image_processing import BlipImageProcessor
from tfblip.ops.image import decode_image, pillow_bicubic_resize, preprocess_image_bytes

BLIP_SIZE = (384, 384)
MIN_IDENTICAL_SHARE = 0.999
NOT_AN_IMAGE = "is not a JPEG, PNG, GIF or BMP image"


def _photo(name: str, height: int | None = None, width: int | None = None) -> PIL.Image.Image:
    """A real photograph from skimage.data, resized (Lanczos) to height x width if given."""
    image = PIL.Image.fromarray(getattr(skimage.data, name)())
    if height is not None:
        image = image.resize((width, height), PIL.Image.Resampling.LANCZOS)
    return image


def _encode(image: PIL.Image.Image, image_format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, image_format, **options)
    return buffer.getvalue()


def _pillow_rgb(data: bytes) -> np.ndarray:
    with PIL.Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


def _pillow_resize(array: np.ndarray, height: int, width: int) -> np.ndarray:
    """Pillow's bicubic resize of a uint8 (H, W, C) array, C in 1 or 3."""
    image = PIL.Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
    resized = np.asarray(image.resize((width, height), PIL.Image.Resampling.BICUBIC))
    return resized.reshape(height, width, -1)


def _identical_share(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape
    return float(np.mean(a == b))


def _with_alpha(image: PIL.Image.Image) -> PIL.Image.Image:
    rgba = image.convert("RGBA")
    width, height = image.size
    rgba.putalpha(PIL.Image.linear_gradient("L").resize((width, height)))
    return rgba


def _palette(image: PIL.Image.Image) -> PIL.Image.Image:
    return image.convert("P", palette=PIL.Image.Palette.ADAPTIVE, colors=200)


def _grey_16_bit(image: PIL.Image.Image) -> PIL.Image.Image:
    # Values up to 1020: Pillow clips them to 255 when it converts to RGB.
    return PIL.Image.fromarray(np.asarray(image.convert("L")).astype(np.uint16) * 4)


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    encode: Callable[[], bytes]


# Formats and encoder settings, on photos that BLIP's 384 x 384 resize shrinks strongly or
# mildly, enlarges, leaves alone on one axis, or that Pillow 13 resamples vertically first.
CASES = [
    Case(
        "jpeg q95 4:4:4 512x512",
        lambda: _encode(_photo("astronaut"), "JPEG", quality=95, subsampling=0),
    ),
    Case(
        "jpeg q75 4:2:0 400x600",
        lambda: _encode(_photo("coffee"), "JPEG", quality=75, subsampling=2),
    ),
    Case(
        "jpeg q90 4:2:2 300x451",
        lambda: _encode(_photo("chelsea"), "JPEG", quality=90, subsampling=1),
    ),
    Case(
        "jpeg q50 4:2:0 333x501 odd",
        lambda: _encode(_photo("rocket", 333, 501), "JPEG", quality=50),
    ),
    Case(
        "jpeg q85 progressive 1500x2000",
        lambda: _encode(_photo("astronaut", 1500, 2000), "JPEG", quality=85, progressive=True),
    ),
    Case(
        "jpeg q100 4:4:4 45x67 enlarged",
        lambda: _encode(_photo("chelsea", 45, 67), "JPEG", quality=100, subsampling=0),
    ),
    Case("jpeg grey 512x512", lambda: _encode(_photo("camera"), "JPEG", quality=90)),
    Case(
        "jpeg cmyk 300x451", lambda: _encode(_photo("chelsea").convert("CMYK"), "JPEG", quality=90)
    ),
    Case(
        "jpeg q80 1200x500 tall", lambda: _encode(_photo("coffee", 1200, 500), "JPEG", quality=80)
    ),
    Case(
        "jpeg q90 300x1 one pixel wide",
        lambda: _encode(_photo("rocket", 300, 1), "JPEG", quality=90),
    ),
    Case("png rgb 300x451", lambda: _encode(_photo("chelsea"), "PNG")),
    Case("png rgba 512x512", lambda: _encode(_with_alpha(_photo("astronaut")), "PNG")),
    Case("png grey 512x512", lambda: _encode(_photo("camera"), "PNG")),
    Case("png palette 427x640", lambda: _encode(_palette(_photo("rocket")), "PNG")),
    Case(
        "png grey 16-bit 301x257", lambda: _encode(_grey_16_bit(_photo("camera", 301, 257)), "PNG")
    ),
    Case("png rgb 384x700 height kept", lambda: _encode(_photo("coffee", 384, 700), "PNG")),
    Case("png rgb 2000x300 tall", lambda: _encode(_photo("rocket", 2000, 300), "PNG")),
    Case("gif 300x451", lambda: _encode(_photo("chelsea"), "GIF")),
    Case("gif 1x257 one pixel high", lambda: _encode(_photo("astronaut", 1, 257), "GIF")),
    Case("bmp rgb 400x600", lambda: _encode(_photo("coffee"), "BMP")),
    Case("bmp rgba 300x451", lambda: _encode(_with_alpha(_photo("chelsea")), "BMP")),
    Case("bmp palette 300x451", lambda: _encode(_palette(_photo("chelsea")), "BMP")),
    Case("bmp grey 199x333", lambda: _encode(_photo("camera", 199, 333).convert("L"), "BMP")),
]


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_decode_and_resize_match_pillow(case, record_property):
    data = case.encode()
    reference = _pillow_rgb(data)
    decoded = decode_image(tf.constant(data)).numpy()
    assert decoded.dtype == np.uint8
    decode_share = _identical_share(decoded, reference)

    # Resizing alone, from the same pixels, is exact.
    resized = pillow_bicubic_resize(decoded, *BLIP_SIZE).numpy()
    np.testing.assert_array_equal(resized, _pillow_resize(decoded, *BLIP_SIZE))

    resize_share = _identical_share(resized, _pillow_resize(reference, *BLIP_SIZE))
    record_property("decode_identical_share", decode_share)
    record_property("decode_resize_identical_share", resize_share)
    print(f"{case.name}: identical decode {decode_share:.6f}, decode + resize {resize_share:.6f}")
    assert resize_share >= MIN_IDENTICAL_SHARE


# (input height, input width, output height, output width).
RESIZES = [
    (512, 512, 384, 384),
    (400, 600, 384, 384),
    (300, 451, 384, 384),
    (1500, 2000, 384, 384),
    (2000, 1500, 384, 384),
    (45, 67, 384, 384),
    (333, 501, 123, 77),
    (384, 700, 384, 384),
    (700, 384, 384, 384),
    (1200, 500, 384, 384),
    (2000, 300, 384, 384),
    (300, 1, 384, 384),
    (1, 300, 384, 384),
    (1, 1, 5, 3),
    (300, 451, 1, 1),
    (300, 451, 1, 451),
    (300, 451, 300, 451),
    (17, 13, 13, 17),
]


@pytest.mark.parametrize("channels", [3, 1])
@pytest.mark.parametrize("sizes", RESIZES, ids=lambda s: "{}x{}->{}x{}".format(*s))
def test_resize_matches_pillow(sizes, channels):
    in_height, in_width, height, width = sizes
    photo = _photo("chelsea", in_height, in_width)
    array = np.asarray(photo if channels == 3 else photo.convert("L")).reshape(
        in_height, in_width, channels
    )
    resized = pillow_bicubic_resize(array, height, width)
    assert resized.shape == (height, width, channels)
    np.testing.assert_array_equal(resized.numpy(), _pillow_resize(array, height, width))


def test_resize_matches_pillow_in_graph_for_random_sizes():
    resize = tf.function(
        pillow_bicubic_resize,
        input_signature=[
            tf.TensorSpec([None, None, 3], tf.uint8),
            tf.TensorSpec([], tf.int32),
            tf.TensorSpec([], tf.int32),
        ],
    )
    photo = np.asarray(_photo("astronaut"))
    rng = random.Random(0)
    for _ in range(60):
        in_height, in_width = rng.randint(1, 512), rng.randint(1, 512)
        height, width = rng.randint(1, 600), rng.randint(1, 600)
        array = np.ascontiguousarray(photo[:in_height, :in_width])
        np.testing.assert_array_equal(
            resize(array, height, width).numpy(),
            _pillow_resize(array, height, width),
            err_msg=f"{in_height}x{in_width} -> {height}x{width}",
        )


def test_resize_refuses_bad_arguments():
    with pytest.raises(TypeError, match="uint8"):
        pillow_bicubic_resize(np.zeros((4, 4, 3), np.float32), 2, 2)
    with pytest.raises(tf.errors.InvalidArgumentError, match="height must be > 0"):
        pillow_bicubic_resize(np.zeros((4, 4, 3), np.uint8), 0, 2)


def test_decode_gif_gives_the_first_frame():
    first = _photo("chelsea")
    second = first.transpose(PIL.Image.Transpose.FLIP_TOP_BOTTOM)
    data = _encode(first, "GIF", save_all=True, append_images=[second])
    decoded = decode_image(data)
    assert decoded.shape.rank == 3
    np.testing.assert_array_equal(decoded.numpy(), _pillow_rgb(data))


def test_decode_ignores_exif_orientation():
    photo = _photo("coffee")  # 400 x 600
    exif = PIL.Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display.
    data = _encode(photo, "JPEG", quality=90, exif=exif)
    assert decode_image(data).shape == (400, 600, 3)  # the stored layout, not (600, 400)


def _truncated_jpeg() -> bytes:
    data = _encode(_photo("astronaut"), "JPEG", quality=90)
    return data[: len(data) // 2]


def _truncated_bmp() -> bytes:
    data = _encode(_photo("chelsea"), "BMP")
    return data[: len(data) // 2]


def _corrupt_png() -> bytes:
    data = _encode(_photo("chelsea"), "PNG")
    return data[:100] + bytes(range(256)) * 8


BAD_BYTES = [
    pytest.param(lambda: b"", NOT_AN_IMAGE + r" \(0 bytes", id="empty"),
    pytest.param(lambda: b"<!DOCTYPE html><html></html>", NOT_AN_IMAGE + r" \(28 bytes", id="html"),
    pytest.param(lambda: b"RIFF\x00\x00\x00\x00WEBPVP8 ", NOT_AN_IMAGE, id="webp"),
    pytest.param(_truncated_jpeg, "Invalid JPEG data", id="truncated-jpeg"),
    pytest.param(_corrupt_png, "Invalid PNG data", id="corrupt-png"),
    pytest.param(lambda: b"GIF89a", "Invalid GIF data", id="header-only-gif"),
    pytest.param(_truncated_bmp, "Input size should match", id="truncated-bmp"),
]


@pytest.fixture(scope="module")
def serving_preprocess():
    processor = BlipImageProcessor()
    return tf.function(
        lambda image_bytes: preprocess_image_bytes(image_bytes, processor),
        input_signature=[tf.TensorSpec([None], tf.string)],
    )


@pytest.mark.parametrize("make_bytes, message", BAD_BYTES)
def test_bad_bytes_raise_invalid_argument(make_bytes, message, serving_preprocess):
    data = make_bytes()
    good = _encode(_photo("chelsea"), "PNG")
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        decode_image(data)
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        serving_preprocess(tf.constant([good, data]))
    # The process, and the traced function, keep working.
    assert serving_preprocess(tf.constant([good])).shape == (1, 3, *BLIP_SIZE)


def _mixed_batch(tmp_path, images: list[tuple[str, bytes]]) -> tuple[list[bytes], list[str]]:
    paths = []
    for index, (suffix, data) in enumerate(images):
        path = tmp_path / f"image{index}.{suffix}"
        path.write_bytes(data)
        paths.append(str(path))
    return [data for _, data in images], paths


def test_preprocess_matches_processor_for_a_mixed_batch(tmp_path, serving_preprocess):
    images = [
        ("png", _encode(_photo("chelsea"), "PNG")),
        ("jpg", _encode(_photo("coffee"), "JPEG", quality=85)),
        ("gif", _encode(_photo("rocket", 333, 501), "GIF")),
    ]
    encoded, paths = _mixed_batch(tmp_path, images)
    expected = BlipImageProcessor()(paths, return_tensors="np")["pixel_values"]

    for pixel_values in (
        preprocess_image_bytes(tf.constant(encoded), BlipImageProcessor()),
        serving_preprocess(tf.constant(encoded)),
    ):
        assert pixel_values.dtype == tf.float32
        assert pixel_values.shape == expected.shape == (3, 3, *BLIP_SIZE)
        got = pixel_values.numpy()
        np.testing.assert_array_equal(got[0], expected[0])  # PNG: decoding agrees
        for index in (1, 2):
            assert _identical_share(got[index], expected[index]) >= MIN_IDENTICAL_SHARE
            np.testing.assert_allclose(got[index], expected[index], atol=0.1)


def test_preprocess_follows_processor_options(tmp_path):
    images = [
        ("png", _encode(_photo("astronaut", 250, 170), "PNG")),
        ("bmp", _encode(_photo("coffee", 250, 170), "BMP")),
    ]
    encoded, paths = _mixed_batch(tmp_path, images)
    for options in (
        {"size": {"height": 224, "width": 320}, "image_mean": 0.5, "image_std": 0.25},
        {"do_normalize": False},
        {"do_rescale": False, "do_normalize": False, "size": 97},
        {"do_resize": False},
    ):
        processor = BlipImageProcessor(**options)
        expected = processor(paths, return_tensors="np")["pixel_values"]
        got = preprocess_image_bytes(tf.constant(encoded), processor).numpy()
        np.testing.assert_array_equal(got, expected, err_msg=str(options))


def test_preprocess_without_resize_needs_equal_sizes():
    processor = BlipImageProcessor(do_resize=False)
    encoded = [_encode(_photo("chelsea"), "PNG"), _encode(_photo("coffee"), "PNG")]
    with pytest.raises(tf.errors.InvalidArgumentError, match="must have the same size"):
        preprocess_image_bytes(tf.constant(encoded), processor)


@pytest.mark.parametrize(
    "options, option",
    [
        ({"resample": PIL.Image.Resampling.BILINEAR}, "resample"),
        ({"resample": PIL.Image.Resampling.LANCZOS}, "resample"),
        ({"do_convert_rgb": False}, "do_convert_rgb"),
        ({"alpha": "white"}, "alpha='white'"),
    ],
)
def test_preprocess_refuses_options_it_cannot_reproduce(options, option):
    with pytest.raises(ValueError, match=option):
        preprocess_image_bytes(tf.constant([b""]), BlipImageProcessor(**options))


def test_serving_graph_has_no_xla_ops_and_handles_any_batch(serving_preprocess):
    graph_def = serving_preprocess.get_concrete_function().graph.as_graph_def()
    op_types = {node.op for node in graph_def.node}
    op_types |= {node.op for function in graph_def.library.function for node in function.node_def}
    assert {"DecodeJpeg", "DecodePng", "StatelessWhile"} <= op_types  # the library was searched
    assert not [op for op in op_types if op.startswith("Xla")]

    assert serving_preprocess(tf.constant([], tf.string)).shape == (0, 3, *BLIP_SIZE)
    encoded = [_encode(_photo("chelsea"), "PNG")] * 5
    assert serving_preprocess(tf.constant(encoded)).shape == (5, 3, *BLIP_SIZE)


def test_saved_model_round_trip(tmp_path):
    processor = BlipImageProcessor()
    module = tf.Module()
    module.preprocess = tf.function(
        lambda image_bytes: preprocess_image_bytes(image_bytes, processor),
        input_signature=[tf.TensorSpec([None], tf.string)],
    )
    tf.saved_model.save(module, str(tmp_path / "model"))
    loaded = tf.saved_model.load(str(tmp_path / "model"))

    encoded = [_encode(_photo("chelsea"), "PNG"), _encode(_photo("coffee"), "JPEG")]
    np.testing.assert_array_equal(
        loaded.preprocess(tf.constant(encoded)).numpy(),
        preprocess_image_bytes(tf.constant(encoded), processor).numpy(),
    )
    with pytest.raises(tf.errors.InvalidArgumentError, match=NOT_AN_IMAGE):
        loaded.preprocess(tf.constant([b"not an image"]))


def test_the_data_pipeline_uses_the_ops_without_the_export():
    """tfblip.ops sits below both users: the training pipeline does not load the export."""
    code = (
        "import sys, tfblip.data\n"
        "assert 'tfblip.ops.image' in sys.modules\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('tfblip.export'))\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
