"""tf.data input pipelines for fine-tuning the BLIP task models with ``model.fit``.

Each builder returns a batched, prefetched ``tf.data.Dataset`` of input dicts (no separate
``y``: labels travel inside the dict, as in transformers' TF models), which the matching model
takes as keyword inputs, ``model(**batch, training=True)``:

* :func:`caption_dataset` for ``TFBlipForConditionalGeneration``: ``pixel_values`` float32
  (B, 3, H, W); ``input_ids`` int32 (B, L), the caption with the bos token ("[DEC]") in place of
  [CLS]; ``attention_mask`` int32 (B, L); ``labels`` int32 (B, L), the ``input_ids`` with -100
  at padding. With ``prompt`` (BLIP uses "a picture of ") every caption is prefixed with it and
  the prompt's tokens are -100 in ``labels``, so only the caption is learned.
* :func:`vqa_dataset` for ``TFBlipForQuestionAnswering``: ``pixel_values``; ``input_ids`` and
  ``attention_mask`` of the question ([CLS] question [SEP]); ``labels`` the answer tokenized the
  same way but starting with the bos token [DEC] instead of [CLS], with -100 at padding; the
  model feeds the labels, padding in place of -100, to the answer decoder. transformers'
  documentation trains on ``processor(text=answers).input_ids`` ([CLS] first), but its
  ``generate()`` starts answers from [DEC], as BLIP's own VQA training did: tfblip trains what
  it generates from.
  One answer per record: BLIP's weighted multi-answer VQA loss is not reproduced.
* :func:`retrieval_dataset` for ``TFBlipForImageTextRetrieval``. ``objective="itm"``: every
  record gives its (image, text) pair with ``labels`` 1 and ``negatives_per_pair`` examples of the
  same image with other records' texts, ``labels`` 0, next to it in the batch; ``labels`` is int32
  (B,). A negative text is never one the data pairs with that image (compared as token ids), so
  several captions of one image never serve as each other's negatives. Negatives are drawn anew
  each epoch when training and are fixed across passes when evaluating. ``objective="itc"``:
  pairs only, no labels, as :func:`contrastive_dataset`, for the model's contrastive mode
  (``use_itm_head=False``).
* :func:`contrastive_dataset` for ``TFBlipModel``: ``pixel_values``, ``input_ids``,
  ``attention_mask`` of (image, text) pairs.

Sources: a list of tuples, ``(image path, text)`` or for VQA ``(image path, question, answer)``,
or the path of a ``.jsonl`` file (one JSON object a line) or ``.csv`` file (with a header) with
the columns ``image`` and ``text`` (VQA: ``image``, ``question``, ``answer``); other columns are
ignored. Relative image paths resolve against the file's directory (for lists, the current
directory). :func:`read_records` reads and checks a source without building a dataset.

Images are read and decoded in the tf.data pipeline (``num_parallel_calls=AUTOTUNE``) with
:func:`tfblip.ops.image.decode_image`: JPEG, PNG, GIF (first frame) and BMP files.

* ``training=False``: exactly the processor's ``pixel_values`` for the file (bicubic resize to
  the image processor's size, its rescale + normalize lookup table), except that the EXIF
  orientation of photos is not applied (see :mod:`tfblip.ops.image`).
* ``training=True``: BLIP's training transform: torchvision's ``RandomResizedCrop`` to the
  processor's size with scale (0.5, 1.0) and ratio (3/4, 4/3) (10 tries, then its centre-crop
  fallback), Pillow-exact bicubic resize of the crop, random horizontal flip, then the same
  rescale + normalize. BLIP's RandAugment is not applied.

Text is tokenized with the processor when the dataset is built, then padded per batch to its
longest sequence (``padding="longest"``, the default) or to ``max_length``
(``padding="max_length"``); ``max_length`` also truncates (keeping the final [SEP]).

Corrupt images. When the dataset is built every image file is opened with Pillow, which reads
its header only (cheap): files that are not images, or in a format the pipeline cannot decode
(e.g. WebP), are reported then, all together. Data that only fails when decoded (a truncated
JPEG, a damaged PNG stream) is found when the pipeline reaches it. TensorFlow's decoding errors
do not name the file, so the pipeline drops the record whose image failed, notices the gap in the
sequence of records and stops with ``tf.errors.InvalidArgumentError`` naming the file; training
stops mid-epoch. ``validate=True`` trades build time for finding them up front: it decodes every
image once while building (about one pass over the images, without the model) and reports all
undecodable files together, before training starts. ``skip_corrupt=True`` drops unreadable
images instead of raising: those found while building with a Python warning listing them, those
found while iterating with a warning on stderr naming each (that epoch is shorter by them, so
the dataset's cardinality is unknown). Missing image files always raise: they more often mean a
wrong directory than a bad file.

Batches and epochs: ``batch_size`` (default 8), ``drop_remainder`` (default False), ``shuffle``
(default: when training; the buffer holds the whole dataset, up to 1,000,000 records), ``seed``.
The dataset is one epoch and never repeats; ``model.fit(dataset, epochs=n)`` iterates it anew
each epoch, reshuffled and re-augmented (each pass starts with a fixed cost, a fraction of a
second, while TensorFlow prepares the pipeline's functions). Call ``.repeat()`` yourself to
train by ``steps_per_epoch``. The same ``seed`` gives the same batches, epoch by epoch (with the
same TensorFlow global seed, if one is set); ``seed=None`` differs from run to run.
"""

