"""from_pretrained builds a model without values and gives each weight its checkpoint tensor once.

See tfblip/checkpoints/deferred.py (the Keras internals this relies on, each use checked) and
`build_from_checkpoint` in tfblip/checkpoints/loading.py.
"""

import gc
import json
import os
import subprocess
import sys
import textwrap
import weakref
from pathlib import Path

import keras
import ml_dtypes
import numpy as np
import pytest
from reference import reference_model
from safetensors.numpy import load_file

import tfblip
from tfblip.checkpoints import deferred, load_weights, loading, open_checkpoint
from tfblip.checkpoints.names import pytorch_state_dict
from tfblip.errors import CheckpointError

TASK_CLASSES = {
    "BlipForConditionalGeneration": tfblip.TFBlipForConditionalGeneration,
    "BlipForImageTextRetrieval": tfblip.TFBlipForImageTextRetrieval,
    "BlipModel": tfblip.TFBlipModel,
}


@pytest.fixture(scope="module")
def caption_checkpoint(tmp_path_factory):
    directory = tmp_path_factory.mktemp("caption")
    reference_model("BlipForConditionalGeneration", seed=30).save_pretrained(directory)
    return directory


def checkpoint_tensors(directory):
    return load_file(Path(directory) / "model.safetensors")


def assert_weights_are(model, tensors, dtype=np.float32):
    state = pytorch_state_dict(model)
    assert state.keys() == tensors.keys()
    for key, value in tensors.items():
        assert state[key].dtype == dtype, key
        assert np.array_equal(state[key], value.astype(dtype)), key


def forbid_initializers(monkeypatch):
    """Makes every Keras initializer raise when it is asked for a value."""

    def refuse(self, *args, **kwargs):
        raise AssertionError(f"{type(self).__name__} ran")

    for name in dir(keras.initializers):
        candidate = getattr(keras.initializers, name)
        if isinstance(candidate, type) and issubclass(candidate, keras.initializers.Initializer):
            monkeypatch.setattr(candidate, "__call__", refuse)


@pytest.mark.parametrize("class_name", TASK_CLASSES)
def test_every_weight_is_its_checkpoint_tensor(class_name, tmp_path):
    reference_model(class_name, seed=31).save_pretrained(tmp_path)
    model = TASK_CLASSES[class_name].from_pretrained(tmp_path)
    assert_weights_are(model, checkpoint_tensors(tmp_path))


def test_loading_runs_no_initializer(caption_checkpoint, monkeypatch):
    forbid_initializers(monkeypatch)
    model = tfblip.TFBlipForConditionalGeneration.from_pretrained(caption_checkpoint)
    assert_weights_are(model, checkpoint_tensors(caption_checkpoint))
    # Keras initializes the variables it still lists as pending when a StatelessScope closes,
    # as every symbolic call does: the loaded ones must not be among them.
    with keras.StatelessScope():
        pass
    assert_weights_are(model, checkpoint_tensors(caption_checkpoint))


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda t: t.pop("vision_model.post_layernorm.weight"), "missing tensors"),
        (lambda t: t.update(extra=np.zeros(2, np.float32)), "unexpected tensors"),
        (
            lambda t: t.update({"vision_model.post_layernorm.weight": np.zeros(5, np.float32)}),
            "wrong shapes",
        ),
    ],
)
def test_a_checkpoint_that_does_not_fit_initializes_nothing(
    caption_checkpoint, change, message, monkeypatch
):
    tensors = checkpoint_tensors(caption_checkpoint)
    change(tensors)
    config = tfblip.BlipConfig.from_pretrained(caption_checkpoint)
    built = []

    def build():
        built.append(weakref.ref(tfblip.TFBlipForConditionalGeneration(config)))
        return built[-1]()

    read = []
    monkeypatch.setattr(loading, "_keras_tensor", lambda *args: read.append(args))
    forbid_initializers(monkeypatch)
    with pytest.raises(CheckpointError, match=message):
        loading.build_from_checkpoint(build, tensors)
    assert read == []
    # Nothing keeps the half-built model: neither a reference nor Keras's pending list, whose
    # variables the next StatelessScope to close would initialize (and the patch refuse).
    with keras.StatelessScope():
        pass
    gc.collect()
    assert built[0]() is None


@pytest.mark.parametrize("dtype", ["bfloat16", "mixed_bfloat16"])
def test_dtype_policies(caption_checkpoint, dtype):
    model = tfblip.TFBlipForConditionalGeneration.from_pretrained(caption_checkpoint, dtype=dtype)
    variable_dtype = ml_dtypes.bfloat16 if dtype == "bfloat16" else np.float32
    assert_weights_are(model, checkpoint_tensors(caption_checkpoint), dtype=variable_dtype)


def test_dropout_seed_states_get_their_own_values(caption_checkpoint, tmp_path):
    directory = tmp_path / "dropout"
    directory.mkdir()
    for name in ("model.safetensors", "generation_config.json"):
        (directory / name).symlink_to(Path(caption_checkpoint) / name)
    config = json.loads((Path(caption_checkpoint) / "config.json").read_text())
    config["text_config"]["hidden_dropout_prob"] = 0.5
    (directory / "config.json").write_text(json.dumps(config))
    model = tfblip.TFBlipForConditionalGeneration.from_pretrained(directory)
    assert len(model.variables) > len(model.weights)  # the seed states of the dropout layers
    pixels = np.zeros((1, 3, 30, 30), np.float32)
    ids = np.array([[97, 5, 6, 7]])
    # An eager training call advances each seed state: it fails on a variable with no value.
    first = model(pixel_values=pixels, input_ids=ids, training=True).logits
    second = model(pixel_values=pixels, input_ids=ids, training=True).logits
    assert not np.array_equal(first, second)


