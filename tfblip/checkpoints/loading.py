"""Copying a checkpoint's tensors into a model, all or nothing.

`build_from_checkpoint` (behind `from_pretrained`) gives a new model's variables their first
and only values; `load_weights` assigns them in a model that already has values.
"""

import numpy as np
import tensorflow as tf

from tfblip.checkpoints.deferred import build_uninitialized, initialize
from tfblip.checkpoints.names import TO_KERAS_AXES, pytorch_layout_shape, pytorch_named_variables
from tfblip.checkpoints.sources import DictSource
from tfblip.errors import CheckpointError, summarize_names


# Keys that checkpoints may carry but that hold nothing of their own.
def _is_redundant_key(key, source_keys):
    if key.endswith("embeddings.position_ids"):
        return True  # a non-persistent buffer that older checkpoints saved
    if key.endswith("cls.predictions.decoder.weight"):
        return True  # tied to the word embeddings (an untied model maps it as a weight)
    if key.endswith("cls.predictions.decoder.bias"):
        return key.replace("decoder.bias", "bias") in source_keys
    return False


def _source_key(key, source_keys):
    """The checkpoint key holding `key`'s tensor (legacy checkpoints store the LM bias twice)."""
    if key in source_keys:
        return key
    if key.endswith("cls.predictions.bias"):
        legacy = key.replace("predictions.bias", "predictions.decoder.bias")
        if legacy in source_keys:
            return legacy
    return None


def _plan(model, source, checkpoint_name):
    """[(checkpoint key, variable, layout)] for every weight of `model`.

    Raises:
        CheckpointError: missing tensors, tensors of the wrong shape or unexpected tensors;
            the message lists them.
    """
    named = pytorch_named_variables(model)
    source_keys = set(source.keys())
    plan, missing, mismatched, used = [], [], [], set()
    for key, (variable, layout) in named.items():
        found = _source_key(key, source_keys)
        if found is None:
            missing.append(key)
            continue
        used.add(found)
        checkpoint_shape = tuple(source.shape(found))
        model_shape = pytorch_layout_shape(variable, layout)
        if checkpoint_shape != model_shape:
            mismatched.append(f"{found}: checkpoint {checkpoint_shape}, model {model_shape}")
            continue
        plan.append((found, variable, layout))
    unexpected = [key for key in source_keys - used if not _is_redundant_key(key, source_keys)]
    if missing or mismatched or unexpected:
        problems = []
        if missing:
            problems.append(f"missing tensors ({len(missing)}): {summarize_names(missing)}")
        if mismatched:
            problems.append(f"wrong shapes ({len(mismatched)}): {summarize_names(mismatched)}")
        if unexpected:
            problems.append(
                f"unexpected tensors ({len(unexpected)}): {summarize_names(unexpected)}"
            )
        raise CheckpointError(
            f"{checkpoint_name} does not fit {type(model).__name__}: " + "; ".join(problems)
        )
    return plan


def load_weights(model, source, checkpoint_name="checkpoint"):
    """Copies every tensor of `source` into `model`, or raises before changing anything.

    All keys and shapes are checked first, so a checkpoint that does not fit never leaves the
    model half-loaded.

    Args:
        model: a tfblip Keras model.
        source: a tensor source (see `open_checkpoint`) or a state dict
            {PyTorch key: numpy array or torch tensor, in PyTorch layout}.
        checkpoint_name: how error messages name the checkpoint.

    Raises:
        CheckpointError: missing tensors, tensors of the wrong shape or unexpected tensors;
            the message lists them.
    """
    if isinstance(source, dict):
        source = DictSource(source)
    for key, variable, layout in _plan(model, source, checkpoint_name):
        _assign_tensor(source, key, variable, layout)


def build_from_checkpoint(build, source, checkpoint_name="checkpoint"):
    """The model `build()` constructs, each of its weights initialized once from `source`.

    The model is built without variable values (see `deferred`); every key and shape is
    checked as `load_weights` checks them; only then does each weight take its value, straight
    from its checkpoint tensor. No random initializer runs and no weight is written twice.
    Variables that are not weights (the seed states of dropout layers) are initialized as
    Keras would.

    Args:
        build: a function of no arguments that constructs the model.
        source: a tensor source (see `open_checkpoint`) or a state dict in PyTorch layout.
        checkpoint_name: how error messages name the checkpoint.

    Returns:
        The model.

    Raises:
        CheckpointError: as `load_weights`; no model comes out.
        RuntimeError: a weight has no checkpoint tensor to take, or Keras no longer defers
            initialization as `deferred` expects; the message names the variable.
    """
    if isinstance(source, dict):
        source = DictSource(source)
    model = build_uninitialized(build)
    plan = _plan(model, source, checkpoint_name)
    loaded = {id(variable) for _, variable, _ in plan}
    unloaded = [variable for variable in model.weights if id(variable) not in loaded]
    if unloaded:
        raise RuntimeError(
            f"{type(model).__name__} weight {unloaded[0].path} has no tensor in "
            f"{checkpoint_name} to take its value from."
        )
    for key, variable, layout in plan:
        initialize(variable, _CheckpointInitializer(source, key, layout))
    for variable in model.variables:
        if id(variable) not in loaded:
            initialize(variable)
    return model


class _CheckpointInitializer:
    """A Keras initializer whose value is one checkpoint tensor."""

    def __init__(self, source, key, layout):
        self._source, self._key, self._layout = source, key, layout

    def __call__(self, shape, dtype=None):
        return _keras_tensor(self._source, self._key, self._layout, dtype)


def _keras_tensor(source, key, layout, dtype, rows=None):
    """The tensor `key` (or the `rows` slice of its PyTorch first axis) in Keras layout and
    `dtype`, as a TensorFlow tensor."""
    value = source.tensor(key, rows)
    axes = TO_KERAS_AXES[layout]
    if axes:
        # numpy transposes a (out, in) matrix element by element across cache lines;
        # TensorFlow's blocked, multithreaded kernel is several times faster.
        value = tf.transpose(value, axes)
    return tf.cast(value, dtype)


# Tensors larger than this are assigned in slices, so loading into a built model never holds
# a second copy of a large tensor (the word embeddings of the base model are 94 MB).
_CHUNK_BYTES = 16 * 2**20


def _assign_tensor(source, key, variable, layout):
    pytorch_shape = source.shape(key)
    rows_total = pytorch_shape[0] if pytorch_shape else 0
    row_bytes = np.dtype(variable.dtype).itemsize * int(np.prod(pytorch_shape[1:]))
    rows_per_chunk = max(1, _CHUNK_BYTES // max(1, row_bytes))
    if rows_total <= rows_per_chunk:
        variable.assign(_keras_tensor(source, key, layout, variable.dtype))
        return
    # PyTorch's first axis is the last Keras axis of transposed layouts, else the first.
    target = variable.value
    transposed = TO_KERAS_AXES[layout] is not None
    for start in range(0, rows_total, rows_per_chunk):
        rows = slice(start, min(start + rows_per_chunk, rows_total))
        index = (Ellipsis, rows) if transposed else rows
        target[index].assign(_keras_tensor(source, key, layout, variable.dtype, rows))
