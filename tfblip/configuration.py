"""Configuration classes for BLIP: vision tower, text tower and the combined model.

Plain Python, no TensorFlow and no transformers import. Field names and defaults follow
transformers' ``BlipVisionConfig`` / ``BlipTextConfig`` / ``BlipConfig``, and the ``config.json``
files written by :meth:`save_pretrained` can be read by transformers (and the other way round).

Keys that a config does not know (for example ``architectures``, ``transformers_version`` or the
generation settings carried by transformers 4.x files) are kept as attributes and written back
unchanged by :meth:`to_dict` / :meth:`save_pretrained`.

Float fields are stored as ``float`` even when given as ``int``: transformers 5 checks the types
of its config fields strictly and rejects e.g. ``"layer_norm_eps": 1``.
"""

from __future__ import annotations

import copy
import inspect
import json
import math
import os
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from tfblip.arguments import is_int, is_number, is_positive_int

__all__ = [
    "CONFIG_NAME",
    "DEFAULT_ENC_TOKEN_ID",
    "BlipConfig",
    "BlipTextConfig",
    "BlipVisionConfig",
]

CONFIG_NAME = "config.json"

# Id of "[ENC]" in the Salesforce BLIP tokenizer (after "[DEC]", 30522, the bos token).
DEFAULT_ENC_TOKEN_ID = 30523

_PathLike = str | os.PathLike


# --------------------------------------------------------------------------------------------
# Field checks. Each takes (owner, name, value) and returns the (possibly normalised) value or
# raises ValueError naming the field.
# --------------------------------------------------------------------------------------------


def _fail(owner: str, name: str, expected: str, value: Any) -> ValueError:
    return ValueError(f"{owner}.{name} must be {expected}, got {value!r}")


def _positive_int(owner: str, name: str, value: Any) -> int:
    if not is_positive_int(value):
        raise _fail(owner, name, "a positive int", value)
    return int(value)


def _number_check(expected: str, accepts: Callable[[float], bool]) -> Callable:
    """The check of a float field: a finite number that ``accepts``, stored as a float."""

    def check(owner: str, name: str, value: Any) -> float:
        if not is_number(value) or not math.isfinite(value) or not accepts(value):
            raise _fail(owner, name, expected, value)
        return float(value)

    return check


_finite_float = _number_check("a finite number", lambda value: True)
_non_negative_float = _number_check("a non-negative number", lambda value: value >= 0)
_positive_float = _number_check("a positive number", lambda value: value > 0)
_dropout_rate = _number_check("a number in [0, 1)", lambda value: 0 <= value < 1)
_unit_float = _number_check("a number in [0, 1]", lambda value: 0 <= value <= 1)


