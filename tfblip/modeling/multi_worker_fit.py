"""Workarounds that let Keras 3's fit()/evaluate() train under MultiWorkerMirroredStrategy.

Each override works around one Keras bug; tests/test_training.py
(`test_keras_multi_worker_bugs_still_need_the_workarounds`) reproduces both on a plain
keras.Model in two worker processes and fails, naming the override to remove, once a Keras
release fixes one.

* `_maybe_symbolic_build`: before the first step Keras builds the model and compiled metrics
  from the first batch, averaged over the replicas with an eager `strategy.reduce("MEAN",
  batch, axis=None)`, which MultiWorkerMirroredStrategy cannot do ("Attempt to convert a value
  ({'x': PerReplica:...}) with an unsupported type (<class 'dict'>) to a Tensor",
  keras-team/keras#20329; a single tensor fails alike).
* `train_step` / `test_step` (`_reducible_across_workers`): in multi-worker mode Keras averages
  each replica's logs with `strategy.reduce("MEAN", value, axis=0)`, which fails on the scalar
  loss ("Invalid reduction dimension 0 for input with 0 dimensions", keras-team/keras#20585).
"""

import tensorflow as tf


class MultiWorkerFitMixin:
    """Mixed into a keras.Model (before it in the bases) that builds its weights when
    constructed, to fit() under multi-worker strategies."""

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # The weights exist already, so only the optimizer is left to build, which needs no
        # batch (compiled metrics still need Keras' build from one).
        if self._distribute_strategy is None or self._compile_metrics is not None:
            return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)
        with self.distribute_strategy.scope():
            if self.optimizer is not None and not self.optimizer.built:
                self.optimizer.build(self.trainable_variables)
            self._post_build()

    def train_step(self, data):
        return self._reducible_across_workers(super().train_step(data))

    def test_step(self, data):
        return self._reducible_across_workers(super().test_step(data))

    def _reducible_across_workers(self, logs):
        # The logs get one axis, so that the reduce over axis 0 averages over it.
        strategy = self._distribute_strategy
        if not (
            isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
            and strategy.extended._in_multi_worker_mode()
        ):
            return logs
        return {name: tf.reshape(value, [-1]) for name, value in logs.items()}