from __future__ import annotations

import concurrent.futures
import csv
import errno
import itertools
import json
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import PIL.Image
import tensorflow as tf

from tfblip.arguments import is_int, positive_int
from tfblip.modeling.text import IGNORE_INDEX
from tfblip.ops.image import (
    PixelNormalizer,
    check_graph_options,
    decode_image,
    pillow_bicubic_resize,
)
from tfblip.processing import BlipProcessor

__all__ = [
    "caption_dataset",
    "contrastive_dataset",
    "read_records",
    "retrieval_dataset",
    "vqa_dataset",
]

PAIR_COLUMNS = ("image", "text")
VQA_COLUMNS = ("image", "question", "answer")

# BLIP's RandomResizedCrop(image_size, scale=(0.5, 1.0)) with torchvision's default ratio.
CROP_SCALE = (0.5, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)
CROP_TRIES = 10
FLIP_PROBABILITY = 0.5

# Shuffling happens on record indices, before any image is read, so a large buffer costs little.
SHUFFLE_BUFFER_CAP = 1_000_000
# How many unreadable images in a row an error or warning names (the rest are counted).
DROPPED_NAMED = 32

# Pillow's names for the formats decode_image reads; MPO is a JPEG with extra frames.
_DECODABLE_FORMATS = frozenset({"JPEG", "MPO", "PNG", "GIF", "BMP"})
_PADDING_MODES = ("longest", "max_length")
_OBJECTIVES = ("itm", "itc")
_SOURCE_SUFFIXES = (".jsonl", ".csv")


# --------------------------------------------------------------------------------------------
# Sources.
# --------------------------------------------------------------------------------------------


def read_records(source: Any, columns: Sequence[str] = PAIR_COLUMNS) -> list[tuple[str, ...]]:
    """Read (image path, text, ...) records from a list of tuples or a JSONL / CSV file.

    Args:
        source: a list of tuples with one value per column, or the path of a ``.jsonl`` or
            ``.csv`` file with (at least) the named columns.
        columns: the column names; the first is the image path, the others text.

    Returns:
        One tuple per record, in ``columns`` order, the image path made absolute (relative paths
        resolve against the file's directory; for a list, against the current directory).

    Raises:
        ValueError: an unsupported file type, a file without records, malformed JSON, missing
            columns or values, or an empty text; the message names the file and line.
        TypeError: a value that is not a string, or a record of the wrong shape.
        FileNotFoundError: the source file or an image file does not exist.
    """
    columns = tuple(columns)
    if len(columns) < 2:
        raise ValueError(
            f"columns must name the image column and at least one text column, got {columns!r}"
        )
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        base = os.path.dirname(os.path.abspath(path))
        raw = _read_file_records(path, columns)
    elif isinstance(source, Sequence):
        base = os.getcwd()
        raw = _list_records(source, columns)
    else:
        raise TypeError(
            f"source must be a list of tuples or a .jsonl / .csv file path, "
            f"got {type(source).__name__}"
        )
    records = []
    for origin, values in raw:
        image = os.path.normpath(os.path.join(base, values[0]))
        if not os.path.isfile(image):
            raise FileNotFoundError(
                errno.ENOENT, f"{origin}: image file {values[0]!r} not found", image
            )
        records.append((image, *values[1:]))
    if not records:
        raise ValueError(f"{_describe(source)} has no records")
    return records


def _describe(source: Any) -> str:
    return os.fspath(source) if isinstance(source, (str, os.PathLike)) else "the record list"


def _checked_values(origin: str, columns: tuple[str, ...], values: Sequence[Any]) -> tuple:
    checked = []
    for column, value in zip(columns, values):
        if isinstance(value, os.PathLike) and column == columns[0]:
            value = os.fspath(value)
        if not isinstance(value, str):
            raise TypeError(
                f"{origin}: {column!r} must be a string, got {type(value).__name__} {value!r}"
            )
        if not value.strip():
            raise ValueError(f"{origin}: {column!r} is empty")
        checked.append(value)
    return tuple(checked)


def _list_records(records: Sequence[Any], columns: tuple[str, ...]):
    for index, record in enumerate(records):
        origin = f"record {index}"
        if not isinstance(record, (tuple, list)) or len(record) != len(columns):
            raise TypeError(f"{origin}: expected a tuple ({', '.join(columns)}), got {record!r}")
        yield origin, _checked_values(origin, columns, record)


def _read_file_records(path: str, columns: tuple[str, ...]) -> list[tuple[str, tuple]]:
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in _SOURCE_SUFFIXES:
        raise ValueError(
            f"{path}: unsupported source file type {suffix!r}; expected a .jsonl or .csv file"
        )
    if not os.path.isfile(path):
        raise FileNotFoundError(errno.ENOENT, "source file not found", path)
    # utf-8-sig: spreadsheet programs often start CSV exports with a byte-order mark.
    with open(path, encoding="utf-8-sig", newline="") as f:
        if suffix == ".jsonl":
            return list(_jsonl_records(path, f, columns))
        return list(_csv_records(path, f, columns))


