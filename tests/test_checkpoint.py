"""Checkpoint formats, the save_pretrained round trip into transformers, and bad checkpoints."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
import types

import numpy as np
import pytest
import tensorflow as tf
import torch
import transformers
from reference import (
    VISION_CONFIG,
    assert_close,
    pixel_values,
    reference_model,
    reference_text_model,
    reference_vision_model,
    text_inputs,
    tiny_config_kwargs,
    to_torch,
)
from safetensors.numpy import load_file, save_file

import tfblip
from tfblip.checkpoints import load_weights, open_checkpoint
from tfblip.errors import CheckpointError

TASK_CLASSES = {
    "BlipForConditionalGeneration": tfblip.TFBlipForConditionalGeneration,
    "BlipForImageTextRetrieval": tfblip.TFBlipForImageTextRetrieval,
    "BlipModel": tfblip.TFBlipModel,
}


def reference_state(model):
    return {key: value.detach().numpy() for key, value in model.state_dict().items()}


@pytest.fixture(scope="module")
def caption_checkpoint(tmp_path_factory):
    """A transformers captioning checkpoint directory and its PyTorch model."""
    reference = reference_model("BlipForConditionalGeneration", seed=20)
    directory = tmp_path_factory.mktemp("caption")
    reference.save_pretrained(directory)
    return reference, directory


def caption_logits(model_or_reference, seed=21):
    pixels = pixel_values(seed=seed)
    input_ids, attention_mask = text_inputs(seed=seed)
    if isinstance(model_or_reference, torch.nn.Module):
        with torch.no_grad():
            return model_or_reference(
                pixel_values=to_torch(pixels),
                input_ids=to_torch(input_ids),
                attention_mask=to_torch(attention_mask),
            ).logits.numpy()
    return np.asarray(
        model_or_reference(
            pixel_values=pixels, input_ids=input_ids, attention_mask=attention_mask
        ).logits
    )


def copy_checkpoint(source, destination):
    shutil.copytree(source, destination)
    return destination


# ----------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("class_name", [*TASK_CLASSES, "BlipForQuestionAnswering"])
def test_save_pretrained_round_trip_is_bit_exact(class_name, tmp_path):
    vision = {"hidden_size": 32} if class_name == "BlipForQuestionAnswering" else None
    reference = reference_model(class_name, seed=22, vision=vision)
    reference.save_pretrained(tmp_path / "pt")
    tf_class = TASK_CLASSES.get(class_name, tfblip.TFBlipForQuestionAnswering)
    tf_class.from_pretrained(tmp_path / "pt").save_pretrained(tmp_path / "tf")

    assert set(load_file(tmp_path / "tf" / "model.safetensors")) == set(
        load_file(tmp_path / "pt" / "model.safetensors")
    )
    reloaded = getattr(transformers, class_name).from_pretrained(tmp_path / "tf")
    assert type(reloaded).__name__ == class_name
    original, round_tripped = reference_state(reference), reference_state(reloaded)
    assert original.keys() == round_tripped.keys()
    for key, value in original.items():
        assert np.array_equal(value, round_tripped[key]), key
    assert tfblip.BlipConfig.from_pretrained(tmp_path / "tf") == tfblip.BlipConfig.from_pretrained(
        tmp_path / "pt"
    )
    # dtype and _name_or_path come from transformers' loader; num_channels is ours (an extra
    # key to transformers 5, which dropped it).
    ignored = {"dtype", "_name_or_path", "num_channels"}
    for part in ("text_config", "vision_config"):
        ours = {k: v for k, v in reloaded.config.to_dict()[part].items() if k not in ignored}
        theirs = {k: v for k, v in reference.config.to_dict()[part].items() if k not in ignored}
        assert ours == theirs, part


def test_sub_model_round_trips_load_in_transformers(tmp_path):
    for name, reference, tf_class in (
        ("vision", reference_vision_model(seed=23), tfblip.TFBlipVisionModel),
        ("text", reference_text_model("BlipTextModel", seed=23), tfblip.TFBlipTextModel),
        (
            "lm",
            reference_text_model("BlipTextLMHeadModel", seed=23),
            tfblip.TFBlipTextLMHeadModel,
        ),
    ):
        reference.save_pretrained(tmp_path / name / "pt")
        tf_class.from_pretrained(tmp_path / name / "pt").save_pretrained(tmp_path / name / "tf")
        reloaded = type(reference).from_pretrained(tmp_path / name / "tf")
        original, round_tripped = reference_state(reference), reference_state(reloaded)
        for key, value in original.items():
            assert np.array_equal(value, round_tripped[key]), f"{name}: {key}"


# Run in a fresh process, where nothing has imported tfblip.checkpoints yet.
_LAZY_CHECKPOINTS_SCRIPT = textwrap.dedent(
    """
    import json, sys

    import numpy as np

    import tfblip.modeling.blip
    from tfblip.configuration import BlipVisionConfig
    from tfblip.modeling.vision import TFBlipVisionModel

    readers = sorted(name for name in sys.modules if name.startswith("tfblip.checkpoints"))
    assert not readers, f"importing the models imported {readers}"
    model = TFBlipVisionModel(BlipVisionConfig(**json.loads(sys.argv[2])))
    model.save_pretrained(sys.argv[1])
    assert "tfblip.checkpoints" in sys.modules
    reloaded = TFBlipVisionModel.from_pretrained(sys.argv[1])
    for ours, theirs in zip(model.weights, reloaded.weights):
        assert np.array_equal(ours.numpy(), theirs.numpy()), ours.path
    """
)


def test_models_import_the_checkpoint_readers_only_to_load_or_save(tmp_path):
    """tfblip.modeling imports no checkpoint reader; the first from_pretrained or
    save_pretrained imports tfblip.checkpoints, which registers the implementations."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(tfblip.__file__)))
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    arguments = [str(tmp_path), json.dumps(VISION_CONFIG)]
    command = [sys.executable, "-c", _LAZY_CHECKPOINTS_SCRIPT, *arguments]
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr[-3000:]


