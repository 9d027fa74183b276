"""from_pretrained and save_pretrained of the model classes.

`tfblip.modeling.pretrained.PretrainedMixin` gives every model class these two methods and
calls the functions here (see there why the models do not import this package).
"""

import json
import logging
import os

import numpy as np

from tfblip.checkpoints.hub import check_hub_options, resolve_checkpoint_path
from tfblip.checkpoints.loading import build_from_checkpoint
from tfblip.checkpoints.names import pytorch_state_dict
from tfblip.checkpoints.salesforce import is_salesforce_checkpoint, read_salesforce_checkpoint
from tfblip.checkpoints.sources import (
    SAFETENSORS_WEIGHTS,
    DictSource,
    open_checkpoint,
    select_tower,
)
from tfblip.configuration import CONFIG_NAME
from tfblip.generation import GENERATION_CONFIG_NAME, read_generation_config
from tfblip.modeling.quantization import check_quantization_mode

logger = logging.getLogger(__name__)


def _lm_head_untied(source):
    """Whether a checkpoint's LM decoder weight differs from its word embeddings."""
    decoder = "text_decoder.cls.predictions.decoder.weight"
    embeddings = "text_decoder.bert.embeddings.word_embeddings.weight"
    keys = set(source.keys())
    if decoder not in keys or embeddings not in keys:
        return False
    return not np.array_equal(source.get(decoder), source.get(embeddings))


def load_pretrained(
    cls,
    pretrained_model_name_or_path,
    config=None,
    dtype=None,
    image_size=None,
    quantize=None,
    **hub_kwargs,
):
    """`cls.from_pretrained(...)`: builds a `cls` model from a checkpoint.

    Reads Hugging Face checkpoints (safetensors, sharded, `pytorch_model.bin`), the original
    Salesforce BLIP `.pth` files (config inferred from the tensors) and transformers 4.x
    TensorFlow `tf_model.h5` files. A tower class (one with `tower_prefixes`) also takes its
    tower out of a full BLIP checkpoint.

    Args:
        cls: the model class; its `config_class`, `tower_prefixes` and
            `checkpoint_arguments` say how to build it.
        pretrained_model_name_or_path, config, dtype, image_size, quantize, **hub_kwargs: as
            `PretrainedMixin.from_pretrained` (tfblip/modeling/pretrained.py) documents them.

    Returns:
        The model with the checkpoint's weights.

    Raises:
        TypeError: a keyword of `hub_kwargs` is no download option.
        ValueError: `image_size` is given for a checkpoint other than a Salesforce `.pth`,
            or `quantize` is no quantization mode.
        CheckpointError: the checkpoint cannot be read or does not fit the model.
    """
    check_hub_options(
        f"{cls.__name__}.from_pretrained", hub_kwargs, ("config", "dtype", "image_size", "quantize")
    )
    check_quantization_mode(quantize)  # before any reading
    path = resolve_checkpoint_path(os.fspath(pretrained_model_name_or_path), **hub_kwargs)
    directory = path if os.path.isdir(path) else os.path.dirname(path)
    original = os.path.isfile(path) and is_salesforce_checkpoint(path)
    if image_size is not None and not original:
        raise ValueError(
            "image_size applies to original Salesforce .pth checkpoints; for other "
            "checkpoints call the model with interpolate_pos_encoding=True instead."
        )
    if original:
        architecture = cls.__name__.removeprefix("TF")
        config_dict, state_dict = read_salesforce_checkpoint(
            path, architecture, image_size=image_size
        )
        if config is None:
            config = cls.config_class.from_dict(config_dict)
        source, tower = DictSource(state_dict), None
    else:
        if config is None:
            config = cls.config_class.from_pretrained(directory)
        source = open_checkpoint(path)
        if source.from_tf_h5 and _lm_head_untied(source):
            # transformers 4.x's TF decoder Dense is not tied to the word embeddings, so TF
            # fine-tuning made them differ: keep the head as trained.
            text_config = getattr(config, "text_config", config)
            text_config.tie_word_embeddings = False
        whole_keys = source.keys()
        source, tower = select_tower(source, cls.tower_prefixes, cls.__name__, path)
    kwargs = cls.checkpoint_arguments(set(source.keys()))
    if dtype is not None:
        kwargs["dtype"] = dtype
    checkpoint_name = path if tower is None else f"the {tower}* tensors of {path}"
    model = build_from_checkpoint(
        lambda: cls(config, **kwargs), source, checkpoint_name=checkpoint_name
    )
    if tower is not None:
        unused = sorted({key.split(".")[0] + ".*" for key in whole_keys} - {tower + "*"})
        logger.warning(
            "%s: loaded the %s* tower of the full BLIP checkpoint %s; its other tensors "
            "(%s) are not used.",
            cls.__name__,
            tower,
            path,
            ", ".join(unused) or "none",
        )
    if quantize is not None:
        model.quantize(quantize)
    if hasattr(model, "generation_defaults") and not original:
        model.generation_defaults = read_generation_config(directory)
    return model


def save_pretrained(model, save_directory):
    """`model.save_pretrained(save_directory)`: writes config.json (with `architectures`),
    generation_config.json when the model has generation defaults, and model.safetensors, all
    as transformers' PyTorch BLIP reads them.

    Args:
        model: the model to save.
        save_directory: the directory to write to; created if needed.
    """
    from safetensors.numpy import save_file

    if getattr(model, "quantization", None) is not None:
        raise ValueError(
            "save_pretrained writes float weights as transformers reads them, and this model's "
            "are int8 (quantized): save the model before quantizing it, or export the "
            "quantized one (tfblip.export_saved_model, or model.save to a .keras file)."
        )
    os.makedirs(save_directory, exist_ok=True)
    config = model.config.to_dict()
    # transformers picks the model class from `architectures`: ours minus the "TF".
    config["architectures"] = [type(model).__name__.removeprefix("TF")]
    with open(os.path.join(save_directory, CONFIG_NAME), "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
        f.write("\n")
    if getattr(model, "generation_defaults", None):
        with open(os.path.join(save_directory, GENERATION_CONFIG_NAME), "w") as f:
            json.dump(dict(model.generation_defaults), f, indent=2, sort_keys=True)
    save_file(
        pytorch_state_dict(model),
        os.path.join(save_directory, SAFETENSORS_WEIGHTS),
        metadata={"format": "pt"},
    )
