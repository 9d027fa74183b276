"""Reading `tf_model.h5` checkpoints of transformers 4.x's TensorFlow BLIP models.

transformers 5 dropped its TensorFlow models, and with them the only reader of the weights
that `TFBlipForConditionalGeneration`, `TFBlipForQuestionAnswering`,
`TFBlipForImageTextRetrieval` and `TFBlipModel` wrote. `read_tf_h5` turns such a file into the
state dict of the matching transformers PyTorch model, which `tfblip.checkpoints.load_weights`
loads like any other.

The layout, from transformers 4.x (`modeling_tf_blip.py`, `modeling_tf_blip_text.py`, and
`TFPreTrainedModel.save_pretrained` / `load_tf_weights_from_h5` in `modeling_tf_utils.py`):

* `save_pretrained` calls Keras 2's `model.save_weights("tf_model.h5")`. The root attribute
  `layer_names` lists the model's top-level layers (`vision_model`, `text_decoder`, ...); each
  has a group whose attribute `weight_names` lists its variables' full names, and each name is
  also the path of a dataset inside that group. Keras splits attributes over 64 KiB into
  `weight_names0`, `weight_names1`, ....
* A variable's name is its TensorFlow name scope: the model's own scope (the snake-cased class
  name, e.g. `tf_blip_for_conditional_generation`, with a `_1` suffix when a second model was
  built in the process), the layer names down to it, and the variable name with `:0`:
  `vision_model/tf_blip_for_conditional_generation/vision_model/encoder/layers_._0/self_attn/
  qkv/kernel:0`. Like `load_tf_weights_from_h5`, the reader drops the model scope.
* Layer names are the PyTorch attribute names, except that list elements are `<list>_._<i>`
  and leaves carry Keras variable names: Dense and Conv2D `kernel`/`bias`, LayerNormalization
  `gamma`/`beta`, Embedding `embeddings`. `class_embedding`, `position_embedding` (both plain
  weights of the vision embeddings, shaped as in PyTorch), `logit_scale` and the LM head's
  `cls/predictions/bias` are plain weights too.
* TFBlipModel keeps everything under a main layer `blip` (its `base_model_prefix`), which the
  PyTorch model does not have.
* When a checkpoint is larger than `max_shard_size`, `save_pretrained` writes shards instead:
  one dataset per variable at the root, named without the model scope, listed in the root's
  `layer_names`. `read_tf_h5` reads one shard at a time.
"""

import os
import re

import h5py
import numpy as np

from tfblip.errors import CheckpointError, summarize_names

TF_WEIGHTS_NAME = "tf_model.h5"

# Layer kinds -> {Keras 2 variable name: (PyTorch parameter name, layout)}.
_LEAVES = {
    "dense": {"kernel": ("weight", "linear"), "bias": ("bias", "same")},
    "conv": {"kernel": ("weight", "conv"), "bias": ("bias", "same")},
    "layer_norm": {"gamma": ("weight", "same"), "beta": ("bias", "same")},
    # load_tf_weights_from_h5 also accepts embeddings saved as `weight:0` (an older naming).
    "embedding": {"embeddings": ("weight", "same"), "weight": ("weight", "same")},
}

# Dense kernel (in, out) -> Linear (out, in); Conv2D kernel (kh, kw, in, out) -> Conv2d
# (out, in, kh, kw). The channels_first Conv2D of early TF BLIP versions has the same kernel.
_TO_PYTORCH_AXES = {"linear": (1, 0), "conv": (3, 2, 0, 1)}
_LAYOUT_RANKS = {"linear": 2, "conv": 4}

_TEXT = r"(?:text_model|text_encoder|text_decoder\.bert)"
_TEXT_LAYER = _TEXT + r"\.encoder\.layer\.\d+"
_ATTENTION = r"(?:attention|crossattention)"