def test_saved_checkpoint_gives_transformers_the_same_logits(caption_checkpoint, tmp_path):
    _, directory = caption_checkpoint
    model = tfblip.TFBlipForConditionalGeneration.from_pretrained(directory)
    model.save_pretrained(tmp_path)
    reloaded = transformers.BlipForConditionalGeneration.from_pretrained(tmp_path).eval()
    assert_close(caption_logits(model), caption_logits(reloaded))


# ----------------------------------------------------------------------------- towers

FULL_CLASSES = [*TASK_CLASSES, "BlipForQuestionAnswering"]


def saved_reference(class_name, directory, seed=25):
    # VQA's answer decoder needs equal text and vision widths.
    vision = {"hidden_size": 32} if class_name == "BlipForQuestionAnswering" else None
    reference = reference_model(class_name, seed=seed, vision=vision)
    reference.save_pretrained(directory)
    return reference


@pytest.mark.parametrize("class_name", FULL_CLASSES)
def test_vision_tower_of_a_full_checkpoint(class_name, tmp_path, caplog):
    reference = saved_reference(class_name, tmp_path)
    model = tfblip.TFBlipVisionModel.from_pretrained(tmp_path)
    assert "TFBlipVisionModel: loaded the vision_model.* tower" in caplog.text
    pixels = pixel_values(seed=26)
    with torch.no_grad():
        expected = reference.vision_model(pixel_values=to_torch(pixels))
    outputs = model(pixel_values=pixels)
    assert_close(outputs.last_hidden_state, expected.last_hidden_state)
    assert_close(outputs.pooler_output, expected.pooler_output)


@pytest.mark.parametrize(
    "class_name,tower",
    [
        ("BlipForImageTextRetrieval", "text_encoder"),
        ("BlipForQuestionAnswering", "text_encoder"),
        ("BlipModel", "text_model"),
    ],
)
def test_text_tower_of_a_full_checkpoint(class_name, tower, tmp_path, caplog):
    reference = saved_reference(class_name, tmp_path)
    model = tfblip.TFBlipTextModel.from_pretrained(tmp_path)
    assert f"TFBlipTextModel: loaded the {tower}.* tower" in caplog.text
    input_ids, attention_mask = text_inputs(seed=27)
    with torch.no_grad():
        expected = getattr(reference, tower)(
            input_ids=to_torch(input_ids), attention_mask=to_torch(attention_mask)
        )
    outputs = model(input_ids=input_ids, attention_mask=attention_mask)
    assert_close(outputs.last_hidden_state, expected.last_hidden_state)
    if expected.pooler_output is None:
        assert model.pooler is None and outputs.pooler_output is None
    else:
        assert_close(outputs.pooler_output, expected.pooler_output)


