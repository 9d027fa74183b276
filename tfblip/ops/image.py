"""In-graph image preprocessing: encoded image bytes to BLIP ``pixel_values``.

Shared by the tf.data training pipelines (:mod:`tfblip.data`) and the TF Serving export
(:mod:`tfblip.export`). The ops here use core TensorFlow only (no tensorflow-text, no custom
ops, no XLA), so a SavedModel built from them runs in stock TF Serving. They reproduce what
:class:`tfblip.image_processing.BlipImageProcessor` gives for an image *file*: Pillow's
``open`` + ``convert("RGB")``, ``resize(..., BICUBIC)`` and the per-channel lookup table for
rescale + normalize.

* :func:`decode_image`: JPEG, PNG, GIF (first frame) or BMP bytes to uint8 RGB. JPEGs are
  decoded with libjpeg's accurate integer DCT, as Pillow does; the libjpeg-turbo builds of
  TensorFlow 2.21 and Pillow 13 gave identical pixels for every JPEG tried (baseline,
  progressive, optimized, restart markers, qualities 30-100, 4:4:4 / 4:2:2 / 4:2:0, odd sizes,
  greyscale, Adobe CMYK and RGB). PNG and BMP pixels are identical too, including Pillow's
  quirks: 16-bit greyscale PNGs are clipped to 255 and 8-bit palette BMPs go through their
  palette (TensorFlow's decoders would scale the first and read the second as grey).
* :func:`pillow_bicubic_resize`: Pillow's 8-bit bicubic resampling, bit for bit.
* :class:`PixelNormalizer`: the processor's rescale + normalize as one per-channel table lookup.
* :func:`check_graph_options`: refuses the processor options the graph cannot reproduce.
* :func:`preprocess_image_bytes`: a batch of encoded images to float32 ``pixel_values``.

Where the graph differs from the Python path:

* EXIF orientation is not applied: the Python path rotates / flips photos whose EXIF
  ``Orientation`` tag asks for it; the graph keeps the stored pixel layout.
* Images with a single transparent colour (a PNG ``tRNS`` chunk on a palette, greyscale or RGB
  image; a GIF transparency index): the Python path composites them onto white, so every pixel
  of that colour becomes white; the graph keeps the colour. TensorFlow's GIF decoder also gives
  black for the first frame's transparent pixels where Pillow gives their palette colour.
  Images with an alpha channel are the same in both paths (the alpha is dropped).
* TensorFlow's BMP decoder refuses 1- and 4-bit and RLE-compressed BMPs, which Pillow reads;
  the graph raises ``InvalidArgumentError`` for them.
* Pillow before 13 always resamples horizontally first; Pillow 13 resamples vertically first
  when the height shrinks by more than twice as many pixels as the width, and
  :func:`pillow_bicubic_resize` follows Pillow 13. With an older Pillow such resizes can differ
  by a level or so on some pixels.
"""

from __future__ import annotations

import functools
from typing import Any

import PIL.Image
import tensorflow as tf

from tfblip.image_processing import BlipImageProcessor

__all__ = [
    "PixelNormalizer",
    "check_graph_options",
    "decode_image",
    "pillow_bicubic_resize",
    "preprocess_image_bytes",
]

_NOT_AN_IMAGE = "image_bytes is not a JPEG, PNG, GIF or BMP image ({} bytes starting with {})"

# PNG: the IHDR chunk always comes first, so its bit depth and colour type bytes sit at fixed
# offsets. 16-bit greyscale is the one PNG kind Pillow converts differently from TensorFlow.
_PNG_DEPTH_AND_COLOUR_OFFSET = 24
_PNG_GREY_16_BIT = b"\x10\x00"
# BMP: the DIB header size and bits per pixel, little-endian (BITMAPINFOHEADER and later).
_BMP_HEADER_SIZE_OFFSET = 14
_BMP_BITS_PER_PIXEL_OFFSET = 28
_BMP_8_BIT = b"\x08\x00"
_BMP_PALETTE_ENTRIES = 256

# Pillow's Resample.c: bicubic with a = -0.5 and support 2, coefficients in fixed point with
# 32 - 8 - 2 fraction bits (8 bits for the pixel, 2 for the sign and the filter's overshoot).
_BICUBIC_A = -0.5
_BICUBIC_SUPPORT = 2.0
_PRECISION_BITS = 22