def test_state_dict_arrays_are_copied_not_shared(caption_checkpoint):
    tensors = checkpoint_tensors(caption_checkpoint)
    expected = {key: value.copy() for key, value in tensors.items()}
    config = tfblip.BlipConfig.from_pretrained(caption_checkpoint)
    model = loading.build_from_checkpoint(
        lambda: tfblip.TFBlipForConditionalGeneration(config), tensors
    )
    for value in tensors.values():
        value[...] = 0
    assert_weights_are(model, expected)


def test_load_weights_in_slices(caption_checkpoint, monkeypatch):
    # Slices of a few rows: transposed kernels take them as columns, the others as rows.
    monkeypatch.setattr(loading, "_CHUNK_BYTES", 256)
    model = tfblip.TFBlipForConditionalGeneration(
        tfblip.BlipConfig.from_pretrained(caption_checkpoint)
    )
    load_weights(model, open_checkpoint(str(caption_checkpoint)))
    assert_weights_are(model, checkpoint_tensors(caption_checkpoint))


def test_safetensors_arrays_start_on_tensorflow_alignment(caption_checkpoint):
    # TensorFlow takes these arrays over through DLPack and aborts on a misaligned one.
    source = open_checkpoint(str(caption_checkpoint))
    for key in sorted(source.keys()):
        assert source.get(key).ctypes.data % 64 == 0, key
        if source.shape(key):
            assert source.get(key, slice(1, 2)).ctypes.data % 64 == 0, key


# ----------------------------------------------------------------------------- Keras changes


def test_a_weight_without_a_tensor_is_named(caption_checkpoint, monkeypatch):
    tensors = checkpoint_tensors(caption_checkpoint)
    dropped = "vision_model.post_layernorm.bias"
    del tensors[dropped]
    all_named = loading.pytorch_named_variables
    monkeypatch.setattr(
        loading,
        "pytorch_named_variables",
        lambda model: {k: v for k, v in all_named(model).items() if k != dropped},
    )
    config = tfblip.BlipConfig.from_pretrained(caption_checkpoint)
    with pytest.raises(RuntimeError, match="post_layernorm/beta has no tensor"):
        loading.build_from_checkpoint(
            lambda: tfblip.TFBlipForConditionalGeneration(config), tensors
        )


def test_keras_ignoring_the_given_initializer_is_an_error(monkeypatch):
    layer = deferred.build_uninitialized(_built_dense)
    variable = layer.kernel

    def initialize_with_zeros(self):
        self._initialize(np.zeros(self.shape, "float32"))

    monkeypatch.setattr(type(variable), "_deferred_initialize", initialize_with_zeros)
    with pytest.raises(RuntimeError, match="without calling the initializer"):
        deferred.initialize(variable, lambda shape, dtype: np.ones(shape, dtype))


def _built_dense():
    layer = keras.layers.Dense(2)
    layer.build((None, 3))
    return layer


def test_keras_creating_values_anyway_is_an_error():
    already_built = _built_dense()
    with pytest.raises(RuntimeError, match="created .*kernel with a value"):
        deferred.build_uninitialized(lambda: already_built)


def test_an_initial_value_of_the_wrong_shape_is_refused():
    layer = deferred.build_uninitialized(_built_dense)
    with pytest.raises(ValueError, match=r"shape \(3, 2\); its initial value has shape \(2, 3\)"):
        deferred.initialize(layer.kernel, lambda shape, dtype: np.ones((2, 3), dtype))


# ----------------------------------------------------------------------------- whole process


def test_under_a_distribution_strategy_each_replica_holds_the_checkpoint(caption_checkpoint):
    script = textwrap.dedent(
        """
        import sys
        import keras
        import numpy as np
        import tensorflow as tf
        from safetensors.numpy import load_file

        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2
        )
        import tfblip
        from tfblip.checkpoints import pytorch_named_variables

        def refuse(self, *args, **kwargs):
            raise AssertionError(type(self).__name__ + " ran")

        for name in dir(keras.initializers):
            candidate = getattr(keras.initializers, name)
            if isinstance(candidate, type) and issubclass(
                candidate, keras.initializers.Initializer
            ):
                candidate.__call__ = refuse

        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        with strategy.scope():
            model = tfblip.TFBlipForConditionalGeneration.from_pretrained(sys.argv[1])
        tensors = load_file(sys.argv[1] + "/model.safetensors")
        key = "text_decoder.bert.encoder.layer.1.crossattention.self.key.weight"
        variable, _ = pytorch_named_variables(model)[key]
        replicas = variable.value.values
        assert len(replicas) == 2
        for replica in replicas:
            assert np.array_equal(replica.numpy(), tensors[key].T)
        print("ok")
        """
    )
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run(
        [sys.executable, "-c", script, str(caption_checkpoint)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("ok")