def test_ambiguous_or_missing_text_tower_is_an_error(tmp_path):
    saved_reference("BlipModel", tmp_path)
    rewrite_weights(
        tmp_path,
        lambda tensors: tensors.update(
            {
                key.replace("text_model.", "text_encoder.", 1): value
                for key, value in list(tensors.items())
                if key.startswith("text_model.")
            }
        ),
    )
    with pytest.raises(CheckpointError, match=r"text_encoder\.\* and text_model\.\*.*ambiguous"):
        tfblip.TFBlipTextModel.from_pretrained(tmp_path)
    # A captioning checkpoint has only a decoder: no text tower to take.
    saved_reference("BlipForConditionalGeneration", tmp_path / "caption")
    with pytest.raises(CheckpointError, match="does not fit TFBlipTextModel: missing tensors"):
        tfblip.TFBlipTextModel.from_pretrained(tmp_path / "caption")


# ----------------------------------------------------------------------------- formats


def test_pytorch_bin_checkpoint(caption_checkpoint, tmp_path):
    reference, _ = caption_checkpoint
    reference.config.save_pretrained(tmp_path)
    torch.save(reference.state_dict(), tmp_path / "pytorch_model.bin")
    model = tfblip.TFBlipForConditionalGeneration.from_pretrained(tmp_path)
    assert_close(caption_logits(model), caption_logits(reference))


def test_sharded_safetensors_checkpoint(caption_checkpoint, tmp_path):
    reference, _ = caption_checkpoint
    reference.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    assert len(list(tmp_path.glob("model-*.safetensors"))) > 1
    model = tfblip.TFBlipForConditionalGeneration.from_pretrained(tmp_path)
    assert_close(caption_logits(model), caption_logits(reference))


def test_legacy_keys_of_older_checkpoints(caption_checkpoint, tmp_path):
    # Salesforce's hub files carry the tied decoder weight, the LM bias as `decoder.bias` and
    # the position_ids buffer.
    reference, directory = caption_checkpoint
    copy_checkpoint(directory, tmp_path / "legacy")
    tensors = load_file(directory / "model.safetensors")
    prefix = "text_decoder.cls.predictions."
    tensors[prefix + "decoder.weight"] = tensors[
        "text_decoder.bert.embeddings.word_embeddings.weight"
    ]
    tensors[prefix + "decoder.bias"] = tensors.pop(prefix + "bias")
    tensors["text_decoder.bert.embeddings.position_ids"] = np.arange(64)[None]
    save_file(tensors, tmp_path / "legacy" / "model.safetensors", metadata={"format": "pt"})
    model = tfblip.TFBlipForConditionalGeneration.from_pretrained(tmp_path / "legacy")
    assert_close(caption_logits(model), caption_logits(reference))


def test_untied_word_embeddings(tmp_path):
    reference = reference_model(
        "BlipForConditionalGeneration",
        seed=24,
        text={"tie_word_embeddings": False},
        tie_word_embeddings=False,
    )
    reference.save_pretrained(tmp_path)
    assert "text_decoder.cls.predictions.decoder.weight" in load_file(
        tmp_path / "model.safetensors"
    )
    model = tfblip.TFBlipForConditionalGeneration.from_pretrained(tmp_path)
    assert_close(caption_logits(model), caption_logits(reference))


def test_bfloat16_checkpoint_loads_as_float32(caption_checkpoint, tmp_path):
    reference, _ = caption_checkpoint
    reference.to(torch.bfloat16).save_pretrained(tmp_path)
    reference.float()
    model = tfblip.TFBlipForConditionalGeneration.from_pretrained(tmp_path)
    assert model.weights[0].dtype == "float32"
    reloaded = transformers.BlipForConditionalGeneration.from_pretrained(
        tmp_path, dtype=torch.float32
    ).eval()
    assert_close(caption_logits(model), caption_logits(reloaded))


# ----------------------------------------------------------------------------- bad checkpoints


