"""The `tfblip` command, run as a user runs it: the installed console script in a subprocess.

Tiny random-weight checkpoints (one per task, with Salesforce-style processor files) and real
photos from skimage saved as files. Each command's output must equal what the Python API
gives for the same files. Subprocesses start TensorFlow (seconds each), so each run checks
several things; usage errors fail in argparse, before TensorFlow loads, and are cheap.
"""

import ast
import io
import json
import os
import pathlib
import re
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
import torch
import transformers
from PIL import Image
from reference import randomize_keras, tiny_processor_config
from skimage import data
from test_processing import _build_vocab, _write_salesforce_dir

import tfblip
from tfblip.checkpoints import pytorch_state_dict
from tfblip.cli.report import Reporter

CAPTION_OPTIONS = ["--num-beams", "2", "--max-new-tokens", "6"]
TEXTS = ["a cat on a couch", "an astronaut", "coffee"]
# Lines TensorFlow logs at start-up unless the command hides them.
TENSORFLOW_NOISE = ("oneDNN", "cuda", "I0000", "E0000", "absl::InitializeLog", "cpu_feature")
MODEL_CLASSES = {
    "caption": tfblip.TFBlipForConditionalGeneration,
    "vqa": tfblip.TFBlipForQuestionAnswering,
    "retrieval": tfblip.TFBlipForImageTextRetrieval,
    "features": tfblip.TFBlipModel,
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """{task: directory with config.json, model.safetensors and the processor files}."""
    root = tmp_path_factory.mktemp("checkpoints")
    vocab = _build_vocab()
    config = tiny_processor_config(vocab)
    directories = {}
    for seed, (task, model_class) in enumerate(MODEL_CLASSES.items()):
        directory = root / task
        _write_salesforce_dir(directory, vocab, transformers.BlipImageProcessorPil(size=30))
        randomize_keras(model_class(config), seed).save_pretrained(directory)
        directories[task] = directory
    return directories


@pytest.fixture(scope="module")
def models(checkpoints):
    return {task: MODEL_CLASSES[task].from_pretrained(d) for task, d in checkpoints.items()}


@pytest.fixture(scope="module")
def processor(checkpoints):
    return tfblip.BlipProcessor.from_pretrained(checkpoints["caption"])


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """A directory of photos (one in a subdirectory), a non-image file and a corrupt JPEG."""
    root = tmp_path_factory.mktemp("photos")
    (root / "more").mkdir()
    for name, array in (
        ("astronaut.png", data.astronaut()[::4, ::4]),
        ("camera.png", data.camera()[::4, ::4]),  # grayscale
        ("chelsea.jpg", data.chelsea()),
        ("more/coffee.jpg", data.coffee()[::2, ::2]),
        ("rocket.jpg", data.rocket()),
    ):
        Image.fromarray(array).save(root / name)
    (root / "notes.txt").write_text("not an image, and not an image file name")
    (root / "broken.jpg").write_bytes((root / "chelsea.jpg").read_bytes()[:400])
    return root


def _tfblip(*arguments, env=None):
    """Runs the console script as a user would: TF_CPP_MIN_LOG_LEVEL unset (conftest sets it)."""
    environment = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    environment.update(env or {})
    return subprocess.run(
        ["tfblip", *map(str, arguments)],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
        env=environment,
    )


def _assert_no_tensorflow_noise(stderr):
    noisy = [line for line in stderr.splitlines() if any(n in line for n in TENSORFLOW_NOISE)]
    assert not noisy, stderr


def _expected_caption(model, processor, path, prompt=None):
    pixels = processor(images=[str(path)], return_tensors="tf")["pixel_values"]
    inputs = {}
    if prompt is not None:
        encoded = processor(text=[prompt], return_tensors="tf")
        inputs = {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}
    ids = model.generate(pixels, **inputs, num_beams=2, max_new_tokens=6)
    return processor.decode(ids[0], skip_special_tokens=True)


def test_caption_directory_glob_and_failures(checkpoints, models, processor, photos, tmp_path):
    missing = photos / "missing.jpg"
    arguments = [photos, photos / "more" / "*.jpg", missing, "--model", checkpoints["caption"]]
    done = _tfblip("caption", *arguments, "--batch-size", "4", *CAPTION_OPTIONS)
    assert done.returncode == 1, done.stderr

    # The directory gives its image files sorted and recursively (not notes.txt); the glob's
    # match is already listed; the corrupt file and the missing one are reported and skipped.
    expected_paths = [
        photos / name
        for name in ("astronaut.png", "camera.png", "chelsea.jpg", "more/coffee.jpg", "rocket.jpg")
    ]
    rows = [line.split("\t") for line in done.stdout.splitlines()]
    assert [path for path, _ in rows] == [str(p) for p in expected_paths]
    captions = [caption for _, caption in rows]
    assert captions == [_expected_caption(models["caption"], processor, p) for p in expected_paths]
    assert len(set(captions)) > 1 and all(captions)  # the comparison above means something

    errors = done.stderr.splitlines()
    assert len(errors) == 2, done.stderr
    assert all(line.startswith("tfblip caption: error: ") for line in errors)
    # Arguments naming nothing are reported first, before the model loads.
    assert errors[0].endswith(f"{missing}: no such file or directory")
    assert str(photos / "broken.jpg") in errors[1] and "cannot" in errors[1]
    assert "Traceback" not in done.stderr
    _assert_no_tensorflow_noise(done.stderr)

    # One image at a time, as JSON lines into a file: the same captions.
    output = tmp_path / "captions.jsonl"
    one_by_one = _tfblip(
        "caption",
        *expected_paths,
        "--model",
        checkpoints["caption"],
        "--batch-size",
        "1",
        "--format",
        "jsonl",
        "--output",
        output,
        *CAPTION_OPTIONS,
    )
    assert one_by_one.returncode == 0, one_by_one.stderr
    assert one_by_one.stdout == "" and one_by_one.stderr == ""
    records = [json.loads(line) for line in output.read_text().splitlines()]
    assert records == [{"path": str(p), "caption": c} for p, c in zip(expected_paths, captions)]


def test_caption_with_prompt(checkpoints, models, processor, photos):
    paths = [photos / "chelsea.jpg", photos / "astronaut.png"]
    done = _tfblip(
        "caption",
        *paths,
        "--prompt",
        "a picture of",
        "--model",
        checkpoints["caption"],
        *CAPTION_OPTIONS,
    )
    assert done.returncode == 0, done.stderr
    captions = [line.split("\t")[1] for line in done.stdout.splitlines()]
    assert captions == [
        _expected_caption(models["caption"], processor, p, prompt="a picture of") for p in paths
    ]
    assert all(c.startswith("a picture of") for c in captions)


def test_caption_with_quantize_int8(checkpoints, models, processor, photos):
    paths = [photos / "chelsea.jpg", photos / "rocket.jpg"]
    model = MODEL_CLASSES["caption"].from_pretrained(checkpoints["caption"], quantize="int8")
    command = ["caption", *paths, "--model", checkpoints["caption"], *CAPTION_OPTIONS]
    done = _tfblip(*command, "--quantize", "int8")
    assert done.returncode == 0, done.stderr
    captions = [line.split("\t")[1] for line in done.stdout.splitlines()]
    assert captions == [_expected_caption(model, processor, p) for p in paths]
    # Guard: the int8 model is not the float one (its logits moved).
    pixels = processor(images=[str(paths[0])], return_tensors="tf")["pixel_values"]
    ids = model.generate(pixels, num_beams=2, max_new_tokens=6)
    rounded = model(pixel_values=pixels, input_ids=ids).logits.numpy()
    unrounded = models["caption"](pixel_values=pixels, input_ids=ids).logits.numpy()
    assert np.abs(rounded - unrounded).max() > 1e-4 * np.abs(unrounded).max()


def test_vqa(checkpoints, models, processor, photos):
    image, question = photos / "chelsea.jpg", "what is on the couch?"
    done = _tfblip(
        "vqa", image, "--question", question, "--model", checkpoints["vqa"], "--max-new-tokens", 4
    )
    assert done.returncode == 0, done.stderr
    inputs = processor(images=[str(image)], text=[question], return_tensors="tf")
    ids = models["vqa"].generate(
        inputs["input_ids"],
        inputs["pixel_values"],
        attention_mask=inputs["attention_mask"],
        max_new_tokens=4,
    )
    assert done.stdout == processor.decode(ids[0], skip_special_tokens=True) + "\n"
    _assert_no_tensorflow_noise(done.stderr)


def test_match(checkpoints, models, processor, photos):
    image = photos / "astronaut.png"
    texts = [arg for text in TEXTS for arg in ("--text", text)]
    done = _tfblip("match", image, *texts, "--model", checkpoints["retrieval"], "--format", "jsonl")
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["text"] for r in records] == TEXTS

    inputs = processor(images=[str(image)] * 3, text=TEXTS, padding=True, return_tensors="tf")
    model = models["retrieval"]
    itm = tf.nn.softmax(model(**inputs, use_itm_head=True).itm_score)[:, 1]
    itc = np.diag(model(**inputs, use_itm_head=False).itm_score)
    np.testing.assert_allclose([r["itm_probability"] for r in records], itm, atol=1e-5)
    np.testing.assert_allclose([r["itc_similarity"] for r in records], itc, atol=1e-5)


