"""fit()'s step functions with a shorter first step: traced once, optimised lean.

The first fit() step of a process traces the train step (forward, gradient and the
optimizer's update of each variable: a ~49,000-node graph for the base captioning model),
then TensorFlow has Grappler optimise the graph before running it. Two costs there are
avoidable, and `FastFirstStepMixin` avoids them without changing what the step computes:

* Keras builds the optimizer's variables while the step is traced, and a tf.function that
  creates variables on its first call is traced a second time without creating them; built
  before the trace, the step is traced once.
* Grappler's default configuration spends much of its time in passes that change nothing on
  this graph; `lean_graph_rewrites` turns those off for the calls made inside it only
  (TensorFlow keeps the options per thread) and keeps every pass the user configured.
"""

import contextlib
import functools

from tfblip.ops.graph_rewrites import lean_graph_rewrites


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