def rewrite_weights(directory, change):
    path = directory / "model.safetensors"
    tensors = load_file(path)
    change(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


def test_missing_tensor_is_named(caption_checkpoint, tmp_path):
    _, directory = caption_checkpoint
    broken = copy_checkpoint(directory, tmp_path / "broken")
    key = "text_decoder.bert.encoder.layer.1.crossattention.self.value.weight"
    rewrite_weights(broken, lambda tensors: tensors.pop(key))
    with pytest.raises(CheckpointError, match=r"missing tensors \(1\): " + key.replace(".", r"\.")):
        tfblip.TFBlipForConditionalGeneration.from_pretrained(broken)


def test_unexpected_tensor_is_named(caption_checkpoint, tmp_path):
    _, directory = caption_checkpoint
    broken = copy_checkpoint(directory, tmp_path / "broken")
    rewrite_weights(broken, lambda tensors: tensors.update(extra_head=np.zeros(3, np.float32)))
    with pytest.raises(CheckpointError, match=r"unexpected tensors \(1\): extra_head"):
        tfblip.TFBlipForConditionalGeneration.from_pretrained(broken)


def test_wrong_shape_is_named(caption_checkpoint, tmp_path):
    _, directory = caption_checkpoint
    broken = copy_checkpoint(directory, tmp_path / "broken")
    config = json.loads((broken / "config.json").read_text())
    config["text_config"]["intermediate_size"] = 40
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        CheckpointError,
        match=r"wrong shapes \(6\): .*layer\.0\.intermediate\.dense\.weight: checkpoint "
        r"\(37, 32\), model \(40, 32\)",
    ):
        tfblip.TFBlipForConditionalGeneration.from_pretrained(broken)


def test_checkpoint_of_another_task_lists_what_does_not_fit(caption_checkpoint):
    _, directory = caption_checkpoint
    with pytest.raises(CheckpointError, match=r"missing tensors .*itm_head.*unexpected tensors"):
        tfblip.TFBlipForImageTextRetrieval.from_pretrained(directory)


def test_failed_load_leaves_the_model_untouched(caption_checkpoint):
    _, directory = caption_checkpoint
    model = tfblip.TFBlipForImageTextRetrieval(tfblip.BlipConfig.from_pretrained(directory))
    before = [np.array(v) for v in model.weights]
    with pytest.raises(CheckpointError):
        load_weights(model, open_checkpoint(str(directory)))
    assert all(np.array_equal(a, np.array(v)) for a, v in zip(before, model.weights))


@pytest.mark.parametrize("damage", ["truncate", "garble_header"])
def test_corrupt_safetensors_file(caption_checkpoint, tmp_path, damage):
    _, directory = caption_checkpoint
    broken = copy_checkpoint(directory, tmp_path / "broken")
    path = broken / "model.safetensors"
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    else:
        path.write_bytes(b"\xff" * 16 + data[16:])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        tfblip.TFBlipForConditionalGeneration.from_pretrained(broken)


def test_corrupt_pytorch_bin(caption_checkpoint, tmp_path):
    reference, _ = caption_checkpoint
    reference.config.save_pretrained(tmp_path)
    (tmp_path / "pytorch_model.bin").write_bytes(b"not a pickle")
    with pytest.raises(CheckpointError, match="pytorch_model.bin"):
        tfblip.TFBlipForConditionalGeneration.from_pretrained(tmp_path)


def test_bin_without_torch_names_the_extra(caption_checkpoint, tmp_path, monkeypatch):
    reference, _ = caption_checkpoint
    reference.config.save_pretrained(tmp_path)
    torch.save(reference.state_dict(), tmp_path / "pytorch_model.bin")
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(ImportError, match=r"tfblip\[torch\]"):
        tfblip.TFBlipForConditionalGeneration.from_pretrained(tmp_path)


def test_shard_index_cannot_leave_the_checkpoint_directory(caption_checkpoint, tmp_path):
    _, directory = caption_checkpoint
    broken = copy_checkpoint(directory, tmp_path / "broken")
    shutil.copy(broken / "model.safetensors", tmp_path / "outside.safetensors")
    (broken / "model.safetensors").unlink()
    index = {"weight_map": {"logit_scale": "../outside.safetensors"}}
    (broken / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="outside"):
        tfblip.TFBlipForConditionalGeneration.from_pretrained(broken)


def test_directory_without_weights(caption_checkpoint, tmp_path):
    reference, _ = caption_checkpoint
    reference.config.save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="No weights found"):
        tfblip.TFBlipForConditionalGeneration.from_pretrained(tmp_path)


def test_config_of_another_model_type(caption_checkpoint, tmp_path):
    _, directory = caption_checkpoint
    broken = copy_checkpoint(directory, tmp_path / "broken")
    (broken / "config.json").write_text(json.dumps({"model_type": "clip"}))
    with pytest.raises(ValueError, match="clip"):
        tfblip.TFBlipForConditionalGeneration.from_pretrained(broken)