def _jsonl_records(path: str, lines, columns: tuple[str, ...]):
    for line_number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        origin = f"{path}:{line_number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{origin}: invalid JSON ({err})") from err
        if not isinstance(row, dict):
            # A malformed line is a bad value in the file, not a caller's type mistake.
            raise ValueError(  # noqa: TRY004
                f"{origin}: expected a JSON object, got {type(row).__name__}"
            )
        missing = [column for column in columns if column not in row]
        if missing:
            raise ValueError(
                f"{origin}: missing column(s) {', '.join(map(repr, missing))} "
                f"(the record has: {', '.join(map(repr, row))})"
            )
        yield origin, _checked_values(origin, columns, [row[column] for column in columns])


def _csv_records(path: str, lines, columns: tuple[str, ...]):
    reader = csv.DictReader(lines)
    header = reader.fieldnames
    if header is None:
        raise ValueError(f"{path}: the file is empty (expected a header row and records)")
    missing = [column for column in columns if column not in header]
    if missing:
        raise ValueError(
            f"{path}: missing column(s) {', '.join(map(repr, missing))} "
            f"(the header has: {', '.join(map(repr, header))})"
        )
    for row in reader:
        origin = f"{path}:{reader.line_num}"
        absent = [column for column in columns if row[column] is None]
        if absent:
            raise ValueError(f"{origin}: the row has no value for {', '.join(map(repr, absent))}")
        yield origin, _checked_values(origin, columns, [row[column] for column in columns])


# --------------------------------------------------------------------------------------------
# Options.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Options:
    training: bool
    batch_size: int
    shuffle: bool
    shuffle_seed: int | None
    element_seed: int | None
    drop_remainder: bool
    padding: str
    max_length: int | None
    skip_corrupt: bool
    validate: bool


def _options(arguments: dict[str, Any]) -> _Options:
    """The checked pipeline options of a builder call.

    Every builder takes the same pipeline arguments (``training``, ``batch_size``, ...,
    ``validate``) and passes its ``locals()`` as its first statement, so that they are read
    and checked in this one place.
    """
    training, batch_size, shuffle, seed, drop_remainder = (
        arguments[name] for name in ("training", "batch_size", "shuffle", "seed", "drop_remainder")
    )
    padding, max_length, skip_corrupt, validate = (
        arguments[name] for name in ("padding", "max_length", "skip_corrupt", "validate")
    )
    batch_size = positive_int("batch_size", batch_size)
    if padding not in _PADDING_MODES:
        raise ValueError(f"padding must be 'longest' or 'max_length', got {padding!r}")
    if max_length is not None and (not is_int(max_length) or max_length < 2):
        raise ValueError(
            f"max_length must be an integer >= 2 ([CLS] and [SEP]) or None, got {max_length!r}"
        )
    if padding == "max_length" and max_length is None:
        raise ValueError("padding='max_length' needs max_length")
    if seed is not None and (not is_int(seed) or seed < 0):
        raise ValueError(f"seed must be a non-negative integer or None, got {seed!r}")
    # Shuffling and the per-example randomness get independent seeds from the one given.
    shuffle_seed = element_seed = None
    if seed is not None:
        shuffle_seed, element_seed = (
            int(s) for s in np.random.SeedSequence(seed).generate_state(2, dtype=np.uint32)
        )
    return _Options(
        training=bool(training),
        batch_size=batch_size,
        shuffle=bool(training) if shuffle is None else bool(shuffle),
        shuffle_seed=shuffle_seed,
        element_seed=element_seed,
        drop_remainder=bool(drop_remainder),
        padding=padding,
        max_length=max_length,
        skip_corrupt=bool(skip_corrupt),
        validate=bool(validate),
    )


def _check_processor(processor: Any) -> None:
    if not isinstance(processor, BlipProcessor):
        raise TypeError(f"processor must be a tfblip.BlipProcessor, got {type(processor).__name__}")
    if processor.tokenizer is None or processor.image_processor is None:
        raise ValueError("the processor needs both a tokenizer and an image processor")
    if processor.pad_token_id is None:
        raise ValueError("the processor's tokenizer has no pad token, needed to pad batches")


# --------------------------------------------------------------------------------------------
# Images.
# --------------------------------------------------------------------------------------------


