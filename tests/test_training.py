"""Fine-tuning with Keras: compile() + fit()/evaluate()/predict(), callbacks, distribution."""

import json
import os
import socket
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
import torch
import transformers
from reference import TEXT_CONFIG, VISION_CONFIG
from tensorflow.core.protobuf import config_pb2, rewriter_config_pb2
from tensorflow.python.eager import context

import tfblip
from tfblip.ops.graph_rewrites import lean_graph_rewrites, lean_rewriter_config

HERE = os.path.dirname(__file__)
# VQA needs the vision width to equal the text width.
CONFIG = tfblip.BlipConfig(
    text_config=TEXT_CONFIG,
    vision_config={**VISION_CONFIG, "hidden_size": 32},
    projection_dim=16,
    image_text_hidden_size=12,
)


def caption_batch(size=8, seed=0):
    """Captions of different lengths: ids start with bos, labels are -100 at padding."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, 90, size=(size, 7)).astype(np.int32)
    ids[:, 0] = TEXT_CONFIG["bos_token_id"]
    lengths = rng.integers(3, 8, size=size)
    mask = (np.arange(7)[None, :] < lengths[:, None]).astype(np.int32)
    ids = np.where(mask == 1, ids, TEXT_CONFIG["pad_token_id"])
    return {
        "pixel_values": rng.normal(size=(size, 3, 30, 30)).astype(np.float32),
        "input_ids": ids,
        "attention_mask": mask,
        "labels": np.where(mask == 1, ids, -100).astype(np.int32),
    }


def task_batch(task):
    batch = caption_batch()
    if task == "itm":
        batch["labels"] = np.array([1, 0] * 4, np.int32)
    elif task in ("itc", "features"):
        del batch["labels"]
    return batch


def task_model(task):
    model_class = {
        "caption": tfblip.TFBlipForConditionalGeneration,
        "vqa": tfblip.TFBlipForQuestionAnswering,
        "itm": tfblip.TFBlipForImageTextRetrieval,
        "itc": tfblip.TFBlipForImageTextRetrieval,
        "features": tfblip.TFBlipModel,
    }[task]
    keras.utils.set_random_seed(0)
    model = model_class(CONFIG)
    if task == "itc":
        model.objective = "itc"
    return model


def dataset(batch, batch_size=4):
    return tf.data.Dataset.from_tensor_slices(batch).batch(batch_size)


@pytest.mark.filterwarnings("ignore:Gradients do not exist")
@pytest.mark.parametrize("task", ["caption", "vqa", "itm", "itc", "features"])
def test_fit_evaluate_predict(task):
    model = task_model(task)
    model.compile(optimizer=keras.optimizers.AdamW(learning_rate=3e-3))
    data = dataset(task_batch(task))
    before = model.evaluate(data, verbose=0)
    history = model.fit(data, epochs=4, verbose=0)
    after = model.evaluate(data, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    assert after < before, (task, before, after)
    predictions = model.predict(data, verbose=0)
    first_field = {
        "caption": "logits",
        "vqa": "decoder_logits",
        "itm": "itm_score",
        "itc": "itm_score",
        "features": "logits_per_image",
    }[task]
    assert predictions[first_field].shape[0] == 8


def test_fit_loss_is_the_models_loss():
    model = task_model("caption")
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.0))
    batch = caption_batch()
    expected = model(**batch).loss
    assert model.evaluate(dataset(batch, 8), verbose=0) == pytest.approx(float(expected), 1e-6)


def test_frozen_vision_tower_stays_unchanged():
    model = task_model("caption")
    model.vision_model.trainable = False
    vision_before = [w.numpy().copy() for w in model.vision_model.weights]
    text_before = [w.numpy().copy() for w in model.text_decoder.trainable_weights]
    model.compile(optimizer=keras.optimizers.AdamW(learning_rate=1e-3))
    model.fit(dataset(caption_batch()), epochs=1, verbose=0)
    for before, weight in zip(vision_before, model.vision_model.weights):
        np.testing.assert_array_equal(before, weight.numpy())
    changed = [
        not np.array_equal(b, w.numpy())
        for b, w in zip(text_before, model.text_decoder.trainable_weights)
    ]
    assert all(changed)


def test_fit_errors_are_clear():
    model = task_model("caption")
    model.compile(optimizer="adam", loss="mse")
    with pytest.raises(ValueError, match="computes its own loss"):
        model.fit(dataset(caption_batch()), epochs=1, verbose=0)
    model = task_model("itm")
    model.compile(optimizer="adam")
    with pytest.raises(ValueError, match="labels"):
        model.fit(dataset(task_batch("itc")), epochs=1, verbose=0)


def test_model_checkpoint_and_backup_and_restore(tmp_path):
    batch = caption_batch()
    model = task_model("caption")
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.1))
    best = tmp_path / "best.weights.h5"
    checkpoint = keras.callbacks.ModelCheckpoint(
        str(best), save_weights_only=True, monitor="loss", save_best_only=True
    )
    model.fit(dataset(batch), epochs=2, verbose=0, callbacks=[checkpoint])
    restored = task_model("caption")
    restored.load_weights(str(best))
    for a, b in zip(model.weights, restored.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())

    full = tmp_path / "model.keras"
    model.fit(
        dataset(batch), epochs=1, verbose=0, callbacks=[keras.callbacks.ModelCheckpoint(str(full))]
    )
    loaded = keras.models.load_model(str(full))
    np.testing.assert_allclose(loaded(**batch).loss, model(**batch).loss, rtol=1e-6)

    # Uninterrupted: 4 epochs of SGD (stateless, so a resumed run can match exactly).
    reference = task_model("caption")
    reference.compile(optimizer=keras.optimizers.SGD(learning_rate=0.1))
    reference.fit(dataset(batch), epochs=4, verbose=0)

    class Interrupt(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise RuntimeError("interrupted")

    backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))
    interrupted = task_model("caption")
    interrupted.compile(optimizer=keras.optimizers.SGD(learning_rate=0.1))
    with pytest.raises(RuntimeError, match="interrupted"):
        interrupted.fit(dataset(batch), epochs=4, verbose=0, callbacks=[backup, Interrupt()])
    resumed = task_model("caption")
    resumed.compile(optimizer=keras.optimizers.SGD(learning_rate=0.1))
    history = resumed.fit(dataset(batch), epochs=4, verbose=0, callbacks=[backup])
    assert len(history.history["loss"]) == 2  # epochs 3 and 4 only
    for a, b in zip(reference.weights, resumed.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-6)


def test_fine_tuned_checkpoint_loads_in_transformers(tmp_path):
    batch = caption_batch()
    model = task_model("caption")
    model.compile(optimizer=keras.optimizers.AdamW(learning_rate=1e-3))
    model.fit(dataset(batch), epochs=2, verbose=0)
    model.save_pretrained(tmp_path)
    reference = transformers.BlipForConditionalGeneration.from_pretrained(tmp_path).eval()
    inputs = {k: torch.from_numpy(v).long() for k, v in batch.items() if k != "pixel_values"}
    with torch.no_grad():
        expected = reference(pixel_values=torch.from_numpy(batch["pixel_values"]), **inputs)
    ours = model(**batch)
    np.testing.assert_allclose(ours.logits, expected.logits.numpy(), atol=1e-4)
    np.testing.assert_allclose(ours.loss, expected.loss.item(), rtol=1e-5)


RewriterConfig = rewriter_config_pb2.RewriterConfig


def current_rewrite_options():
    """The Grappler options functions called now (in this thread) are optimised with."""
    serialized = context.context().function_call_options.config_proto_serialized
    return config_pb2.ConfigProto.FromString(serialized).graph_options.rewrite_options


def recording_model(fast_first_step):
    """A captioning model that records, each time its train or test step is traced, the
    Grappler options in force (the step functions are traced inside the calls that run them)."""
    seen = {"train": [], "test": []}

    class Recording(tfblip.TFBlipForConditionalGeneration):
        def train_step(self, data):
            seen["train"].append(current_rewrite_options())
            return super().train_step(data)

        def test_step(self, data):
            seen["test"].append(current_rewrite_options())
            return super().test_step(data)

    keras.utils.set_random_seed(0)
    model = Recording(CONFIG)
    model.fast_first_step = fast_first_step
    model.compile(optimizer=keras.optimizers.AdamW(learning_rate=1e-3))
    return model, seen


def test_fit_traces_the_train_step_once_and_runs_it_under_lean_grappler_options():
    data = dataset(caption_batch())
    model, seen = recording_model(fast_first_step=True)
    model.fit(data, validation_data=data, epochs=2, verbose=0)
    assert len(seen["train"]) == 1
    for options in seen["train"] + seen["test"]:
        assert options.meta_optimizer_iterations == RewriterConfig.ONE
        assert options.disable_tfg_optimizer
    assert current_rewrite_options() == RewriterConfig()  # only inside the calls

    # Keras' and TensorFlow's defaults: the optimizer's variables, created while the step is
    # traced, make TensorFlow trace it again; Grappler gets the process's options.
    model, seen = recording_model(fast_first_step=False)
    model.fit(data, validation_data=data, epochs=2, verbose=0)
    assert len(seen["train"]) == 2
    assert all(options == RewriterConfig() for options in seen["train"] + seen["test"])


def test_lean_grappler_options_keep_what_the_user_set():
    config = config_pb2.ConfigProto()
    config.graph_options.rewrite_options.layout_optimizer = RewriterConfig.ON
    config.graph_options.rewrite_options.meta_optimizer_iterations = RewriterConfig.TWO
    lean = lean_rewriter_config(config).graph_options.rewrite_options
    assert lean.layout_optimizer == RewriterConfig.ON
    assert lean.meta_optimizer_iterations == RewriterConfig.TWO
    assert lean.memory_optimization == RewriterConfig.NO_MEM_OPT
    assert lean.disable_tfg_optimizer
    assert config.graph_options.rewrite_options.memory_optimization == RewriterConfig.DEFAULT

    on_gpu = lean_rewriter_config(config_pb2.ConfigProto(), gpu=True).graph_options
    assert on_gpu.rewrite_options.memory_optimization == RewriterConfig.DEFAULT
    assert on_gpu.rewrite_options.layout_optimizer == RewriterConfig.DEFAULT
    assert on_gpu.rewrite_options.meta_optimizer_iterations == RewriterConfig.ONE

    with pytest.raises(RuntimeError, match="inside"), lean_graph_rewrites():
        assert current_rewrite_options().meta_optimizer_iterations == RewriterConfig.ONE
        raise RuntimeError("inside")
    assert current_rewrite_options() == RewriterConfig()


def test_lean_grappler_options_train_to_the_same_weights():
    weights = []
    for lean in (True, False):
        model = task_model("caption")
        model.fast_first_step = lean
        model.compile(optimizer=keras.optimizers.AdamW(learning_rate=1e-3))
        model.fit(dataset(caption_batch()), epochs=2, verbose=0)
        weights.append([w.numpy() for w in model.trainable_weights])
    # One meta-optimizer iteration may fuse a MatMul with its bias add where two fuse it
    # further: the same math, rounded in another order (differences ~1e-9 after two steps).
    for lean, default in zip(*weights):
        np.testing.assert_allclose(lean, default, rtol=1e-4, atol=1e-8)


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def test_distributed_training_matches_one_device(tmp_path):
    """MirroredStrategy on 2 logical CPUs and MultiWorkerMirroredStrategy with 2 processes
    give the losses and final weights of AdamW training on one device."""
    script = os.path.join(HERE, "distributed_training.py")
    sys.path.insert(0, HERE)
    try:
        import distributed_training
    finally:
        sys.path.remove(HERE)
    weights = str(tmp_path / "initial.weights.h5")
    distributed_training.build_model().save_weights(weights)
    workers = [f"localhost:{port}" for port in _free_ports(2)]
    runs = {"single": [{}], "mirrored": [{}], "worker": []}
    for index in range(2):
        cluster = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        runs["worker"].append({"TF_CONFIG": json.dumps(cluster)})
    processes = []
    for mode, environments in runs.items():
        for extra in environments:
            env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **extra}
            command = [sys.executable, script, mode, weights, str(tmp_path / f"{mode}.json")]
            processes.append(
                subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            )
    for process in processes:
        _, stderr = process.communicate(timeout=600)
        assert process.returncode == 0, stderr.decode()[-3000:]
    results = {mode: json.loads((tmp_path / f"{mode}.json").read_text()) for mode in runs}
    assert results["single"]["replicas"] == 1
    single = results["single"]["losses"]
    assert len(single) == distributed_training.STEPS and len(set(single)) == len(single)
    for mode in ("mirrored", "worker"):
        assert results[mode]["replicas"] == 2
        np.testing.assert_allclose(results[mode]["losses"], single, atol=1e-4, err_msg=mode)
        assert results[mode]["checksum"] == pytest.approx(results["single"]["checksum"], 1e-5)


def _run_workers(script, result_path, count=2):
    """Runs `script RESULT` as `count` workers of one MultiWorkerMirroredStrategy cluster."""
    workers = [f"localhost:{port}" for port in _free_ports(count)]
    processes = []
    for index in range(count):
        cluster = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "TF_CONFIG": json.dumps(cluster)}
        command = [sys.executable, script, str(result_path)]
        processes.append(
            subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        )
    for process in processes:
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr.decode()[-3000:]
    return json.loads(result_path.read_text())


def test_keras_multi_worker_bugs_still_need_the_workarounds(tmp_path):
    """Each Keras bug that tfblip/modeling/multi_worker_fit.py works around still breaks a
    plain keras.Model under a two-worker MultiWorkerMirroredStrategy, and the workarounds
    still fix it. When a Keras release fixes a bug, this names the override to remove."""
    results = _run_workers(
        os.path.join(HERE, "multi_worker_keras_bugs.py"), tmp_path / "result.json"
    )
    assert results["worked_around_fit"] is None, results["worked_around_fit"]
    assert results["worked_around_train_on_batch"] is None, results["worked_around_train_on_batch"]
    symbolic_build = results["plain_fit"] or "fit() ran"
    assert "Attempt to convert a value" in symbolic_build and "PerReplica" in symbolic_build, (
        "Keras fixed the reduce of the first (dict) input batch in "
        "TensorFlowTrainer._maybe_symbolic_build under MultiWorkerMirroredStrategy: remove the "
        "override _maybe_symbolic_build in tfblip/modeling/multi_worker_fit.py. "
        f"(A plain model's fit(): {symbolic_build})"
    )
    scalar_logs = results["plain_train_on_batch"] or "train_on_batch() ran"
    assert "Invalid reduction dimension 0" in scalar_logs, (
        "Keras fixed keras-team/keras#20585 (scalar logs reduced with axis=0 across workers): "
        "remove the overrides train_step, test_step and _reducible_across_workers in "
        f"tfblip/modeling/multi_worker_fit.py. (A plain model's train_on_batch(): {scalar_logs})"
    )
