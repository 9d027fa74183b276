"""SavedModel export: every task exported, then served by TensorFlow alone in a subprocess.

The subprocess (`saved_model_client.py`) runs with tfblip and keras made unimportable, using
only tensorflow (and tensorflow-serving-api's protos to read the warm-up file), as TF Serving
would. Every export is loaded three ways: the TF2 object loader, a TF1 Session (as
`saved_model_cli run`), and the C++ `tensorflow::LoadSavedModel` + `Session::Run` that TF
Serving calls (`serving_loader.cc`, compiled here against the TensorFlow wheel). Each loader's
outputs, for every signature, must equal what the Python API gives for the same inputs.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import transformers
from PIL import Image
from reference import randomize_keras, tiny_processor_config
from serving_loader import BuildError, build_serving_loader
from skimage import data
from tensorflow.core.protobuf import saved_model_pb2
from test_processing import _build_vocab, _write_salesforce_dir

import tfblip
from tfblip.export.saved_model import export_saved_model
from tfblip.ops.text import GraphTokenizer

CLIENT = os.path.join(os.path.dirname(__file__), "saved_model_client.py")
LOADERS = ["tf2", "session", "cpp"]
PROMPTS = ["a picture of", "the", "an old photo of two"]
QUESTIONS = ["what is in the picture?", "how many cats are there?", "is it red"]
TEXTS = ["an astronaut", "a cat sitting on a couch", "coffee"]
CAPTION_OPTIONS = {"max_new_tokens": 7, "num_beams": 2}
SIGNATURES = {
    "caption": {
        "serving_default",
        "caption_with_prompt",
        "caption_from_pixels",
        "caption_with_prompt_from_pixels",
    },
    "vqa": {"serving_default", "vqa_from_pixels"},
    "retrieval": {"serving_default", "retrieval_from_pixels"},
    "features": {
        "serving_default",
        "image_embeds",
        "text_embeds",
        "image_embeds_from_pixels",
        "text_embeds_from_ids",
    },
}
# The caption model with int8 weights (model.quantize), exported and served like the others.
SIGNATURES["caption_int8"] = SIGNATURES["caption"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A Salesforce-style processor directory and a tiny config matching its vocabulary."""
    directory = tmp_path_factory.mktemp("blip")
    vocab = _build_vocab()
    _write_salesforce_dir(directory, vocab, transformers.BlipImageProcessorPil(size=30))
    config = tiny_processor_config(vocab)
    return tfblip.BlipProcessor.from_pretrained(directory), config


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Three photos as files: PNG (decodes exactly as Pillow), JPEG and a palette GIF."""
    directory = tmp_path_factory.mktemp("images")
    paths = []
    for name, array, fmt in (
        ("astronaut.png", data.astronaut()[::3, ::3], "PNG"),
        ("chelsea.jpg", data.chelsea(), "JPEG"),
        ("coffee.gif", data.coffee()[::2, ::2], "GIF"),
    ):
        path = str(directory / name)
        Image.fromarray(array).save(path, format=fmt)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def models(checkpoint):
    _, config = checkpoint
    models = {
        task: randomize_keras(model_class(config), seed)
        for seed, (task, model_class) in enumerate(
            (
                ("caption", tfblip.TFBlipForConditionalGeneration),
                ("vqa", tfblip.TFBlipForQuestionAnswering),
                ("retrieval", tfblip.TFBlipForImageTextRetrieval),
                ("features", tfblip.TFBlipModel),
            )
        )
    }
    models["caption_int8"] = randomize_keras(tfblip.TFBlipForConditionalGeneration(config), 0)
    models["caption_int8"].quantize("int8")
    return models


@pytest.fixture(scope="module")
def exports(checkpoint, models, tmp_path_factory):
    processor, _ = checkpoint
    root = tmp_path_factory.mktemp("saved_models")
    directories = {}
    for task, model in models.items():
        options = CAPTION_OPTIONS if task.startswith("caption") else {}
        if task == "vqa":
            options = {"max_new_tokens": 5}
        directories[task] = export_saved_model(model, processor, root / task / "1", **options)
    return directories


def _requests(exports, images, processor):
    """Every signature at batch 1 and 3, plus bad requests."""
    files = [f"file:{path}" for path in images]
    requests = []
    pixels = processor(images=images, return_tensors="np")["pixel_values"].tolist()

    def ids(texts):
        encoded = processor(text=texts, padding=True, return_tensors="np")
        return encoded["input_ids"].tolist(), encoded["attention_mask"].tolist()

    def add(task, signature, inputs, batch):
        sliced = {k: v[:batch] for k, v in inputs.items()}
        key = f"{task}:{signature}:{batch}"
        requests.append(
            {"export_dir": exports[task], "signature": signature, "inputs": sliced, "key": key}
        )

    for batch in (1, 3):
        add("caption", "serving_default", {"image_bytes": files}, batch)
        add("caption", "caption_with_prompt", {"image_bytes": files, "prompt": PROMPTS}, batch)
        add("vqa", "serving_default", {"image_bytes": files, "question": QUESTIONS}, batch)
        add("retrieval", "serving_default", {"image_bytes": files, "text": TEXTS}, batch)
        add("features", "serving_default", {"image_bytes": files}, batch)
        add("features", "image_embeds", {"image_bytes": files}, batch)
        add("features", "text_embeds", {"text": TEXTS}, batch)
        add("caption", "caption_from_pixels", {"pixel_values": pixels}, batch)
        add("caption_int8", "serving_default", {"image_bytes": files}, batch)
        add("caption_int8", "caption_from_pixels", {"pixel_values": pixels}, batch)
        for task, signature, texts in (
            ("caption", "caption_with_prompt_from_pixels", PROMPTS),
            ("vqa", "vqa_from_pixels", QUESTIONS),
            ("retrieval", "retrieval_from_pixels", TEXTS),
        ):
            # Padded as the Python API pads the batch it is given.
            input_ids, attention_mask = ids(texts[:batch])
            inputs = {"pixel_values": pixels, "input_ids": input_ids}
            add(task, signature, {**inputs, "attention_mask": attention_mask}, batch)
        add("features", "image_embeds_from_pixels", {"pixel_values": pixels}, batch)
        input_ids, attention_mask = ids(TEXTS[:batch])
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        add("features", "text_embeds_from_ids", inputs, batch)
    corrupt = [files[0], "not an image at all", files[2]]
    add("caption", "serving_default", {"image_bytes": corrupt}, 3)
    requests[-1]["key"] = "corrupt"
    truncated = images[1] + ".truncated.jpg"
    with open(images[1], "rb") as src, open(truncated, "wb") as dst:
        dst.write(src.read()[:300])
    add("caption", "serving_default", {"image_bytes": [files[0], f"file:{truncated}"]}, 2)
    requests[-1]["key"] = "truncated"
    add("retrieval", "serving_default", {"image_bytes": files, "text": TEXTS[:2]}, 3)
    requests[-1]["key"] = "mismatched"
    return requests


@pytest.fixture(scope="module")
def serving_loader_binary(tmp_path_factory):
    try:
        return build_serving_loader(str(tmp_path_factory.mktemp("cpp")))
    except BuildError as error:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the C++ loader tests, but: {error}")
        pytest.skip(f"cannot build the C++ SavedModel loader here: {error}")


@pytest.fixture(scope="module", params=LOADERS)
def served(request, checkpoint, exports, images, tmp_path_factory):
    """Outputs of the exported models, run in a fresh process with TensorFlow only."""
    processor, _ = checkpoint
    loader = request.param
    directory = tmp_path_factory.mktemp(f"client_{loader}")
    requests = _requests({k: str(v) for k, v in exports.items()}, images, processor)
    requests_path, results_path = directory / "requests.json", directory / "results.npz"
    requests_path.write_text(json.dumps(requests))
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    command = [sys.executable, CLIENT, loader, str(requests_path), str(results_path)]
    if loader == "cpp":
        command.append(request.getfixturevalue("serving_loader_binary"))
    completed = subprocess.run(
        command,
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    with np.load(results_path, allow_pickle=False) as results:
        return dict(results)


def _python_inputs(processor, images, texts, batch):
    return processor(images=images[:batch], text=texts[:batch], padding=True, return_tensors="tf")


def _decoded(served, key, name):
    return list(served[f"{key}/{name}"])


def test_client_ran_without_tfblip_and_keras(served):
    assert sorted(served["blocked"]) == ["keras", "tfblip"]


@pytest.mark.parametrize("batch", [1, 3])
def test_caption_signatures_match_generate(checkpoint, models, images, served, batch):
    processor, _ = checkpoint
    model = models["caption"]
    pixels = processor(images=images[:batch], return_tensors="tf")["pixel_values"]
    expected = model.generate(pixels, **CAPTION_OPTIONS)
    for signature in ("serving_default", "caption_from_pixels"):
        key = f"caption:{signature}:{batch}"
        np.testing.assert_array_equal(served[f"{key}/token_ids"], expected.numpy())
        assert _decoded(served, key, "caption") == processor.batch_decode(
            expected, skip_special_tokens=True
        )

    inputs = _python_inputs(processor, images, PROMPTS, batch)
    expected = model.generate(
        inputs["pixel_values"],
        input_ids=inputs["input_ids"],
        attention_mask=inputs["attention_mask"],
        **CAPTION_OPTIONS,
    )
    for signature in ("caption_with_prompt", "caption_with_prompt_from_pixels"):
        key = f"caption:{signature}:{batch}"
        np.testing.assert_array_equal(served[f"{key}/token_ids"], expected.numpy())
        captions = _decoded(served, key, "caption")
        assert captions == processor.batch_decode(expected, skip_special_tokens=True)
        assert all(c.startswith(p) for c, p in zip(captions, PROMPTS))


@pytest.mark.parametrize("batch", [1, 3])
def test_int8_caption_export_matches_generate(checkpoint, models, images, served, batch):
    processor, _ = checkpoint
    model = models["caption_int8"]
    pixels = processor(images=images[:batch], return_tensors="tf")["pixel_values"]
    expected = model.generate(pixels, **CAPTION_OPTIONS).numpy()
    for signature in ("serving_default", "caption_from_pixels"):
        np.testing.assert_array_equal(
            served[f"caption_int8:{signature}:{batch}/token_ids"], expected
        )
    # The same float weights before rounding (same seed): rounding changed the logits.
    rounded = model(pixel_values=pixels, input_ids=expected).logits.numpy()
    unrounded = models["caption"](pixel_values=pixels, input_ids=expected).logits.numpy()
    assert np.abs(rounded - unrounded).max() > 1e-4 * np.abs(unrounded).max()


def test_int8_export_stores_int8_weights(exports):
    def weight_bytes(task):
        directory = os.path.join(exports[task], "variables")
        return sum(os.path.getsize(os.path.join(directory, name)) for name in os.listdir(directory))

    assert weight_bytes("caption_int8") < 0.5 * weight_bytes("caption")


def test_captions_are_informative(served):
    """Guards the comparisons above: different images give different, non-empty captions."""
    captions = _decoded(served, "caption:serving_default:3", "caption")
    assert len(set(captions)) == 3 and all(captions)


@pytest.mark.parametrize("batch", [1, 3])
def test_vqa_signature_matches_generate(checkpoint, models, images, served, batch):
    processor, _ = checkpoint
    inputs = _python_inputs(processor, images, QUESTIONS, batch)
    expected = models["vqa"].generate(
        inputs["input_ids"],
        inputs["pixel_values"],
        attention_mask=inputs["attention_mask"],
        max_new_tokens=5,
    )
    for signature in ("serving_default", "vqa_from_pixels"):
        key = f"vqa:{signature}:{batch}"
        np.testing.assert_array_equal(served[f"{key}/token_ids"], expected.numpy())
        assert _decoded(served, key, "answer") == processor.batch_decode(
            expected, skip_special_tokens=True
        )


@pytest.mark.parametrize("batch", [1, 3])
def test_retrieval_signature_matches_model(checkpoint, models, images, served, batch):
    processor, _ = checkpoint
    model = models["retrieval"]
    inputs = _python_inputs(processor, images, TEXTS, batch)
    itm = model(**inputs, use_itm_head=True).itm_score
    itc = model(**inputs, use_itm_head=False).itm_score
    for signature in ("serving_default", "retrieval_from_pixels"):
        key = f"retrieval:{signature}:{batch}"
        np.testing.assert_allclose(
            served[f"{key}/itm_probability"], tf.nn.softmax(itm)[:, 1], rtol=1e-5, atol=1e-6
        )
        np.testing.assert_allclose(
            served[f"{key}/itc_similarity"], np.diag(itc.numpy()), rtol=1e-5, atol=1e-6
        )


@pytest.mark.parametrize("batch", [1, 3])
def test_feature_signatures_match_model(checkpoint, models, images, served, batch):
    processor, _ = checkpoint
    model = models["features"]
    inputs = _python_inputs(processor, images, TEXTS, batch)
    image_embeds = model.get_image_features(pixel_values=inputs["pixel_values"])
    text_embeds = model.get_text_features(
        input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]
    )
    for signature in ("serving_default", "image_embeds", "image_embeds_from_pixels"):
        np.testing.assert_allclose(
            served[f"features:{signature}:{batch}/image_embeds"], image_embeds, atol=1e-5
        )
    for signature in ("text_embeds", "text_embeds_from_ids"):
        np.testing.assert_allclose(
            served[f"features:{signature}:{batch}/text_embeds"], text_embeds, atol=1e-5
        )


def test_bad_requests_give_clear_errors(served):
    assert "image" in str(served["corrupt/error"]).lower()
    assert "truncated/error" in served
    assert "batch sizes" in str(served["mismatched/error"])


def test_warmup_requests_replay(exports, served):
    """The client replayed each export's warm-up file: one working request per signature."""
    for task, directory in exports.items():
        prefix = f"warmup:{directory}:"
        keys = [key[: -len("/signature")] for key in served if key.startswith(prefix)]
        keys = [key for key in keys if f"{key}/signature" in served]
        assert not [served[f"{key}/error"] for key in keys if f"{key}/error" in served], task
        replayed = {str(served[f"{key}/signature"]) for key in keys}
        assert replayed == SIGNATURES[task], task