def test_missing_local_path():
    with pytest.raises(FileNotFoundError, match="does-not-exist"):
        tfblip.TFBlipForConditionalGeneration.from_pretrained("./does-not-exist")


def test_repo_id_without_huggingface_hub_explains_local_use(monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(ImportError, match=r"tfblip\[hub\].*local checkpoint directory"):
        tfblip.TFBlipForConditionalGeneration.from_pretrained("Salesforce/blip-not-local")


def test_unknown_keywords_are_refused_for_local_paths(caption_checkpoint, monkeypatch):
    _, directory = caption_checkpoint
    model_class = tfblip.TFBlipForConditionalGeneration
    for name in ("dtyp", "load_in_8bit"):
        with pytest.raises(
            TypeError, match=rf"'{name}'.*config, dtype, image_size, quantize.*revision"
        ):
            model_class.from_pretrained(directory, **{name: "bfloat16"})
    # Download options mean nothing for a local path: ignored, as transformers does.
    model_class.from_pretrained(directory, revision="v1", cache_dir="unused", token="t")

    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    model_class.from_pretrained(directory, revision="v1")
    with pytest.raises(TypeError, match="'max_workers'"):
        model_class.from_pretrained(directory, max_workers=2)


def test_hub_keywords_follow_snapshot_download(caption_checkpoint, monkeypatch):
    _, directory = caption_checkpoint
    downloads = []

    def snapshot_download(repo_id, *, revision=None, cache_dir=None, allow_patterns=None):
        downloads.append((repo_id, revision, cache_dir))
        return str(directory)

    hub = types.ModuleType("huggingface_hub")
    hub.snapshot_download = snapshot_download
    monkeypatch.setitem(sys.modules, "huggingface_hub", hub)
    model_class = tfblip.TFBlipForConditionalGeneration
    model_class.from_pretrained("Salesforce/blip-test", revision="v1", cache_dir="cache")
    assert downloads == [("Salesforce/blip-test", "v1", "cache")]
    # token is an option of the real snapshot_download, not of this one.
    for name in ("token", "load_in_8bit", "allow_patterns"):
        with pytest.raises(TypeError, match=rf"'{name}'.*: cache_dir, revision\.$"):
            model_class.from_pretrained("Salesforce/blip-test", **{name: "x"})
    assert len(downloads) == 1


# ----------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize(
    "shape,message",
    [
        ((2, 30, 30, 3), "channels-first with 3 channels.*channels-last"),
        ((2, 1, 30, 30), "channels-first with 3 channels"),
        ((3, 30, 30), "rank 4"),
    ],
)
def test_pixel_values_of_the_wrong_layout(shape, message):
    model = tfblip.TFBlipVisionModel(
        tfblip.BlipVisionConfig(
            hidden_size=32, num_attention_heads=4, num_hidden_layers=1, image_size=30, patch_size=6
        )
    )
    with pytest.raises(ValueError, match=message):
        model(pixel_values=np.zeros(shape, np.float32))


def test_larger_images_need_interpolated_positions():
    model = tfblip.TFBlipVisionModel(
        tfblip.BlipVisionConfig(
            hidden_size=32, num_attention_heads=4, num_hidden_layers=1, image_size=30, patch_size=6
        )
    )
    with pytest.raises(ValueError, match="interpolate_pos_encoding=True"):
        model(pixel_values=np.zeros((1, 3, 60, 60), np.float32))


@pytest.fixture(scope="module")
def generating_models():
    """A tiny captioning and VQA model (64 positions, vocabulary of 99)."""
    config = tfblip.BlipConfig(**tiny_config_kwargs(vision={"hidden_size": 32}))
    return (
        tfblip.TFBlipForConditionalGeneration(config),
        tfblip.TFBlipForQuestionAnswering(config),
    )


def test_token_ids_outside_the_vocabulary(generating_models):
    caption, vqa = generating_models
    pixels = pixel_values(batch_size=1)
    message = r"input_ids must hold token ids of the vocabulary \(vocab_size 99\), in \[0, 99\)"
    for bad in (120, 99, -1):
        ids = np.array([[97, 5, bad, 98]])
        with pytest.raises(ValueError, match=rf"{message}; got {bad}\."):
            caption(pixel_values=pixels, input_ids=ids)
        with pytest.raises(ValueError, match=rf"{message}; got {bad}\."):
            caption.generate(pixels, input_ids=ids)
        with pytest.raises(ValueError, match=rf"{message}; got {bad}\."):
            vqa.generate(ids, pixels)
    # In a graph the values are known only when it runs: an assertion says the same.
    graph = tf.function(lambda pixels, ids: caption(pixel_values=pixels, input_ids=ids).logits)
    with pytest.raises(tf.errors.InvalidArgumentError, match=rf"{message}.*\[5\] \[to\] \[120\]"):
        graph(pixels, tf.constant([[97, 5, 120, 98]]))
    graph(pixels, tf.constant([[97, 5, 98, 98]]))


