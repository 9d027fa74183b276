"""TF Serving warm-up requests: `assets.extra/tf_serving_warmup_requests`.

TF Serving replays the records of this file (a TFRecord of `tensorflow.serving.PredictionLog`
protos) when it loads a model version, so the graph is built and its kernels are initialized
before the first real request. The protos are written by hand here (a few nested messages)
so that exporting needs no tensorflow-serving-api package; the tests parse the file with
that package's own classes.
"""

import os

import tensorflow as tf

WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")

# Field numbers of tensorflow_serving/apis/{prediction_log,predict,model}.proto.
_PREDICTION_LOG_PREDICT_LOG = 6
_PREDICT_LOG_REQUEST = 1
_PREDICT_REQUEST_MODEL_SPEC = 1
_PREDICT_REQUEST_INPUTS = 2
_MODEL_SPEC_NAME = 1
_MODEL_SPEC_SIGNATURE_NAME = 3
_MAP_ENTRY_KEY = 1
_MAP_ENTRY_VALUE = 2


def _varint(value):
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def _field(number, payload):
    """A length-delimited protobuf field (wire type 2): strings, bytes and sub-messages."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def prediction_log(signature_name, inputs, model_name=""):
    """A serialized PredictionLog holding one PredictRequest.

    Args:
        signature_name: the serving signature the request calls.
        inputs: input names to arrays (anything `tf.make_tensor_proto` takes).
        model_name: the model name of the request's model spec, if any.

    Returns:
        The record's bytes.
    """
    model_spec = _field(_MODEL_SPEC_SIGNATURE_NAME, signature_name.encode())
    if model_name:
        model_spec = _field(_MODEL_SPEC_NAME, model_name.encode()) + model_spec
    request = _field(_PREDICT_REQUEST_MODEL_SPEC, model_spec)
    for name in sorted(inputs):
        tensor = tf.make_tensor_proto(inputs[name]).SerializeToString()
        entry = _field(_MAP_ENTRY_KEY, name.encode()) + _field(_MAP_ENTRY_VALUE, tensor)
        request += _field(_PREDICT_REQUEST_INPUTS, entry)
    predict_log = _field(_PREDICT_LOG_REQUEST, request)
    return _field(_PREDICTION_LOG_PREDICT_LOG, predict_log)


def write_warmup_requests(export_dir, requests):
    """Write TensorFlow Serving's warm-up file of an export.

    Args:
        export_dir: the SavedModel directory.
        requests: (signature_name, inputs) pairs, as :func:`prediction_log` takes them.

    Returns:
        The path of the file written (``assets.extra/tf_serving_warmup_requests``).
    """
    path = os.path.join(export_dir, WARMUP_FILE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path) as writer:
        for signature_name, inputs in requests:
            writer.write(prediction_log(signature_name, inputs))
    return path
