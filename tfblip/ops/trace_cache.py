"""Traced TensorFlow graphs kept on disk, so a new process does not trace them again.

Tracing the base model's decoding loop in Python (building its graph one operation at a time)
takes seconds, and every fresh process paid it: each `tfblip caption`, Beam worker or
notebook restart. `traced_function` saves the traced graph the first time and, in later
processes, imports it instead, binding it to the variables of the model at hand.

What is kept: the graph only, no weights. A saved graph reads the variables it was traced
with by their Keras paths, so it serves any checkpoint of the same architecture; loading other
weights into a model changes nothing about it.

Where: `$TFBLIP_TRACE_CACHE`, else `$XDG_CACHE_HOME/tfblip/traces`, else
`~/.cache/tfblip/traces`; `TFBLIP_TRACE_CACHE=off` (or empty) turns the cache off. Files are
named by a digest of everything a graph depends on: the function's description (the model's
config and decoding options), the input signature, every variable's path, shape and dtype,
and the versions of TensorFlow, Keras and the tfblip source. Any change gives a new name, so
stale files are never used; they can be deleted at any time. A file that cannot be read is
traced anew and rewritten, with a warning. Files are written to a temporary name and renamed,
so concurrent processes never read half a file.
"""

import hashlib
import json
import logging
import os
import tempfile

import keras
import tensorflow as tf

CACHE_ENVIRONMENT_VARIABLE = "TFBLIP_TRACE_CACHE"
_FORMAT = "tfblip-trace-1"

logger = logging.getLogger(__name__)


def cache_directory():
    """The directory traced graphs are kept in, or None when the cache is off."""
    configured = os.environ.get(CACHE_ENVIRONMENT_VARIABLE)
    if configured is not None:
        return None if configured.strip().lower() in ("", "off", "0", "false") else configured
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "tfblip", "traces")


def _source_digest():
    """A digest of tfblip's Python sources: graphs traced by other code are not reused."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    digest = hashlib.sha256()
    for root, directories, names in os.walk(package):
        directories.sort()
        for name in sorted(names):
            if name.endswith(".py"):
                path = os.path.join(root, name)
                digest.update(os.path.relpath(path, package).encode())
                with open(path, "rb") as f:
                    digest.update(f.read())
    return digest.hexdigest()


_SOURCE_DIGEST = None


def _cache_key(description, input_signature, variables):
    global _SOURCE_DIGEST
    if _SOURCE_DIGEST is None:
        _SOURCE_DIGEST = _source_digest()
    parts = {
        "format": _FORMAT,
        "description": description,
        "signature": [(spec.shape.as_list(), spec.dtype.name) for spec in input_signature],
        "variables": [(v.path, list(v.shape), str(v.dtype)) for v in variables],
        "versions": [tf.__version__, keras.__version__, _SOURCE_DIGEST],
    }
    encoded = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(encoded).hexdigest()[:32]


class _ImportedFunction:
    """A saved graph imported into this process, called like the ConcreteFunction it was
    traced as: positional tensors in, the same structure of tensors out."""

    def __init__(self, graph_def, header, variables_by_path, input_signature):
        handles = [variables_by_path[path].value.handle for path in header["captures"]]

        def import_graph(*inputs):
            graph = tf.compat.v1.get_default_graph()
            input_map = dict(zip(header["inputs"], inputs))
            input_map.update(
                (name, graph.capture(handle))
                for name, handle in zip(header["capture_inputs"], handles)
            )
            return tf.graph_util.import_graph_def(
                graph_def, input_map=input_map, return_elements=header["outputs"], name=""
            )

        self._function = tf.compat.v1.wrap_function(import_graph, input_signature)
        self._keys = header["output_keys"]

    def __call__(self, *inputs):
        outputs = self._function(*inputs)
        return outputs[0] if self._keys is None else dict(zip(self._keys, outputs))


def _header(concrete, variables_by_handle, input_count):
    """What `_ImportedFunction` needs besides the graph, or None when the function cannot be
    kept (it captures something other than a model variable, or returns another structure)."""
    captures = [variables_by_handle.get(id(tensor)) for tensor in concrete.captured_inputs]
    if None in captures:
        return None
    structure = concrete.structured_outputs
    if isinstance(structure, dict) and all(isinstance(v, tf.Tensor) for v in structure.values()):
        keys = sorted(structure)
        outputs = [structure[key] for key in keys]
    elif isinstance(structure, tf.Tensor):
        keys, outputs = None, [structure]
    else:
        return None
    return {
        "format": _FORMAT,
        "inputs": [tensor.name for tensor in concrete.inputs[:input_count]],
        "capture_inputs": [tensor.name for tensor in concrete.inputs[input_count:]],
        "captures": captures,
        "outputs": [tensor.name for tensor in outputs],
        "output_keys": keys,
    }


def _read(path):
    with open(path, "rb") as f:
        header_length = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(header_length))
        graph_def = tf.compat.v1.GraphDef.FromString(f.read())
    if header.get("format") != _FORMAT:
        raise ValueError(f"not a {_FORMAT} file")
    return header, graph_def


def _write(path, header, graph_def):
    encoded = json.dumps(header).encode()
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=directory, suffix=".partial", delete=False) as f:
        f.write(len(encoded).to_bytes(8, "little") + encoded)
        f.write(graph_def.SerializeToString())
    os.replace(f.name, path)


def traced_function(function, input_signature, variables, description):
    """`function` traced once for `input_signature`, from the disk cache when it holds it.

    Args:
        function: a Python function of tensors, as `tf.function` takes; it may read any of
            `variables` (and no other state).
        input_signature: TensorSpecs of its positional arguments (unknown sizes allowed).
        variables: the Keras variables it may read (a model's `variables`), by path.
        description: a JSON-able value naming everything else the graph depends on (the model
            config, options); part of the cache key.

    Returns:
        A callable of the positional tensors returning what `function` returns.
    """
    traced = tf.function(function, input_signature=input_signature, autograph=False)
    directory = cache_directory()
    variables_by_path = {v.path: v for v in variables}
    if directory is None or len(variables_by_path) != len(variables):
        return traced.get_concrete_function()
    path = os.path.join(directory, _cache_key(description, input_signature, variables) + ".pb")
    if os.path.exists(path):
        try:
            header, graph_def = _read(path)
            return _ImportedFunction(graph_def, header, variables_by_path, input_signature)
        except Exception as error:  # noqa: BLE001 - any unreadable file is traced anew
            logger.warning(
                "Ignoring the unreadable traced graph %s (%s); tracing again.", path, error
            )
    concrete = traced.get_concrete_function()
    variables_by_handle = {id(v.value.handle): v.path for v in variables}
    header = _header(concrete, variables_by_handle, len(input_signature))
    if header is not None:
        try:
            _write(path, header, concrete.graph.as_graph_def())
        except OSError as error:
            logger.warning("Could not keep the traced graph in %s: %s", directory, error)
    return concrete