def _image_loader(processor: BlipProcessor, training: bool) -> tuple[Callable, tuple[int, ...]]:
    """``load(path, seed)``, giving an example's float32 pixel values as graph ops, and their
    shape (3, H, W)."""
    image_processor = processor.image_processor
    options = image_processor._options({})
    if not options["do_resize"]:
        raise ValueError(
            "the image processor has do_resize=False; batching needs one image size, so the "
            "data pipeline needs do_resize=True"
        )
    check_graph_options(options, "the data pipeline")
    height, width = options["size"]["height"], options["size"]["width"]
    normalize = PixelNormalizer(image_processor, options, "tfblip.data")

    def load(path: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        image = decode_image(tf.io.read_file(path))
        if training:
            crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
            top, left, crop_height, crop_width = _random_resized_crop_box(
                tf.shape(image)[0], tf.shape(image)[1], crop_seed
            )
            crop = tf.slice(image, [top, left, 0], [crop_height, crop_width, 3])
            image = pillow_bicubic_resize(crop, height, width)
            flip = tf.random.stateless_uniform([], flip_seed) < FLIP_PROBABILITY
            image = tf.cond(flip, lambda: tf.reverse(image, axis=[1]), lambda: image)
        else:
            image = pillow_bicubic_resize(image, height, width)
        return tf.ensure_shape(normalize(image), [3, height, width])

    return load, (3, height, width)


def _random_resized_crop_box(height: Any, width: Any, seed: Any) -> tuple[tf.Tensor, ...]:
    """torchvision's ``RandomResizedCrop.get_params`` with BLIP's scale and ratio, as graph ops.

    Up to 10 draws of an area fraction in ``CROP_SCALE`` and a log-uniform aspect ratio in
    ``CROP_RATIO``; the first whose rounded box fits the image gives the crop, at a uniform
    position. When none fits, the centre crop of the image clamped to the ratio range.

    Args:
        height, width: the image size, int32 scalars.
        seed: a stateless random seed, shape (2,).

    Returns:
        int32 scalars (top, left, crop_height, crop_width).
    """
    height = tf.cast(height, tf.float64)
    width = tf.cast(width, tf.float64)
    area_seed, ratio_seed, top_seed, left_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, 4)
    )

    def uniform(seed, low=0.0, high=1.0):
        return tf.random.stateless_uniform(
            [CROP_TRIES], seed, minval=low, maxval=high, dtype=tf.float64
        )

    target_area = height * width * uniform(area_seed, *CROP_SCALE)
    aspect_ratio = tf.exp(uniform(ratio_seed, np.log(CROP_RATIO[0]), np.log(CROP_RATIO[1])))
    # tf.round rounds half to even, as Python's round() in torchvision.
    crop_widths = tf.round(tf.sqrt(target_area * aspect_ratio))
    crop_heights = tf.round(tf.sqrt(target_area / aspect_ratio))
    fits = (
        (crop_widths > 0) & (crop_widths <= width) & (crop_heights > 0) & (crop_heights <= height)
    )
    first = tf.argmax(tf.cast(fits, tf.int32))
    crop_height, crop_width = crop_heights[first], crop_widths[first]
    # randint(0, n + 1) draws from 0..n.
    top = tf.floor(uniform(top_seed)[first] * (height - crop_height + 1))
    left = tf.floor(uniform(left_seed)[first] * (width - crop_width + 1))

    image_ratio = width / height
    fallback_width = tf.where(image_ratio > CROP_RATIO[1], tf.round(height * CROP_RATIO[1]), width)
    fallback_height = tf.where(image_ratio < CROP_RATIO[0], tf.round(width / CROP_RATIO[0]), height)
    found = tf.reduce_any(fits)
    box = (
        tf.where(found, top, tf.floor((height - fallback_height) / 2)),
        tf.where(found, left, tf.floor((width - fallback_width) / 2)),
        tf.where(found, crop_height, fallback_height),
        tf.where(found, crop_width, fallback_width),
    )
    return tuple(tf.cast(value, tf.int32) for value in box)


def _unreadable_reason(path: str) -> str | None:
    """Why the pipeline could not read the image file, from its header; None if it looks fine."""
    try:
        with PIL.Image.open(path) as image:
            image_format = image.format
            image_width, image_height = image.size
    except OSError as err:
        if err.errno is not None:
            return f"cannot open ({err.strerror})"
        return f"not a readable image ({err})"
    # Pillow's format plugins raise many kinds of errors for damaged headers.
    except Exception as err:  # noqa: BLE001
        return f"not a readable image ({err})"
    if image_format not in _DECODABLE_FORMATS:
        return f"{image_format} images are not supported (JPEG, PNG, GIF or BMP only)"
    if image_width == 0 or image_height == 0:
        return f"the image has zero size ({image_width}x{image_height})"
    return None


def _undecodable_paths(paths: list[str]) -> dict[str, str]:
    """Full-decode pass over the files with the pipeline's decoder: path -> reason."""

    def decode(position: tf.Tensor, path: tf.Tensor) -> tf.Tensor:
        with tf.control_dependencies([decode_image(tf.io.read_file(path))]):
            return tf.identity(position)

    decoded = (
        tf.data.Dataset.from_tensor_slices((np.arange(len(paths)), paths))
        .map(decode, num_parallel_calls=tf.data.AUTOTUNE)
        .ignore_errors()
    )
    failed = set(range(len(paths))) - set(decoded.as_numpy_iterator())
    return {paths[i]: "the data cannot be decoded (truncated or corrupt)" for i in failed}


