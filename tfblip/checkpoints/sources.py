"""Tensor sources: the tensors of a checkpoint, read one at a time.

A source has `keys()`, `shape(key)` and `get(key, rows=None)` (the tensor, or a slice of its
first axis, as a numpy array in PyTorch layout), so that loading can check every key and shape
before it reads any tensor, and copy a large tensor in slices; `tensor(key, rows=None)` gives
the same as a TensorFlow tensor, without a copy where the source owns the array it read. The
sources `open_checkpoint` returns also say whether they hold a transformers `tf_model.h5`
(`from_tf_h5`).
"""

import json
import os

import ml_dtypes
import numpy as np
import tensorflow as tf

from tfblip.checkpoints.tf_h5 import TF_WEIGHTS_NAME, is_tf_h5_checkpoint, read_tf_h5
from tfblip.errors import CheckpointError

SAFETENSORS_WEIGHTS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
PYTORCH_WEIGHTS = "pytorch_model.bin"
PYTORCH_INDEX = "pytorch_model.bin.index.json"


_SAFETENSORS_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "BF16": ml_dtypes.bfloat16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}


# TensorFlow's CPU allocator aligns tensors to 64 bytes and its kernels assume it: a tensor
# that shares the memory of a less aligned numpy array aborts the process when used.
_TENSORFLOW_ALIGNMENT = 64


def _aligned_empty(shape, dtype):
    """An uninitialized C-contiguous array whose data starts on TensorFlow's alignment."""
    dtype = np.dtype(dtype)
    size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(size + _TENSORFLOW_ALIGNMENT, np.uint8)
    start = -raw.ctypes.data % _TENSORFLOW_ALIGNMENT
    return raw[start : start + size].view(dtype).reshape(shape)


