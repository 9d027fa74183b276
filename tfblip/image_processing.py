"""Image preprocessing for BLIP: PIL / NumPy, no TensorFlow unless tensors are asked for.

:class:`BlipImageProcessor` turns images into the ``pixel_values`` the BLIP vision tower expects,
with the same output as transformers 5's ``BlipImageProcessorPil`` (the PIL backend):

1. RGB conversion (``do_convert_rgb``). PIL images with an alpha band or a ``transparency`` entry
   in ``image.info`` are composited onto white (``convert("RGBA")`` + ``alpha_composite``); every
   other mode gets a plain ``convert("RGB")``. NumPy arrays with 1 channel are repeated to 3, with
   4 channels composited onto white in NumPy; 3-channel arrays are left alone.
2. Resize (``do_resize``) with Pillow to ``size`` = (height, width), ``resample`` (default
   bicubic). Arrays go through Pillow as uint8; float arrays in [0, 1] are scaled by 255 and
   truncated to uint8 first, then scaled back by 1/255 afterwards, as transformers does.
3. Rescale (``do_rescale``): ``float32(float64(x) * rescale_factor)``.
4. Normalize (``do_normalize``): ``(x - mean) / std`` in float32.

For uint8 data (every PIL input, uint8 arrays) steps 3-4 depend on the value only, so they are
done through a per-channel 256-entry lookup table computed with the same arithmetic: the result
is bit-identical to transformers and several times faster than the float64 round trip.

File paths are opened like transformers' ``load_image``: EXIF orientation applied, then
``convert("RGB")`` (so alpha in a file is dropped, not composited). Unlike transformers, URLs and
base64 strings are not accepted; ``os.PathLike`` paths, 2-D grayscale arrays and TensorFlow
tensors are.

So by default the same RGBA PNG gives different pixels as a path (alpha dropped) and as a PIL
image (composited onto white), as in transformers. The ``alpha`` option, not in transformers,
picks one behaviour for every kind of input: ``"white"`` composites paths too, ``"drop"``
discards the alpha of PIL images and 4-channel arrays too (a ``transparency`` colour keeps its
colour, as ``convert("RGB")`` does for files).

``preprocessor_config.json`` files are read and written in transformers' format; keys this class
does not use (``processor_class``, ``image_processor_type``, ...) are kept and written back. A
directory saved by transformers 5's ``BlipProcessor`` has no ``preprocessor_config.json``: its
image settings are the ``"image_processor"`` entry of ``processor_config.json``, which
:meth:`BlipImageProcessor.from_pretrained` reads as transformers does.
"""

from __future__ import annotations

import copy
import json
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import PIL.Image
import PIL.ImageOps

from tfblip.arguments import is_int, is_number, is_positive_int

__all__ = [
    "IMAGE_PROCESSOR_NAME",
    "OPENAI_CLIP_MEAN",
    "OPENAI_CLIP_STD",
    "PROCESSOR_NAME",
    "BlipImageProcessor",
]

IMAGE_PROCESSOR_NAME = "preprocessor_config.json"
# transformers 5's processors save every sub-processor's settings in this one file.
PROCESSOR_NAME = "processor_config.json"
_NESTED_KEY = "image_processor"
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

_IMAGE_PROCESSOR_TYPE = "BlipImageProcessor"
_RETURN_TENSORS = (None, "np", "tf")
_OPTIONS = (
    "do_resize",
    "size",
    "resample",
    "do_rescale",
    "rescale_factor",
    "do_normalize",
    "image_mean",
    "image_std",
    "do_convert_rgb",
    "alpha",
)
_DEFAULTS = {
    "do_resize": True,
    "size": {"height": 384, "width": 384},
    "resample": int(PIL.Image.Resampling.BICUBIC),
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "do_normalize": True,
    "image_mean": OPENAI_CLIP_MEAN,
    "image_std": OPENAI_CLIP_STD,
    "do_convert_rgb": True,
    "alpha": None,
}
# How RGB conversion treats transparency: None is transformers' behaviour (paths drop it, images
# and arrays are composited onto white); the others apply to every kind of input.
_ALPHA_MODES = (None, "white", "drop")
# Options transformers' image processors know but this class does not implement. Each maps to a
# test of the values that leave the output unchanged; any other value is refused.
_INERT_OPTIONS = {
    "do_center_crop": lambda v: not v,
    "do_pad": lambda v: not v,
    "default_to_square": lambda v: v is None or v is True,
    "data_format": lambda v: v is None or str(getattr(v, "value", v)) == "channels_first",
    "input_data_format": lambda v: v is None,
    "return_tensors": lambda v: v is None,
    "crop_size": lambda v: True,
    "pad_size": lambda v: True,
    "device": lambda v: True,
    "disable_grouping": lambda v: True,
    "image_seq_length": lambda v: True,
}
_CHANNEL_COUNTS = (1, 3, 4)