# --------------------------------------------------------------------------------------------
# Decoding.
# --------------------------------------------------------------------------------------------


def _at(image_bytes: tf.Tensor, offset: int, length: int) -> tf.Tensor:
    """``length`` bytes at ``offset``, or fewer (maybe none) if the data ends before."""
    start = tf.minimum(offset, tf.strings.length(image_bytes))
    return tf.strings.substr(image_bytes, start, length)


def _decode_jpeg(image_bytes: tf.Tensor) -> tf.Tensor:
    return tf.io.decode_jpeg(image_bytes, channels=3, dct_method="INTEGER_ACCURATE")


def _decode_png(image_bytes: tf.Tensor) -> tf.Tensor:
    def clipped_grey_16_bit() -> tf.Tensor:
        # Pillow converts its "I;16" mode to RGB by clipping, not scaling, to 8 bits.
        wide = tf.io.decode_png(image_bytes, channels=3, dtype=tf.uint16)
        return tf.cast(tf.minimum(wide, 255), tf.uint8)

    # For every other bit depth and colour type TensorFlow and Pillow agree (16-bit colour
    # keeps the high byte in both).
    return tf.cond(
        tf.equal(_at(image_bytes, _PNG_DEPTH_AND_COLOUR_OFFSET, 2), _PNG_GREY_16_BIT),
        clipped_grey_16_bit,
        lambda: tf.io.decode_png(image_bytes, channels=3),
    )


def _decode_gif(image_bytes: tf.Tensor) -> tf.Tensor:
    # decode_image, unlike decode_gif, can stop after the first frame.
    return tf.io.decode_image(image_bytes, channels=3, expand_animations=False)


def _decode_bmp(image_bytes: tf.Tensor) -> tf.Tensor:
    def through_palette() -> tf.Tensor:
        # TensorFlow returns an 8-bit BMP's palette indices as grey levels; look them up.
        header_size = tf.io.decode_raw(
            tf.strings.substr(image_bytes, _BMP_HEADER_SIZE_OFFSET, 4), tf.int32
        )[0]
        table = tf.io.decode_raw(
            _at(image_bytes, _BMP_HEADER_SIZE_OFFSET + header_size, 4 * _BMP_PALETTE_ENTRIES),
            tf.uint8,
        )
        # A short palette (fewer colours in use, or a truncated file) is padded with black.
        table = tf.pad(table, [[0, 4 * _BMP_PALETTE_ENTRIES - tf.size(table)]])
        rgb_table = tf.reverse(tf.reshape(table, [_BMP_PALETTE_ENTRIES, 4])[:, :3], axis=[1])
        indices = tf.io.decode_bmp(image_bytes, channels=0)[:, :, 0]
        return tf.gather(rgb_table, tf.cast(indices, tf.int32))

    return tf.cond(
        tf.equal(_at(image_bytes, _BMP_BITS_PER_PIXEL_OFFSET, 2), _BMP_8_BIT),
        through_palette,
        lambda: tf.io.decode_bmp(image_bytes, channels=3),
    )


# Each format's signature (its files' first bytes) and decoder, in switch_case branch order.
_FORMATS = (
    (b"\xff\xd8\xff", _decode_jpeg),
    (b"\x89PNG\r\n\x1a\n", _decode_png),
    (b"GIF8", _decode_gif),
    (b"BM", _decode_bmp),
)


def decode_image(image_bytes: Any) -> tf.Tensor:
    """Decode one JPEG, PNG, GIF or BMP image to a uint8 (H, W, 3) RGB tensor.

    Args:
        image_bytes: a scalar ``tf.string`` holding the encoded file.

    The format comes from the file's first bytes (its extension or MIME type plays no part).
    Alpha is dropped, greyscale and palette images become RGB, and a GIF gives its first frame,
    as Pillow's ``convert("RGB")`` does.

    Raises:
        tf.errors.InvalidArgumentError: (when the op runs) the data does not start with a JPEG,
            PNG, GIF or BMP signature (empty data included), or the decoder rejects it
            (truncated or corrupt data, an unsupported variant).
    """
    image_bytes = tf.convert_to_tensor(image_bytes, tf.string)
    image_bytes.shape.assert_has_rank(0)
    # No signature is a prefix of another, so at most one matches.
    image_format = tf.constant(-1)
    for index, (signature, _) in enumerate(_FORMATS):
        matches = tf.equal(tf.strings.substr(image_bytes, 0, len(signature)), signature)
        image_format = tf.where(matches, index, image_format)
    known = tf.debugging.Assert(
        image_format >= 0,
        [
            tf.strings.format(
                _NOT_AN_IMAGE,
                (tf.strings.length(image_bytes), tf.strings.substr(image_bytes, 0, 8)),
            )
        ],
    )
    with tf.control_dependencies([known]):
        image = tf.switch_case(
            image_format, [functools.partial(decode, image_bytes) for _, decode in _FORMATS]
        )
    image.set_shape([None, None, 3])
    return image