def _read_safetensors_header(path):
    """{key: (dtype, shape, absolute start, end)} from a safetensors file's JSON header."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            header_length = int.from_bytes(f.read(8), "little")
            if not 0 < header_length <= size - 8:
                raise ValueError(f"header length {header_length} does not fit a {size}-byte file")
            header = json.loads(f.read(header_length))
    except (OSError, ValueError, UnicodeDecodeError) as error:
        raise CheckpointError(f"Cannot read safetensors file {path}: {error}") from error
    if not isinstance(header, dict):
        raise CheckpointError(f"Cannot read safetensors file {path}: the header is not a mapping.")
    data_start = 8 + header_length
    entries = {}
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        try:
            dtype = np.dtype(_SAFETENSORS_DTYPES[entry["dtype"]])
            shape = tuple(int(n) for n in entry["shape"])
            begin, end = (int(n) for n in entry["data_offsets"])
        except (KeyError, TypeError, ValueError) as error:
            raise CheckpointError(f"{path}: bad header entry for {key!r}: {entry!r}") from error
        expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if end - begin != expected or data_start + end > size or begin < 0:
            raise CheckpointError(
                f"{path} is truncated or corrupt: tensor {key!r} claims bytes {begin}..{end} "
                f"of a {size - data_start}-byte data section."
            )
        entries[key] = (dtype, shape, data_start + begin, data_start + end)
    return entries


class _SafetensorsSource:
    """Tensors of one or more safetensors files.

    Each tensor is read with a plain file read when it is needed. A memory map (as the
    safetensors library uses) would keep every page it touched resident until closed, which
    doubles the peak memory of loading a large checkpoint.
    """

    from_tf_h5 = False

    def __init__(self, files):
        self._entries = {}
        for path in files:
            for key, entry in _read_safetensors_header(path).items():
                self._entries[key] = (path, *entry)

    def keys(self):
        return list(self._entries)

    def shape(self, key):
        return self._entries[key][2]

    def get(self, key, rows=None):
        """The tensor, or the `rows` slice of its first axis: a new array of its own."""
        path, dtype, shape, begin, end = self._entries[key]
        if rows is not None:
            row_bytes = (end - begin) // shape[0]
            begin, end = begin + rows.start * row_bytes, begin + rows.stop * row_bytes
            shape = (rows.stop - rows.start, *shape[1:])
        # A writable array, read in place with no intermediate bytes object, aligned so that
        # `tensor` can hand it to TensorFlow as it is.
        tensor = _aligned_empty(shape, dtype)
        with open(path, "rb") as f:
            f.seek(begin)
            read = f.readinto(memoryview(tensor.reshape(-1).view(np.uint8)))
        if read != end - begin:
            raise CheckpointError(f"{path} is truncated: tensor {key!r} is incomplete.")
        return tensor

    def tensor(self, key, rows=None):
        """`get`'s array as a TensorFlow tensor that takes over its memory.

        `tf.convert_to_tensor` copies a numpy array, lest its owner change it later; this one
        is the source's own, read for this call and dropped after it, so sharing it is safe.
        """
        array = self.get(key, rows)
        try:
            capsule = array.__dlpack__()
        except BufferError:  # a dtype DLPack cannot describe: ml_dtypes' bfloat16
            return tf.convert_to_tensor(array)
        return tf.experimental.dlpack.from_dlpack(capsule)


class DictSource:
    """An in-memory state dict of numpy arrays or torch tensors.

    Args:
        state_dict: {PyTorch key: tensor in PyTorch layout}.
        from_tf_h5: whether the tensors were read from a transformers `tf_model.h5`, whose LM
            head may differ from the word embeddings it is tied to elsewhere.
    """

    def __init__(self, state_dict, *, from_tf_h5=False):
        self._tensors = state_dict
        self.from_tf_h5 = from_tf_h5

    def keys(self):
        return list(self._tensors)

    def shape(self, key):
        """The tensor's shape, in PyTorch layout."""
        return tuple(self._tensors[key].shape)

    def get(self, key, rows=None):
        """The tensor, or the `rows` slice of its first axis, as a numpy array."""
        tensor = self._tensors[key]
        if rows is not None:
            tensor = tensor[rows]
        return self._to_numpy(tensor)

    def tensor(self, key, rows=None):
        """`get`'s array as a TensorFlow tensor (a copy: the array belongs to the caller)."""
        return tf.convert_to_tensor(self.get(key, rows))

    def _to_numpy(self, tensor):
        if hasattr(tensor, "detach"):
            tensor = tensor.detach().float().cpu().numpy()
        return np.asarray(tensor)


class _TorchSource(DictSource):
    """Tensors of PyTorch pickles, memory-mapped so the file is not held twice in memory."""

    def __init__(self, files):
        try:
            import torch
        except ImportError as error:
            raise ImportError(
                "Reading pytorch_model.bin needs PyTorch: pip install 'tfblip[torch]', "
                "or convert the checkpoint to model.safetensors."
            ) from error
        self._torch = torch
        tensors = {}
        for path in files:
            try:
                state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except Exception as error:  # torch raises many types for corrupt pickles
                raise CheckpointError(f"Cannot read PyTorch checkpoint {path}: {error}") from error
            if not isinstance(state, dict):
                raise CheckpointError(f"{path} does not hold a state dict.")
            tensors.update(state)
        super().__init__(tensors)

    def _to_numpy(self, tensor):
        # Keeps the stored dtype, but bfloat16: numpy has none, and torch cannot export
        # ml_dtypes'.
        if tensor.dtype == self._torch.bfloat16:
            tensor = tensor.float()
        return tensor.numpy()


class _PrefixedSource:
    """The tensors of `source` whose keys start with `prefix`, without it: one tower of a full
    BLIP checkpoint (`vision_model.embeddings...` read as `embeddings...`)."""

    def __init__(self, source, prefix):
        self._source = source
        self._prefix = prefix
        keys = source.keys()
        self._keys = [key[len(prefix) :] for key in keys if key.startswith(prefix)]

    def keys(self):
        return list(self._keys)

    def shape(self, key):
        return self._source.shape(self._prefix + key)

    def get(self, key, rows=None):
        return self._source.get(self._prefix + key, rows)

    def tensor(self, key, rows=None):
        return self._source.tensor(self._prefix + key, rows)