def _saved_graph(directory):
    saved_model = saved_model_pb2.SavedModel()
    with open(os.path.join(directory, "saved_model.pb"), "rb") as f:
        saved_model.ParseFromString(f.read())
    return saved_model.meta_graphs[0].graph_def


def _read_by_signatures(task, weight):
    """The features signatures embed image and text apart: BlipModel's text cross-attention and
    its contrastive temperature (`logit_scale`) are never read, so the export leaves them out."""
    unused = "crossattention" in weight.path or weight.path.endswith("logit_scale")
    return not (task == "features" and unused)


def test_one_variable_handle_per_weight(checkpoint, models, exports):
    """Each weight is one variable in the graph: the one the signatures read and the saver
    restores. A second handle per weight is what broke TF Serving's loader and doubled memory.
    Besides the weights, the graph holds one string variable per asset file (its path) and the
    tokenizer's lookup tables."""
    processor, _ = checkpoint
    tables = list(
        GraphTokenizer(processor)._flatten(
            predicate=lambda x: isinstance(x, tf.saved_model.experimental.TrackableResource)
        )
    )
    assert tables  # guards the count below
    for task, directory in exports.items():
        graph_def = _saved_graph(directory)
        handles = [node.name for node in graph_def.node if node.op == "VarHandleOp"]
        asset_paths = {
            node.input[0]
            for node in graph_def.node
            if node.op == "AssignVariableOp" and node.input[1].startswith("asset_path_initializer")
        }
        assert len(asset_paths) == len(os.listdir(os.path.join(directory, "assets"))), task
        weights = [weight for weight in models[task].weights if _read_by_signatures(task, weight)]
        assert len(handles) == len(weights) + len(asset_paths), task
        hash_tables = [node for node in graph_def.node if node.op.startswith("HashTable")]
        assert len(hash_tables) == len(tables), task