def _drop_unreadable(records: list[tuple], options: _Options) -> list[tuple]:
    paths = sorted({record[0] for record in records})
    # Opening files is I/O bound: threads overlap the waits.
    with concurrent.futures.ThreadPoolExecutor(
        max_workers=min(32, 4 * (os.cpu_count() or 1))
    ) as pool:
        reasons = dict(zip(paths, pool.map(_unreadable_reason, paths)))
    problems = {path: reason for path, reason in reasons.items() if reason is not None}
    if options.validate:
        problems.update(_undecodable_paths([p for p in paths if p not in problems]))
    if not problems:
        return records
    listing = "\n".join(f"  {path!r}: {reason}" for path, reason in sorted(problems.items()))
    if not options.skip_corrupt:
        raise ValueError(
            f"{len(problems)} unreadable image file(s) (pass skip_corrupt=True to skip them):"
            f"\n{listing}"
        )
    # stacklevel: this function, _build, the public builder, its caller.
    warnings.warn(
        f"tfblip.data: skipping {len(problems)} unreadable image file(s):\n{listing}",
        stacklevel=4,
    )
    kept = [record for record in records if record[0] not in problems]
    if not kept:
        raise ValueError("no records left: every image file is unreadable")
    return kept


# --------------------------------------------------------------------------------------------
# Text.
# --------------------------------------------------------------------------------------------


def _tokenize(processor: BlipProcessor, texts: list[str], max_length: int | None) -> list[list]:
    # With max_length the processor truncates; padding happens per batch in the pipeline.
    return processor(text=texts, max_length=max_length)["input_ids"]


def _ragged(rows: list[list[int]]) -> tf.RaggedTensor:
    values = np.fromiter(itertools.chain.from_iterable(rows), dtype=np.int32)
    lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
    return tf.RaggedTensor.from_row_lengths(values, lengths)


def _text_inputs(ids: tf.Tensor) -> dict[str, tf.Tensor]:
    return {"input_ids": ids, "attention_mask": tf.ones_like(ids)}


# --------------------------------------------------------------------------------------------
# The pipeline.
# --------------------------------------------------------------------------------------------