def select_tower(source, prefixes, model_name, checkpoint_name):
    """The one tower of a full checkpoint that `prefixes` name.

    Args:
        source: the checkpoint's tensor source.
        prefixes: where full BLIP checkpoints keep the tower (a model's `tower_prefixes`).
        model_name: the model class's name, for the error message.
        checkpoint_name: the checkpoint's path, for the error message.

    Returns:
        (source, prefix): the tower's tensors under their own names and the prefix taken; or
        the whole source and None when no prefix is there (the checkpoint is the model's own).

    Raises:
        CheckpointError: several of `prefixes` hold tensors, so the tower is ambiguous.
    """
    keys = source.keys()
    present = [prefix for prefix in prefixes if any(key.startswith(prefix) for key in keys)]
    if not present:
        return source, None
    if len(present) > 1:
        towers = " and ".join(f"{prefix}*" for prefix in present)
        raise CheckpointError(
            f"{checkpoint_name} holds several towers {model_name} could load ({towers}), so "
            f"which one to take is ambiguous. Load the checkpoint's own model class and take "
            f"the tower you want from it (model.{present[0].rstrip('.')}, ...); its "
            "save_pretrained then writes a checkpoint of that tower alone."
        )
    return _PrefixedSource(source, present[0]), present[0]


def _shard_files(directory, index_name):
    index_path = os.path.join(directory, index_name)
    try:
        with open(index_path) as f:
            weight_map = json.load(f)["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise CheckpointError(f"Cannot read shard index {index_path}: {error}") from error
    root = os.path.realpath(directory)
    files = []
    for name in sorted(set(weight_map.values())):
        path = os.path.realpath(os.path.join(root, name))
        # An index is data from the checkpoint's author: never follow it out of the directory.
        if os.path.commonpath([root, path]) != root:
            raise CheckpointError(f"Shard {name!r} in {index_path} points outside {directory}.")
        if not os.path.isfile(path):
            raise CheckpointError(f"Shard {name!r} listed in {index_path} does not exist.")
        files.append(path)
    return files


def open_checkpoint(path):
    """A tensor source for a checkpoint directory or a single weights file.

    Args:
        path: a directory holding model.safetensors, a sharded safetensors index,
            pytorch_model.bin (or its index) or tf_model.h5; or one such weights file.

    Returns:
        A source with `keys()`, `shape(key)` and `get(key, rows=None)`.

    Raises:
        CheckpointError: no weights in `path`, or a file that cannot be read.
        ImportError: a `.bin` checkpoint without PyTorch installed.
    """
    if os.path.isfile(path):
        if path.endswith(".safetensors"):
            return _SafetensorsSource([path])
        if is_tf_h5_checkpoint(path):
            return DictSource(read_tf_h5(path), from_tf_h5=True)
        return _TorchSource([path])
    candidates = (
        (SAFETENSORS_WEIGHTS, lambda p: _SafetensorsSource([p])),
        (SAFETENSORS_INDEX, lambda p: _SafetensorsSource(_shard_files(path, SAFETENSORS_INDEX))),
        (PYTORCH_WEIGHTS, lambda p: _TorchSource([p])),
        (PYTORCH_INDEX, lambda p: _TorchSource(_shard_files(path, PYTORCH_INDEX))),
    )
    for name, opener in candidates:
        candidate = os.path.join(path, name)
        if os.path.isfile(candidate):
            return opener(candidate)
    if is_tf_h5_checkpoint(path):
        return DictSource(read_tf_h5(path), from_tf_h5=True)
    raise CheckpointError(
        f"No weights found in {path}: expected one of "
        f"{', '.join(name for name, _ in candidates)} or {TF_WEIGHTS_NAME}."
    )