def _boolean(owner: str, name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _fail(owner, name, "a bool", value)
    return value


def _non_empty_str(owner: str, name: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise _fail(owner, name, "a non-empty string", value)
    return value


def _optional_token_id(owner: str, name: str, value: Any) -> int | None:
    if value is None:
        return None
    if not is_int(value) or value < 0:
        raise _fail(owner, name, "a non-negative int or None", value)
    return int(value)


def _optional_token_ids(owner: str, name: str, value: Any) -> int | list[int] | None:
    if isinstance(value, (list, tuple)):
        if not value or not all(is_int(v) and v >= 0 for v in value):
            raise _fail(owner, name, "a non-negative int, a non-empty list of them, or None", value)
        return [int(v) for v in value]
    return _optional_token_id(owner, name, value)


def _square_size(owner: str, name: str, value: Any) -> int | list[int]:
    """A positive int, or a list/tuple of two equal positive ints (kept, as a list)."""
    if isinstance(value, (list, tuple)):
        if len(value) != 2 or not all(is_positive_int(v) for v in value):
            raise _fail(owner, name, "a positive int or a pair of positive ints", value)
        if value[0] != value[1]:
            raise ValueError(
                f"{owner}.{name} must be square (BLIP's position grid is square), got {value!r}"
            )
        return [int(v) for v in value]
    return _positive_int(owner, name, value)


def _side(size: int | list[int]) -> int:
    return size[0] if isinstance(size, list) else size


# --------------------------------------------------------------------------------------------
# JSON file helpers
# --------------------------------------------------------------------------------------------


def _resolve_config_file(path: _PathLike) -> str:
    path = os.fspath(path)
    file = os.path.join(path, CONFIG_NAME) if os.path.isdir(path) else path
    if not os.path.isfile(file):
        raise FileNotFoundError(
            f"No BLIP config file at {file!r} (from_pretrained takes a local directory holding "
            f"{CONFIG_NAME} or the path of a JSON file)"
        )
    return file


def _read_json_dict(file: _PathLike) -> dict[str, Any]:
    file = os.fspath(file)
    try:
        with open(file, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"No BLIP config file at {file!r}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{file!r} is not a valid JSON config file: {e}") from e
    if isinstance(data, dict):
        return data
    raise ValueError(f"{file!r} must hold a JSON object (a config dict), got {type(data).__name__}")


# --------------------------------------------------------------------------------------------
# Base class
# --------------------------------------------------------------------------------------------


class _BlipConfigBase:
    """Shared machinery: extra keys, dict/JSON conversion, equality, file I/O.

    Subclasses declare their fields as the parameters of ``__init__`` (their order is the order
    of :meth:`to_dict`) and the check of each field in ``_FIELD_CHECKS``; ``__init__`` passes
    its ``locals()`` to ``self._set_fields`` and then calls ``self.validate()``.
    """

    model_type: ClassVar[str] = ""
    # Human readable name used in error messages ("a BLIP vision config").
    _DESCRIPTION: ClassVar[str] = "BLIP config"
    _FIELD_CHECKS: ClassVar[dict[str, Any]] = {}
    _field_names: ClassVar[tuple[str, ...]] = ()
    # Instance attributes that are bookkeeping, not config keys.
    _INTERNAL_ATTRS: ClassVar[frozenset[str]] = frozenset({"_extra_keys"})

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        params = list(inspect.signature(cls.__init__).parameters.values())[1:]
        cls._field_names = tuple(
            p.name
            for p in params
            if p.kind not in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)
        )

    # -- attributes ---------------------------------------------------------------------------

    def _set_fields(self, arguments: dict[str, Any]) -> None:
        """Set every field from a constructor's ``locals()``, then keep its unknown keys.

        Checks ``model_type`` if given and keeps every other key of ``**kwargs`` as an
        attribute.
        """
        for name in self._field_names:
            setattr(self, name, arguments[name])
        kwargs = dict(arguments["kwargs"])
        model_type = kwargs.pop("model_type", None)
        if model_type is not None and model_type != self.model_type:
            raise ValueError(
                f"{type(self).__name__} got model_type {model_type!r}, expected {self.model_type!r}"
            )
        for key, value in kwargs.items():
            setattr(self, key, copy.deepcopy(value))

    def __setattr__(self, name: str, value: Any) -> None:
        if name not in self._field_names and name not in self._INTERNAL_ATTRS:
            if name == "model_type":
                raise AttributeError(f"{type(self).__name__}.model_type cannot be changed")
            if hasattr(type(self), name):
                raise ValueError(
                    f"config key {name!r} clashes with the {type(self).__name__} attribute "
                    f"of that name"
                )
            extra = self.__dict__.setdefault("_extra_keys", [])
            if name not in extra:
                extra.append(name)
        object.__setattr__(self, name, value)

    def __delattr__(self, name: str) -> None:
        if name in self._field_names:
            raise AttributeError(f"cannot delete config field {name!r}")
        object.__delattr__(self, name)
        extra = self.__dict__.get("_extra_keys", [])
        if name in extra:
            extra.remove(name)

    @property
    def extra_keys(self) -> tuple[str, ...]:
        """Keys this config does not know but keeps (in the order they were set)."""
        return tuple(self.__dict__.get("_extra_keys", ()))

    # -- validation ---------------------------------------------------------------------------

    def validate(self) -> None:
        """Check (and normalise) every field; raises ValueError naming the bad field.

        Called by ``__init__``; call it again after mutating fields by hand.
        """
        owner = type(self).__name__
        for name, check in self._FIELD_CHECKS.items():
            object.__setattr__(self, name, check(owner, name, getattr(self, name)))
        self._validate_relations()

    def _validate_relations(self) -> None:
        """Checks that involve several fields; overridden by subclasses."""

    # -- conversion ---------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """All fields (declaration order), then ``model_type``, then the extra keys."""
        out: dict[str, Any] = {}
        for name in self._field_names:
            value = getattr(self, name)
            out[name] = (
                value.to_dict() if isinstance(value, _BlipConfigBase) else copy.deepcopy(value)
            )
        out["model_type"] = self.model_type
        for name in self.extra_keys:
            out[name] = copy.deepcopy(self.__dict__[name])
        return out

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def to_json_file(self, path: _PathLike) -> None:
        with open(os.fspath(path), "w", encoding="utf-8") as f:
            f.write(self.to_json_string() + "\n")

    @classmethod
    def _check_model_type(cls, data: Mapping[str, Any], source: str) -> None:
        model_type = data.get("model_type")
        if model_type is not None and model_type != cls.model_type:
            raise ValueError(
                f"{source} is a {model_type!r} config, not a {cls._DESCRIPTION} "
                f"(model_type {cls.model_type!r})"
            )

    @classmethod
    def from_dict(cls, config_dict: Mapping[str, Any], **overrides: Any):
        """Build a config from a dict (as written by :meth:`to_dict`); ``overrides`` win."""
        return cls._from_dict(config_dict, overrides, source="config dict")

    @classmethod
    def _from_dict(cls, config_dict: Mapping[str, Any], overrides: Mapping[str, Any], source: str):
        if not isinstance(config_dict, Mapping):
            raise TypeError(
                f"{cls.__name__}.from_dict needs a mapping, got {type(config_dict).__name__}"
            )
        data = dict(config_dict)
        data.update(overrides)
        cls._check_model_type(data, source)
        data.pop("model_type", None)
        if source == "config dict":
            return cls(**data)
        try:
            return cls(**data)
        except ValueError as e:
            raise ValueError(f"{source}: {e}") from e

    @classmethod
    def from_json_file(cls, path: _PathLike, **overrides: Any):
        data = _read_json_dict(path)
        return cls._from_dict(data, overrides, source=repr(os.fspath(path)))

    @classmethod
    def from_pretrained(cls, path: _PathLike, **overrides: Any):
        """Load from a directory holding ``config.json`` or from the path of a JSON file."""
        file = _resolve_config_file(path)
        return cls._from_dict(_read_json_dict(file), overrides, source=repr(file))

    def save_pretrained(self, directory: _PathLike) -> str:
        """Write ``<directory>/config.json`` (creating the directory); returns the file path."""
        directory = os.fspath(directory)
        os.makedirs(directory, exist_ok=True)
        file = os.path.join(directory, CONFIG_NAME)
        self.to_json_file(file)
        return file

    # -- dunder -------------------------------------------------------------------------------

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, _BlipConfigBase):
            return NotImplemented
        return type(self) is type(other) and self.to_dict() == other.to_dict()

    __hash__ = None  # mutable

    def __repr__(self) -> str:
        items = ", ".join(
            f"{k}={v!r}"
            for k, v in ((k, getattr(self, k)) for k in (*self._field_names, *self.extra_keys))
        )
        return f"{type(self).__name__}({items})"


