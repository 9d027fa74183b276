"""One worker of a two-process MultiWorkerMirroredStrategy (TF_CONFIG describes the cluster)
that tries the Keras bugs tfblip/modeling/multi_worker_fit.py works around, on a tiny plain
keras.Model, and once more with the workarounds.

    python multi_worker_keras_bugs.py RESULT.json

Worker 0 writes {case: None when it ran, else "ExceptionType: message"} to RESULT.json.
"""

import json
import os
import sys

import numpy as np


def cases():
    import keras
    import tensorflow as tf

    from tfblip.modeling.multi_worker_fit import MultiWorkerFitMixin

    class TinyModel(keras.Model):
        """Like tfblip's models: a dict of inputs, weights built when constructed."""

        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(1)
            self.dense.build((None, 2))

        def call(self, inputs):
            return self.dense(inputs["x"])

    class WorkedAroundModel(MultiWorkerFitMixin, TinyModel):
        pass

    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    x = np.ones((8, 2), np.float32)
    y = np.ones((8, 1), np.float32)

    def compiled(model_class):
        with strategy.scope():
            model = model_class()
            model.compile(optimizer="sgd", loss="mse")
        return model

    def fit(model_class):
        dataset = tf.data.Dataset.from_tensor_slices(({"x": x}, y)).batch(4)
        options = tf.data.Options()
        policy = tf.data.experimental.AutoShardPolicy.DATA
        options.experimental_distribute.auto_shard_policy = policy
        compiled(model_class).fit(dataset.with_options(options), epochs=1, verbose=0)

    def train_on_batch(model_class):
        # Runs the train step without fit()'s symbolic build, so only the logs' reduce is tried.
        compiled(model_class).train_on_batch({"x": x[:4]}, y[:4])

    # The cases that should run come first: a failed collective could upset later ones.
    return {
        "worked_around_fit": lambda: fit(WorkedAroundModel),
        "worked_around_train_on_batch": lambda: train_on_batch(WorkedAroundModel),
        "plain_fit": lambda: fit(TinyModel),
        "plain_train_on_batch": lambda: train_on_batch(TinyModel),
    }


def main(result_path):
    results = {}
    for name, case in cases().items():
        try:
            case()
            results[name] = None
        except Exception as error:  # noqa: BLE001 (every failure is recorded for the test)
            results[name] = f"{type(error).__name__}: {error}"
    task = json.loads(os.environ.get("TF_CONFIG", "{}")).get("task", {})
    if task.get("index", 0) == 0:
        with open(result_path, "w") as f:
            json.dump(results, f)


if __name__ == "__main__":
    main(sys.argv[1])
