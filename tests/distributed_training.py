"""A few fit() steps of a tiny captioning model, on one device or under a tf.distribute strategy.

    python distributed_training.py MODE WEIGHTS RESULT.json

MODE: "single", "mirrored" (MirroredStrategy over 2 logical CPU devices) or "worker" (one
process of a MultiWorkerMirroredStrategy; TF_CONFIG describes the cluster). Every mode starts
from the same WEIGHTS (.weights.h5) and trains on the same global batches; the per-step losses
and a checksum of the final weights go to RESULT.json (written by worker 0 only).
"""

import json
import os
import sys

import numpy as np
from reference import TEXT_CONFIG, tiny_config_kwargs

STEPS = 3
GLOBAL_BATCH = 8


def build_model():
    import tfblip

    config = tfblip.BlipConfig(**tiny_config_kwargs())
    return tfblip.TFBlipForConditionalGeneration(config)


def batches():
    """STEPS global batches whose halves hold different numbers of caption tokens, so a
    per-replica mean would differ from the global one."""
    rng = np.random.default_rng(0)
    size = STEPS * GLOBAL_BATCH
    pixels = rng.normal(size=(size, 3, 30, 30)).astype(np.float32)
    ids = rng.integers(5, 90, size=(size, 9)).astype(np.int32)
    ids[:, 0] = TEXT_CONFIG["bos_token_id"]
    lengths = rng.integers(3, 10, size=size)
    mask = (np.arange(9)[None, :] < lengths[:, None]).astype(np.int32)
    ids = np.where(mask == 1, ids, 0)
    labels = np.where(mask == 1, ids, -100).astype(np.int32)
    return {"pixel_values": pixels, "input_ids": ids, "attention_mask": mask, "labels": labels}


def train(strategy, weights_path):
    import keras
    import tensorflow as tf

    import tfblip  # noqa: F401  (registers the models before the strategy scope)

    with strategy.scope():
        model = build_model()
        model.load_weights(weights_path)
        model.compile(optimizer=keras.optimizers.AdamW(learning_rate=1e-3))
    dataset = tf.data.Dataset.from_tensor_slices(batches()).batch(GLOBAL_BATCH)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    dataset = dataset.with_options(options)
    history = model.fit(dataset, epochs=STEPS, steps_per_epoch=1, verbose=0, shuffle=False)
    checksum = float(sum(np.abs(w.numpy()).sum() for w in model.weights))
    return {"losses": history.history["loss"], "checksum": checksum}


def main(mode, weights_path, result_path):
    import tensorflow as tf

    if mode == "mirrored":
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2
        )
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    elif mode == "worker":
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    elif mode == "single":
        strategy = tf.distribute.get_strategy()
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    result = train(strategy, weights_path)
    result["replicas"] = strategy.num_replicas_in_sync
    task = json.loads(os.environ.get("TF_CONFIG", "{}")).get("task", {})
    if task.get("index", 0) == 0:
        with open(result_path, "w") as f:
            json.dump(result, f)


if __name__ == "__main__":
    main(*sys.argv[1:4])
