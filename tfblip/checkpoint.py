"""Reading and writing BLIP checkpoints in Hugging Face's PyTorch format.

The PyTorch key of every Keras variable comes from a walk over layer names: each sublayer is
named after the PyTorch attribute it mirrors, so `text_decoder.bert.encoder.layer.3.attention
.self.query.weight` is the kernel of the Dense layer reached through layers of those names.
Only the leaf parameter names and layouts (Dense kernel = transposed Linear weight, ...)
are spelled out here.
"""

import inspect
import json
import logging
import os

import keras
import ml_dtypes
import numpy as np

from tfblip import salesforce, tf_h5
from tfblip.configuration import CONFIG_NAME
from tfblip.errors import CheckpointError
from tfblip.generation import GENERATION_CONFIG_NAME, read_generation_config

logger = logging.getLogger(__name__)

SAFETENSORS_WEIGHTS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
PYTORCH_WEIGHTS = "pytorch_model.bin"
PYTORCH_INDEX = "pytorch_model.bin.index.json"

# Keras leaf layer -> {variable attribute: (PyTorch parameter name, layout)}.
_LEAF_PARAMETERS = (
    (keras.layers.Dense, {"kernel": ("weight", "linear"), "bias": ("bias", "same")}),
    (keras.layers.Conv2D, {"kernel": ("weight", "conv"), "bias": ("bias", "same")}),
    (keras.layers.LayerNormalization, {"gamma": ("weight", "same"), "beta": ("bias", "same")}),
    (keras.layers.Embedding, {"embeddings": ("weight", "same")}),
)

# Axis permutations between layouts: Linear (out, in) <-> Dense (in, out); Conv2d
# (O, I, kh, kw) <-> Conv2D (kh, kw, I, O).
_TO_KERAS_AXES = {"linear": (1, 0), "conv": (2, 3, 1, 0), "same": None}
_TO_PYTORCH_AXES = {"linear": (1, 0), "conv": (3, 2, 0, 1), "same": None}


def _child_layers(layer):
    """Direct sublayers in attribute order (lists of layers included)."""
    children, seen = [], set()
    for attribute, value in vars(layer).items():
        if attribute.startswith("_"):
            continue
        candidates = value if isinstance(value, (list, tuple)) else [value]
        for candidate in candidates:
            if isinstance(candidate, keras.layers.Layer) and id(candidate) not in seen:
                seen.add(id(candidate))
                children.append(candidate)
    return children


def pytorch_named_variables(model):
    """{PyTorch state-dict key: (Keras variable, layout)} for every weight of `model`."""
    named = {}

    def walk(layer, prefix):
        for leaf_type, parameters in _LEAF_PARAMETERS:
            if isinstance(layer, leaf_type):
                for attribute, (name, layout) in parameters.items():
                    variable = getattr(layer, attribute, None)
                    if variable is not None:
                        named[prefix + name] = (variable, layout)
                return
        children = _child_layers(layer)
        owned_by_children = {id(v) for child in children for v in child.weights}
        for variable in layer.weights:
            if id(variable) not in owned_by_children:
                named[prefix + variable.name] = (variable, "same")
        for child in children:
            walk(child, f"{prefix}{child.name}.")

    walk(model, "")
    unaccounted = {id(v) for v in model.weights} - {id(v) for v, _ in named.values()}
    if unaccounted:
        raise RuntimeError(
            "Some model variables have no PyTorch name; the layer walk is incomplete."
        )
    return named


# ----------------------------------------------------------------------------- reading


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
        """The tensor, or the `rows` slice of its first axis."""
        path, dtype, shape, begin, end = self._entries[key]
        if rows is not None:
            row_bytes = (end - begin) // shape[0]
            begin, end = begin + rows.start * row_bytes, begin + rows.stop * row_bytes
            shape = (rows.stop - rows.start, *shape[1:])
        # A writable array, read in place with no intermediate bytes object.
        tensor = np.empty(shape, dtype=dtype)
        with open(path, "rb") as f:
            f.seek(begin)
            read = f.readinto(memoryview(tensor.reshape(-1).view(np.uint8)))
        if read != end - begin:
            raise CheckpointError(f"{path} is truncated: tensor {key!r} is incomplete.")
        return tensor


