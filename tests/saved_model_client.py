"""Runs exported SavedModels the way TF Serving does: TensorFlow alone, no tfblip, no keras.

    python saved_model_client.py REQUESTS.json RESULTS.npz

REQUESTS.json lists {"export_dir", "signature", "inputs": {name: value}, "key"}; string
inputs are lists of file paths prefixed "file:" (sent as the file's bytes) or plain strings.
Each request's outputs are saved as "KEY/OUTPUT" arrays; a request that fails stores its
error message as "KEY/error". The warm-up file of each export is replayed too
("warmup:DIR:N/OUTPUT"). tfblip and keras are made unimportable before TensorFlow loads, so
the exports provably need neither.
"""

import json
import os
import sys

BLOCKED_MODULES = ("tfblip", "keras")
for _name in BLOCKED_MODULES:
    sys.modules[_name] = None  # `import keras` now raises ImportError

import numpy as np
import tensorflow as tf


def _value(value):
    if isinstance(value, list) and value and isinstance(value[0], str):
        items = []
        for item in value:
            if item.startswith("file:"):
                with open(item[len("file:") :], "rb") as f:
                    items.append(f.read())
            else:
                items.append(item.encode("utf-8"))
        return tf.constant(items, tf.string)
    return tf.constant(value)


def _array(tensor):
    """Output arrays as npz stores them without pickling: bytes decoded as UTF-8 text."""
    array = tensor.numpy()
    if array.dtype == object:
        return np.array([item.decode("utf-8") for item in array.ravel()]).reshape(array.shape)
    return array


def _replay_warmup(export_dir, loaded, results):
    path = os.path.join(export_dir, "assets.extra", "tf_serving_warmup_requests")
    from tensorflow_serving.apis import prediction_log_pb2

    for index, record in enumerate(tf.data.TFRecordDataset(path)):
        log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
        request = log.predict_log.request
        inputs = {k: tf.constant(tf.make_ndarray(v)) for k, v in request.inputs.items()}
        outputs = loaded.signatures[request.model_spec.signature_name](**inputs)
        key = f"warmup:{export_dir}:{index}"
        results[f"{key}/signature"] = np.array(request.model_spec.signature_name)
        for name, tensor in outputs.items():
            results[f"{key}/{name}"] = _array(tensor)


def main(requests_path, results_path):
    with open(requests_path) as f:
        requests = json.load(f)
    loaded_models = {}
    results = {}
    for request in requests:
        export_dir = request["export_dir"]
        if export_dir not in loaded_models:
            loaded_models[export_dir] = tf.saved_model.load(export_dir)
            _replay_warmup(export_dir, loaded_models[export_dir], results)
        function = loaded_models[export_dir].signatures[request["signature"]]
        inputs = {name: _value(value) for name, value in request["inputs"].items()}
        try:
            outputs = function(**inputs)
        except tf.errors.InvalidArgumentError as error:
            results[f"{request['key']}/error"] = np.array(error.message)
            continue
        for name, tensor in outputs.items():
            results[f"{request['key']}/{name}"] = _array(tensor)
    results["blocked"] = np.array([m for m in BLOCKED_MODULES if sys.modules[m] is None])
    np.savez(results_path, **results)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