def _all_nodes(graph_def):
    yield from graph_def.node
    for function in graph_def.library.function:
        yield from function.node_def


def test_graphs_use_no_xla(exports):
    for task, directory in exports.items():
        graph_def = _saved_graph(directory)
        op_types = {node.op for node in _all_nodes(graph_def)}
        assert (
            "While" in op_types
            or "StatelessWhile" in op_types
            or task
            not in (
                "caption",
                "vqa",
            )
        )
        assert not [op for op in op_types if op.startswith("Xla")], task
        for function in graph_def.library.function:
            assert not function.attr["_XlaMustCompile"].b, (task, function.signature.name)
        for node in _all_nodes(graph_def):
            assert not node.attr["_XlaMustCompile"].b, (task, node.name)


def test_serving_layout_and_cli_listing(exports):
    listings = {}
    for task, directory in exports.items():
        for name in ("saved_model.pb", "variables", "assets", "assets.extra"):
            assert os.path.exists(os.path.join(directory, name)), (task, name)
        listings[task] = subprocess.Popen(
            ["saved_model_cli", "show", "--dir", str(directory), "--all"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
    for task, process in listings.items():
        shown, _ = process.communicate(timeout=300)
        assert process.returncode == 0, task
        listed = {
            line.split("'")[1]
            for line in shown.splitlines()
            if line.startswith("signature_def['") and "__saved_model_init_op" not in line
        }
        assert listed == SIGNATURES[task], task


def test_export_refuses_bad_requests(checkpoint, models, tmp_path):
    processor, _ = checkpoint
    with pytest.raises(ValueError, match="needs a TFBlipForQuestionAnswering"):
        export_saved_model(models["caption"], processor, tmp_path / "a", task="vqa")
    with pytest.raises(ValueError, match="Unknown task"):
        export_saved_model(models["caption"], processor, tmp_path / "a", task="classify")
    with pytest.raises(ValueError, match="XLA"):
        export_saved_model(models["caption"], processor, tmp_path / "a", jit_compile=True)
    with pytest.raises(TypeError, match="Unknown generate"):
        export_saved_model(models["caption"], processor, tmp_path / "a", beams=3)
    with pytest.raises(ValueError, match="caption and vqa tasks only"):
        export_saved_model(models["retrieval"], processor, tmp_path / "a", num_beams=3)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("user data")
    with pytest.raises(FileExistsError, match="not empty"):
        export_saved_model(models["features"], processor, tmp_path / "full")
    assert (tmp_path / "full" / "keep.txt").read_text() == "user data"
    small = tfblip.BlipProcessor(
        tfblip.BlipImageProcessor(size={"height": 24, "width": 24}), processor.tokenizer
    )
    with pytest.raises(ValueError, match="resizes images to 24x24"):
        export_saved_model(models["features"], small, tmp_path / "b")


def test_export_command(checkpoint, models, tmp_path):
    processor, _ = checkpoint
    directory = tmp_path / "checkpoint"
    models["caption"].save_pretrained(directory)
    processor.save_pretrained(directory)
    output = tmp_path / "saved_models" / "blip" / "1"
    command = ["tfblip", "export", "--model", str(directory), "--task", "caption"]
    command += ["--output", str(output), "--num-beams", "2", "--max-new-tokens", "4"]
    done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"to {output}" in done.stdout
    info = json.loads((output / "assets" / "tfblip_export.json").read_text())
    assert info["task"] == "caption"
    assert info["generation_options"]["num_beams"] == 2
    assert info["generation_options"]["max_new_tokens"] == 4
    assert info["quantization"] is None

    quantized = tmp_path / "saved_models" / "blip_int8" / "1"
    command_int8 = [*command, "--quantize", "int8"]
    command_int8[command_int8.index(str(output))] = str(quantized)
    done = subprocess.run(command_int8, capture_output=True, text=True, check=False, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    info = json.loads((quantized / "assets" / "tfblip_export.json").read_text())
    assert info["quantization"] == "int8"

    again = subprocess.run(command, capture_output=True, text=True, check=False, timeout=600)
    assert again.returncode == 1
    assert "not empty; pass overwrite=True" in again.stderr
    missing = [*command[:3], str(tmp_path / "nowhere"), *command[4:]]
    missing[missing.index(str(output))] = str(tmp_path / "other")
    failed = subprocess.run(missing, capture_output=True, text=True, check=False, timeout=600)
    assert failed.returncode == 1
    assert "does not exist" in failed.stderr
