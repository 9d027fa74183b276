"""A Beam RunInference ModelHandler for tfblip SavedModel exports.

Beam's own TensorFlow handler loads models with `tf.keras.models.load_model`, which cannot read
a SavedModel under Keras 3; this one loads the export with `tf.saved_model.load`, as TF Serving
does, once per worker process, and calls one of its signatures on each batch Beam forms.
"""

import tensorflow as tf
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from tfblip.beam.errors import ExampleError, failure_reason


def _check_export(export_dir):
    if not tf.io.gfile.exists(tf.io.gfile.join(export_dir, "saved_model.pb")):
        raise FileNotFoundError(
            f"No SavedModel at {export_dir!r} (no saved_model.pb there): pass the version "
            "directory `tfblip export --output` wrote, e.g. saved_models/blip/1."
        )


class TFBlipSavedModelHandler(ModelHandler):
    """Runs a tfblip export's signature on batches of examples.

    Each example is a dict of that signature's inputs, one value per input (e.g.
    `{"image_bytes": b"..."}` for a caption export's `serving_default`); each prediction is a
    dict of the signature's outputs for that example, as numpy values (text decoded to str).

    A batch that fails is run again one example at a time: an example that fails alone gets
    an `ExampleError` as its inference, and the others their results.

    Args:
        export_dir: the export's version directory (any path `tf.io.gfile` reads: local,
            gs://, s3:// with tensorflow-io, hdfs://).
        signature: the signature's name, e.g. "serving_default", "image_embeds".
        min_batch_size, max_batch_size: the batch sizes Beam's BatchElements forms.

    Raises:
        FileNotFoundError: at construction, when `export_dir` holds no SavedModel.
    """

    def __init__(self, export_dir, signature="serving_default", min_batch_size=1, max_batch_size=8):
        super().__init__()
        _check_export(export_dir)
        self.export_dir = export_dir
        self.signature = signature
        self._batch_sizes = {"min_batch_size": min_batch_size, "max_batch_size": max_batch_size}

    def load_model(self):
        loaded = tf.saved_model.load(self.export_dir)
        if self.signature not in loaded.signatures:
            raise ValueError(
                f"The export {self.export_dir!r} has no signature {self.signature!r}; it has "
                f"{', '.join(sorted(loaded.signatures))}."
            )
        return loaded

    def run_inference(self, batch, model, inference_args=None):
        function = model.signatures[self.signature]
        try:
            rows = self._run(function, batch)
        except tf.errors.InvalidArgumentError as error:  # bad data; other errors fail loudly
            if len(batch) == 1:
                rows = [ExampleError(failure_reason(error))]
            else:
                rows = [self._run_alone(function, example) for example in batch]
        return [PredictionResult(example, row) for example, row in zip(batch, rows)]

    def _run_alone(self, function, example):
        try:
            return self._run(function, [example])[0]
        except tf.errors.InvalidArgumentError as error:
            return ExampleError(failure_reason(error))

    @staticmethod
    def _run(function, batch):
        """One call on the stacked batch; returns one {output: value} dict per example."""
        names = sorted(batch[0])
        inputs = {name: tf.constant([example[name] for example in batch]) for name in names}
        outputs = {name: value.numpy() for name, value in function(**inputs).items()}
        rows = []
        for index in range(len(batch)):
            row = {}
            for name, values in outputs.items():
                value = values[index]
                row[name] = value.decode("utf-8") if isinstance(value, bytes) else value
            rows.append(row)
        return rows

    def batch_elements_kwargs(self):
        return self._batch_sizes

    def get_metrics_namespace(self):
        return "tfblip"