class _TorchSource:
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
        self._tensors = {}
        for path in files:
            try:
                state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except Exception as error:  # torch raises many types for corrupt pickles
                raise CheckpointError(f"Cannot read PyTorch checkpoint {path}: {error}") from error
            if not isinstance(state, dict):
                raise CheckpointError(f"{path} does not hold a state dict.")
            self._tensors.update(state)

    def keys(self):
        return list(self._tensors)

    def shape(self, key):
        return tuple(self._tensors[key].shape)

    def get(self, key, rows=None):
        tensor = self._tensors[key]
        if rows is not None:
            tensor = tensor[rows]
        if tensor.dtype == self._torch.bfloat16:
            tensor = tensor.float()  # numpy has no bfloat16; torch cannot export ml_dtypes'
        return tensor.numpy()


class _DictSource:
    """An in-memory state dict of numpy arrays or torch tensors."""

    def __init__(self, state_dict):
        self._tensors = state_dict

    def keys(self):
        return list(self._tensors)

    def shape(self, key):
        return tuple(self._tensors[key].shape)

    def get(self, key, rows=None):
        tensor = self._tensors[key]
        if rows is not None:
            tensor = tensor[rows]
        if hasattr(tensor, "detach"):
            tensor = tensor.detach().float().cpu().numpy()
        return np.asarray(tensor)


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


def select_tower(source, prefixes, model_name, checkpoint_name):
    """(source, prefix): the one tower of a full checkpoint that `prefixes` name, or the whole
    source and None when none is there (the checkpoint is the model's own).

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
    """A tensor source for a checkpoint directory or a single weights file."""
    if os.path.isfile(path):
        if path.endswith(".safetensors"):
            return _SafetensorsSource([path])
        if tf_h5.is_tf_h5_checkpoint(path):
            return _DictSource(tf_h5.read_tf_h5(path))
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
    if tf_h5.is_tf_h5_checkpoint(path):
        return _DictSource(tf_h5.read_tf_h5(path))
    raise CheckpointError(
        f"No weights found in {path}: expected one of "
        f"{', '.join(name for name, _ in candidates)} or {tf_h5.TF_WEIGHTS_NAME}."
    )


def _lm_head_untied(source):
    """Whether a checkpoint's LM decoder weight differs from its word embeddings."""
    decoder = "text_decoder.cls.predictions.decoder.weight"
    embeddings = "text_decoder.bert.embeddings.word_embeddings.weight"
    keys = set(source.keys())
    if decoder not in keys or embeddings not in keys:
        return False
    return not np.array_equal(source.get(decoder), source.get(embeddings))


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


def _pytorch_shape(variable, layout):
    axes = _TO_PYTORCH_AXES[layout]
    shape = tuple(variable.shape)
    return tuple(shape[a] for a in axes) if axes else shape


def _summarize(items, limit=20):
    items = sorted(items)
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def load_weights(model, source, checkpoint_name="checkpoint"):
    """Copies every tensor of `source` into `model`, or raises before changing anything.

    All keys and shapes are checked first, so a checkpoint that does not fit never leaves the
    model half-loaded.
    """
    if isinstance(source, dict):
        source = _DictSource(source)
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
        model_shape = _pytorch_shape(variable, layout)
        if checkpoint_shape != model_shape:
            mismatched.append(f"{found}: checkpoint {checkpoint_shape}, model {model_shape}")
            continue
        plan.append((found, variable, layout))
    unexpected = [key for key in source_keys - used if not _is_redundant_key(key, source_keys)]
    if missing or mismatched or unexpected:
        problems = []
        if missing:
            problems.append(f"missing tensors ({len(missing)}): {_summarize(missing)}")
        if mismatched:
            problems.append(f"wrong shapes ({len(mismatched)}): {_summarize(mismatched)}")
        if unexpected:
            problems.append(f"unexpected tensors ({len(unexpected)}): {_summarize(unexpected)}")
        raise CheckpointError(
            f"{checkpoint_name} does not fit {type(model).__name__}: " + "; ".join(problems)
        )
    for found, variable, layout in plan:
        _copy_tensor(source, found, variable, layout)