# The checks of the fields both towers have.
_TOWER_FIELD_CHECKS: dict[str, Any] = {
    "hidden_size": _positive_int,
    "intermediate_size": _positive_int,
    "projection_dim": _positive_int,
    "num_hidden_layers": _positive_int,
    "num_attention_heads": _positive_int,
    "hidden_act": _non_empty_str,
    "layer_norm_eps": _positive_float,
    "initializer_range": _non_negative_float,
}


class _BlipSubConfig(_BlipConfigBase):
    """Vision / text config: ``from_pretrained`` also accepts a full BLIP ``config.json``."""

    # Key of this config inside a full BLIP config dict.
    _BLIP_KEY: ClassVar[str] = ""

    def _validate_relations(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"{type(self).__name__}.hidden_size ({self.hidden_size}) must be divisible by "
                f"num_attention_heads ({self.num_attention_heads})"
            )

    @classmethod
    def from_pretrained(cls, path: _PathLike, **overrides: Any):
        """Load from ``config.json`` of this sub-config, or of a full BLIP config.

        ``path`` is a directory holding ``config.json`` or the path of a JSON file. From a full
        BLIP config, the ``vision_config`` / ``text_config`` entry is taken, as
        :class:`BlipConfig` builds it (so ``encoder_hidden_size`` follows the vision tower).
        """
        file = _resolve_config_file(path)
        data = _read_json_dict(file)
        model_type = data.get("model_type")
        looks_like_blip = model_type is None and ("text_config" in data or "vision_config" in data)
        if model_type == BlipConfig.model_type or looks_like_blip:
            full = BlipConfig._from_dict(data, {}, source=repr(file))
            data = getattr(full, cls._BLIP_KEY).to_dict()
        elif model_type is not None and model_type != cls.model_type:
            raise ValueError(
                f"{file!r} is a {model_type!r} config, not a {cls._DESCRIPTION} "
                f"(model_type {cls.model_type!r}) or a full BLIP config (model_type 'blip')"
            )
        return cls._from_dict(data, overrides, source=repr(file))