# --------------------------------------------------------------------------------------------
# Pillow's bicubic resampling.
# --------------------------------------------------------------------------------------------


def _bicubic(x: tf.Tensor) -> tf.Tensor:
    # Operation by operation as Resample.c's bicubic_filter, so float64 rounding matches.
    x = tf.abs(x)
    inner = ((_BICUBIC_A + 2.0) * x - (_BICUBIC_A + 3.0)) * x * x + 1.0
    outer = (((x - 5.0) * x + 8.0) * x - 4.0) * _BICUBIC_A
    return tf.where(x < 1.0, inner, tf.where(x < 2.0, outer, tf.zeros_like(x)))


def _pillow_coefficients(in_size: tf.Tensor, out_size: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Resample.c's precompute_coeffs + normalize_coeffs_8bpc for one axis.

    Returns the first input index of each output's window, (out_size,) int32, and the window's
    fixed-point weights, (taps, out_size) int32, tap-major; taps past a window's end weigh 0.
    """
    scale = tf.cast(in_size, tf.float64) / tf.cast(out_size, tf.float64)
    filter_scale = tf.maximum(scale, 1.0)
    support = _BICUBIC_SUPPORT * filter_scale
    inverse_filter_scale = 1.0 / filter_scale
    center = (tf.cast(tf.range(out_size), tf.float64) + 0.5) * scale
    # tf.cast truncates toward zero like C's (int); a negative start is clamped to 0 anyway.
    first = tf.maximum(tf.cast(center - support + 0.5, tf.int32), 0)
    end = tf.minimum(tf.cast(center + support + 0.5, tf.int32), in_size)
    tap = tf.range(tf.reduce_max(end - first))[:, None]
    in_window = tap < (end - first)[None, :]
    position = tf.cast(first[None, :] + tap, tf.float64)
    weights = tf.where(
        in_window, _bicubic((position - center[None, :] + 0.5) * inverse_filter_scale), 0.0
    )

    # Pillow normalises by a left-to-right sum; a reduce_sum may add in another order and
    # round differently, so add tap by tap (padding taps add an exact 0).
    def add_tap(index: tf.Tensor, total: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        return index + 1, total + weights[index]

    _, total = tf.while_loop(
        lambda index, _: index < tf.shape(weights)[0],
        add_tap,
        (tf.constant(0), tf.zeros_like(center)),
    )
    weights = tf.where(total != 0.0, weights / tf.where(total != 0.0, total, 1.0), weights)
    fixed = weights * float(1 << _PRECISION_BITS)
    fixed = tf.cast(tf.where(weights < 0.0, fixed - 0.5, fixed + 0.5), tf.int32)
    return first, fixed


def _resample_leading_axis(image: tf.Tensor, out_size: tf.Tensor) -> tf.Tensor:
    """Resample.c's 8-bit pass along axis 0 of a uint8 tensor of any rank >= 1."""
    shape = tf.shape(image)
    in_size = shape[0]
    first, weights = _pillow_coefficients(in_size, out_size)
    rows = tf.reshape(image, [in_size, -1])
    last_row = in_size - 1

    # One gather per tap keeps memory at a few output-sized int32 buffers, whatever the
    # scale; int32 sums are exact in any order, as in Pillow's C loop.
    def add_tap(index: tf.Tensor, total: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        taken = tf.gather(rows, tf.minimum(first + index, last_row))
        return index + 1, total + tf.cast(taken, tf.int32) * weights[index][:, None]

    _, total = tf.while_loop(
        lambda index, _: index < tf.shape(weights)[0],
        add_tap,
        (tf.constant(0), tf.fill([out_size, tf.shape(rows)[1]], 1 << (_PRECISION_BITS - 1))),
    )
    pixels = tf.clip_by_value(tf.bitwise.right_shift(total, _PRECISION_BITS), 0, 255)
    return tf.reshape(tf.cast(pixels, tf.uint8), tf.concat([[out_size], shape[1:]], 0))


def _resize_rows(image: tf.Tensor, height: tf.Tensor) -> tf.Tensor:
    return tf.cond(
        tf.equal(tf.shape(image)[0], height),
        lambda: image,
        lambda: _resample_leading_axis(image, height),
    )


def _resize_columns(image: tf.Tensor, width: tf.Tensor) -> tf.Tensor:
    # Moving the resized axis first makes each tap's gather copy whole contiguous rows. Of the
    # layouts with the width first, (W, C, H) is the fastest to transpose to from (H, W, C):
    # about half the time of (W, H, C) for a 12-megapixel photo.
    def resample() -> tf.Tensor:
        transposed = tf.transpose(image, [1, 2, 0])
        return tf.transpose(_resample_leading_axis(transposed, width), [2, 0, 1])

    return tf.cond(tf.equal(tf.shape(image)[1], width), lambda: image, resample)


def pillow_bicubic_resize(image: Any, height: Any, width: Any) -> tf.Tensor:
    """Resize a uint8 (H, W, C) image as Pillow's ``resize((width, height), BICUBIC)`` does.

    The result equals Pillow 13's, bit for bit: the same float64 filter coefficients, the same
    22-bit fixed-point arithmetic, rounding to uint8 after each pass, the same order of passes.
    Input and output sizes may be known only when the graph runs.

    Args:
        image: a uint8 tensor of shape (H, W, C).
        height, width: the output size, positive int32 scalars.

    Returns:
        A uint8 tensor of shape (height, width, C).
    """
    image = tf.convert_to_tensor(image)
    if image.dtype != tf.uint8:
        raise TypeError(f"pillow_bicubic_resize needs a uint8 image, got {image.dtype.name}")
    image.shape.assert_has_rank(3)
    height = tf.convert_to_tensor(height, tf.int32)
    width = tf.convert_to_tensor(width, tf.int32)
    checks = [
        tf.debugging.assert_positive(height, message="pillow_bicubic_resize: height must be > 0"),
        tf.debugging.assert_positive(width, message="pillow_bicubic_resize: width must be > 0"),
    ]
    with tf.control_dependencies(checks):
        in_height, in_width = tf.shape(image)[0], tf.shape(image)[1]
    # Pillow 13 resamples vertically first when the height shrinks by more than twice as many
    # pixels as the width (python-pillow/Pillow#9549); rounding between passes makes the order
    # visible.
    vertical_first = tf.logical_and(height < in_height, in_height - height > 2 * (in_width - width))
    resized = tf.cond(
        vertical_first,
        lambda: _resize_columns(_resize_rows(image, height), width),
        lambda: _resize_rows(_resize_columns(image, width), height),
    )
    resized.set_shape([tf.get_static_value(height), tf.get_static_value(width), image.shape[2]])
    return resized


# --------------------------------------------------------------------------------------------
# The image processor's options in the graph.
# --------------------------------------------------------------------------------------------


def check_graph_options(options: dict[str, Any], user: str) -> None:
    """Refuses the image processor options that decoding + bicubic resizing cannot reproduce.

    Args:
        options: the processor's resolved options (``BlipImageProcessor._options({})``).
        user: what builds the graph, e.g. "the data pipeline", named in the errors.

    Raises:
        ValueError: ``do_convert_rgb=False``, ``alpha="white"`` or a ``resample`` other than
            bicubic; the message names the option.
    """
    if not options["do_convert_rgb"]:
        raise ValueError(
            f"the image processor has do_convert_rgb=False (keeping a file's own channels); "
            f"{user} always decodes images to RGB"
        )
    if options["alpha"] == "white":
        raise ValueError(
            f"the image processor has alpha='white' (compositing onto white); {user} decodes "
            "image files with their alpha dropped, as alpha=None and alpha='drop' do for files"
        )
    if options["resample"] != PIL.Image.Resampling.BICUBIC:
        name = PIL.Image.Resampling(options["resample"]).name
        raise ValueError(
            f"{user} resizes as Pillow's bicubic filter only; the image processor has "
            f"resample={options['resample']} ({name})"
        )


class PixelNormalizer:
    """The processor's rescale + normalize of uint8 RGB images, as one table lookup per value.

    The (3, 256) table holds the float32 value of every pixel level per channel, computed by
    the image processor itself, so the graph gives its numbers exactly.

    Args:
        image_processor: the :class:`~tfblip.image_processing.BlipImageProcessor`.
        options: its resolved options (``image_processor._options({})``).
        user: what builds the graph, named in the processor's errors.
    """

    def __init__(self, image_processor: BlipImageProcessor, options: dict[str, Any], user: str):
        # Flattened, so that channel c's value for pixel level p sits at 256 * c + p.
        self._table = tf.constant(image_processor._lut(3, options, user).reshape(-1))
        self._channel_offsets = tf.constant([0, 256, 512], tf.int32)[:, None, None]

    def __call__(self, image: tf.Tensor) -> tf.Tensor:
        """A uint8 (H, W, 3) image to its float32 (3, H, W) pixel values."""
        channels_first = tf.transpose(tf.cast(image, tf.int32), [2, 0, 1])
        return tf.gather(self._table, channels_first + self._channel_offsets)


# --------------------------------------------------------------------------------------------
# The batch.
# --------------------------------------------------------------------------------------------


def preprocess_image_bytes(image_bytes: Any, image_processor: BlipImageProcessor) -> tf.Tensor:
    """Encoded images to the ``pixel_values`` ``image_processor`` gives for the same files.

    Args:
        image_bytes: a 1-D ``tf.string`` tensor of encoded JPEG, PNG, GIF or BMP images; its
            length (the batch size) may be known only when the graph runs.
        image_processor: the :class:`~tfblip.image_processing.BlipImageProcessor`. Its options
            are read once, when the graph is built: the rescale / normalize lookup table
            becomes a constant, ``size`` the output size.

    Returns:
        float32 ``pixel_values`` of shape (batch, 3, height, width). With ``do_resize=False``
        every image keeps its size, so all must have the same size.

    Raises:
        ValueError: (when the graph is built) an option the graph cannot reproduce:
            ``resample`` other than bicubic, ``do_convert_rgb=False`` or ``alpha="white"``.
        tf.errors.InvalidArgumentError: (when the op runs) as :func:`decode_image`, or images
            of different sizes with ``do_resize=False``.
    """
    options = image_processor._options({})
    check_graph_options(options, "preprocess_image_bytes")
    image_bytes = tf.convert_to_tensor(image_bytes, tf.string)
    image_bytes.shape.assert_has_rank(1)
    normalize = PixelNormalizer(image_processor, options, "preprocess_image_bytes")

    def preprocess_one(encoded: tf.Tensor) -> tf.Tensor:
        image = decode_image(encoded)
        if options["do_resize"]:
            image = pillow_bicubic_resize(
                image, options["size"]["height"], options["size"]["width"]
            )
        return normalize(image)

    if options["do_resize"]:
        size = [3, options["size"]["height"], options["size"]["width"]]
        return tf.map_fn(
            preprocess_one, image_bytes, fn_output_signature=tf.TensorSpec(size, tf.float32)
        )

    # Without resizing the sizes are only known per image: map to flat pixels and sizes, so that
    # unequal sizes give a clear error instead of a failure to stack.
    def flatten_one(encoded: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        pixels = preprocess_one(encoded)
        return tf.reshape(pixels, [-1]), tf.shape(pixels)[1:]

    flat, sizes = tf.map_fn(
        flatten_one,
        image_bytes,
        fn_output_signature=(
            tf.RaggedTensorSpec([None], tf.float32, ragged_rank=0),
            tf.TensorSpec([2], tf.int32),
        ),
    )
    # An empty batch has no sizes; it becomes (0, 3, 0, 0).
    common = tf.maximum(tf.reduce_max(sizes, axis=0), 0)
    same_size = tf.debugging.Assert(
        tf.reduce_all(tf.equal(sizes, common)),
        [
            "with do_resize=False all images must have the same size; (height, width) per image:",
            sizes,
        ],
        summarize=16,
    )
    with tf.control_dependencies([same_size]):
        return tf.reshape(flat.flat_values, tf.concat([[tf.shape(sizes)[0], 3], common], 0))
