"""LiteRT export: the .tflite run by the stock LiteRT interpreter (ai-edge-litert), against
generate() on the same pixels, and the detokenizer against the processor's decode."""

import functools
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import transformers
from ai_edge_litert.interpreter import Interpreter
from PIL import Image
from reference import randomize_keras, tiny_processor_config
from skimage import data
from test_processing import _build_vocab, _write_salesforce_dir

import tfblip
from tfblip.export.litert import detokenize, export_litert

MAX_NEW_TOKENS = 6
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    directory = tmp_path_factory.mktemp("blip")
    vocab = _build_vocab()
    _write_salesforce_dir(directory, vocab, transformers.BlipImageProcessorPil(size=30))
    processor = tfblip.BlipProcessor.from_pretrained(directory)
    config = tiny_processor_config(vocab)
    models = {
        "caption": randomize_keras(tfblip.TFBlipForConditionalGeneration(config), 0),
        "vqa": randomize_keras(tfblip.TFBlipForQuestionAnswering(config), 1),
    }
    return directory, processor, models


def resized(name, size=30):
    """A photo as the client sends it: RGB, Pillow-bicubic resized, uint8 [1, H, W, 3]."""
    image = Image.fromarray(getattr(data, name)()).convert("RGB")
    return np.asarray(image.resize((size, size), Image.BICUBIC))[None]


def run(path, **inputs):
    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    details = {d["name"]: d for d in interpreter.get_input_details()}
    for name, value in inputs.items():
        (detail,) = [d for key, d in details.items() if name in key]
        interpreter.resize_tensor_input(detail["index"], value.shape)
    interpreter.allocate_tensors()
    for name, value in inputs.items():
        (detail,) = [d for key, d in details.items() if name in key]
        interpreter.set_tensor(detail["index"], value)
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])


def op_names(path):
    interpreter = Interpreter(model_path=str(path))
    return {op["op_name"] for op in interpreter._get_ops_details()}


@pytest.mark.parametrize("quantize", [None, "float16"])
def test_caption_tokens_equal_generate(setup, tmp_path, quantize):
    _, processor, models = setup
    model = models["caption"]
    path = export_litert(model, processor, tmp_path / "caption.tflite", quantize=quantize,
                         max_new_tokens=MAX_NEW_TOKENS)  # fmt: skip
    assert not [name for name in op_names(path) if "Flex" in name or "CUSTOM" in name]
    tokens = []
    for name in PHOTOS:
        image = resized(name)
        pixels = processor(images=[Image.fromarray(image[0])], return_tensors="tf")["pixel_values"]
        expected = model.generate(
            pixels, max_new_tokens=MAX_NEW_TOKENS, min_new_tokens=MAX_NEW_TOKENS
        )
        got = run(path, image=image)
        if quantize is None:
            np.testing.assert_array_equal(got, expected.numpy())
        tokens.append(got)
    if quantize == "float16":
        # float16 weights: compared with the float32 export, which equals generate().
        full = export_litert(
            model, processor, tmp_path / "full.tflite", max_new_tokens=MAX_NEW_TOKENS
        )
        agreement = np.mean(
            [np.array_equal(t, run(full, image=resized(n))) for t, n in zip(tokens, PHOTOS)]
        )
        assert agreement >= 0.75
    assert len({tuple(t[0]) for t in tokens}) > 1


@pytest.mark.parametrize("quantize", [None, "float16"])
def test_vqa_tokens_equal_generate(setup, tmp_path, quantize):
    _, processor, models = setup
    model = models["vqa"]
    export = functools.partial(export_litert, model, processor, max_new_tokens=MAX_NEW_TOKENS)
    path = export(tmp_path / "vqa.tflite", quantize=quantize)
    full = path if quantize is None else export(tmp_path / "vqa_full.tflite")
    answers = []
    for name, question in zip(PHOTOS, ["what is it?", "how many cats are there?", "is it red"]):
        image = resized(name)
        inputs = processor(images=[Image.fromarray(image[0])], text=[question], return_tensors="tf")
        input_ids = inputs["input_ids"].numpy().astype(np.int32)
        expected = model.generate(inputs["input_ids"], inputs["pixel_values"],
                                  max_new_tokens=MAX_NEW_TOKENS, min_new_tokens=MAX_NEW_TOKENS)  # fmt: skip
        np.testing.assert_array_equal(run(full, image=image, input_ids=input_ids), expected.numpy())
        answers.append(
            np.array_equal(run(path, image=image, input_ids=input_ids), expected.numpy())
        )
    # float16 weights: most answers as float32's (random tiny weights leave some near-ties).
    assert np.mean(answers) >= 2 / 3