# --------------------------------------------------------------------------------------------
# Vision
# --------------------------------------------------------------------------------------------


class BlipVisionConfig(_BlipSubConfig):
    """Configuration of the BLIP ViT image encoder.

    ``image_size`` / ``patch_size`` are ints, or pairs of equal ints (kept as a list);
    ``image_size_px``, ``patch_size_px``, ``num_patches_per_side``, ``num_patches`` and
    ``num_positions`` give the derived ints. ``num_channels`` is not a transformers 5 field
    (older config files carry it); it defaults to 3.

    Args:
        hidden_size: width of the patch embeddings and encoder layers.
        intermediate_size: width of the MLP inside each encoder layer.
        projection_dim: width of the projected image features.
        num_hidden_layers: number of encoder layers.
        num_attention_heads: attention heads per layer; must divide ``hidden_size``.
        image_size: side of the square input image, in pixels.
        patch_size: side of a square patch, in pixels; must divide ``image_size``.
        hidden_act: activation of the MLPs (e.g. "gelu").
        layer_norm_eps: epsilon of the layer norms.
        attention_dropout: dropout rate of the attention probabilities, in [0, 1).
        initializer_range: standard deviation of the weight initializer.
        num_channels: channels of the input image.
        **kwargs: other keys, kept as attributes and written back by :meth:`to_dict`.

    Raises:
        ValueError: a field out of range, a patch size that does not divide the image size,
            or ``model_type`` of another config.
    """

    model_type = "blip_vision_model"
    _DESCRIPTION = "BLIP vision config"
    _BLIP_KEY = "vision_config"
    _FIELD_CHECKS: ClassVar[dict[str, Any]] = {
        **_TOWER_FIELD_CHECKS,
        "image_size": _square_size,
        "patch_size": _square_size,
        "attention_dropout": _dropout_rate,
        "num_channels": _positive_int,
    }

    def __init__(
        self,
        hidden_size: int = 768,
        intermediate_size: int = 3072,
        projection_dim: int = 512,
        num_hidden_layers: int = 12,
        num_attention_heads: int = 12,
        image_size: int | list[int] | tuple[int, int] = 384,
        patch_size: int | list[int] | tuple[int, int] = 16,
        hidden_act: str = "gelu",
        layer_norm_eps: float = 1e-5,
        attention_dropout: float = 0.0,
        initializer_range: float = 1e-10,
        num_channels: int = 3,
        **kwargs: Any,
    ) -> None:
        self._set_fields(locals())
        self.validate()

    def _validate_relations(self) -> None:
        super()._validate_relations()
        if self.image_size_px % self.patch_size_px:
            raise ValueError(
                f"BlipVisionConfig.image_size ({self.image_size!r}) must be divisible by "
                f"patch_size ({self.patch_size!r})"
            )

    @property
    def image_size_px(self) -> int:
        """Side of the (square) input image, in pixels."""
        return _side(self.image_size)

    @property
    def patch_size_px(self) -> int:
        """Side of a (square) patch, in pixels."""
        return _side(self.patch_size)

    @property
    def num_patches_per_side(self) -> int:
        return self.image_size_px // self.patch_size_px

    @property
    def num_patches(self) -> int:
        return self.num_patches_per_side**2

    @property
    def num_positions(self) -> int:
        """Patches plus the class token."""
        return self.num_patches + 1


# --------------------------------------------------------------------------------------------
# Text
# --------------------------------------------------------------------------------------------