# --------------------------------------------------------------------------------------------
# Option checks: each returns the normalised value or raises naming the option.
# --------------------------------------------------------------------------------------------


def _check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {value!r}")
    return bool(value)


def _check_size(value: Any) -> dict[str, int]:
    if is_positive_int(value):
        return {"height": int(value), "width": int(value)}
    if isinstance(value, Mapping) and set(value) == {"height", "width"}:
        height, width = value["height"], value["width"]
    elif isinstance(value, (list, tuple)) and len(value) == 2:
        height, width = value
    else:
        raise ValueError(
            "size must be a positive int, a (height, width) pair or a dict with exactly the keys "
            f"'height' and 'width', got {value!r}"
        )
    if not (is_positive_int(height) and is_positive_int(width)):
        raise ValueError(f"size height and width must be positive ints, got {value!r}")
    return {"height": int(height), "width": int(width)}


def _check_resample(value: Any) -> int:
    valid = {int(r): r.name for r in PIL.Image.Resampling}
    if is_int(value) and int(value) in valid:
        return int(value)
    choices = ", ".join(f"{k} ({v})" for k, v in sorted(valid.items()))
    raise ValueError(
        f"resample must be a PIL.Image.Resampling value, one of {choices}; got {value!r}"
    )


def _check_factor(value: Any) -> float:
    if not is_number(value) or not math.isfinite(value):
        raise ValueError(f"rescale_factor must be a finite number, got {value!r}")
    return float(value)


def _check_stats(name: str, value: Any) -> float | tuple[float, ...]:
    if is_number(value):
        values: tuple[float, ...] = (float(value),)
        result: float | tuple[float, ...] = float(value)
    elif isinstance(value, (list, tuple, np.ndarray)) and len(value) > 0:
        if not all(is_number(v) for v in value):
            raise ValueError(f"{name} must be a number or a list of numbers, got {value!r}")
        values = tuple(float(v) for v in value)
        result = values
    else:
        raise ValueError(f"{name} must be a number or a non-empty list of numbers, got {value!r}")
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if name == "image_std" and any(v == 0 for v in values):
        raise ValueError(f"image_std must not contain 0, got {value!r}")
    return result


def _check_alpha(value: Any) -> str | None:
    if value is not None and not (isinstance(value, str) and value in _ALPHA_MODES):
        raise ValueError(
            f"alpha must be None (transformers' behaviour: dropped for file paths, composited "
            f"onto white for PIL images and arrays), 'white' or 'drop'; got {value!r}"
        )
    return value


def _check_option(name: str, value: Any) -> Any:
    if name == "alpha":
        return _check_alpha(value)
    if name == "size":
        return _check_size(value)
    if name == "resample":
        return _check_resample(value)
    if name == "rescale_factor":
        return _check_factor(value)
    if name in ("image_mean", "image_std"):
        return _check_stats(name, value)
    return _check_bool(name, value)


def _check_inert(name: str, value: Any) -> None:
    if not _INERT_OPTIONS[name](value):
        raise ValueError(
            f"{name}={value!r} is not supported by BlipImageProcessor (BLIP does not use it); "
            "only values that leave the output unchanged are accepted"
        )


# --------------------------------------------------------------------------------------------
# Image loading and conversion.
# --------------------------------------------------------------------------------------------


