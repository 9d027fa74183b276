"""tfblip.data: tf.data pipelines for fine-tuning, on real photos saved as JPEG / PNG files.

Every new pass over a pipeline costs a fixed fraction of a second (TensorFlow instantiates its
functions per iterator), so tests share batches where they can.
"""

import csv
import json

import numpy as np
import pytest
import tensorflow as tf
import torch
import transformers
from PIL import Image
from reference import reference_model
from skimage import data
from test_processing import _build_vocab, _write_salesforce_dir

import tfblip
from tfblip.data import (
    _random_resized_crop_box,
    caption_dataset,
    contrastive_dataset,
    read_records,
    retrieval_dataset,
    vqa_dataset,
)

IMAGE_SIZE = 30
PHOTOS = {
    "astronaut.jpg": "an astronaut in front of a flag",
    "chelsea.png": "a cat",
    "coffee.jpg": "a cup of coffee on a plate",
    "rocket.jpg": "a rocket",
}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny VQA reference model saved with Salesforce-style processor files.

    Text and vision hidden sizes are both 32: the VQA answer decoder needs them equal.
    """
    directory = tmp_path_factory.mktemp("blip")
    vocab = _build_vocab()
    text = {"vocab_size": len(vocab) + 2, "bos_token_id": len(vocab), "sep_token_id": 102}
    reference = reference_model(
        "BlipForQuestionAnswering", seed=5, text=text, vision={"hidden_size": 32}
    )
    reference.save_pretrained(directory)
    _write_salesforce_dir(directory, vocab, transformers.BlipImageProcessorPil(size=IMAGE_SIZE))
    return directory, reference


@pytest.fixture(scope="module")
def processor(checkpoint):
    return tfblip.BlipProcessor.from_pretrained(checkpoint[0])


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("photos")
    for name in PHOTOS:
        Image.fromarray(getattr(data, name.split(".")[0])()).save(directory / name)
    return directory


@pytest.fixture(scope="module")
def pairs(photo_dir):
    return [(str(photo_dir / name), text) for name, text in PHOTOS.items()]


@pytest.fixture(scope="module")
def eval_captions(processor, pairs):
    return only_batch(caption_dataset(pairs, processor, training=False, batch_size=4))


def batches(dataset):
    return [{name: value.numpy() for name, value in batch.items()} for batch in dataset]


def only_batch(dataset):
    (batch,) = batches(dataset)
    return batch


def assert_same_batch(actual, expected):
    assert set(actual) == set(expected)
    for name in expected:
        assert np.array_equal(actual[name], expected[name]), name


def pixel_range(processor):
    black, white = (Image.new("RGB", (2, 1), (v, v, v)) for v in (0, 255))
    pixels = processor(images=[black, white], return_tensors="np")["pixel_values"]
    return pixels.min(), pixels.max()


# --------------------------------------------------------------------------------------------
# Images.
# --------------------------------------------------------------------------------------------


def test_eval_pixel_values_equal_the_processor(processor, pairs, eval_captions):
    expected = processor(images=[path for path, _ in pairs], return_tensors="np")
    assert eval_captions["pixel_values"].dtype == np.float32
    assert np.array_equal(eval_captions["pixel_values"], expected["pixel_values"])


def test_image_options_the_pipeline_cannot_follow_are_refused(processor, pairs):
    composited = tfblip.BlipProcessor(
        tfblip.BlipImageProcessor(size=IMAGE_SIZE, alpha="white"), processor.tokenizer
    )
    with pytest.raises(ValueError, match="alpha='white'.*alpha dropped"):
        caption_dataset(pairs, composited, training=False)


def test_training_batches_are_seeded_and_change_each_epoch(processor, pairs):
    records = pairs * 2

    def two_epochs(seed):
        dataset = contrastive_dataset(records, processor, batch_size=8, seed=seed)
        return [only_batch(dataset) for _ in range(2)]

    first, second = two_epochs(seed=7)
    pixels = first["pixel_values"]
    assert pixels.shape == (8, 3, IMAGE_SIZE, IMAGE_SIZE) and pixels.dtype == np.float32
    low, high = pixel_range(processor)
    assert pixels.min() >= low and pixels.max() <= high
    resized = processor(images=[path for path, _ in pairs], return_tensors="np")["pixel_values"]
    assert not any((image == resized).all(axis=(1, 2, 3)).any() for image in pixels)
    # Each epoch reshuffles and crops anew.
    assert not np.array_equal(first["input_ids"], second["input_ids"])
    assert not np.array_equal(pixels, second["pixel_values"])

    for expected, actual in zip([first, second], two_epochs(seed=7)):
        assert_same_batch(actual, expected)
    other = contrastive_dataset(records, processor, batch_size=8, seed=8)
    assert not np.array_equal(only_batch(other)["pixel_values"], pixels)


def test_crop_box_follows_torchvision():
    seeds = tf.stack([tf.range(400, dtype=tf.int64), tf.zeros(400, tf.int64)], axis=1)
    boxes = tf.function(
        lambda seeds: tf.map_fn(
            lambda seed: tf.stack(_random_resized_crop_box(300, 451, seed)),
            seeds,
            fn_output_signature=tf.int32,
        )
    )(seeds).numpy()
    top, left, height, width = boxes.T
    assert (top >= 0).all() and (left >= 0).all()
    assert (top + height <= 300).all() and (left + width <= 451).all()
    # Rounding the sides moves the area and ratio a little past torchvision's bounds.
    assert (height * width / (300 * 451) >= 0.49).all()
    assert (width / height >= 0.74).all() and (width / height <= 1.35).all()
    assert len({tuple(box) for box in boxes}) > 350
    # When all 10 draws are too tall to fit: the centre crop at the widest ratio, 4/3.
    fallback = [0, (451 - 400) // 2, 300, 400]
    assert 0 < sum(box.tolist() == fallback for box in boxes) < 40

    strip = [int(v) for v in _random_resized_crop_box(30, 512, tf.constant([3, 4], tf.int64))]
    assert strip == [0, (512 - 40) // 2, 30, 40]


def test_flips_half_the_training_images(processor, tmp_path):
    # No draw fits a thin strip, so the crop is the fixed centre one and only the flip varies.
    strip = Image.fromarray(data.astronaut()[100:130])
    strip.save(tmp_path / "strip.png")
    dataset = caption_dataset(
        [(str(tmp_path / "strip.png"), "a strip")] * 64, processor, batch_size=64, seed=0
    )
    pixels = only_batch(dataset)["pixel_values"]
    centre = strip.crop((236, 0, 276, 30))
    expected = processor(images=[centre], return_tensors="np")["pixel_values"][0]
    flipped = [np.array_equal(p, expected[:, :, ::-1]) for p in pixels]
    unflipped = [np.array_equal(p, expected) for p in pixels]
    assert all(a != b for a, b in zip(flipped, unflipped))
    assert 20 <= sum(flipped) <= 44


# --------------------------------------------------------------------------------------------
# Text.
# --------------------------------------------------------------------------------------------


def test_caption_ids_start_with_bos_and_labels_mask_padding(processor, pairs, eval_captions):
    batch = eval_captions
    texts = processor(text=[text for _, text in pairs], padding=True, return_tensors="np")
    expected_ids = texts["input_ids"].copy()
    expected_ids[:, 0] = processor.bos_token_id
    assert np.array_equal(batch["input_ids"], expected_ids)
    assert np.array_equal(batch["attention_mask"], texts["attention_mask"])
    assert np.array_equal(
        batch["labels"], np.where(texts["attention_mask"] == 1, expected_ids, -100)
    )
    assert {name: value.dtype.name for name, value in batch.items()} == {
        "pixel_values": "float32",
        "input_ids": "int32",
        "attention_mask": "int32",
        "labels": "int32",
    }


def test_caption_prompt_tokens_are_not_learned(processor, pairs):
    prompt, max_length = "a picture of ", 10
    batch = only_batch(
        caption_dataset(
            pairs, processor, prompt=prompt, max_length=max_length, training=False, batch_size=4
        )
    )
    prompt_length = len(processor(text=prompt, add_special_tokens=False)["input_ids"])
    texts = processor(
        text=[prompt + text for _, text in pairs],
        padding=True,
        max_length=max_length,
        truncation=True,
        return_tensors="np",
    )
    # The longest caption is truncated, keeping its final [SEP].
    assert batch["input_ids"].shape == (4, max_length)
    assert processor.sep_token_id in batch["input_ids"][:, -1]
    assert (batch["input_ids"][:, 0] == processor.bos_token_id).all()
    assert np.array_equal(batch["input_ids"][:, 1:], texts["input_ids"][:, 1:])
    labels = batch["labels"]
    assert (labels[:, 0] == processor.bos_token_id).all()
    assert (labels[:, 1 : 1 + prompt_length] == -100).all()
    caption = batch["attention_mask"][:, 1 + prompt_length :] == 1
    assert np.array_equal(
        labels[:, 1 + prompt_length :],
        np.where(caption, batch["input_ids"][:, 1 + prompt_length :], -100),
    )

    with pytest.raises(ValueError, match="does not tokenize to the same tokens"):
        caption_dataset([(pairs[0][0], "og")], processor, prompt="a picture of a d")
    with pytest.raises(ValueError, match="no room for a caption"):
        caption_dataset(pairs, processor, prompt=prompt, max_length=prompt_length + 2)


def test_padding_modes(processor, pairs):
    texts = [text for _, text in pairs]
    longest = only_batch(contrastive_dataset(pairs, processor, training=False, batch_size=4))
    expected = processor(text=texts, padding=True)
    assert set(longest) == {"pixel_values", "input_ids", "attention_mask"}
    assert longest["input_ids"].tolist() == expected["input_ids"]
    assert longest["attention_mask"].tolist() == expected["attention_mask"]
    lengths = longest["attention_mask"].sum(axis=1)
    assert longest["input_ids"].shape[1] == lengths.max() > 6

    # ITC batches are pairs too; the remainder batch is kept and padded to max_length as well.
    fixed = retrieval_dataset(
        pairs,
        processor,
        objective="itc",
        training=False,
        batch_size=3,
        padding="max_length",
        max_length=6,
    )
    assert fixed.cardinality() == 2
    first, last = batches(fixed)
    assert set(first) == {"pixel_values", "input_ids", "attention_mask"}
    expected = processor(text=texts, padding="max_length", max_length=6, truncation=True)
    assert [*first["input_ids"].tolist(), *last["input_ids"].tolist()] == expected["input_ids"]
    assert (
        np.concatenate([first["attention_mask"], last["attention_mask"]]).tolist()
        == (expected["attention_mask"])
    )
    assert (first["input_ids"][lengths[:3] >= 6, -1] == processor.sep_token_id).all()

    dropped = retrieval_dataset(
        pairs, processor, objective="itc", drop_remainder=True, batch_size=3
    )
    assert dropped.cardinality() == 1
    with pytest.raises(ValueError, match="needs max_length"):
        contrastive_dataset(pairs, processor, padding="max_length")
    with pytest.raises(ValueError, match="padding must be"):
        contrastive_dataset(pairs, processor, padding=True)
    with pytest.raises(ValueError, match="batch_size"):
        contrastive_dataset(pairs, processor, batch_size=0)


# --------------------------------------------------------------------------------------------
# VQA.
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vqa_model(checkpoint):
    return tfblip.TFBlipForQuestionAnswering.from_pretrained(checkpoint[0])


def test_vqa_loss_equals_transformers(checkpoint, processor, vqa_model, photo_dir):
    directory, reference = checkpoint
    reference_processor = transformers.BlipProcessor.from_pretrained(directory)
    images = [str(photo_dir / name) for name in ("astronaut.jpg", "chelsea.png")]
    questions = ["what is in the picture?", "is it a cat?"]
    inputs = reference_processor(
        images=[Image.open(path) for path in images],
        text=questions,
        padding=True,
        return_tensors="pt",
    )

    def batch_and_loss(answers):
        records = list(zip(images, questions, answers))
        batch = only_batch(vqa_dataset(records, processor, training=False, batch_size=2))
        assert np.array_equal(batch["pixel_values"], inputs["pixel_values"].numpy())
        assert np.array_equal(batch["input_ids"], inputs["input_ids"].numpy())
        assert np.array_equal(batch["attention_mask"], inputs["attention_mask"].numpy())
        return batch, float(vqa_model(**batch).loss)

    # Answers of one length need no padding: transformers' documented training call, with the
    # answers starting from [DEC] as generate() does.
    answers = ["a cat", "a flag"]
    batch, loss = batch_and_loss(answers)
    labels = reference_processor(text=answers, return_tensors="pt").input_ids
    labels[:, 0] = processor.bos_token_id
    assert np.array_equal(batch["labels"], labels.numpy())
    with torch.no_grad():
        expected = reference(**inputs, labels=labels).loss
    np.testing.assert_allclose(loss, float(expected), rtol=1e-5)

    # Padded answers: padding is fed to the decoder as [PAD] but not learned (-100 labels).
    answers = ["a cat", "an astronaut in front of a flag"]
    batch, loss = batch_and_loss(answers)
    padded = reference_processor(text=answers, padding=True, return_tensors="pt")
    padded.input_ids[:, 0] = processor.bos_token_id
    assert np.array_equal(
        batch["labels"], np.where(padded.attention_mask == 1, padded.input_ids, -100)
    )
    with torch.no_grad():
        expected = reference(
            **inputs,
            decoder_input_ids=padded.input_ids,
            labels=torch.from_numpy(batch["labels"]).long(),
        ).loss
    np.testing.assert_allclose(loss, float(expected), rtol=1e-5)


# --------------------------------------------------------------------------------------------
# Retrieval.
# --------------------------------------------------------------------------------------------


def test_itm_negatives_are_never_the_images_own_texts(processor, pairs):
    astronaut, cat = pairs[0][0], pairs[1][0]
    # The astronaut has two captions, and one of them is also the cat's.
    records = [*pairs, (astronaut, "a man in a white suit"), (cat, "a man in a white suit")]
    own_texts = {}
    for path, text in records:
        own_texts.setdefault(path, set()).add(tuple(processor(text=text)["input_ids"]))
    images = {
        path: processor(images=[path], return_tensors="np")["pixel_values"][0] for path in own_texts
    }

    evaluation = retrieval_dataset(
        records, processor, training=False, negatives_per_pair=2, batch_size=18, seed=3
    )
    negatives = []
    for _ in range(2):
        batch = only_batch(evaluation)
        assert batch["labels"].tolist() == [1, 0, 0] * 6
        negatives.append(batch["input_ids"][batch["labels"] == 0].tolist())
        for start in range(0, 18, 3):
            group = slice(start, start + 3)
            (path,) = [
                path
                for path, pixels in images.items()
                if (batch["pixel_values"][group] == pixels).all()
            ]
            texts = [
                tuple(ids[mask == 1])
                for ids, mask in zip(batch["input_ids"][group], batch["attention_mask"][group])
            ]
            assert texts[0] in own_texts[path]
            assert not own_texts[path] & set(texts[1:])
    # Evaluation negatives stay the same from pass to pass; training ones are drawn anew.
    assert negatives[0] == negatives[1]
    training = retrieval_dataset(records, processor, batch_size=12, seed=3)
    assert training.cardinality() == 1
    first, second = (only_batch(training) for _ in range(2))
    assert first["labels"].tolist() == [1, 0] * 6
    assert not np.array_equal(first["input_ids"], second["input_ids"])

    with pytest.raises(ValueError, match="no negative text for image"):
        retrieval_dataset([(astronaut, "a cat"), (cat, "A CAT")], processor)
    with pytest.raises(ValueError, match="objective"):
        retrieval_dataset(pairs, processor, objective="itx")


# --------------------------------------------------------------------------------------------
# Sources.
# --------------------------------------------------------------------------------------------


def test_jsonl_and_csv_sources_resolve_relative_paths(
    processor, pairs, eval_captions, photo_dir, tmp_path, monkeypatch
):
    (photo_dir / "captions.jsonl").write_text(
        "\n".join(
            json.dumps({"image": name, "text": text, "id": i})
            for i, (name, text) in enumerate(PHOTOS.items())
        )
        + "\n\n"
    )
    with open(photo_dir / "captions.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "image"])
        writer.writerows((text, f"../{photo_dir.name}/{name}") for name, text in PHOTOS.items())
    assert read_records(photo_dir / "captions.jsonl", ("image", "text")) == pairs
    assert read_records(str(photo_dir / "captions.csv")) == pairs
    dataset = caption_dataset(photo_dir / "captions.csv", processor, training=False, batch_size=4)
    assert_same_batch(only_batch(dataset), eval_captions)

    vqa = tmp_path / "vqa.jsonl"
    vqa.write_text(json.dumps({"image": pairs[0][0], "question": "who?", "answer": "a man"}))
    assert read_records(vqa, ("image", "question", "answer")) == [(pairs[0][0], "who?", "a man")]
    monkeypatch.chdir(photo_dir)
    assert read_records([("rocket.jpg", "a rocket")]) == [(pairs[3][0], "a rocket")]


@pytest.mark.parametrize(
    ("name", "content", "error", "message"),
    [
        ("empty.csv", "", ValueError, "empty.csv: the file is empty"),
        ("header.csv", "image,text\n", ValueError, "header.csv has no records"),
        (
            "columns.csv",
            "image,caption\nrocket.jpg,a\n",
            ValueError,
            "columns.csv: missing column.*'text'.*'caption'",
        ),
        (
            "short.csv",
            "image,text\nrocket.jpg,a\nrocket.jpg\n",
            ValueError,
            "short.csv:3: the row has no value for 'text'",
        ),
        ("blank.jsonl", "\n", ValueError, "blank.jsonl has no records"),
        (
            "key.jsonl",
            '{"image": "rocket.jpg", "text": "a"}\n{"image": "rocket.jpg"}\n',
            ValueError,
            "key.jsonl:2: missing column.*'text'",
        ),
        (
            "json.jsonl",
            '{"image": "rocket.jpg", "text": "a"\n',
            ValueError,
            "json.jsonl:1: invalid JSON",
        ),
        (
            "number.jsonl",
            '{"image": "rocket.jpg", "text": 3}\n',
            TypeError,
            "number.jsonl:1: 'text' must be a string",
        ),
        (
            "text.jsonl",
            '{"image": "rocket.jpg", "text": " "}\n',
            ValueError,
            "text.jsonl:1: 'text' is empty",
        ),
        (
            "gone.jsonl",
            '{"image": "rocket.jpg", "text": "a"}\n{"image": "gone.jpg", "text": "a"}\n',
            FileNotFoundError,
            "gone.jsonl:2: image file 'gone.jpg' not found",
        ),
        ("records.txt", "", ValueError, "unsupported source file type '.txt'"),
    ],
)
def test_source_errors_name_the_file_and_line(photo_dir, name, content, error, message):
    (photo_dir / name).write_text(content)
    with pytest.raises(error, match=message):
        read_records(photo_dir / name, ("image", "text"))


def test_list_source_errors(pairs):
    with pytest.raises(TypeError, match=r"record 1: expected a tuple \(image, text\)"):
        read_records([pairs[0], (pairs[1][0],)])
    with pytest.raises(FileNotFoundError, match="record 0: image file 'missing.jpg' not found"):
        read_records([("missing.jpg", "a")])
    with pytest.raises(FileNotFoundError, match="source file not found"):
        read_records("missing.csv")
    with pytest.raises(ValueError, match="the record list has no records"):
        read_records([])


# --------------------------------------------------------------------------------------------
# Corrupt images.
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def corrupt(photo_dir, tmp_path_factory):
    """A file of garbage bytes and a JPEG cut short (its header reads, its pixels do not)."""
    directory = tmp_path_factory.mktemp("corrupt")
    (directory / "garbage.jpg").write_bytes(b"this is not an image" * 20)
    encoded = (photo_dir / "coffee.jpg").read_bytes()
    (directory / "truncated.jpg").write_bytes(encoded[: len(encoded) // 3])
    return str(directory / "garbage.jpg"), str(directory / "truncated.jpg")


def test_corrupt_images_raise_naming_the_path(processor, pairs, corrupt):
    garbage, truncated = corrupt
    with pytest.raises(ValueError, match=f"(?s)1 unreadable image file.*'{garbage}': not a"):
        caption_dataset([*pairs, (garbage, "a")], processor)

    dataset = caption_dataset([*pairs, (truncated, "a")], processor, batch_size=2)
    with pytest.raises(
        tf.errors.InvalidArgumentError,
        match=rf"cannot read or decode image file\(s\): {truncated} \(truncated",
    ):
        batches(dataset)

    with pytest.raises(ValueError, match=f"(?s)1 unreadable.*'{truncated}': the data cannot"):
        caption_dataset([*pairs, (truncated, "a")], processor, validate=True)


def test_skip_corrupt_skips_with_a_warning(processor, pairs, eval_captions, corrupt, capfd):
    garbage, truncated = corrupt
    records = [(garbage, "x"), pairs[0], (truncated, "y"), *pairs[1:], (truncated, "z")]
    with pytest.warns(UserWarning, match=f"(?s)skipping 1 unreadable image file.*'{garbage}'"):
        dataset = caption_dataset(
            records, processor, training=False, batch_size=8, skip_corrupt=True
        )
    assert_same_batch(only_batch(dataset), eval_captions)
    # Found while iterating: in the middle of the pass and at its very end.
    assert capfd.readouterr().err.count(f"skipping unreadable image file(s): {truncated}\n") == 2

    with pytest.warns(
        UserWarning, match=f"(?s)skipping 2 unreadable image file.*'{garbage}'.*'{truncated}'"
    ):
        dataset = caption_dataset(
            records, processor, training=False, batch_size=8, skip_corrupt=True, validate=True
        )
    assert_same_batch(only_batch(dataset), eval_captions)


# --------------------------------------------------------------------------------------------
# The models take the batches.
# --------------------------------------------------------------------------------------------


def test_task_models_train_on_the_batches(checkpoint, processor, vqa_model, pairs):
    config = tfblip.BlipConfig.from_pretrained(checkpoint[0])
    vqa_records = [(path, "what is it?", text) for path, text in pairs]
    cases = [
        (
            tfblip.TFBlipForConditionalGeneration(config),
            caption_dataset(pairs, processor, prompt="a picture of "),
        ),
        (vqa_model, vqa_dataset(vqa_records, processor)),
        (tfblip.TFBlipForImageTextRetrieval(config), retrieval_dataset(pairs, processor)),
        (tfblip.TFBlipModel(config), contrastive_dataset(pairs, processor)),
    ]
    for model, dataset in cases:
        batch = next(iter(dataset))
        outputs = model(**batch, training=True)
        if "labels" in batch:
            assert np.isfinite(float(outputs.loss)), type(model).__name__
