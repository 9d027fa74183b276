"""Fixtures of the Beam tests, which run in their own environment (apache-beam pins
pillow<13 and protobuf<7; tests/test_beam_environment.py builds it and runs them).

Everything is made here with tfblip alone: tiny random models, processor files, their
exports, and 40+ photos from scikit-image in four formats plus corrupt files.
"""

import json
import os

import numpy as np
import pytest
from PIL import Image
from skimage import data

import tfblip
from tfblip.export.saved_model import export_saved_model

WORDS = [
    "a",
    "an",
    "the",
    "cat",
    "dog",
    "photo",
    "picture",
    "of",
    "on",
    "in",
    "with",
    "red",
    "blue",
    "two",
    "man",
    "woman",
    "sky",
]
SAMPLES = (
    "astronaut",
    "camera",
    "chelsea",
    "coffee",
    "rocket",
    "coins",
    "moon",
    "horse",
    "immunohistochemistry",
    "hubble_deep_field",
    "page",
)
FORMATS = ("JPEG", "PNG", "GIF", "BMP")
CORRUPT = ("truncated.jpg", "notes.jpg", "empty.png")
MAX_NEW_TOKENS = 6


def write_processor_files(directory):
    """A BERT-layout vocabulary ([DEC] and [ENC] follow it) and BLIP's processor configs."""
    vocab = ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab += WORDS
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "vocab.txt"), "w") as f:
        f.write("\n".join(vocab) + "\n")
    special = {"bos_token": "[DEC]", "additional_special_tokens": ["[ENC]"]}
    with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
        json.dump({"do_lower_case": True, "model_max_length": 512, **special}, f)
    with open(os.path.join(directory, "special_tokens_map.json"), "w") as f:
        json.dump(special, f)
    tfblip.BlipImageProcessor(size={"height": 30, "width": 30}).save_pretrained(directory)
    return len(vocab)


def tiny_config(vocab_size):
    text = {
        "vocab_size": vocab_size + 2,
        "hidden_size": 32,
        "intermediate_size": 37,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "max_position_embeddings": 64,
        "bos_token_id": vocab_size,
        "sep_token_id": 102,
        "pad_token_id": 0,
    }
    vision = {
        "hidden_size": 32,
        "intermediate_size": 41,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "image_size": 30,
        "patch_size": 6,
    }
    return tfblip.BlipConfig(
        text_config=text, vision_config=vision, projection_dim=16, image_text_hidden_size=12
    )


def randomized(model, seed):
    """std-0.2 weights (LayerNorm scales about 1): outputs vary from image to image."""
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        values = rng.normal(0.0, 0.2, variable.shape)
        if variable.path.endswith("gamma"):
            values += 1.0
        variable.assign(values.astype(variable.dtype))
    return model


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    """{task: (checkpoint directory, export directory)} for caption, vqa and features."""
    root = tmp_path_factory.mktemp("models")
    classes = {
        "caption": tfblip.TFBlipForConditionalGeneration,
        "vqa": tfblip.TFBlipForQuestionAnswering,
        "features": tfblip.TFBlipModel,
    }
    made = {}
    for seed, (task, model_class) in enumerate(classes.items()):
        checkpoint = root / task
        vocab_size = write_processor_files(checkpoint)
        model = randomized(model_class(tiny_config(vocab_size)), seed)
        model.save_pretrained(checkpoint)
        processor = tfblip.BlipProcessor.from_pretrained(checkpoint)
        options = {"max_new_tokens": MAX_NEW_TOKENS} if task != "features" else {}
        export = export_saved_model(model, processor, root / "exports" / task / "1", **options)
        made[task] = (str(checkpoint), str(export))
    return made


@pytest.fixture(scope="session")
def photos(tmp_path_factory):
    """(directory, good image paths, corrupt paths): 44 photos in four formats, 3 bad files."""
    directory = tmp_path_factory.mktemp("photos")
    good = []
    for name in SAMPLES:
        array = getattr(data, name)()
        array = array[:: max(1, array.shape[0] // 96), :: max(1, array.shape[1] // 96)]
        for image_format in FORMATS:
            path = directory / f"{name}.{image_format.lower()}"
            Image.fromarray(array).convert("RGB").save(path, format=image_format)
            good.append(str(path))
    with open(good[0], "rb") as f:
        jpeg = f.read()
    (directory / CORRUPT[0]).write_bytes(jpeg[:200])
    (directory / CORRUPT[1]).write_text("not an image at all")
    (directory / CORRUPT[2]).write_bytes(b"")
    return str(directory), sorted(good), sorted(str(directory / name) for name in CORRUPT)