def _check_pil_size(image: PIL.Image.Image, label: str) -> None:
    width, height = image.size
    if width == 0 or height == 0:
        raise ValueError(f"{label}: image has zero size (width {width}, height {height})")
    limit = PIL.Image.MAX_IMAGE_PIXELS
    if limit is not None and width * height > limit:
        raise ValueError(
            f"{label}: image of {width}x{height} = {width * height} pixels exceeds "
            f"PIL.Image.MAX_IMAGE_PIXELS = {limit} (possible decompression bomb); "
            "raise PIL.Image.MAX_IMAGE_PIXELS to allow it"
        )


def _load_path(path: str | os.PathLike, label: str, alpha: str) -> PIL.Image.Image:
    """Open an image file as transformers' ``load_image`` does: EXIF orientation, then RGB
    (``alpha`` as in :func:`_pil_to_rgb`; transformers drops it)."""
    name = os.fsdecode(os.fspath(path))
    if name.startswith(("http://", "https://")):
        raise ValueError(f"{label}: URLs are not supported; download the image first")
    try:
        with warnings.catch_warnings():
            # Pillow warns between 1x and 2x MAX_IMAGE_PIXELS; _check_pil_size refuses those.
            warnings.simplefilter("ignore", PIL.Image.DecompressionBombWarning)
            opened = PIL.Image.open(name)
    except PIL.Image.DecompressionBombError as err:
        raise ValueError(f"{label}: {err}") from err
    except OSError as err:
        if err.errno is not None:  # file system errors: missing file, directory, permissions
            raise type(err)(err.errno, f"{label}: {err.strerror}", name) from err
        raise ValueError(f"{label}: cannot identify image file ({err})") from err
    except Exception as err:
        raise ValueError(f"{label}: cannot open image file ({err})") from err
    with opened as image:
        _check_pil_size(image, label)
        try:
            image.load()  # decode now: a truncated or corrupt file raises here
            image = PIL.ImageOps.exif_transpose(image)  # a new image, independent of the file
        except Exception as err:
            raise ValueError(f"{label}: cannot read image file ({err})") from err
    return _pil_to_rgb(image, alpha)


def _pil_to_rgb(image: PIL.Image.Image, alpha: str) -> PIL.Image.Image:
    """RGB of a PIL image: with ``alpha="white"`` transformers' ``convert_to_rgb`` (alpha bands
    and ``transparency`` colours composited onto white), with ``"drop"`` ``convert("RGB")``."""
    transparent = "A" in image.getbands() or image.info.get("transparency") is not None
    if alpha == "white" and transparent:
        rgba = image.convert("RGBA")
        white = PIL.Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return PIL.Image.alpha_composite(white, rgba).convert("RGB")
    # convert("RGB") of an RGB image is a copy with the same pixels and info.
    return image if image.mode == "RGB" else image.convert("RGB")


def _infer_channels_first(shape: tuple[int, ...], label: str) -> bool:
    """transformers' channel inference for 3-D arrays: channels first wins when both fit."""
    if shape[0] in _CHANNEL_COUNTS:
        return True
    if shape[2] in _CHANNEL_COUNTS:
        return False
    raise ValueError(
        f"{label}: cannot find the channel axis of an array of shape {shape}: expected 1, 3 or 4 "
        "channels as the first (C, H, W) or last (H, W, C) axis"
    )


def _array_to_rgb(chw: np.ndarray, label: str, alpha: str) -> np.ndarray:
    """transformers' ``convert_to_rgb`` for arrays, on (C, H, W); ``alpha="drop"`` takes the
    first 3 of 4 channels instead of compositing them onto white."""
    channels = chw.shape[0]
    if channels == 1:
        return np.repeat(chw, 3, axis=0)
    if channels == 4 and alpha == "drop":
        return chw[:3]
    if channels == 4:
        dtype = chw.dtype
        if np.issubdtype(dtype, np.floating) and (chw.min() < 0.0 or chw.max() > 1.0):
            raise ValueError(
                f"{label}: a float RGBA image must have values in [0, 1] to be composited onto "
                f"white, got [{chw.min()}, {chw.max()}]"
            )
        white = 255 if np.issubdtype(dtype, np.integer) else 1.0
        alpha = chw[3:4] / white
        composite = alpha * chw[:3] + (1 - alpha) * white
        return np.round(composite).astype(dtype) if white == 255 else composite.astype(dtype)
    return chw


