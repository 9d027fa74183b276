"""Copying a checkpoint's tensors into a model, all or nothing."""

import numpy as np

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
    for found, variable, layout in plan:
        _copy_tensor(source, found, variable, layout)


# Tensors larger than this are copied in slices, so loading never holds a second copy of a
# large tensor (the word embeddings of the base model are 94 MB).
_CHUNK_BYTES = 16 * 2**20


def _copy_tensor(source, key, variable, layout):
    axes = TO_KERAS_AXES[layout]

    def to_keras(value):
        value = np.transpose(value, axes) if axes else value
        return value.astype(variable.dtype, copy=False)

    pytorch_shape = source.shape(key)
    rows_total = pytorch_shape[0] if pytorch_shape else 0
    row_bytes = np.dtype(variable.dtype).itemsize * int(np.prod(pytorch_shape[1:]))
    rows_per_chunk = max(1, _CHUNK_BYTES // max(1, row_bytes))
    if rows_total <= rows_per_chunk:
        variable.assign(to_keras(source.get(key)))
        return
    # PyTorch's first axis is the last Keras axis of transposed layouts, else the first.
    target = variable.value
    for start in range(0, rows_total, rows_per_chunk):
        rows = slice(start, min(start + rows_per_chunk, rows_total))
        index = (Ellipsis, rows) if axes else rows
        target[index].assign(to_keras(source.get(key, rows)))
