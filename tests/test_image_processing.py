"""Tests for tfblip.image_processing, checked against transformers' BlipImageProcessorPil."""

import json
import pathlib
import re

import numpy as np
import PIL.Image
import pytest
import skimage.data
import torch
import transformers

from tfblip.image_processing import IMAGE_PROCESSOR_NAME, PROCESSOR_NAME, BlipImageProcessor

TOL = 1e-5


@pytest.fixture(scope="module")
def hf():
    return transformers.BlipImageProcessorPil()


@pytest.fixture(scope="module")
def ours():
    return BlipImageProcessor()


def _crop_resize(array, height, width):
    """A centre crop of ``array`` with the aspect ratio height:width, resized to that size."""
    h, w = array.shape[:2]
    if h * width > w * height:
        ch, cw = max(1, w * height // width), w
    else:
        ch, cw = h, max(1, h * width // height)
    top, left = (h - ch) // 2, (w - cw) // 2
    crop = PIL.Image.fromarray(array[top : top + ch, left : left + cw])
    return crop.resize((width, height), PIL.Image.Resampling.LANCZOS)


@pytest.fixture(scope="module")
def photos():
    """Real photographs, RGB PIL images, in several sizes and aspect ratios."""
    return [
        PIL.Image.fromarray(skimage.data.astronaut()),  # 512 x 512
        PIL.Image.fromarray(skimage.data.chelsea()),  # 300 x 451
        _crop_resize(skimage.data.coffee(), 500, 333),  # portrait
        _crop_resize(skimage.data.rocket(), 333, 500),  # landscape
        _crop_resize(skimage.data.hubble_deep_field(), 100, 700),  # very wide
        _crop_resize(skimage.data.astronaut(), 700, 100),  # very tall
        _crop_resize(skimage.data.chelsea(), 40, 41),  # smaller than the output
    ]


@pytest.fixture(scope="module")
def small_photo():
    return _crop_resize(skimage.data.astronaut(), 90, 120)


def run_ours(processor, images, **kwargs):
    return processor(images, return_tensors="np", **kwargs)["pixel_values"]


def run_hf(processor, images, **kwargs):
    return processor(images, return_tensors="np", **kwargs)["pixel_values"]


def assert_close(ours_values, hf_values):
    assert ours_values.dtype == np.float32
    assert ours_values.shape == hf_values.shape
    diff = np.abs(ours_values.astype(np.float64) - hf_values.astype(np.float64)).max()
    assert diff <= TOL, f"max abs diff {diff}"


def assert_matches(ours_proc, hf_proc, images, hf_images=None, **kwargs):
    expected = run_hf(hf_proc, images if hf_images is None else hf_images, **kwargs)
    got = run_ours(ours_proc, images, **kwargs)
    assert_close(got, expected)
    return got


# ------------------------------------------------------------------------------ photographs


def test_photos_pil_batch(ours, hf, photos):
    got = assert_matches(ours, hf, photos)
    assert got.shape == (len(photos), 3, 384, 384)
    # Not a trivial output: the images differ from each other and span the normalised range.
    assert got.std() > 0.5
    assert np.abs(got[0] - got[1]).max() > 1


def test_photos_numpy_uint8_batch(ours, hf, photos):
    arrays = [np.asarray(photo) for photo in photos]
    assert_matches(ours, hf, arrays)


def test_mixed_batch(ours, hf, photos):
    mixed = [photos[0], np.asarray(photos[2]), photos[3]]
    assert_matches(ours, hf, mixed)


@pytest.mark.parametrize("ext", ["jpg", "png"])
def test_photos_from_files(ours, hf, photos, tmp_path, ext):
    paths = []
    for index, photo in enumerate(photos[:5]):
        path = tmp_path / f"photo{index}.{ext}"
        photo.save(path)
        paths.append(path)
    # transformers takes str paths only; we also take os.PathLike.
    mixed = [str(p) if i % 2 else p for i, p in enumerate(paths)]
    assert_matches(ours, hf, mixed, hf_images=[str(p) for p in paths])


def test_file_exif_orientation_and_alpha(ours, hf, small_photo, tmp_path):
    # A JPEG with an EXIF rotation, a PNG with alpha and a palette PNG with transparency: files
    # are opened as transformers' load_image does (exif_transpose, then convert("RGB")).
    exif = PIL.Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees
    rotated = tmp_path / "rotated.jpg"
    small_photo.save(rotated, exif=exif)
    rgba = small_photo.convert("RGBA")
    rgba.putalpha(PIL.Image.linear_gradient("L").resize(rgba.size))
    alpha_png = tmp_path / "alpha.png"
    rgba.save(alpha_png)
    palette = small_photo.convert("P")
    palette_png = tmp_path / "palette.png"
    palette.save(palette_png, transparency=7)
    paths = [str(rotated), str(alpha_png), str(palette_png)]
    got = ours(paths, do_resize=False)["pixel_values"]
    assert [a.shape for a in got] == [(3, 120, 90), (3, 90, 120), (3, 90, 120)]
    assert_matches(ours, hf, paths)


def test_alpha_option_gives_one_behaviour_for_every_input(ours, hf, small_photo, tmp_path):
    rgba = small_photo.convert("RGBA")
    rgba.putalpha(PIL.Image.linear_gradient("L").resize(rgba.size))
    path = tmp_path / "alpha.png"
    rgba.save(path)
    inputs = {"path": str(path), "pil": rgba, "array": np.asarray(rgba)}
    composited = run_hf(hf, [rgba])  # transformers' processor composites images onto white
    dropped = run_hf(hf, [str(path)])  # its load_image drops a file's alpha
    assert np.abs(composited - dropped).max() > 1

    # The default is transformers' mix.
    assert_close(run_ours(ours, [inputs["path"]]), dropped)
    assert_close(run_ours(ours, [inputs["pil"], inputs["array"]]), np.repeat(composited, 2, 0))
    for alpha, expected in (("white", composited), ("drop", dropped)):
        processor = BlipImageProcessor(alpha=alpha)
        for image in inputs.values():
            assert_close(run_ours(processor, [image]), expected)
            assert_close(run_ours(ours, [image], alpha=alpha), expected)


def test_grayscale_2d_numpy(ours, hf):
    camera = skimage.data.camera()  # 2-D uint8
    assert camera.ndim == 2
    # transformers refuses 2-D arrays; it takes the same pixels as (H, W, 1) or as a PIL "L" image.
    got = assert_matches(ours, hf, camera, hf_images=camera[..., None])
    assert_close(got, run_hf(hf, PIL.Image.fromarray(camera)))
    gray = {"do_convert_rgb": False, "image_mean": 0.5, "image_std": 0.5}
    no_rgb = assert_matches(ours, hf, camera, hf_images=camera[..., None], **gray)
    assert no_rgb.shape == (1, 1, 384, 384)


# ------------------------------------------------------------------------------ PIL modes


def _mode_image(photo, mode):
    if mode == "P+transparency":
        image = photo.convert("P")
        image.info["transparency"] = 3
        return image
    if mode == "RGB+transparency":
        image = photo.copy()
        image.info["transparency"] = tuple(int(v) for v in np.asarray(photo)[0, 0])
        return image
    if mode in ("I;16", "I"):
        gray = np.asarray(photo.convert("L")).astype(np.uint16)
        # Values straddle 255 so that clipping in Pillow's conversion matters.
        wide = gray * 2
        return PIL.Image.fromarray(wide if mode == "I;16" else wide.astype(np.int32))
    if mode == "LA":
        image = photo.convert("LA")
        image.putalpha(PIL.Image.linear_gradient("L").resize(photo.size))
        return image
    if mode == "RGBA":
        image = photo.convert("RGBA")
        image.putalpha(PIL.Image.linear_gradient("L").rotate(90).resize(photo.size))
        return image
    return photo.convert(mode)


MODES = [
    "L",
    "LA",
    "P",
    "P+transparency",
    "RGB+transparency",
    "RGBA",
    "CMYK",
    "I;16",
    "I",
    "F",
    "1",
    "YCbCr",
    "PA",
]


@pytest.mark.parametrize("mode", MODES)
def test_pil_modes(ours, hf, small_photo, mode):
    image = _mode_image(small_photo, mode)
    assert image.mode == mode.split("+")[0]
    assert_matches(ours, hf, image)
    assert_matches(ours, hf, image, do_resize=False)


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK", "1", "RGB"])
def test_pil_modes_without_rgb_conversion(ours, hf, small_photo, mode):
    image = _mode_image(small_photo, mode)
    got = assert_matches(ours, hf, image, do_convert_rgb=False, image_mean=0.4, image_std=0.3)
    assert got.shape[1] == len(image.getbands())


# ------------------------------------------------------------------------------ arrays


def test_numpy_channels_first(ours, hf, photos):
    chw = np.asarray(photos[2]).transpose(2, 0, 1).copy()
    got = assert_matches(ours, hf, chw)
    assert_close(got, run_ours(ours, np.asarray(photos[2])))


def test_numpy_one_and_four_channels(ours, hf, small_photo):
    one = np.asarray(small_photo.convert("L"))[..., None]
    rgba = np.array(small_photo.convert("RGBA"))
    rgba[..., 3] = np.linspace(0, 255, rgba.shape[1]).astype(np.uint8)[None]
    assert_matches(ours, hf, [one, rgba])
    assert_matches(ours, hf, [one.transpose(2, 0, 1), rgba.transpose(2, 0, 1)])


def test_float_input(ours, hf, photos):
    floats = [np.asarray(photo).astype(np.float32) / 255 for photo in photos[:4]]
    assert_matches(ours, hf, floats, do_rescale=False)
    assert_matches(ours, hf, floats)  # rescaled twice, as transformers does
    float_rgba = np.concatenate([floats[0], np.full(floats[0].shape[:2] + (1,), 0.5)], axis=-1)
    assert_matches(ours, hf, float_rgba.astype(np.float32), do_rescale=False)
    as_float64 = floats[0].astype(np.float64)
    assert_matches(ours, hf, as_float64, do_resize=False, do_rescale=False)
    integer_valued = np.asarray(photos[1]).astype(np.float64)
    assert_matches(ours, hf, integer_valued)


def test_tensors(ours, hf, photos):
    array = np.asarray(photos[3])
    assert_matches(ours, hf, torch.from_numpy(array.copy()))
    import tensorflow as tf

    assert_close(run_ours(ours, tf.constant(array)), run_hf(hf, array))


# ------------------------------------------------------------------------------ options


OPTION_CASES = {
    "size_dict": {"size": {"height": 224, "width": 320}},
    "size_int": {"size": 200},
    "no_normalize": {"do_normalize": False},
    "no_rescale": {"do_rescale": False},
    "nothing": {"do_rescale": False, "do_normalize": False},
    "bilinear": {"resample": PIL.Image.Resampling.BILINEAR},
    "nearest": {"resample": 0},
    "scalar_stats": {"image_mean": 0.5, "image_std": 0.25},
    "list_stats": {"image_mean": [0.1, 0.2, 0.3], "image_std": [0.9, 0.8, 0.7]},
    "rescale_factor": {"rescale_factor": 1 / 127.5, "image_mean": 1.0, "image_std": 1.0},
    "no_rgb": {"do_convert_rgb": False},
}


@pytest.mark.parametrize("kwargs", OPTION_CASES.values(), ids=OPTION_CASES.keys())
def test_options(ours, hf, photos, kwargs):
    images = photos[1:4]
    per_call = assert_matches(ours, hf, images, **kwargs)
    constructed = run_ours(BlipImageProcessor(**kwargs), images)
    np.testing.assert_array_equal(constructed, per_call)
    if "size" in kwargs:
        size = BlipImageProcessor(**kwargs).size
        assert per_call.shape[2:] == (size["height"], size["width"])


def test_do_resize_false(ours, hf, photos):
    same = [photos[0], photos[0].transpose(PIL.Image.Transpose.FLIP_LEFT_RIGHT)]
    got = assert_matches(ours, hf, same, do_resize=False)
    assert got.shape == (2, 3, 512, 512)
    different = [photos[0], photos[1]]
    with pytest.raises(ValueError, match=r"image 1 gives \(3, 300, 451\)"):
        ours(different, do_resize=False, return_tensors="np")
    with pytest.raises(ValueError):  # transformers fails too
        hf(different, do_resize=False, return_tensors="np")
    lists = ours(different, do_resize=False)["pixel_values"]
    expected = hf(different, do_resize=False)["pixel_values"]
    assert [a.shape for a in lists] == [e.shape for e in expected] == [(3, 512, 512), (3, 300, 451)]
    for a, e in zip(lists, expected, strict=True):
        assert_close(a, e)


def test_overrides_do_not_change_defaults(small_photo):
    processor = BlipImageProcessor()
    before = run_ours(processor, small_photo)
    dict_before = processor.to_dict()
    run_ours(processor, small_photo, size=64, do_normalize=False, image_mean=0.0, resample=0)
    assert processor.to_dict() == dict_before
    np.testing.assert_array_equal(run_ours(processor, small_photo), before)


def test_return_tensors(ours, hf, photos):
    import tensorflow as tf

    images = photos[:2]
    as_tf = ours(images, return_tensors="tf")["pixel_values"]
    assert isinstance(as_tf, tf.Tensor)
    assert as_tf.dtype == tf.float32 and tuple(as_tf.shape) == (2, 3, 384, 384)
    as_np = ours(images, return_tensors="np")["pixel_values"]
    assert isinstance(as_np, np.ndarray) and as_np.dtype == np.float32
    np.testing.assert_array_equal(as_tf.numpy(), as_np)
    as_none = ours(images)["pixel_values"]
    expected_none = hf(images)["pixel_values"]
    assert type(as_none) is type(expected_none) is list
    assert len(as_none) == 2
    for got, expected in zip(as_none, expected_none, strict=True):
        assert isinstance(got, np.ndarray) and got.shape == (3, 384, 384)
        assert_close(got, expected)
    single = ours(photos[0], return_tensors="np")["pixel_values"]
    assert single.shape == (1, 3, 384, 384)
    for bad in ["pt", "jax", "tensorflow"]:
        with pytest.raises(ValueError, match=r"return_tensors must be one of None, 'np' or 'tf'"):
            ours(images, return_tensors=bad)


# ------------------------------------------------------------------------------ configs


NON_DEFAULT = {
    "size": {"height": 224, "width": 320},
    "resample": 2,
    "do_normalize": True,
    "image_mean": [0.5, 0.4, 0.3],
    "image_std": [0.2, 0.25, 0.3],
    "rescale_factor": 1 / 200,
    "do_convert_rgb": True,
}


def test_from_pretrained_transformers_config(photos, tmp_path):
    hf_proc = transformers.BlipImageProcessorPil(**NON_DEFAULT)
    hf_proc.save_pretrained(tmp_path)
    for source in (tmp_path, str(tmp_path / IMAGE_PROCESSOR_NAME)):
        loaded = BlipImageProcessor.from_pretrained(source)
        assert loaded.size == NON_DEFAULT["size"] and loaded.resample == 2
        assert_close(run_ours(loaded, photos[:3]), run_hf(hf_proc, photos[:3]))


def test_from_pretrained_transformers_5_processor_folder(photos, tmp_path):
    # transformers 5's BlipProcessor.save_pretrained writes no preprocessor_config.json: the
    # image settings are nested in processor_config.json.
    (tmp_path / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\na\ncat\n")
    tokenizer = transformers.BertTokenizerFast(vocab_file=str(tmp_path / "vocab.txt"))
    saved = tmp_path / "processor"
    transformers.BlipProcessor(
        transformers.BlipImageProcessorPil(**NON_DEFAULT), tokenizer
    ).save_pretrained(saved)
    assert not (saved / IMAGE_PROCESSOR_NAME).exists() and (saved / PROCESSOR_NAME).exists()
    reference = transformers.BlipImageProcessorPil.from_pretrained(saved)
    expected = run_hf(reference, photos[:3])
    for source in (saved, saved / PROCESSOR_NAME):
        loaded = BlipImageProcessor.from_pretrained(source)
        assert loaded.size == NON_DEFAULT["size"] and loaded.resample == 2
        assert_close(run_ours(loaded, photos[:3]), expected)

    # Beside a preprocessor_config.json, transformers takes the nested entry first; so do we.
    BlipImageProcessor(size=16).save_pretrained(saved)
    assert transformers.BlipImageProcessorPil.from_pretrained(saved).size.height == 224
    assert BlipImageProcessor.from_pretrained(saved).size == NON_DEFAULT["size"]


def test_save_pretrained_round_trip(photos, tmp_path):
    ours_proc = BlipImageProcessor(**NON_DEFAULT, processor_class="BlipProcessor", custom_key=[1])
    path = ours_proc.save_pretrained(tmp_path)
    saved = json.loads(pathlib.Path(path).read_text())
    assert saved["image_processor_type"] == "BlipImageProcessor"
    assert saved["processor_class"] == "BlipProcessor" and saved["custom_key"] == [1]
    expected = run_ours(ours_proc, photos[:3])
    for hf_proc in (
        transformers.BlipImageProcessorPil.from_pretrained(tmp_path),
        transformers.AutoImageProcessor.from_pretrained(tmp_path),
    ):
        assert hf_proc.size.height == 224 and hf_proc.size.width == 320
        assert_close(expected, run_hf(hf_proc, photos[:3]))
    reloaded = BlipImageProcessor.from_pretrained(tmp_path)
    assert reloaded.to_dict() == ours_proc.to_dict()
    np.testing.assert_array_equal(run_ours(reloaded, photos[:3]), expected)


def test_alpha_round_trips_and_transformers_reads_the_file(photos, tmp_path):
    assert BlipImageProcessor().to_dict()["alpha"] is None
    processor = BlipImageProcessor(alpha="drop", size=32)
    saved = json.loads(pathlib.Path(processor.save_pretrained(tmp_path)).read_text())
    assert saved["alpha"] == "drop"
    assert BlipImageProcessor.from_pretrained(tmp_path).alpha == "drop"
    # transformers keeps the unknown key as an attribute and preprocesses as before.
    reference = transformers.BlipImageProcessorPil.from_pretrained(tmp_path)
    assert_close(run_ours(processor, photos[:2]), run_hf(reference, photos[:2]))


def test_legacy_config(photos, tmp_path):
    legacy = {
        "do_normalize": True,
        "do_resize": True,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_processor_type": "BlipImageProcessor",
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "processor_class": "BlipProcessor",
        "resample": 3,
        "rescale_factor": 0.00392156862745098,
        "size": 160,
        "do_center_crop": False,
    }
    (tmp_path / IMAGE_PROCESSOR_NAME).write_text(json.dumps(legacy))
    loaded = BlipImageProcessor.from_pretrained(tmp_path)
    assert loaded.size == {"height": 160, "width": 160}
    hf_proc = transformers.BlipImageProcessorPil.from_pretrained(tmp_path)
    assert_close(run_ours(loaded, photos[:2]), run_hf(hf_proc, photos[:2]))
    assert loaded.to_dict()["processor_class"] == "BlipProcessor"
    assert loaded.to_dict()["do_center_crop"] is False


def test_from_pretrained_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="preprocessor_config.json.*processor_config.json"):
        BlipImageProcessor.from_pretrained(tmp_path)
    (tmp_path / PROCESSOR_NAME).write_text(json.dumps({"processor_class": "BlipProcessor"}))
    with pytest.raises(FileNotFoundError, match="'image_processor' entry"):
        BlipImageProcessor.from_pretrained(tmp_path)
    bad = tmp_path / IMAGE_PROCESSOR_NAME
    bad.write_text("{not json")
    with pytest.raises(ValueError, match=r"preprocessor_config\.json.*not valid JSON"):
        BlipImageProcessor.from_pretrained(tmp_path)
    bad.write_text("[1, 2]")
    with pytest.raises(ValueError, match="JSON object"):
        BlipImageProcessor.from_pretrained(bad)
    bad.write_text(json.dumps({"size": -3}))
    with pytest.raises(ValueError, match="size"):
        BlipImageProcessor.from_pretrained(bad)


def test_option_errors(small_photo):
    with pytest.raises(TypeError, match="'do_magic'"):
        BlipImageProcessor()(small_photo, do_magic=True)
    with pytest.raises(ValueError, match="size"):
        BlipImageProcessor(size={"shortest_edge": 224})
    with pytest.raises(ValueError, match="resample"):
        BlipImageProcessor(resample=17)
    with pytest.raises(TypeError, match="do_resize"):
        BlipImageProcessor()(small_photo, do_resize="yes")
    with pytest.raises(ValueError, match="image_std"):
        BlipImageProcessor(image_std=[0.5, 0.0, 0.5])
    with pytest.raises(ValueError, match="do_center_crop"):
        BlipImageProcessor(do_center_crop=True)
    with pytest.raises(ValueError, match="do_pad"):
        BlipImageProcessor()(small_photo, do_pad=True)
    for alpha in ("black", True, ["white"]):
        with pytest.raises(ValueError, match="alpha must be None .*'white' or 'drop'"):
            BlipImageProcessor(alpha=alpha)
    with pytest.raises(ValueError, match="alpha must be"):
        BlipImageProcessor()(small_photo, alpha="composite")
    # Values that change nothing are accepted.
    BlipImageProcessor()(small_photo, do_center_crop=False, data_format="channels_first")
    with pytest.raises(ValueError, match=r"image 1: image_mean has 3 values .* 1 channels"):
        BlipImageProcessor()([small_photo, small_photo.convert("L")], do_convert_rgb=False)


# ------------------------------------------------------------------------------ bad inputs


@pytest.fixture
def bad_files(tmp_path, small_photo):
    good = tmp_path / "good.png"
    small_photo.save(good)
    jpeg = tmp_path / "photo.jpg"
    small_photo.save(jpeg, quality=95)
    truncated_jpeg = tmp_path / "truncated.jpg"
    truncated_jpeg.write_bytes(jpeg.read_bytes()[: jpeg.stat().st_size // 2])
    truncated_png = tmp_path / "truncated.png"
    truncated_png.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    text = tmp_path / "text.jpg"
    text.write_text("this is not an image\n")
    return {
        "good": good,
        "truncated_jpeg": truncated_jpeg,
        "truncated_png": truncated_png,
        "text": text,
        "missing": tmp_path / "missing.jpg",
    }


@pytest.mark.parametrize("kind", ["truncated_jpeg", "truncated_png", "text"])
def test_corrupt_files(ours, bad_files, kind):
    path = bad_files[kind]
    batch = [bad_files["good"], bad_files["good"], path]
    with pytest.raises(
        ValueError, match=rf"image 2 \('{re.escape(str(path))}'\): cannot (identify|read)"
    ):
        ours(batch)


def test_lazily_opened_truncated_image(ours, bad_files):
    # A PIL image opened by the caller is decoded lazily: the error surfaces here, named.
    path = bad_files["truncated_jpeg"]
    lazy = PIL.Image.open(path)
    with pytest.raises(
        ValueError, match=rf"image 1 \('{re.escape(str(path))}'\): cannot read image data"
    ):
        ours([bad_files["good"], lazy])
    lazy.close()


def test_missing_file(ours, bad_files):
    path = bad_files["missing"]
    with pytest.raises(FileNotFoundError, match=rf"image 1 \('{re.escape(str(path))}'\)"):
        ours([bad_files["good"], str(path)])


def test_url_refused(ours):
    with pytest.raises(ValueError, match="image 0 .*URLs are not supported"):
        ours("https://example.com/cat.jpg")


def test_zero_size(ours, small_photo):
    with pytest.raises(ValueError, match="image 1: image has zero size"):
        ours([small_photo, PIL.Image.new("RGB", (0, 5))])
    with pytest.raises(ValueError, match="image 2: image has zero size"):
        ours([small_photo, small_photo, np.zeros((0, 5, 3), np.uint8)])


def test_decompression_bomb(ours, small_photo, tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    small_photo.save(path)  # 120 x 90 = 10800 pixels
    # Exactly at the limit is fine.
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 10800)
    ours([small_photo, path])
    # Between 1x and 2x the limit Pillow only warns; we refuse, for files and for PIL images.
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 10799)
    with pytest.raises(ValueError, match="image 1 .*big.png.*MAX_IMAGE_PIXELS"):
        ours([small_photo.crop((0, 0, 10, 10)), path])
    with pytest.raises(ValueError, match="image 0: .*MAX_IMAGE_PIXELS"):
        ours(small_photo)
    # Over 2x the limit Pillow raises; we still name the input.
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ValueError, match="image 0 .*big.png"):
        ours(str(path))


@pytest.mark.parametrize("bad", [5, {"a": 1}, None, b"bytes", 2.5])
def test_unsupported_types(ours, small_photo, bad):
    with pytest.raises(TypeError, match=f"image 1: unsupported type .*{type(bad).__name__}"):
        ours([small_photo, bad])


@pytest.mark.parametrize(
    ("array", "match"),
    [
        (np.zeros(10, np.uint8), r"image 1: expected a 2-D .* got shape \(10,\)"),
        (np.zeros((1, 8, 8, 3), np.uint8), r"image 1: .*shape \(1, 8, 8, 3\).*list of 3-D"),
        (np.zeros((8, 8, 2), np.uint8), r"image 1: cannot find the channel axis"),
        (np.zeros((8, 8, 5), np.uint8), r"image 1: cannot find the channel axis"),
    ],
)
def test_bad_array_shapes(ours, small_photo, array, match):
    with pytest.raises(ValueError, match=match):
        ours([small_photo, array])


def test_bad_array_values(ours):
    with pytest.raises(ValueError, match=r"image 0: .*\[0, 1\]"):
        ours(np.full((8, 8, 3), 1.5, np.float32))
    with pytest.raises(TypeError, match="image 0: unsupported array dtype"):
        ours(np.zeros((8, 8, 3), np.complex64))


def test_bad_batches(ours, small_photo):
    with pytest.raises(ValueError, match="empty"):
        ours([])
    with pytest.raises(TypeError, match="image 0: nested lists"):
        ours([[small_photo]])