def test_embed_images_with_a_retrieval_checkpoint(checkpoints, models, processor, photos, tmp_path):
    output = tmp_path / "photos.npy"
    done = _tfblip(
        "embed", photos, "--model", checkpoints["retrieval"], "--output", output, "--batch-size", 2
    )
    assert done.returncode == 1  # broken.jpg
    assert "broken.jpg" in done.stderr

    paths = (tmp_path / "photos.paths.txt").read_text().splitlines()
    assert [os.path.relpath(p, photos) for p in paths] == [
        "astronaut.png",
        "camera.png",
        "chelsea.jpg",
        os.path.join("more", "coffee.jpg"),
        "rocket.jpg",
    ]
    embeddings = np.load(output)
    assert embeddings.dtype == np.float32 and embeddings.shape == (5, 12)

    model = models["retrieval"]
    inputs = processor(images=paths, text=["a photo"] * 5, return_tensors="tf")
    states = model.vision_model(pixel_values=inputs["pixel_values"]).last_hidden_state
    image_features, _, _ = model.contrastive_features(states, inputs["input_ids"])
    np.testing.assert_allclose(embeddings, image_features, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)


def test_embed_texts_with_a_blip_model_checkpoint(checkpoints, models, processor, tmp_path):
    output = tmp_path / "texts.npy"
    texts = [arg for text in TEXTS for arg in ("--text", text)]
    done = _tfblip("embed", *texts, "--model", checkpoints["features"], "--output", output)
    assert done.returncode == 0, done.stderr
    inputs = processor(text=TEXTS, padding=True, return_tensors="tf")
    expected = models["features"].get_text_features(
        input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]
    )
    np.testing.assert_allclose(np.load(output), expected, atol=1e-5)


