"""scripts/finetune.py end to end on a tiny checkpoint and a JSONL dataset of real photos."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import transformers
from PIL import Image
from reference import tiny_config_kwargs
from skimage import data
from test_processing import _build_vocab, _write_salesforce_dir

import tfblip

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "scripts", "finetune.py")


def _checkpoint(directory):
    vocab = _build_vocab()
    _write_salesforce_dir(directory, vocab, transformers.BlipImageProcessorPil(size=30))
    text = {"vocab_size": len(vocab) + 2, "bos_token_id": len(vocab), "sep_token_id": 102}
    keras.utils.set_random_seed(0)
    config = tfblip.BlipConfig(**tiny_config_kwargs(text=text))
    tfblip.TFBlipForConditionalGeneration(config).save_pretrained(directory)


def _jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def test_finetune_script_trains_saves_and_exports(tmp_path):
    checkpoint = tmp_path / "checkpoint"
    _checkpoint(checkpoint)
    images = tmp_path / "images"
    images.mkdir()
    photos = {"astronaut": data.astronaut(), "cat": data.chelsea(), "coffee": data.coffee()}
    for name, array in photos.items():
        Image.fromarray(array).save(images / f"{name}.jpg")
    _jsonl(
        tmp_path / "train.jsonl",
        [
            {"image": "images/astronaut.jpg", "text": "an astronaut"},
            {"image": "images/cat.jpg", "text": "a cat on a couch"},
            {"image": "images/coffee.jpg", "text": "a cup of coffee"},
        ],
    )
    _jsonl(tmp_path / "val.jsonl", [{"image": "images/cat.jpg", "text": "a cat on a couch"}])
    output, export = tmp_path / "finetuned", tmp_path / "saved_models" / "blip" / "1"
    command = [sys.executable, SCRIPT, "--model", str(checkpoint), "--train"]
    command += [str(tmp_path / "train.jsonl"), "--validation", str(tmp_path / "val.jsonl")]
    command += ["--output", str(output), "--epochs", "2", "--batch-size", "2"]
    command += ["--learning-rate", "1e-3", "--prompt", "a picture of ", "--export", str(export)]
    done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "best epoch" in done.stderr and "val_loss" in done.stderr

    for name in ("config.json", "model.safetensors", "best.weights.h5", "vocab.txt"):
        assert (output / name).exists(), name
    original = tfblip.TFBlipForConditionalGeneration.from_pretrained(checkpoint)
    tuned = tfblip.TFBlipForConditionalGeneration.from_pretrained(output)
    changed = [
        not np.array_equal(a.numpy(), b.numpy()) for a, b in zip(original.weights, tuned.weights)
    ]
    assert sum(changed) > len(changed) // 2
    assert tfblip.BlipProcessor.from_pretrained(output).bos_token_id == len(_build_vocab())
    assert (export / "saved_model.pb").exists()


def test_finetune_script_rejects_bad_arguments(tmp_path):
    output = tmp_path / "used"
    output.mkdir()
    (output / "keep.txt").write_text("x")
    for extra, message in (
        (["--epochs", "0", "--output", str(tmp_path / "new")], "--epochs must be at least 1"),
        (["--output", str(output)], "exists and is not empty"),
    ):
        command = [sys.executable, SCRIPT, "--model", "m", "--train", "t.jsonl", *extra]
        done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=120)
        assert done.returncode == 2 and message in done.stderr
