"""Grappler options that cost less on tfblip's graphs, for the calls that ask for them.

TensorFlow optimises a tf.function's graph with Grappler the first time it runs it, and
Grappler's default configuration spends much of that time in passes that change nothing on
tfblip's graphs (a second meta-optimizer iteration, the TFG passes, and on CPU the memory and
layout optimizers: scripts/profile_fit.py measures them on the train step). The encoders, the
decoding loop and fit()'s step functions run under `lean_graph_rewrites`, which turns those off
for the calls made inside it only (TensorFlow keeps the options per thread) and keeps every pass
the user configured. The graphs that then run compute the same math (a fusion the second
iteration would add can change the last bits of a result).
"""

import contextlib
import functools

import tensorflow as tf
from tensorflow.core.protobuf import config_pb2, rewriter_config_pb2
from tensorflow.python.eager import context

_RewriterConfig = rewriter_config_pb2.RewriterConfig


def lean_rewriter_config(config, gpu=False):
    """A copy of the ConfigProto `config` whose Grappler skips what changes nothing on
    tfblip's graphs (scripts/profile_fit.py measures it on the base captioning train step: a
    second meta-optimizer iteration that removes ~4% more nodes, the TFG shape-inference and
    control-flow passes, and on CPU the memory and layout optimizers); options the user set
    (not DEFAULT) are kept. With `gpu`, the memory optimizer (swapping tensors to the host
    when device memory runs short) and the layout optimizer stay as configured."""
    lean = config_pb2.ConfigProto()
    lean.CopyFrom(config)
    rewrites = lean.graph_options.rewrite_options
    settings = {"meta_optimizer_iterations": _RewriterConfig.ONE}
    if not gpu:
        settings["memory_optimization"] = _RewriterConfig.NO_MEM_OPT
        settings["layout_optimizer"] = _RewriterConfig.OFF
    for field, value in settings.items():
        if getattr(rewrites, field) == _RewriterConfig.DEFAULT:
            setattr(rewrites, field, value)
    rewrites.disable_tfg_optimizer = True
    return lean


@contextlib.contextmanager
def lean_graph_rewrites():
    """Functions first called inside this block (in this thread) get the lean Grappler
    configuration. A function is optimised once per configuration: call it inside the block
    every time, or it is optimised again with the default one."""
    eager = context.context()
    saved = eager.function_call_options
    config = config_pb2.ConfigProto.FromString(saved.config_proto_serialized)
    gpu = bool(tf.config.list_logical_devices("GPU"))
    eager.function_call_options = context.FunctionCallOptions(
        executor_type=saved.executor_type, config_proto=lean_rewriter_config(config, gpu)
    )
    try:
        yield
    finally:
        eager.function_call_options = saved


def under_lean_graph_rewrites(function):
    """`function` (a tf.function or ConcreteFunction) called under `lean_graph_rewrites`,
    every time, so it is optimised once."""

    @functools.wraps(function)
    def run(*args, **kwargs):
        with lean_graph_rewrites():
            return function(*args, **kwargs)

    return run