@pytest.fixture(scope="module")
def pytorch_checkpoint(checkpoints, models, tmp_path_factory):
    """The captioning checkpoint with its weights as pytorch_model.bin."""
    directory = tmp_path_factory.mktemp("pytorch_checkpoint")
    for path in checkpoints["caption"].iterdir():
        if path.name != "model.safetensors":
            (directory / path.name).write_bytes(path.read_bytes())
    state = {k: torch.from_numpy(v) for k, v in pytorch_state_dict(models["caption"]).items()}
    torch.save(state, directory / "pytorch_model.bin")
    return directory


def _caption_logits(model, processor, photos):
    inputs = processor(images=[str(photos / "chelsea.jpg")], text=["a cat"], return_tensors="tf")
    return model(**inputs).logits


def test_convert_to_safetensors_directory(pytorch_checkpoint, models, processor, photos, tmp_path):
    destination = tmp_path / "converted"
    done = _tfblip("convert", pytorch_checkpoint, destination)
    assert done.returncode == 0, done.stderr
    assert "BlipForConditionalGeneration" in done.stdout
    files = sorted(p.name for p in destination.iterdir())
    assert files == [
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
        "special_tokens_map.json",
        "tokenizer_config.json",
        "vocab.txt",
    ]
    converted = tfblip.TFBlipForConditionalGeneration.from_pretrained(destination)
    np.testing.assert_array_equal(
        _caption_logits(converted, processor, photos),
        _caption_logits(models["caption"], processor, photos),
    )
    assert tfblip.BlipProcessor.from_pretrained(destination)(text=["a cat"]) == processor(
        text=["a cat"]
    )


def test_convert_to_keras_file(pytorch_checkpoint, models, processor, photos, tmp_path):
    destination = tmp_path / "caption.keras"
    weights_file = pytorch_checkpoint / "pytorch_model.bin"
    done = _tfblip("convert", weights_file, destination, "--task", "caption")
    assert done.returncode == 0, done.stderr
    converted = keras.saving.load_model(destination)
    assert type(converted) is tfblip.TFBlipForConditionalGeneration
    np.testing.assert_array_equal(
        _caption_logits(converted, processor, photos),
        _caption_logits(models["caption"], processor, photos),
    )