class BlipTextConfig(_BlipSubConfig):
    """Configuration of the BLIP BERT-style text encoder / decoder.

    Optional tfblip key (not a transformers field, so written only when set):
    ``enc_token_id``, the id of "[ENC]", which the image-grounded text encoder starts with
    when :class:`BlipConfig` ``use_enc_token`` is on; :data:`DEFAULT_ENC_TOKEN_ID` (30523, as
    in the Salesforce checkpoints) when absent.

    Args:
        vocab_size: number of token ids.
        hidden_size: width of the embeddings and layers.
        encoder_hidden_size: width of the image features cross-attended to (set by
            :class:`BlipConfig` to the vision tower's ``hidden_size``).
        intermediate_size: width of the MLP inside each layer.
        projection_dim: width of the projected text features.
        num_hidden_layers: number of layers.
        num_attention_heads: attention heads per layer; must divide ``hidden_size``.
        max_position_embeddings: longest token sequence.
        hidden_act: activation of the MLPs (e.g. "gelu").
        layer_norm_eps: epsilon of the layer norms.
        hidden_dropout_prob: dropout rate of the hidden states, in [0, 1).
        attention_probs_dropout_prob: dropout rate of the attention probabilities, in [0, 1).
        initializer_range: standard deviation of the weight initializer.
        bos_token_id: id that starts generated text ("[DEC]").
        eos_token_id: id (or ids) that end generated text.
        pad_token_id: id of padding.
        sep_token_id: id of "[SEP]".
        is_decoder: whether the text model is used as a causal decoder.
        use_cache: whether decoding keeps past keys and values.
        tie_word_embeddings: whether the LM head shares the word embeddings.
        label_smoothing: label smoothing of the language-modeling loss, in [0, 1].
        **kwargs: other keys (e.g. ``enc_token_id``), kept as attributes and written back by
            :meth:`to_dict`.

    Raises:
        ValueError: a field (``enc_token_id`` included) out of range, or ``model_type`` of
            another config.
    """

    model_type = "blip_text_model"
    _DESCRIPTION = "BLIP text config"
    _BLIP_KEY = "text_config"
    _FIELD_CHECKS: ClassVar[dict[str, Any]] = {
        **_TOWER_FIELD_CHECKS,
        "vocab_size": _positive_int,
        "encoder_hidden_size": _positive_int,
        "max_position_embeddings": _positive_int,
        "hidden_dropout_prob": _dropout_rate,
        "attention_probs_dropout_prob": _dropout_rate,
        "bos_token_id": _optional_token_id,
        "eos_token_id": _optional_token_ids,
        "pad_token_id": _optional_token_id,
        "sep_token_id": _optional_token_id,
        "is_decoder": _boolean,
        "use_cache": _boolean,
        "tie_word_embeddings": _boolean,
        "label_smoothing": _unit_float,
    }

    def __init__(
        self,
        vocab_size: int = 30524,
        hidden_size: int = 768,
        encoder_hidden_size: int = 768,
        intermediate_size: int = 3072,
        projection_dim: int = 768,
        num_hidden_layers: int = 12,
        num_attention_heads: int = 8,
        max_position_embeddings: int = 512,
        hidden_act: str = "gelu",
        layer_norm_eps: float = 1e-12,
        hidden_dropout_prob: float = 0.0,
        attention_probs_dropout_prob: float = 0.0,
        initializer_range: float = 0.02,
        bos_token_id: int | None = 30522,
        eos_token_id: int | list[int] | None = 2,
        pad_token_id: int | None = 0,
        sep_token_id: int | None = 102,
        is_decoder: bool = True,
        use_cache: bool = True,
        tie_word_embeddings: bool = True,
        label_smoothing: float = 0.0,
        **kwargs: Any,
    ) -> None:
        self._set_fields(locals())
        self.validate()

    def _validate_relations(self) -> None:
        super()._validate_relations()
        if "enc_token_id" in self.extra_keys:
            _optional_token_id("BlipTextConfig", "enc_token_id", self.enc_token_id)
            if self.enc_token_id is None:
                raise _fail("BlipTextConfig", "enc_token_id", "a non-negative int", None)


# --------------------------------------------------------------------------------------------
# Full model
# --------------------------------------------------------------------------------------------


def _sub_config(cls: type[_BlipSubConfig], value: Any, key: str) -> _BlipSubConfig:
    """Turn ``value`` (None, dict, config object) into a fresh ``cls`` instance."""
    source = f"BlipConfig.{key}"
    if value is None:
        return cls()
    if isinstance(value, _BlipConfigBase):
        if not isinstance(value, cls):
            raise TypeError(
                f"{source} must be a {cls.__name__}, got a {type(value).__name__} "
                f"(model_type {value.model_type!r})"
            )
        # Copy, so that BlipConfig setting encoder_hidden_size does not touch the caller's.
        return cls._from_dict(value.to_dict(), {}, source=source)
    if isinstance(value, Mapping):
        return cls._from_dict(value, {}, source=source)
    if callable(getattr(value, "to_dict", None)):  # e.g. a transformers config object
        return cls._from_dict(value.to_dict(), {}, source=source)
    raise TypeError(
        f"{source} must be None, a dict or a {cls.__name__}, got {type(value).__name__}"
    )