def _to_numpy(image: Any) -> np.ndarray | None:
    """A torch or TensorFlow tensor as a NumPy array; None for anything else."""
    root = type(image).__module__.split(".")[0]
    if root == "torch" and hasattr(image, "detach"):
        return image.detach().cpu().numpy()
    if root in ("tensorflow", "tf_keras") and hasattr(image, "numpy"):
        return np.asarray(image.numpy())
    return None


def _prepare_array(
    array: np.ndarray, label: str, convert_rgb: bool, alpha: str, channels_last: bool = False
) -> np.ndarray:
    """A (C, H, W) array from a 2-D or 3-D array, RGB-converted if asked."""
    if array.dtype.kind not in "buif":
        raise TypeError(f"{label}: unsupported array dtype {array.dtype}")
    if array.ndim == 2:
        array = array[None]
    elif array.ndim == 3:
        if channels_last or not _infer_channels_first(array.shape, label):
            array = array.transpose(2, 0, 1)
    else:
        hint = "; for a batch pass a list of 3-D arrays" if array.ndim == 4 else ""
        raise ValueError(
            f"{label}: expected a 2-D (H, W) or 3-D (H, W, C) / (C, H, W) array, got shape "
            f"{array.shape}{hint}"
        )
    if array.shape[1] == 0 or array.shape[2] == 0:
        raise ValueError(f"{label}: image has zero size (array shape {array.shape})")
    if convert_rgb:
        array = _array_to_rgb(array, label, alpha)
    return array


def _needs_pil_rescale(hwc: np.ndarray, label: str) -> bool:
    """transformers' ``_rescale_for_pil_conversion``: does a float array need * 255 for PIL?"""
    if hwc.dtype == np.uint8:
        return False
    if np.allclose(hwc, hwc.astype(int)):
        if np.all(hwc >= 0) and np.all(hwc <= 255):
            return False
        raise ValueError(
            f"{label}: to be resized, integer-valued pixels must lie in [0, 255], got "
            f"[{hwc.min()}, {hwc.max()}]"
        )
    if np.all(hwc >= 0) and np.all(hwc <= 1):
        return True
    raise ValueError(
        f"{label}: to be resized, non-integer pixels must lie in [0, 1], got "
        f"[{hwc.min()}, {hwc.max()}]"
    )


def _resize_array(chw: np.ndarray, size: tuple[int, int], resample: int, label: str) -> np.ndarray:
    """transformers' PIL-backend resize of a (C, H, W) array, via a uint8 PIL image."""
    hwc = chw.transpose(1, 2, 0)
    if hwc.shape[-1] == 1:
        hwc = hwc[..., 0]
    scaled = _needs_pil_rescale(hwc, label)
    if scaled:
        hwc = (hwc.astype(np.float64) * 255).astype(np.float32)
    image = PIL.Image.fromarray(np.ascontiguousarray(hwc.astype(np.uint8, copy=False)))
    resized = np.asarray(image.resize((size[1], size[0]), resample=resample))
    resized = resized[None] if resized.ndim == 2 else resized.transpose(2, 0, 1)
    if scaled:
        resized = (resized.astype(np.float64) * (1 / 255)).astype(np.float32)
    return resized


# --------------------------------------------------------------------------------------------
# Rescale and normalize.
# --------------------------------------------------------------------------------------------


def _per_channel(name: str, value: float | tuple[float, ...], channels: int, label: str) -> list:
    if isinstance(value, tuple):
        if len(value) != channels:
            raise ValueError(
                f"{label}: {name} has {len(value)} values but the image has {channels} channels "
                "(set do_convert_rgb=True for RGB output, or give a single number)"
            )
        return list(value)
    return [value] * channels


def _rescale_normalize(chw: np.ndarray, opts: dict, label: str) -> np.ndarray:
    """transformers' rescale then normalize, in its dtypes (the result may not be float32)."""
    if opts["do_rescale"]:
        chw = (chw.astype(np.float64) * opts["rescale_factor"]).astype(np.float32)
    if opts["do_normalize"]:
        channels = chw.shape[0]
        if not np.issubdtype(chw.dtype, np.floating):
            chw = chw.astype(np.float32)
        mean = np.array(_per_channel("image_mean", opts["image_mean"], channels, label), chw.dtype)
        std = np.array(_per_channel("image_std", opts["image_std"], channels, label), chw.dtype)
        chw = (chw - mean[:, None, None]) / std[:, None, None]
    return chw