# Module paths (in PyTorch spelling) of the four task models, by layer kind. Anything else in
# a file is not a BLIP weight, so it is reported instead of being guessed at.
_MODULE_KINDS = tuple(
    (re.compile(pattern), kind)
    for pattern, kind in (
        (r"vision_model\.embeddings\.patch_embedding", "conv"),
        (
            r"vision_model\.encoder\.layers\.\d+\.(?:self_attn\.(?:qkv|projection)|mlp\.fc[12])",
            "dense",
        ),
        (r"vision_model\.(?:encoder\.layers\.\d+\.layer_norm[12]|post_layernorm)", "layer_norm"),
        (_TEXT + r"\.embeddings\.(?:word_embeddings|position_embeddings)", "embedding"),
        (_TEXT + r"\.embeddings\.LayerNorm", "layer_norm"),
        (
            _TEXT_LAYER + rf"\.(?:{_ATTENTION}\.(?:self\.(?:query|key|value)|output\.dense)"
            r"|intermediate\.dense|output\.dense)",
            "dense",
        ),
        (_TEXT_LAYER + rf"\.(?:{_ATTENTION}\.)?output\.LayerNorm", "layer_norm"),
        (_TEXT + r"\.pooler\.dense", "dense"),
        (r"text_decoder\.cls\.predictions\.(?:transform\.dense|decoder)", "dense"),
        (r"text_decoder\.cls\.predictions\.transform\.LayerNorm", "layer_norm"),
        (r"visual_projection|text_projection|vision_proj|text_proj|itm_head", "dense"),
    )
)
_PLAIN_WEIGHTS = re.compile(
    r"vision_model\.embeddings\.(?:class_embedding|position_embedding)"
    r"|logit_scale|text_decoder\.cls\.predictions\.bias"
)


def _pytorch_name(tf_name):
    """(PyTorch key, layout) of a variable name without its model scope, or None."""
    name = re.sub(r":\d+$", "", tf_name)
    parts = [part for part in name.replace("_._", "/").split("/") if part]
    if parts and parts[0] == "blip":  # TFBlipModel's main layer; PyTorch's BlipModel has none
        parts = parts[1:]
    if not parts:
        return None
    key = ".".join(parts)
    if _PLAIN_WEIGHTS.fullmatch(key):
        return key, "same"
    module = ".".join(parts[:-1])
    for pattern, kind in _MODULE_KINDS:
        if pattern.fullmatch(module):
            leaf = _LEAVES[kind].get(parts[-1])
            if leaf is None:
                return None
            return f"{module}.{leaf[0]}", leaf[1]
    return None


def _resolve(path):
    path = os.fspath(path)
    return os.path.join(path, TF_WEIGHTS_NAME) if os.path.isdir(path) else path


def _string_list_attribute(node, name):
    """A Keras 2 string-list attribute (joined back from its chunks), or None if absent."""
    if name in node.attrs:
        chunks = [node.attrs[name]]
    else:
        chunks = []
        while f"{name}{len(chunks)}" in node.attrs:
            chunks.append(node.attrs[f"{name}{len(chunks)}"])
        if not chunks:
            return None
    values = []
    for chunk in chunks:
        # Keras stores an empty list as an empty float array.
        for value in np.atleast_1d(np.asarray(chunk, dtype=object)):
            if isinstance(value, bytes):
                value = value.decode("utf8")
            if not isinstance(value, str):
                raise CheckpointError(
                    f"Attribute {name!r} of {node.name!r} holds {value!r}, not layer/weight names."
                )
            values.append(value)
    return values


def is_tf_h5_checkpoint(path):
    """Whether a file is a Keras 2 weights file (as transformers' tf_model.h5).

    Only the file's signature and root attributes are read.

    Args:
        path: the file, or a directory holding tf_model.h5.

    Returns:
        True for a Keras 2 weights file; False otherwise, missing or unreadable files
        included.
    """
    path = _resolve(path)
    try:
        if not (os.path.isfile(path) and h5py.is_hdf5(path)):
            return False
        with h5py.File(path, "r") as f:
            return _string_list_attribute(f, "layer_names") is not None
    except (OSError, CheckpointError):
        return False