def test_detokenize_equals_the_processor(setup, tmp_path):
    _, processor, models = setup
    path = export_litert(models["caption"], processor, tmp_path / "c.tflite", max_new_tokens=2)
    vocabulary = (tmp_path / "c.vocab.txt").read_text(encoding="utf-8").split("\n")[:-1]
    metadata = json.loads((tmp_path / "c.json").read_text())
    rng = np.random.default_rng(0)
    for _ in range(200):
        ids = rng.integers(0, len(vocabulary) + 3, size=rng.integers(1, 12)).tolist()
        assert detokenize(ids, vocabulary, metadata) == processor.decode(
            ids, skip_special_tokens=True
        )
    text = processor(text=["a photo of two cats, isn't it?"])["input_ids"][0]
    assert detokenize(text, vocabulary, metadata) == processor.decode(
        text, skip_special_tokens=True
    )
    assert path.endswith(".tflite")


def test_bad_requests(setup, tmp_path):
    _, processor, models = setup
    with pytest.raises(ValueError, match="Unknown LiteRT quantization"):
        export_litert(models["caption"], processor, tmp_path / "a.tflite", quantize="int4")
    with pytest.raises(ValueError, match="num_beams must be 1"):
        export_litert(models["caption"], processor, tmp_path / "a.tflite", num_beams=3)
    with pytest.raises(ValueError, match="task 'caption', not 'vqa'"):
        export_litert(models["caption"], processor, tmp_path / "a.tflite", task="vqa")
    with pytest.raises(ValueError, match="must end in .tflite"):
        export_litert(models["caption"], processor, tmp_path / "a.bin")
    path = export_litert(models["caption"], processor, tmp_path / "b.tflite", max_new_tokens=2)
    with pytest.raises(ValueError, match="overwrite=True"):
        export_litert(models["caption"], processor, path, max_new_tokens=2)


def test_flex_ops_are_named():
    @tf.function(input_signature=[tf.TensorSpec([2], tf.string)])
    def needs_flex(texts):
        return {"out": tf.strings.length(tf.strings.upper(texts))}

    from tfblip.export.litert import convert

    with pytest.raises(ValueError, match="StringUpper"):
        convert(needs_flex.get_concrete_function(), None)


def readme_script():
    readme = (pathlib.Path(__file__).parent.parent / "README.md").read_text()
    block = readme.split("<!-- litert-script -->", 1)[1].split("```python\n", 1)[1]
    return block.split("```", 1)[0]


def test_command_and_readme_script(setup, tmp_path):
    """`tfblip export --format litert` in a fresh process, then the README's script with only
    ai-edge-litert, numpy and Pillow importable prints generate()'s caption."""
    _, processor, models = setup
    checkpoint = tmp_path / "checkpoint"
    models["caption"].save_pretrained(checkpoint)
    processor.save_pretrained(checkpoint)
    output = tmp_path / "blip_caption.tflite"
    command = ["tfblip", "export", "--format", "litert", "--model", checkpoint, "--task"]
    command += ["caption", "--output", output, "--max-new-tokens", MAX_NEW_TOKENS]
    done = subprocess.run(list(map(str, command)), capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "blip_caption.tflite" in done.stdout

    script = tmp_path / "caption.py"
    script.write_text(readme_script())
    photo = tmp_path / "chelsea.jpg"
    Image.fromarray(data.chelsea()).save(photo)
    blocked = "import sys; sys.modules.update(tensorflow=None, keras=None, tfblip=None)"
    runner = f"{blocked}; sys.argv = sys.argv[1:]; exec(open(sys.argv[0]).read())"
    done = subprocess.run(
        [sys.executable, "-c", runner, str(script), str(output), str(photo)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    pixels = processor(images=[str(photo)], return_tensors="tf")["pixel_values"]
    ids = models["caption"].generate(pixels, max_new_tokens=MAX_NEW_TOKENS)
    expected = processor.decode(ids[0], skip_special_tokens=True)
    assert expected and done.stdout == expected + "\n"


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--quantize", "int8"], "--format litert takes float16, dynamic_int8"),
        (["--num-beams", "3"], "--num-beams: --format litert decodes greedily"),
        (["--task", "retrieval"], "exports caption and vqa models, not retrieval"),
    ],
)
def test_command_usage_errors(arguments, message, tmp_path):
    command = ["tfblip", "export", "--format", "litert", "--model", "m", "--task", "caption"]
    command += ["--output", str(tmp_path / "a.tflite")]
    if "--task" in arguments:
        command = command[: command.index("--task")] + command[command.index("--task") + 2 :]
    done = subprocess.run(command + arguments, capture_output=True, text=True, check=False)
    assert done.returncode == 2 and message in done.stderr, done.stderr