def _build(
    records: list[tuple],
    processor: BlipProcessor,
    options: _Options,
    make_tables: Callable[[list[tuple]], dict],
    make_example: Callable[..., dict],
    examples_per_record: int = 1,
) -> tf.data.Dataset:
    """The shared pipeline: shuffled record indices -> images -> examples -> padded batches.

    ``make_tables(records)`` tokenizes once the readable records are known and returns the
    tensors ``make_example(tables, index, seed, pixel_values)`` reads an example from. With
    ``examples_per_record > 1`` each call returns that many examples stacked, which are
    unbatched so they stay next to each other.
    """
    load_image, pixel_shape = _image_loader(processor, options.training)
    records = _drop_unreadable(records, options)
    tables = make_tables(records)
    count = len(records)
    paths = tf.constant([record[0] for record in records])

    indices = tf.data.Dataset.range(count)
    if options.shuffle:
        indices = indices.shuffle(
            min(count, SHUFFLE_BUFFER_CAP),
            seed=options.shuffle_seed,
            reshuffle_each_iteration=True,
        )
    # Graph ops cannot catch a decoding error, and the error does not name the file: the
    # records whose image fails are dropped (ignore_errors) and found afterwards as gaps in the
    # pass's positions. Each record carries the indices of the records before it to name them,
    # and a sentinel (index -1) after the last record exposes a gap at the end.
    indices = indices.concatenate(tf.data.Dataset.from_tensors(tf.constant(-1, tf.int64)))
    indices = indices.scan(
        (tf.constant(0, tf.int64), tf.fill([DROPPED_NAMED], tf.constant(-1, tf.int64))),
        _number_and_remember,
    )
    # One random number per record and pass seeds everything random about its examples, so the
    # results do not depend on the order parallel calls run in.
    randoms = tf.data.Dataset.random(
        seed=options.element_seed, rerandomize_each_iteration=options.training
    )

    def load(numbered, random):
        position, index, predecessors = numbered
        image_seed, example_seed = tf.unstack(
            tf.random.experimental.stateless_split(tf.stack([random, index]), 2)
        )
        pixel_values = tf.cond(
            index >= 0,
            lambda: load_image(tf.gather(paths, index), image_seed),
            lambda: tf.zeros(pixel_shape, tf.float32),
        )
        return position, index, predecessors, example_seed, pixel_values

    def report_dropped(last_position, element):
        position, index, predecessors, seed, pixel_values = element
        dropped = position - last_position - 1
        named = tf.minimum(dropped, DROPPED_NAMED)
        dropped_paths = tf.gather(paths, predecessors[DROPPED_NAMED - named :])
        # Unquoted: the Assert op's message would escape the quotes.
        listing = tf.strings.reduce_join(dropped_paths, separator=", ")
        more = tf.where(
            dropped > named,
            tf.strings.join([" and ", tf.strings.as_string(dropped - named), " more"]),
            "",
        )
        if options.skip_corrupt:
            report = tf.cond(
                dropped > 0,
                lambda: tf.print(
                    tf.strings.join(
                        ["WARNING tfblip.data: skipping unreadable image file(s): ", listing, more]
                    ),
                    output_stream=sys.stderr,
                ),
                tf.no_op,
            )
        else:
            message = tf.strings.join(
                [
                    "tfblip.data: cannot read or decode image file(s): ",
                    listing,
                    more,
                    (
                        " (truncated or corrupt data?); pass skip_corrupt=True to skip such "
                        "files, or validate=True to find them all when the dataset is built"
                    ),
                ]
            )
            report = tf.debugging.Assert(dropped <= 0, [message])
        with tf.control_dependencies([report]):
            return tf.identity(position), (index, seed, pixel_values)

    dataset = (
        tf.data.Dataset.zip(indices, randoms)
        # In order whatever tf.data.Options.deterministic says: the gaps must be real.
        .map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        .ignore_errors()
        .scan(tf.constant(-1, tf.int64), report_dropped)
        .filter(lambda index, seed, pixel_values: index >= 0)
        .map(
            lambda index, seed, pixel_values: make_example(tables, index, seed, pixel_values),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    )
    if examples_per_record > 1:
        dataset = dataset.unbatch()
    if not options.skip_corrupt:
        dataset = dataset.apply(
            tf.data.experimental.assert_cardinality(count * examples_per_record)
        )
    return _padded_batches(dataset, processor, options).prefetch(tf.data.AUTOTUNE)


def _number_and_remember(state, index):
    """(position, index, the indices of the DROPPED_NAMED records before it), oldest first."""
    position, predecessors = state
    remembered = tf.concat([predecessors[1:], [index]], 0)
    return (position + 1, remembered), (position, index, predecessors)


def _padded_batches(
    dataset: tf.data.Dataset, processor: BlipProcessor, options: _Options
) -> tf.data.Dataset:
    text_length = options.max_length if options.padding == "max_length" else None
    pad_values = {
        "input_ids": processor.pad_token_id,
        "attention_mask": 0,
        "labels": IGNORE_INDEX,
        "pixel_values": 0.0,
    }
    shapes, values = {}, {}
    for name, spec in dataset.element_spec.items():
        # Token sequences are the 1-D components; ITM labels are scalars.
        shapes[name] = [text_length] if spec.shape.rank == 1 else spec.shape
        values[name] = tf.constant(pad_values[name], spec.dtype)
    return dataset.padded_batch(
        options.batch_size,
        padded_shapes=shapes,
        padding_values=values,
        drop_remainder=options.drop_remainder,
    )


# --------------------------------------------------------------------------------------------
# Builders.
# --------------------------------------------------------------------------------------------


def caption_dataset(
    source: Any,
    processor: BlipProcessor,
    *,
    prompt: str = "",
    training: bool = True,
    batch_size: int = 8,
    shuffle: bool | None = None,
    seed: int | None = None,
    drop_remainder: bool = False,
    padding: str = "longest",
    max_length: int | None = None,
    skip_corrupt: bool = False,
    validate: bool = False,
) -> tf.data.Dataset:
    """Captioning batches for ``TFBlipForConditionalGeneration`` (see the module docstring).

    Args:
        source: (image path, caption) tuples, or a JSONL / CSV file with ``image``, ``text``.
        processor: the checkpoint's :class:`~tfblip.processing.BlipProcessor`.
        prompt: text put before every caption, e.g. "a picture of " (end it with a space or
            punctuation, so that it tokenizes on its own); its tokens are -100 in ``labels``.
        training: augment images (random resized crop, flip) instead of the processor's resize.
        batch_size, drop_remainder: as ``tf.data.Dataset.batch``.
        shuffle: shuffle the records each pass; default: when ``training``.
        seed: makes shuffling and augmentation reproducible.
        padding: "longest" (per batch) or "max_length".
        max_length: truncate token sequences to this length (and pad to it with "max_length").
        skip_corrupt: drop unreadable images, with a warning, instead of raising.
        validate: decode every image while building, to report undecodable files up front.

    Returns:
        A ``tf.data.Dataset`` of dicts with ``pixel_values``, ``input_ids``,
        ``attention_mask`` and ``labels``.
    """
    options = _options(locals())
    _check_processor(processor)
    if processor.bos_token_id is None:
        raise ValueError("the processor's tokenizer has no bos token ([DEC]) to start captions")
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a string, got {type(prompt).__name__}")
    prompt_ids = processor(text=prompt, add_special_tokens=False)["input_ids"] if prompt else []
    if max_length is not None and max_length < len(prompt_ids) + 3:
        raise ValueError(
            f"max_length={max_length} leaves no room for a caption after the prompt "
            f"({len(prompt_ids)} tokens) between bos and [SEP]"
        )
    records = read_records(source, PAIR_COLUMNS)

    def make_tables(records):
        captions = [prompt + text for _, text in records]
        ids = _tokenize(processor, captions, max_length)
        labels = []
        for caption, row in zip(captions, ids):
            if row[1 : 1 + len(prompt_ids)] != prompt_ids:
                raise ValueError(
                    f"the prompt {prompt!r} does not tokenize to the same tokens at the start of "
                    f"{caption!r}; end the prompt at a word boundary (e.g. with a space)"
                )
            row[0] = processor.bos_token_id
            labels.append(row[:1] + [IGNORE_INDEX] * len(prompt_ids) + row[1 + len(prompt_ids) :])
        return {"input_ids": _ragged(ids), "labels": _ragged(labels)}

    return _build(records, processor, options, make_tables, _labelled_example)


def vqa_dataset(
    source: Any,
    processor: BlipProcessor,
    *,
    training: bool = True,
    batch_size: int = 8,
    shuffle: bool | None = None,
    seed: int | None = None,
    drop_remainder: bool = False,
    padding: str = "longest",
    max_length: int | None = None,
    skip_corrupt: bool = False,
    validate: bool = False,
) -> tf.data.Dataset:
    """VQA batches for ``TFBlipForQuestionAnswering`` (see the module docstring).

    Args:
        source: (image path, question, answer) tuples, or a JSONL / CSV file with ``image``,
            ``question``, ``answer``.
        processor: the checkpoint's :class:`~tfblip.processing.BlipProcessor`.
        training, batch_size, shuffle, seed, drop_remainder, padding, max_length, skip_corrupt,
            validate: as :func:`caption_dataset`; ``padding`` and ``max_length`` apply to
            questions and answers alike.

    Returns:
        A ``tf.data.Dataset`` of dicts with ``pixel_values``, ``input_ids`` and
        ``attention_mask`` (the question) and ``labels`` (the answer).

    Raises:
        TypeError, ValueError, FileNotFoundError: as :func:`caption_dataset`.
    """
    options = _options(locals())
    _check_processor(processor)
    records = read_records(source, VQA_COLUMNS)

    def make_tables(records):
        questions = _tokenize(processor, [question for _, question, _ in records], max_length)
        answers = _tokenize(processor, [answer for _, _, answer in records], max_length)
        for row in answers:
            # generate() starts answers from bos ([DEC]), as BLIP's own VQA training did, so
            # the decoder learns the first answer token after [DEC], not after [CLS].
            row[0] = processor.bos_token_id
        return {"input_ids": _ragged(questions), "labels": _ragged(answers)}

    return _build(records, processor, options, make_tables, _labelled_example)


def contrastive_dataset(
    source: Any,
    processor: BlipProcessor,
    *,
    training: bool = True,
    batch_size: int = 8,
    shuffle: bool | None = None,
    seed: int | None = None,
    drop_remainder: bool = False,
    padding: str = "longest",
    max_length: int | None = None,
    skip_corrupt: bool = False,
    validate: bool = False,
) -> tf.data.Dataset:
    """(image, text) pair batches for ``TFBlipModel``'s contrastive loss.

    Args:
        source: (image path, text) tuples, or a JSONL / CSV file with ``image``, ``text``.
        processor: the checkpoint's :class:`~tfblip.processing.BlipProcessor`.
        training, batch_size, shuffle, seed, drop_remainder, padding, max_length, skip_corrupt,
            validate: as :func:`caption_dataset`.

    Returns:
        A ``tf.data.Dataset`` of dicts with ``pixel_values``, ``input_ids`` and
        ``attention_mask``.

    Raises:
        TypeError, ValueError, FileNotFoundError: as :func:`caption_dataset`.
    """
    options = _options(locals())
    _check_processor(processor)
    records = read_records(source, PAIR_COLUMNS)
    return _build(records, processor, options, *_pair_functions(processor, max_length))


def _pair_functions(processor: BlipProcessor, max_length: int | None) -> tuple[Callable, Callable]:
    """``make_tables`` and ``make_example`` for (image, text) pair examples."""

    def make_tables(records):
        texts = [text for _, text in records]
        return {"input_ids": _ragged(_tokenize(processor, texts, max_length))}

    return make_tables, _pair_example


def _pair_example(tables: dict, index: tf.Tensor, seed: tf.Tensor, pixel_values: tf.Tensor):
    """``make_example`` of an image and its text: ``pixel_values``, ``input_ids`` and
    ``attention_mask``."""
    return {"pixel_values": pixel_values, **_text_inputs(tables["input_ids"][index])}


def _labelled_example(tables: dict, index: tf.Tensor, seed: tf.Tensor, pixel_values: tf.Tensor):
    """``make_example`` of a pair example with its ``labels`` (a caption's or answer's tokens)."""
    return {**_pair_example(tables, index, seed, pixel_values), "labels": tables["labels"][index]}


def retrieval_dataset(
    source: Any,
    processor: BlipProcessor,
    *,
    objective: str = "itm",
    negatives_per_pair: int = 1,
    training: bool = True,
    batch_size: int = 8,
    shuffle: bool | None = None,
    seed: int | None = None,
    drop_remainder: bool = False,
    padding: str = "longest",
    max_length: int | None = None,
    skip_corrupt: bool = False,
    validate: bool = False,
) -> tf.data.Dataset:
    """Batches for ``TFBlipForImageTextRetrieval`` (see the module docstring).

    Args:
        source: (image path, text) tuples, or a JSONL / CSV file with ``image``, ``text``.
        objective: "itm" (image-text matching: positive and negative examples with ``labels``)
            or "itc" (contrastive: pairs, no labels).
        negatives_per_pair: with "itm", how many negatives follow each positive; each is the
            text of a record drawn independently and uniformly from those whose text the data
            never pairs with the image.
        The others: as :func:`caption_dataset`. ``batch_size`` counts examples, so an ITM batch
        holds ``batch_size / (1 + negatives_per_pair)`` records.

    Returns:
        A ``tf.data.Dataset`` of dicts with ``pixel_values``, ``input_ids``,
        ``attention_mask`` and, for "itm", int32 ``labels`` (B,): 1 match, 0 no match.

    Raises:
        ValueError: (besides bad options and sources) with "itm", an image whose every text in
            the data is one of its own, leaving no negative to draw.
    """
    options = _options(locals())
    if objective not in _OBJECTIVES:
        raise ValueError(f"objective must be 'itm' or 'itc', got {objective!r}")
    negatives_per_pair = positive_int("negatives_per_pair", negatives_per_pair)
    _check_processor(processor)
    records = read_records(source, PAIR_COLUMNS)
    if objective == "itc":
        return _build(records, processor, options, *_pair_functions(processor, max_length))

    def make_tables(records):
        ids = _tokenize(processor, [text for _, text in records], max_length)
        return {"input_ids": _ragged(ids), **_negative_tables(records, ids)}

    def make_example(tables, index, seed, pixel_values):
        negatives = _draw_negatives(tables, index, seed, negatives_per_pair)
        texts = tf.gather(tables["input_ids"], tf.concat([[index], negatives], 0))
        labels = tf.concat([[1], tf.zeros([negatives_per_pair], tf.int32)], 0)
        # Dense, so that unbatching gives plain tensors for padded_batch; the record's padding
        # is no longer than its batch's.
        return {
            "pixel_values": tf.tile(pixel_values[None], [1 + negatives_per_pair, 1, 1, 1]),
            "input_ids": texts.to_tensor(default_value=processor.pad_token_id),
            "attention_mask": tf.sequence_mask(texts.row_lengths(), dtype=tf.int32),
            "labels": labels,
        }

    return _build(records, processor, options, make_tables, make_example, 1 + negatives_per_pair)


def _negative_tables(records: list[tuple], ids: list[list[int]]) -> dict[str, Any]:
    """Tables to draw, for each record, a uniform record whose text its image is never paired
    with, without rejection.

    Records sorted by text group (identical token ids) put each text's records in one run;
    an image's forbidden runs are skipped by counting how many allowed positions precede each.
    """
    _, text_group = np.unique(
        np.array([" ".join(map(str, row)) for row in ids], dtype=object), return_inverse=True
    )
    images, image_group = np.unique(
        np.array([path for path, _ in records], dtype=object), return_inverse=True
    )
    order = np.argsort(text_group, kind="stable")
    group_count = np.bincount(text_group)
    group_start = np.concatenate([[0], np.cumsum(group_count)[:-1]])

    count = len(records)
    by_image = np.argsort(image_group, kind="stable")
    image_bounds = np.cumsum(np.bincount(image_group))[:-1]
    forbidden_counts, allowed_before, allowed_total = [], [], []
    for image, members in enumerate(np.split(by_image, image_bounds)):
        groups = np.unique(text_group[members])  # sorted, so the runs come in order
        counts = group_count[groups]
        before = group_start[groups] - np.concatenate([[0], np.cumsum(counts)[:-1]])
        allowed = count - int(counts.sum())
        if allowed == 0:
            raise ValueError(
                f"no negative text for image {images[image]!r}: every text in the data is "
                "paired with it; ITM needs texts of other images"
            )
        forbidden_counts.append(counts)
        allowed_before.append(before)
        allowed_total.append(allowed)
    return {
        "order": tf.constant(order, tf.int64),
        "image_group": tf.constant(image_group, tf.int64),
        "allowed_total": tf.constant(allowed_total, tf.int64),
        "allowed_before": _ragged_int64(allowed_before),
        "forbidden_counts": _ragged_int64(forbidden_counts),
    }


def _ragged_int64(rows: list[np.ndarray]) -> tf.RaggedTensor:
    return tf.RaggedTensor.from_row_lengths(
        np.concatenate(rows).astype(np.int64), [len(row) for row in rows]
    )


def _draw_negatives(tables: dict, index: tf.Tensor, seed: tf.Tensor, count: int) -> tf.Tensor:
    image = tables["image_group"][index]
    allowed = tables["allowed_total"][image]
    rank = tf.cast(
        tf.floor(
            tf.random.stateless_uniform([count], seed, dtype=tf.float64)
            * tf.cast(allowed, tf.float64)
        ),
        tf.int64,
    )
    rank = tf.minimum(rank, allowed - 1)
    before = tables["allowed_before"][image]
    skipped = tables["forbidden_counts"][image]
    # The rank-th allowed position lies past every forbidden run with at most rank allowed
    # positions before it.
    passed = before[None, :] <= rank[:, None]
    position = rank + tf.reduce_sum(tf.where(passed, skipped[None, :], 0), axis=1)
    return tf.gather(tables["order"], position)