def _lookup_table(channels: int, opts: dict, label: str) -> np.ndarray:
    """(channels, 256) float32: _rescale_normalize of every uint8 value, per channel."""
    values = np.broadcast_to(np.arange(256, dtype=np.uint8)[None, :, None], (channels, 256, 1))
    return np.ascontiguousarray(_rescale_normalize(values, opts, label)[:, :, 0], np.float32)


def _read_json_object(file: str) -> dict[str, Any]:
    with open(file, encoding="utf-8") as f:
        text = f.read()
    try:
        config = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{file!r} is not valid JSON: {err}") from err
    if not isinstance(config, dict):
        # ValueError like invalid JSON: the file's content is wrong, not an argument's type.
        raise ValueError(f"{file!r} must hold a JSON object, got {type(config).__name__}")  # noqa: TRY004
    return config


# --------------------------------------------------------------------------------------------
# The processor.
# --------------------------------------------------------------------------------------------


class BlipImageProcessor:
    """BLIP image preprocessing, matching transformers' ``BlipImageProcessorPil``.

    Args:
        do_resize: resize to ``size``.
        size: ``{"height": h, "width": w}``, an int (square) or a (height, width) pair.
        resample: a ``PIL.Image.Resampling`` value (default bicubic).
        do_rescale: multiply by ``rescale_factor``.
        rescale_factor: default 1/255.
        do_normalize: subtract ``image_mean`` and divide by ``image_std`` per channel.
        image_mean, image_std: a number or one number per channel.
        do_convert_rgb: convert every image to 3-channel RGB first.
        alpha: how transparency is treated when converting to RGB (not a transformers option).
            ``None``: as transformers, dropped for file paths and composited onto white for PIL
            images and arrays. ``"white"``: composited onto white for every input.
            ``"drop"``: discarded for every input (``convert("RGB")``, the first 3 channels of
            an array).
        **kwargs: other keys of a ``preprocessor_config.json`` (``processor_class``,
            ``image_processor_type``, ...), kept and written back by :meth:`to_dict`. Options
            other transformers image processors act on (``do_center_crop``, ``do_pad``, ...)
            are accepted only with values that change nothing.

    ``None`` for an option means its default, as in transformers.
    """

    def __init__(
        self,
        do_resize: bool = True,
        size: int | Sequence[int] | Mapping[str, int] | None = None,
        resample: int = PIL.Image.Resampling.BICUBIC,
        do_rescale: bool = True,
        rescale_factor: float = 1 / 255,
        do_normalize: bool = True,
        image_mean: float | Sequence[float] = OPENAI_CLIP_MEAN,
        image_std: float | Sequence[float] = OPENAI_CLIP_STD,
        do_convert_rgb: bool = True,
        alpha: str | None = None,
        **kwargs: Any,
    ) -> None:
        given = {
            "do_resize": do_resize,
            "size": size,
            "resample": resample,
            "do_rescale": do_rescale,
            "rescale_factor": rescale_factor,
            "do_normalize": do_normalize,
            "image_mean": image_mean,
            "image_std": image_std,
            "do_convert_rgb": do_convert_rgb,
            "alpha": alpha,
        }
        for name, value in given.items():
            value = _DEFAULTS[name] if value is None else value
            setattr(self, name, _check_option(name, value))
        for name, value in kwargs.items():
            if name in _INERT_OPTIONS:
                _check_inert(name, value)
        self._extra = copy.deepcopy(kwargs)
        self._luts: dict[tuple, np.ndarray] = {}

    # ---------------------------------------------------------------------------- options

    def _options(self, overrides: Mapping[str, Any]) -> dict[str, Any]:
        opts = {name: getattr(self, name) for name in _OPTIONS}
        for name, value in overrides.items():
            if name in _OPTIONS:
                if value is not None:
                    opts[name] = _check_option(name, value)
            elif name in _INERT_OPTIONS:
                _check_inert(name, value)
            else:
                raise TypeError(
                    f"BlipImageProcessor.preprocess() got an unexpected option {name!r}; "
                    f"valid options: {', '.join(_OPTIONS)}"
                )
        return opts

    def _lut(self, channels: int, opts: dict, label: str) -> np.ndarray:
        key = (
            channels,
            opts["do_rescale"],
            opts["rescale_factor"],
            opts["do_normalize"],
            opts["image_mean"],
            opts["image_std"],
        )
        lut = self._luts.get(key)
        if lut is None:
            if len(self._luts) > 16:
                self._luts.clear()
            lut = self._luts[key] = _lookup_table(channels, opts, label)
        return lut

    # ---------------------------------------------------------------------------- images

    def _process_one(
        self, image: Any, label: str, opts: dict, batch: np.ndarray | None, index: int
    ) -> np.ndarray:
        """One image to a float32 (C, H, W) array, written into ``batch[index]`` if given."""
        convert_rgb = opts["do_convert_rgb"]
        size = (opts["size"]["height"], opts["size"]["width"])
        # alpha=None is transformers' mix: load_image drops a file's alpha, convert_to_rgb
        # composites images and arrays onto white.
        file_alpha = "white" if opts["alpha"] == "white" else "drop"
        image_alpha = "drop" if opts["alpha"] == "drop" else "white"
        if isinstance(image, (str, os.PathLike)):
            label = f"{label} ({os.fsdecode(os.fspath(image))!r})"
            image = _load_path(image, label, file_alpha)
        elif isinstance(image, PIL.Image.Image) and getattr(image, "filename", None):
            label = f"{label} ({image.filename!r})"
        elif not isinstance(image, (PIL.Image.Image, np.ndarray)):
            array = _to_numpy(image)
            if array is None:
                raise TypeError(
                    f"{label}: unsupported type {type(image).__module__}.{type(image).__qualname__}"
                    "; expected a PIL image, a NumPy array, a torch or TensorFlow tensor, or a "
                    "file path"
                )
            image = array

        if isinstance(image, PIL.Image.Image):
            _check_pil_size(image, label)
            try:
                image.load()
            except Exception as err:
                raise ValueError(f"{label}: cannot read image data ({err})") from err
            if convert_rgb or image.mode == "RGB":
                # np.array(rgb) -> PIL -> resize in transformers gives the same pixels as this.
                rgb = _pil_to_rgb(image, image_alpha) if convert_rgb else image
                if opts["do_resize"]:
                    rgb = rgb.resize((size[1], size[0]), resample=opts["resample"])
                chw = np.asarray(rgb).transpose(2, 0, 1)
            else:
                chw = _prepare_array(np.array(image), label, False, image_alpha, channels_last=True)
                if opts["do_resize"]:
                    chw = _resize_array(chw, size, opts["resample"], label)
        else:
            chw = _prepare_array(image, label, convert_rgb, image_alpha)
            if opts["do_resize"]:
                chw = _resize_array(chw, size, opts["resample"], label)

        if batch is None:
            out = np.empty(chw.shape, np.float32)
        elif chw.shape == batch.shape[1:]:
            out = batch[index]
        else:
            raise ValueError(
                f"cannot stack images of different shapes into one tensor: image 0 gives "
                f"{batch.shape[1:]} but image {index} gives {chw.shape}; use do_resize=True or "
                "return_tensors=None"
            )
        if chw.dtype == np.uint8 and (opts["do_rescale"] or opts["do_normalize"]):
            lut = self._lut(chw.shape[0], opts, label)
            for c in range(chw.shape[0]):
                np.take(lut[c], chw[c], out=out[c])
        else:
            out[...] = _rescale_normalize(chw, opts, label)
        return out

    def preprocess(self, images: Any, return_tensors: str | None = None, **overrides: Any) -> dict:
        """Preprocess one image or a list of images into ``{"pixel_values": ...}``.

        Args:
            images: a PIL image, a NumPy array ((H, W), (H, W, C) or (C, H, W); C in 1, 3, 4),
                a torch or TensorFlow tensor, a file path, or a list / tuple of these.
            return_tensors: ``"tf"`` (a float32 ``tf.Tensor`` of shape (B, C, H, W)), ``"np"``
                (the same as a NumPy array) or ``None`` (a list of float32 (C, H, W) arrays, as
                transformers returns).
            **overrides: any constructor option, for this call only.
        """
        if return_tensors not in _RETURN_TENSORS:
            raise ValueError(
                f"return_tensors must be one of None, 'np' or 'tf', got {return_tensors!r}"
            )
        opts = self._options(overrides)
        if isinstance(images, (list, tuple)):
            if not images:
                raise ValueError("images is an empty list; give at least one image")
            for index, image in enumerate(images):
                if isinstance(image, (list, tuple)):
                    raise TypeError(
                        f"image {index}: nested lists are not supported; give a flat list of images"
                    )
        else:
            images = [images]

        if return_tensors is None:
            arrays = [
                self._process_one(image, f"image {index}", opts, None, index)
                for index, image in enumerate(images)
            ]
            return {"pixel_values": arrays}
        # Write every image straight into one preallocated batch: no per-image buffers to stack.
        first = self._process_one(images[0], "image 0", opts, None, 0)
        batch = np.empty((len(images), *first.shape), np.float32)
        batch[0] = first
        for index in range(1, len(images)):
            self._process_one(images[index], f"image {index}", opts, batch, index)
        if return_tensors == "tf":
            import tensorflow as tf

            batch = tf.convert_to_tensor(batch)
        return {"pixel_values": batch}

    __call__ = preprocess

    # ---------------------------------------------------------------------------- config

    def to_dict(self) -> dict[str, Any]:
        """The options as a ``preprocessor_config.json`` dict (transformers' format)."""
        output = copy.deepcopy(self._extra)
        for name in _OPTIONS:
            value = getattr(self, name)
            output[name] = list(value) if isinstance(value, tuple) else copy.deepcopy(value)
        output["image_processor_type"] = _IMAGE_PROCESSOR_TYPE
        return output

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def save_pretrained(self, save_directory: str | os.PathLike) -> str:
        """Write ``preprocessor_config.json``, which :meth:`from_pretrained` reads.

        Args:
            save_directory: where to write it; created if missing.

        Returns:
            The path of the file written.

        Raises:
            ValueError: ``save_directory`` is a file.
        """
        if os.path.isfile(save_directory):
            raise ValueError(f"save_pretrained needs a directory, got the file {save_directory!r}")
        os.makedirs(save_directory, exist_ok=True)
        path = os.path.join(save_directory, IMAGE_PROCESSOR_NAME)
        with open(path, "w", encoding="utf-8") as f:
            f.write(self.to_json_string())
        return path

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, **kwargs: Any) -> BlipImageProcessor:
        """Load the options saved in a directory or a config file.

        A directory is read as transformers reads it: the ``"image_processor"`` entry of
        ``processor_config.json`` (what transformers 5's ``BlipProcessor.save_pretrained``
        writes) when there is one, else ``preprocessor_config.json``.

        Args:
            path: a checkpoint or processor directory, or the path of either JSON file.
            **kwargs: options that override the file's values.

        Returns:
            The image processor.
        """
        path = os.fspath(path)
        config = None
        if os.path.isdir(path):
            nested_file = os.path.join(path, PROCESSOR_NAME)
            if os.path.isfile(nested_file):
                config = _read_json_object(nested_file).get(_NESTED_KEY)
            file = os.path.join(path, IMAGE_PROCESSOR_NAME)
            if not isinstance(config, dict) and not os.path.isfile(file):
                raise FileNotFoundError(
                    f"no image processor config found in {path!r}: expected "
                    f"{IMAGE_PROCESSOR_NAME}, or {PROCESSOR_NAME} with an {_NESTED_KEY!r} entry"
                )
        else:
            file = path
            if not os.path.isfile(file):
                raise FileNotFoundError(f"no image processor config found: {file!r} does not exist")
        if not isinstance(config, dict):
            config = _read_json_object(file)
            # A processor_config.json passed as a file holds the settings one level down.
            if isinstance(config.get(_NESTED_KEY), dict):
                config = config[_NESTED_KEY]
        config = {**config, **kwargs}
        return cls(**config)

    def __repr__(self) -> str:
        return f"{type(self).__name__} {self.to_json_string()}"