# Tensors larger than this are copied in slices, so loading never holds a second copy of a
# large tensor (the word embeddings of the base model are 94 MB).
_CHUNK_BYTES = 16 * 2**20


def _copy_tensor(source, key, variable, layout):
    axes = _TO_KERAS_AXES[layout]

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


def pytorch_state_dict(model):
    """{PyTorch key: numpy array} in PyTorch layouts, float32."""
    state = {}
    for key, (variable, layout) in pytorch_named_variables(model).items():
        value = keras.ops.convert_to_numpy(variable)
        axes = _TO_PYTORCH_AXES[layout]
        if axes:
            value = np.transpose(value, axes)
        state[key] = np.array(value, order="C")  # ascontiguousarray would make 0-d arrays 1-d
    return state


# ----------------------------------------------------------------------------- hub

# snapshot_download arguments that from_pretrained sets itself, or that would make it return
# something other than the downloaded directory.
_HUB_ARGUMENTS_SET_HERE = frozenset({"repo_id", "allow_patterns", "dry_run"})
# The download options accepted when huggingface_hub is not installed, so its signature cannot
# be read: a local path ignores them (as transformers does), a repo id needs the package anyway.
_COMMON_HUB_OPTIONS = frozenset(
    {"cache_dir", "force_download", "local_files_only", "revision", "token"}
)