def test_text_longer_than_the_position_table(generating_models):
    caption, vqa = generating_models
    pixels = pixel_values(batch_size=1)
    long_ids = np.full((1, 70), 5)
    message = "input_ids is 70 tokens long, but the model has 64 position embeddings"
    with pytest.raises(ValueError, match=message):
        caption(pixel_values=pixels, input_ids=long_ids)
    with pytest.raises(ValueError, match=message):
        caption.generate(pixels, input_ids=long_ids)
    with pytest.raises(ValueError, match=message):
        vqa.generate(long_ids, pixels)
    with pytest.raises(ValueError, match="needs 74 positions, but the model has 64 position"):
        caption.generate(pixels, input_ids=long_ids[:, :11], max_new_tokens=64)
    with pytest.raises(ValueError, match=r"position_ids must hold positions .* \[0, 64\); got 64"):
        caption.text_decoder(input_ids=long_ids[:, :2], position_ids=np.array([[0, 64]]))

    def logits(pixels, ids):
        return caption(pixel_values=pixels, input_ids=ids).logits

    static = tf.function(
        logits, input_signature=[tf.TensorSpec((1, 3, 30, 30)), tf.TensorSpec((1, 70), tf.int32)]
    )
    with pytest.raises(ValueError, match=message):  # raised while tracing
        static(pixels, long_ids)
    dynamic = tf.function(
        logits,
        input_signature=[tf.TensorSpec((None, 3, 30, 30)), tf.TensorSpec((None, None), tf.int32)],
    )
    with pytest.raises(
        tf.errors.InvalidArgumentError,
        match=r"(?s)input_ids, with the cached tokens, must fit the 64 position embeddings.*\[70\]",
    ):
        dynamic(pixels, long_ids)
    dynamic(pixels, long_ids[:, :64])


def test_channels_last_pixels_given_to_generate(generating_models):
    caption, vqa = generating_models
    channels_last = np.zeros((1, 30, 30, 3), np.float32)
    message = r"pixel_values must be channels-first with 3 channels, got shape \(1, 30, 30, 3\)"
    with pytest.raises(ValueError, match=message) as caption_error:
        caption.generate(channels_last)
    with pytest.raises(ValueError, match=message) as vqa_error:
        vqa.generate(np.array([[3, 5, 98]]), channels_last)
    for error in (caption_error, vqa_error):
        assert "in user code" not in str(error.value)  # no trace of TensorFlow internals


def test_vqa_without_labels_or_decoder_inputs(caption_checkpoint):
    config = tfblip.BlipConfig(
        text_config={
            "hidden_size": 32,
            "num_attention_heads": 4,
            "num_hidden_layers": 1,
            "intermediate_size": 37,
            "vocab_size": 99,
        },
        vision_config={
            "hidden_size": 32,
            "num_attention_heads": 4,
            "num_hidden_layers": 1,
            "intermediate_size": 37,
            "image_size": 30,
            "patch_size": 6,
        },
    )
    model = tfblip.TFBlipForQuestionAnswering(config)
    input_ids, _ = text_inputs()
    with pytest.raises(ValueError, match="labels .* or decoder_input_ids"):
        model(input_ids=input_ids, pixel_values=pixel_values())


def test_generation_defaults_round_trip(caption_checkpoint, tmp_path):
    _, directory = caption_checkpoint
    broken = copy_checkpoint(directory, tmp_path / "with_defaults")
    (broken / "generation_config.json").write_text(
        json.dumps({"num_beams": 3, "max_length": 9, "transformers_version": "5"})
    )
    model = tfblip.TFBlipForConditionalGeneration.from_pretrained(broken)
    assert model.generation_defaults == {"num_beams": 3, "max_length": 9}
    model.save_pretrained(tmp_path / "saved")
    again = tfblip.TFBlipForConditionalGeneration.from_pretrained(tmp_path / "saved")
    assert again.generation_defaults == {"num_beams": 3, "max_length": 9}
