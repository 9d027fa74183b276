"""fit()'s step functions with a shorter first step: traced once, optimised lean.

The first fit() step of a process traces the train step (forward, gradient and the
optimizer's update of each variable: a ~49,000-node graph for the base captioning model),
then TensorFlow has Grappler optimise the graph before running it. Two costs there are
avoidable, and `FastFirstStepMixin` avoids them without changing the graph that runs:

* Keras builds the optimizer's variables while the step is traced, and a tf.function that
  creates variables on its first call is traced a second time without creating them; built
  before the trace, the step is traced once.
* Grappler's default configuration spends much of its time in passes that change nothing on
  this graph; `lean_graph_rewrites` turns those off for the calls made inside it only
  (TensorFlow keeps the options per thread) and keeps every pass the user configured.
"""

import contextlib
import functools

import tensorflow as tf
from tensorflow.core.protobuf import config_pb2, rewriter_config_pb2
from tensorflow.python.eager import context

_RewriterConfig = rewriter_config_pb2.RewriterConfig


def lean_rewriter_config(config, gpu=False):
    """A copy of the ConfigProto `config` whose Grappler skips what changes nothing on a train
    step's graph (scripts/profile_fit.py measures it on the base captioning step: a second
    meta-optimizer iteration that removes ~4% more nodes, the TFG shape-inference and
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


class FastFirstStepMixin:
    """Mixed into a keras.Model (before it in the bases): fit(), evaluate() and
    train_on_batch() build the optimizer before tracing the train step, and run their step
    functions under `lean_graph_rewrites`, while `fast_first_step` is true."""

    # False: as Keras and TensorFlow do by default (the optimizer built while the step is
    # traced, Grappler's options of the process), e.g. to compare the two.
    fast_first_step = True

    def make_train_function(self, force=False):
        if self.fast_first_step and self.optimizer is not None and not self.optimizer.built:
            with self.distribute_strategy.scope():
                self.optimizer.build(self.trainable_variables)
        super().make_train_function(force)
        self.train_function = self._under_lean_rewrites(self.train_function)
        return self.train_function

    def make_test_function(self, force=False):
        super().make_test_function(force)
        self.test_function = self._under_lean_rewrites(self.test_function)
        return self.test_function

    def _under_lean_rewrites(self, function):
        if function is None or getattr(function, "runs_lean_when_asked", False):
            return function

        @functools.wraps(function)
        def run(*args, **kwargs):
            # Read at each call: the function is optimised again if the switch changes.
            lean = lean_graph_rewrites() if self.fast_first_step else contextlib.nullcontext()
            with lean:
                return function(*args, **kwargs)

        run.runs_lean_when_asked = True
        return run