def _weight_datasets(f):
    """[(variable name without the model scope, dataset)] in the file's own order."""
    layer_names = _string_list_attribute(f, "layer_names")
    if layer_names is None:
        raise CheckpointError(
            f"{f.filename} has no root attribute 'layer_names', so it is not the Keras 2 "
            "weights file that transformers 4.x writes as tf_model.h5."
        )
    entries = []
    for layer_name in layer_names:
        node = f.get(layer_name)
        if node is None:
            raise CheckpointError(
                f"{f.filename} is corrupt: 'layer_names' lists {layer_name!r}, which it lacks."
            )
        if hasattr(node, "shape"):
            # A save_pretrained shard: one dataset per variable, the model scope already gone.
            entries.append((layer_name, node))
            continue
        for weight_name in _string_list_attribute(node, "weight_names") or []:
            dataset = node.get(weight_name)
            if dataset is None or not hasattr(dataset, "shape"):
                raise CheckpointError(
                    f"{f.filename} is corrupt: group {layer_name!r} lists weight "
                    f"{weight_name!r} but holds no such dataset."
                )
            entries.append((weight_name.split("/", 1)[-1], dataset))
    # Keras 2 writes variables owned by the model object itself here; BLIP models have none,
    # so any found are reported as unknown below.
    top_level = f.get("top_level_model_weights")
    if top_level is not None and not hasattr(top_level, "shape"):
        for weight_name in _string_list_attribute(top_level, "weight_names") or []:
            entries.append((weight_name.split("/", 1)[-1], top_level[weight_name]))
    return entries


def _read_state(f):
    plan, unknown, sources = [], [], {}
    for tf_name, dataset in _weight_datasets(f):
        converted = _pytorch_name(tf_name)
        if converted is None:
            unknown.append(tf_name)
            continue
        key, layout = converted
        if key in sources:
            raise CheckpointError(
                f"{f.filename} holds two weights for {key}: {sources[key]!r} and {tf_name!r} "
                "(is it the weights of more than one model?)."
            )
        sources[key] = tf_name
        plan.append((key, layout, tf_name, dataset))
    if unknown:
        raise CheckpointError(
            f"{f.filename} holds weights that are not part of a transformers 4.x TFBlip task "
            "model (TFBlipForConditionalGeneration, TFBlipForQuestionAnswering, "
            f"TFBlipForImageTextRetrieval, TFBlipModel) ({len(unknown)}): "
            + summarize_names(unknown)
        )
    if not plan:
        raise CheckpointError(f"{f.filename} holds no weights.")
    state = {}
    for key, layout, tf_name, dataset in plan:
        value = np.asarray(dataset[()])
        axes = _TO_PYTORCH_AXES.get(layout)
        if axes is not None:
            if value.ndim != _LAYOUT_RANKS[layout]:
                raise CheckpointError(
                    f"{f.filename}: {tf_name} has shape {value.shape}; a {layout} kernel has "
                    f"{_LAYOUT_RANKS[layout]} dimensions."
                )
            value = np.ascontiguousarray(np.transpose(value, axes))
        state[key] = value
    # TF's LM head adds `predictions.bias` after a bias-free decoder. In PyTorch the decoder
    # Linear has a bias that is the same parameter (tied), or used in place of it (untied), so
    # a copy keeps an untied model's logits those of the TF model.
    for key in list(state):
        if key.endswith("cls.predictions.bias"):
            state.setdefault(
                key.replace("predictions.bias", "predictions.decoder.bias"), state[key]
            )
    return state


def read_tf_h5(path):
    """Read transformers' TF BLIP tf_model.h5 as a PyTorch-layout state dict.

    Args:
        path: the file, or a directory holding tf_model.h5.

    Returns:
        {transformers PyTorch key: numpy array in PyTorch layout}.

    Raises:
        CheckpointError: no file, a git-lfs pointer, or a file that is not HDF5, is truncated,
            or holds weights other than a TFBlip task model's.
    """
    path = _resolve(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"No TensorFlow checkpoint at {path}.")
    with open(path, "rb") as f:
        head = f.read(64)
    if head.startswith(b"version https://git-lfs"):
        raise CheckpointError(
            f"{path} is a git-lfs pointer, not the weights: fetch them with `git lfs pull`."
        )
    if not h5py.is_hdf5(path):
        raise CheckpointError(f"{path} is not an HDF5 file, so not a TensorFlow tf_model.h5.")
    try:
        with h5py.File(path, "r") as f:
            return _read_state(f)
    except CheckpointError:
        raise
    except (OSError, KeyError, ValueError, TypeError) as error:
        # h5py reports truncated or damaged files from whichever read first hits the damage.
        raise CheckpointError(f"Cannot read {path}; it is corrupt or truncated: {error}") from error