def test_runtime_errors(checkpoints, photos, tmp_path):
    missing = _tfblip(
        "vqa", photos / "chelsea.jpg", "--question", "why?", "--model", tmp_path / "x"
    )
    assert missing.returncode == 1
    assert (
        missing.stderr
        == f"tfblip vqa: error: Checkpoint directory '{tmp_path / 'x'}' does not exist.\n"
    )

    # The default model is a hub repo id; offline (and not cached) it cannot be had.
    empty_cache = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path), "HF_HUB_CACHE": str(tmp_path)}
    offline = _tfblip("caption", photos / "chelsea.jpg", env=empty_cache)
    assert offline.returncode == 1
    assert "Traceback" not in offline.stderr
    message = offline.stderr.strip()
    assert message.startswith("tfblip caption: error: 'Salesforce/blip-image-captioning-base'")
    assert "--model DIR" in message and "--local-dir" in message and "\n" not in message

    wrong_model = _tfblip(
        "caption", photos / "chelsea.jpg", "--model", checkpoints["vqa"], "--verbose"
    )
    assert wrong_model.returncode == 1
    assert "Traceback" in wrong_model.stderr
    assert "is a BlipForQuestionAnswering checkpoint; `tfblip caption` needs" in wrong_model.stderr


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["caption", "x.jpg", "--num-beams", "0"], "--num-beams: expected a positive integer"),
        (["caption", "x.jpg", "--colour"], "unrecognized arguments: --colour"),
        (["caption"], "the following arguments are required: PATH"),
        (["caption", "x.jpg", "--top-p", "0.9"], "--top-p: used only when sampling"),
        (["caption", "x.jpg", "--sample", "--num-beams", "3"], "cannot be combined"),
        (["vqa", "x.jpg"], "the following arguments are required: --question"),
        (["match", "x.jpg", "--text", "a", "--format", "csv"], "invalid choice: 'csv'"),
        (["embed", "x.jpg", "--text", "a", "--output", "e.npy"], "not both or neither"),
        (["convert", "src"], "the following arguments are required: DST"),
        (["caption", "x.jpg", "--quantize", "int4"], "invalid choice: 'int4'"),
    ],
)
def test_usage_errors(arguments, message):
    done = _tfblip(*arguments)
    assert done.returncode == 2
    assert message in done.stderr and "Traceback" not in done.stderr


def test_help_and_version_without_tensorflow():
    code = (
        "import sys, tfblip, tfblip.cli\n"
        "assert 'tensorflow' not in sys.modules, 'tfblip imported TensorFlow'\n"
        "tfblip.cli.build_parser().parse_args(['caption', 'x.jpg'])\n"
        "assert 'tensorflow' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    version = subprocess.run(
        [sys.executable, "-m", "tfblip", "--version"], capture_output=True, text=True, check=True
    )
    assert version.stdout == f"tfblip {tfblip.__version__}\n"
    for command in ("caption", "vqa", "match", "embed", "convert", "export"):
        shown = _tfblip(command, "--help")
        assert shown.returncode == 0 and f"examples:\n  tfblip {command}" in shown.stdout


def test_cli_modules_import_in_one_direction():
    """tfblip.cli's modules form no import cycle, and only `commands` loads TensorFlow."""
    package = pathlib.Path(tfblip.__file__).parent / "cli"
    imports = {}
    for path in package.glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        imported = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module)
            elif isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
        imports[path.stem] = imported
    assert set(imports) == {"__init__", "parser", "report", "commands"}
    for name in ("parser", "report", "commands"):
        assert "tfblip.cli" not in imports[name], f"{name} imports the package that imports it"
    assert "tfblip.cli.commands" not in imports["parser"] | imports["report"]
    assert "tfblip.cli.parser" not in imports["report"]
    assert "tensorflow" in imports["commands"]
    for name in ("parser", "report"):
        assert not any(m.split(".")[0] == "tensorflow" for m in imports[name]), name


def test_lazy_package_names():
    assert set(tfblip.__all__) <= set(dir(tfblip))
    from tfblip import BlipConfig, export_saved_model

    assert BlipConfig is tfblip.configuration.BlipConfig
    assert callable(export_saved_model)
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        tfblip.nothing  # noqa: B018


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_bar_on_terminals_only():
    terminal = _Terminal()
    reporter = Reporter("caption", stream=terminal)
    reporter.start(10)
    reporter.advance(4)
    reporter.error("x.jpg: cannot read")
    reporter.advance(6)
    reporter.finish()
    shown = terminal.getvalue()
    # Images done of all, time spent < time left, images per second.
    progress = r"\| {done}/10 \[\d\d:\d\d<\d\d:\d\d, [\d.]+image/s\]"
    assert re.search(r"\r 40%\|#+ *" + progress.format(done=4), shown)
    # The bar is erased before an error line, and drawn again after it.
    assert re.search(r"\r +\rtfblip caption: error: x.jpg: cannot read\n\r 40%", shown)
    assert re.search(progress.format(done=10) + "\n$", shown) and reporter.exit_code == 1

    for stream, total, quiet in (
        (_Terminal(), 8, False),
        (_Terminal(), 10, True),
        (io.StringIO(), 10, False),
    ):
        reporter = Reporter("embed", quiet=quiet, stream=stream)
        reporter.start(total)
        reporter.advance(total)
        reporter.finish()
        assert stream.getvalue() == "" and reporter.exit_code == 0