class BlipConfig(_BlipConfigBase):
    """Configuration of a full BLIP model (vision tower, text tower, projections).

    ``text_config`` / ``vision_config`` may be None (defaults), dicts or config objects (which
    are copied). As in transformers, ``text_config.encoder_hidden_size`` is set to
    ``vision_config.hidden_size``.

    Optional tfblip key (not a transformers field, so written only when set, and ignored by
    transformers): ``use_enc_token`` (bool, default False). When True, the image-text matching
    head's text and the VQA question start with "[ENC]" (``text_config.enc_token_id``) in
    place of their first token, "[CLS]", as in the original BLIP (blip_retrieval.py,
    blip_vqa.py), which trained its retrieval and VQA checkpoints that way. Off, the models
    compute what transformers computes. Contrastive (ITC) text features keep "[CLS]" either way.

    Args:
        text_config: the text tower's config; None for the defaults.
        vision_config: the vision tower's config; None for the defaults.
        projection_dim: width of the shared image-text embedding space.
        logit_scale_init_value: initial log of the contrastive logits' scale.
        image_text_hidden_size: width of the image-text matching features.
        label_smoothing: label smoothing of the losses, in [0, 1].
        tie_word_embeddings: whether the LM head shares the word embeddings.
        initializer_factor: scale of the weight initializers.
        initializer_range: standard deviation of the weight initializer.
        **kwargs: other keys (e.g. ``use_enc_token``), kept as attributes and written back by
            :meth:`to_dict`.

    Raises:
        TypeError: a sub-config of another kind.
        ValueError: a field out of range, or ``model_type`` of another config.
    """

    model_type = "blip"
    _DESCRIPTION = "BLIP config"
    _FIELD_CHECKS: ClassVar[dict[str, Any]] = {
        "projection_dim": _positive_int,
        "logit_scale_init_value": _finite_float,
        "image_text_hidden_size": _positive_int,
        "label_smoothing": _unit_float,
        "tie_word_embeddings": _boolean,
        "initializer_factor": _positive_float,
        "initializer_range": _non_negative_float,
    }

    def __init__(
        self,
        text_config: dict | BlipTextConfig | None = None,
        vision_config: dict | BlipVisionConfig | None = None,
        projection_dim: int = 512,
        logit_scale_init_value: float = 2.6592,
        image_text_hidden_size: int = 256,
        label_smoothing: float = 0.0,
        tie_word_embeddings: bool = True,
        initializer_factor: float = 1.0,
        initializer_range: float = 0.02,
        **kwargs: Any,
    ) -> None:
        text_config = _sub_config(BlipTextConfig, text_config, "text_config")
        vision_config = _sub_config(BlipVisionConfig, vision_config, "vision_config")
        self._set_fields(locals())
        self.text_config.encoder_hidden_size = self.vision_config.hidden_size
        self.validate()

    def validate(self) -> None:
        super().validate()
        self.text_config.validate()
        self.vision_config.validate()
        if "use_enc_token" in self.extra_keys:
            _boolean("BlipConfig", "use_enc_token", self.use_enc_token)
            enc_token_id = getattr(self.text_config, "enc_token_id", DEFAULT_ENC_TOKEN_ID)
            if self.use_enc_token and enc_token_id >= self.text_config.vocab_size:
                raise ValueError(
                    f"BlipConfig.use_enc_token needs text_config.enc_token_id ({enc_token_id}) "
                    f"inside the vocabulary (vocab_size {self.text_config.vocab_size}); set "
                    "text_config.enc_token_id to the id of [ENC]"
                )

    @classmethod
    def from_text_vision_configs(
        cls,
        text_config: BlipTextConfig | dict,
        vision_config: BlipVisionConfig | dict,
        **kwargs: Any,
    ) -> BlipConfig:
        """Build a BlipConfig from a text and a vision config (both copied).

        Args:
            text_config: the text tower's config, or its dict.
            vision_config: the vision tower's config, or its dict.
            **kwargs: the other :class:`BlipConfig` fields.

        Returns:
            The new :class:`BlipConfig`.
        """
        return cls(text_config=text_config, vision_config=vision_config, **kwargs)
