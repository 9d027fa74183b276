"""Runs exported SavedModels the way servers do: TensorFlow alone, no tfblip, no keras.

    python saved_model_client.py LOADER REQUESTS.json RESULTS.npz [SERVING_LOADER_BINARY]

LOADER is how each export is loaded and run:
- "tf2": `tf.saved_model.load` (the TF2 object loader) and its `signatures`;
- "session": a TF1 `Session` with `tf.compat.v1.saved_model.loader.load` and `Session.run` on
  the signature's tensor names, as `saved_model_cli run` does;
- "cpp": the C++ `tensorflow::LoadSavedModel` + `Session::Run` (`serving_loader.cc`, the path
  TF Serving's SavedModelBundle takes), run as its own process.

REQUESTS.json lists {"export_dir", "signature", "inputs": {name: value}, "key"}; string
inputs are lists of file paths prefixed "file:" (sent as the file's bytes) or plain strings.
Each request's outputs are saved as "KEY/OUTPUT" arrays; a request that fails stores its
error message as "KEY/error". The warm-up file of each export is replayed through the same
loader ("warmup:DIR:N/OUTPUT"), as TF Serving does at load. tfblip and keras are made
unimportable before TensorFlow loads, so the exports provably need neither.
"""

import json
import os
import subprocess
import sys
import tempfile

BLOCKED_MODULES = ("tfblip", "keras")
for _name in BLOCKED_MODULES:
    sys.modules[_name] = None  # `import keras` now raises ImportError

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2

WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")


def _tensor_proto(value):
    """A request input as the TensorProto a PredictRequest carries."""
    if isinstance(value, list) and value and isinstance(value[0], str):
        items = []
        for item in value:
            if item.startswith("file:"):
                with open(item[len("file:") :], "rb") as f:
                    items.append(f.read())
            else:
                items.append(item.encode("utf-8"))
        return tf.make_tensor_proto(items, dtype=tf.string)
    array = np.asarray(value)
    dtype = tf.float32 if array.dtype.kind == "f" else tf.int32
    return tf.make_tensor_proto(array, dtype=dtype)


def _array(array):
    """Output arrays as npz stores them without pickling: bytes decoded as UTF-8 text."""
    if array.dtype == object:
        return np.array([item.decode("utf-8") for item in array.ravel()]).reshape(array.shape)
    return array


def _warmup_requests(export_dir):
    from tensorflow_serving.apis import prediction_log_pb2

    requests = []
    path = os.path.join(export_dir, WARMUP_FILE)
    for index, record in enumerate(tf.data.TFRecordDataset(path)):
        request = prediction_log_pb2.PredictionLog.FromString(record.numpy()).predict_log.request
        requests.append(
            {
                "key": f"warmup:{export_dir}:{index}",
                "signature": request.model_spec.signature_name,
                "inputs": dict(request.inputs),
            }
        )
    return requests


def _run_tf2(export_dir, requests):
    signatures = tf.saved_model.load(export_dir).signatures
    for request in requests:
        inputs = {k: tf.constant(tf.make_ndarray(v)) for k, v in request["inputs"].items()}
        try:
            outputs = signatures[request["signature"]](**inputs)
        except tf.errors.InvalidArgumentError as error:
            yield request["key"], error.message
            continue
        yield request["key"], {name: tensor.numpy() for name, tensor in outputs.items()}


def _run_session(export_dir, requests):
    with tf.Graph().as_default(), tf.compat.v1.Session() as session:
        meta_graph = tf.compat.v1.saved_model.loader.load(session, ["serve"], export_dir)
        for request in requests:
            signature = meta_graph.signature_def[request["signature"]]
            feeds = {
                signature.inputs[k].name: tf.make_ndarray(v) for k, v in request["inputs"].items()
            }
            fetches = {name: info.name for name, info in signature.outputs.items()}
            try:
                outputs = session.run(fetches, feed_dict=feeds)
            except tf.errors.InvalidArgumentError as error:
                yield request["key"], error.message
                continue
            yield request["key"], outputs


def _run_cpp(export_dir, requests, binary):
    """All requests of one export through one `serving_loader` process."""
    with tempfile.TemporaryDirectory() as directory:
        lines = []
        for index, request in enumerate(requests):
            fields = [request["signature"], os.path.join(directory, str(index))]
            for name, proto in request["inputs"].items():
                path = os.path.join(directory, f"{index}.in.{name}.pb")
                with open(path, "wb") as f:
                    f.write(proto.SerializeToString())
                fields.append(f"{name}={path}")
            lines.append("\t".join(fields))
        manifest = os.path.join(directory, "manifest.tsv")
        with open(manifest, "w") as f:
            f.write("\n".join(lines) + "\n")
        completed = subprocess.run(
            [binary, export_dir, manifest], capture_output=True, text=True, check=False
        )
        if completed.returncode != 0:
            raise RuntimeError(f"serving_loader failed on {export_dir}:\n{completed.stderr}")
        for index, request in enumerate(requests):
            prefix = f"{index}."
            error = os.path.join(directory, f"{index}.error")
            if os.path.exists(error):
                with open(error) as f:
                    yield request["key"], f.read()
                continue
            outputs = {}
            for name in os.listdir(directory):
                if name.startswith(prefix) and not name.startswith(f"{index}.in."):
                    with open(os.path.join(directory, name), "rb") as f:
                        proto = tensor_pb2.TensorProto.FromString(f.read())
                    outputs[name[len(prefix) : -len(".pb")]] = tf.make_ndarray(proto)
            yield request["key"], outputs


def main(loader, requests_path, results_path, binary=None):
    with open(requests_path) as f:
        requests = json.load(f)
    by_export = {}
    for request in requests:
        request = {**request, "inputs": {k: _tensor_proto(v) for k, v in request["inputs"].items()}}
        by_export.setdefault(request["export_dir"], []).append(request)
    results = {}
    for export_dir, export_requests in by_export.items():
        # Warm-up first, as TF Serving replays it at load before any request.
        export_requests = _warmup_requests(export_dir) + export_requests
        if loader == "tf2":
            answers = _run_tf2(export_dir, export_requests)
        elif loader == "session":
            answers = _run_session(export_dir, export_requests)
        else:
            answers = _run_cpp(export_dir, export_requests, binary)
        signatures = {request["key"]: request["signature"] for request in export_requests}
        for key, answer in answers:
            results[f"{key}/signature"] = np.array(signatures[key])
            if isinstance(answer, str):
                results[f"{key}/error"] = np.array(answer)
                continue
            for name, array in answer.items():
                results[f"{key}/{name}"] = _array(np.asarray(array))
    results["blocked"] = np.array([m for m in BLOCKED_MODULES if sys.modules[m] is None])
    np.savez(results_path, **results)


if __name__ == "__main__":
    main(*sys.argv[1:])