def hub_download_options():
    """Names of the keyword arguments that from_pretrained passes on to huggingface_hub's
    `snapshot_download`: its named parameters in the installed version."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        return _COMMON_HUB_OPTIONS
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    parameters = inspect.signature(snapshot_download).parameters.values()
    return frozenset(p.name for p in parameters if p.kind in named) - _HUB_ARGUMENTS_SET_HERE


def check_hub_options(caller, hub_kwargs, own_arguments):
    """Raises a TypeError naming the keywords of `hub_kwargs` that are no download option.

    A local path ignores the download options, so without this check a typo (`dtyp=`) or an
    option of another release would be dropped without a word.
    """
    accepted = hub_download_options()
    unknown = sorted(set(hub_kwargs) - accepted)
    if unknown:
        raise TypeError(
            f"{caller}() got unexpected keyword argument(s) {', '.join(map(repr, unknown))}. "
            f"It takes {', '.join(own_arguments)} and, for downloads from the Hugging Face Hub "
            f"(ignored for local paths), huggingface_hub.snapshot_download's options: "
            f"{', '.join(sorted(accepted))}."
        )


def resolve_checkpoint_path(name_or_path, **hub_kwargs):
    """A local directory (or file) for `name_or_path`, downloading a hub repo id if needed."""
    if os.path.exists(name_or_path):
        return name_or_path
    looks_like_repo = name_or_path.count("/") == 1 and not name_or_path.startswith((".", "/"))
    if not looks_like_repo:
        raise FileNotFoundError(f"Checkpoint path {name_or_path!r} does not exist.")
    try:
        from huggingface_hub import snapshot_download
    except ImportError as error:
        raise ImportError(
            f"{name_or_path!r} is not a local path, and downloading it from the Hugging Face Hub "
            "needs huggingface_hub (pip install 'tfblip[hub]'). Or pass a local checkpoint "
            "directory holding config.json and model.safetensors."
        ) from error
    try:
        return snapshot_download(
            name_or_path,
            allow_patterns=["*.json", "*.safetensors", "*.txt", "pytorch_model*.bin"],
            **hub_kwargs,
        )
    except Exception as error:  # network, auth and not-found errors differ by version
        raise OSError(
            f"Could not download {name_or_path!r} from the Hugging Face Hub ({error}). "
            "Offline, pass a local checkpoint directory holding config.json and weights."
        ) from error


class PretrainedMixin:
    """`from_pretrained` / `save_pretrained` for the model classes (which set `config_class`).

    A tower class also sets `tower_prefixes`: where full BLIP checkpoints keep its tensors, so
    that it can load its tower from them.
    """

    tower_prefixes = ()

    @classmethod
    def checkpoint_arguments(cls, keys):
        """Constructor arguments that depend on which tensors the checkpoint holds."""
        return {}

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path, config=None, dtype=None, image_size=None, **hub_kwargs
    ):
        """Builds the model from a checkpoint directory, weights file or hub repo id.

        Besides Hugging Face checkpoints this reads the original Salesforce BLIP `.pth` files
        (config inferred from the tensors) and transformers 4.x TensorFlow `tf_model.h5` files.

        Args:
            pretrained_model_name_or_path: a checkpoint directory, a weights file or a
                Hugging Face Hub repo id (downloaded with huggingface_hub).
            config: the model's config; by default read from the checkpoint.
            dtype: a Keras dtype policy name (e.g. "float32", "mixed_bfloat16").
            image_size: for original Salesforce `.pth` files only: resizes their position
                embeddings (e.g. 224 -> 384).
            **hub_kwargs: options of huggingface_hub's `snapshot_download` (`revision`,
                `cache_dir`, `token`, ...), used for a repo id and ignored for a local path.
                Any other keyword raises a TypeError.

        Returns:
            The model with the checkpoint's weights.
        """
        check_hub_options(
            f"{cls.__name__}.from_pretrained", hub_kwargs, ("config", "dtype", "image_size")
        )
        path = resolve_checkpoint_path(os.fspath(pretrained_model_name_or_path), **hub_kwargs)
        directory = path if os.path.isdir(path) else os.path.dirname(path)
        original = os.path.isfile(path) and salesforce.is_salesforce_checkpoint(path)
        if image_size is not None and not original:
            raise ValueError(
                "image_size applies to original Salesforce .pth checkpoints; for other "
                "checkpoints call the model with interpolate_pos_encoding=True instead."
            )
        if original:
            architecture = cls.__name__.removeprefix("TF")
            config_dict, state_dict = salesforce.read_salesforce_checkpoint(
                path, architecture, image_size=image_size
            )
            if config is None:
                config = cls.config_class.from_dict(config_dict)
            source, tower = _DictSource(state_dict), None
        else:
            if config is None:
                config = cls.config_class.from_pretrained(directory)
            source = open_checkpoint(path)
            if isinstance(source, _DictSource) and _lm_head_untied(source):
                # transformers 4.x's TF decoder Dense is not tied to the word embeddings, so TF
                # fine-tuning made them differ: keep the head as trained.
                text_config = getattr(config, "text_config", config)
                text_config.tie_word_embeddings = False
            whole_keys = source.keys()
            source, tower = select_tower(source, cls.tower_prefixes, cls.__name__, path)
        kwargs = cls.checkpoint_arguments(set(source.keys()))
        if dtype is not None:
            kwargs["dtype"] = dtype
        model = cls(config, **kwargs)
        checkpoint_name = path if tower is None else f"the {tower}* tensors of {path}"
        load_weights(model, source, checkpoint_name=checkpoint_name)
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
        if hasattr(model, "generation_defaults") and not original:
            model.generation_defaults = read_generation_config(directory)
        return model

    def save_pretrained(self, save_directory):
        """Writes config.json + model.safetensors that transformers' PyTorch BLIP loads."""
        from safetensors.numpy import save_file

        os.makedirs(save_directory, exist_ok=True)
        config = self.config.to_dict()
        # transformers picks the model class from `architectures`: ours minus the "TF".
        config["architectures"] = [type(self).__name__.removeprefix("TF")]
        with open(os.path.join(save_directory, CONFIG_NAME), "w") as f:
            json.dump(config, f, indent=2, sort_keys=True)
            f.write("\n")
        if getattr(self, "generation_defaults", None):
            with open(os.path.join(save_directory, GENERATION_CONFIG_NAME), "w") as f:
                json.dump(dict(self.generation_defaults), f, indent=2, sort_keys=True)
        save_file(
            pytorch_state_dict(self),
            os.path.join(save_directory, SAFETENSORS_WEIGHTS),
            metadata={"format": "pt"},
        )
