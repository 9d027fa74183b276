"""Reading transformers 4.x TensorFlow BLIP checkpoints (tf_model.h5).

transformers 4.x cannot be installed next to transformers 5, so `write_tf_h5` writes the
files itself, in the layout that 4.x's code produces: `TFPreTrainedModel.save_pretrained`
calls Keras 2's `save_weights` (root attribute `layer_names`, one group per top-level layer
with attribute `weight_names`, datasets named by the variables' full TF names), and the
variable names follow the layer names of `modeling_tf_blip.py` / `modeling_tf_blip_text.py`.
It derives each name from the PyTorch module that owns the parameter, independently of the
reader's tables.
"""

import h5py
import numpy as np
import pytest
import torch
from reference import (
    assert_close,
    pixel_values,
    reference_model,
    reference_vqa_decoder_logits,
    text_inputs,
    to_torch,
)

import tfblip
from tfblip.checkpoints.tf_h5 import is_tf_h5_checkpoint, read_tf_h5
from tfblip.errors import CheckpointError

TF_CLASSES = {
    "BlipForConditionalGeneration": tfblip.TFBlipForConditionalGeneration,
    "BlipForQuestionAnswering": tfblip.TFBlipForQuestionAnswering,
    "BlipForImageTextRetrieval": tfblip.TFBlipForImageTextRetrieval,
    "BlipModel": tfblip.TFBlipModel,
}
# Keras names a model after its snake-cased class unless told otherwise.
MODEL_SCOPES = {
    "BlipForConditionalGeneration": "tf_blip_for_conditional_generation",
    "BlipForQuestionAnswering": "tf_blip_for_question_answering",
    "BlipForImageTextRetrieval": "tf_blip_for_image_text_retrieval",
    "BlipModel": "tf_blip_model",
}
# VQA's answer decoder cross-attends to question states through weights sized for image states.
CONFIG_KWARGS = {"BlipForQuestionAnswering": {"vision": {"hidden_size": 32}}}


def tf_variable(reference, key, value):
    """(TF variable name below the model scope, value in TF layout) of a PyTorch parameter."""
    module_path, _, leaf = key.rpartition(".")
    module = reference.get_submodule(module_path)
    if isinstance(module, torch.nn.Linear):
        tf_leaf = {"weight": "kernel", "bias": "bias"}[leaf]
        value = value.T if leaf == "weight" else value
    elif isinstance(module, torch.nn.Conv2d):
        tf_leaf = {"weight": "kernel", "bias": "bias"}[leaf]
        value = value.transpose(2, 3, 1, 0) if leaf == "weight" else value
    elif isinstance(module, torch.nn.LayerNorm):
        tf_leaf = {"weight": "gamma", "bias": "beta"}[leaf]
    elif isinstance(module, torch.nn.Embedding):
        tf_leaf = "embeddings"
    else:  # add_weight variables: class/position embeddings, logit_scale, the LM head bias
        tf_leaf = leaf
    parts = []
    for part in module_path.split(".") if module_path else []:
        if part.isdigit():  # TF layers of a list are named "<list>_._<index>"
            parts[-1] = f"{parts[-1]}_._{part}"
        else:
            parts.append(part)
    return "/".join([*parts, tf_leaf]), np.array(value, order="C")  # 0-d stays 0-d


def tf_variables(reference, class_name):
    variables = {}
    for key, tensor in reference.state_dict().items():
        # TF's decoder Dense has no bias; the LM head adds `predictions/bias` instead.
        if key.endswith("cls.predictions.decoder.bias"):
            continue
        name, value = tf_variable(reference, key, tensor.detach().numpy())
        if class_name == "BlipModel":
            name = "blip/" + name  # TFBlipModel's main layer
        variables[name] = value
    return variables


def set_names(node, attribute, names, chunks=1):
    """Keras 2's save_attributes_to_hdf5_group: chunks go to `<attribute>0`, `<attribute>1`..."""
    encoded = [name.encode("utf8") for name in names]
    if chunks == 1:
        node.attrs[attribute] = encoded
        return
    for index, chunk in enumerate(np.array_split(np.asarray(encoded), chunks)):
        node.attrs[f"{attribute}{index}"] = chunk


def write_tf_h5(path, reference, class_name, scope=None, chunks=1, variables=None):
    """A tf_model.h5 as TFPreTrainedModel.save_pretrained (Keras 2 save_weights) writes it."""
    scope = scope or MODEL_SCOPES[class_name]
    variables = variables if variables is not None else tf_variables(reference, class_name)
    layers = {}
    for name in variables:
        layers.setdefault(name.split("/")[0], []).append(name)
    with h5py.File(path, "w") as f:
        set_names(f, "layer_names", list(layers))
        f.attrs["backend"] = b"tensorflow"
        f.attrs["keras_version"] = b"2.15.0"
        for layer, names in sorted(layers.items()):
            group = f.create_group(layer)
            full_names = [f"{scope}/{name}:0" for name in names]
            set_names(group, "weight_names", full_names, chunks=chunks)
            for full_name, name in zip(full_names, names):
                group.create_dataset(full_name, data=variables[name])
        f.create_group("top_level_model_weights").attrs["weight_names"] = []
    return path


def write_tf_h5_shard(path, reference, class_name):
    """One shard of a save_pretrained checkpoint split by max_shard_size."""
    variables = tf_variables(reference, class_name)
    with h5py.File(path, "w") as f:
        names = [f"{name}:0" for name in sorted(variables)]
        for name in names:
            f.create_dataset(name, data=variables[name[:-2]])
        set_names(f, "layer_names", names)
    return path


@pytest.fixture(scope="module")
def tf_checkpoints(tmp_path_factory):
    """{class name: (PyTorch reference, tf_model.h5 path)}, one per task model."""
    directory = tmp_path_factory.mktemp("tf_h5")
    checkpoints = {}
    for seed, class_name in enumerate(TF_CLASSES, start=60):
        reference = reference_model(class_name, seed=seed, **CONFIG_KWARGS.get(class_name, {}))
        path = write_tf_h5(directory / f"{class_name}.h5", reference, class_name)
        checkpoints[class_name] = reference, path
    return checkpoints


def assert_state_equal(state, reference):
    expected = {key: value.detach().numpy() for key, value in reference.state_dict().items()}
    assert sorted(state) == sorted(expected)
    for key, value in expected.items():
        assert state[key].shape == value.shape, key
        assert np.array_equal(state[key], value), key


# ----------------------------------------------------------------------------- layout


def test_written_files_have_transformers_4_names(tf_checkpoints):
    # Spelled out from modeling_tf_blip.py / modeling_tf_blip_text.py, as a check on the writer.
    expected = {
        "BlipForConditionalGeneration": [
            "vision_model/{scope}/vision_model/embeddings/patch_embedding/kernel:0",
            "vision_model/{scope}/vision_model/embeddings/class_embedding:0",
            "vision_model/{scope}/vision_model/encoder/layers_._1/self_attn/qkv/kernel:0",
            "vision_model/{scope}/vision_model/post_layernorm/gamma:0",
            "text_decoder/{scope}/text_decoder/bert/embeddings/word_embeddings/embeddings:0",
            "text_decoder/{scope}/text_decoder/bert/encoder/layer_._0/crossattention/output/"
            + "LayerNorm/beta:0",
            "text_decoder/{scope}/text_decoder/cls/predictions/decoder/kernel:0",
            "text_decoder/{scope}/text_decoder/cls/predictions/bias:0",
        ],
        "BlipForQuestionAnswering": [
            "text_encoder/{scope}/text_encoder/encoder/layer_._1/attention/self/query/bias:0",
        ],
        "BlipForImageTextRetrieval": [
            "itm_head/{scope}/itm_head/kernel:0",
            "vision_proj/{scope}/vision_proj/bias:0",
        ],
        "BlipModel": [
            "blip/{scope}/blip/logit_scale:0",
            "blip/{scope}/blip/text_model/pooler/dense/kernel:0",
            "blip/{scope}/blip/visual_projection/kernel:0",
        ],
    }
    for class_name, names in expected.items():
        names = [name.format(scope=MODEL_SCOPES[class_name]) for name in names]
        with h5py.File(tf_checkpoints[class_name][1], "r") as f:
            for name in names:
                assert name in f, name
            group, _, weight_name = names[0].partition("/")
            # h5py reads a list of bytes back as str, as Keras 2 wrote it.
            assert weight_name in list(f[group].attrs["weight_names"])
    with h5py.File(tf_checkpoints["BlipForConditionalGeneration"][1], "r") as f:
        assert sorted(f.attrs["layer_names"]) == ["text_decoder", "vision_model"]
        vision = f["vision_model/tf_blip_for_conditional_generation/vision_model"]
        assert vision["embeddings/patch_embedding/kernel:0"].shape == (6, 6, 3, 24)
        assert vision["embeddings/position_embedding:0"].shape == (1, 26, 24)
        text = f["text_decoder/tf_blip_for_conditional_generation/text_decoder"]
        assert list(text["cls/predictions/decoder"]) == ["kernel:0"]  # no decoder bias in TF


# ----------------------------------------------------------------------------- reading


@pytest.mark.parametrize("class_name", list(TF_CLASSES))
def test_read_tf_h5_returns_the_pytorch_state_dict(tf_checkpoints, class_name):
    reference, path = tf_checkpoints[class_name]
    assert is_tf_h5_checkpoint(path)
    assert_state_equal(read_tf_h5(path), reference)


def test_chunked_names_other_model_scope_and_directories(tf_checkpoints, tmp_path):
    # Keras splits attributes over 64 KiB; a second model in a process is scoped "<name>_1".
    reference, _ = tf_checkpoints["BlipForQuestionAnswering"]
    write_tf_h5(
        tmp_path / "tf_model.h5",
        reference,
        "BlipForQuestionAnswering",
        scope="tf_blip_for_question_answering_1",
        chunks=3,
    )
    with h5py.File(tmp_path / "tf_model.h5", "r") as f:
        assert "weight_names2" in f["text_decoder"].attrs
    assert is_tf_h5_checkpoint(tmp_path)
    assert_state_equal(read_tf_h5(tmp_path), reference)


def test_save_pretrained_shard(tf_checkpoints, tmp_path):
    reference, _ = tf_checkpoints["BlipModel"]
    path = write_tf_h5_shard(tmp_path / "tf_model-00001-of-00001.h5", reference, "BlipModel")
    assert is_tf_h5_checkpoint(path)
    assert_state_equal(read_tf_h5(path), reference)


# ----------------------------------------------------------------------------- end to end


def loaded_model(class_name, reference, path, **config_changes):
    """The tfblip model from_pretrained reads from the h5 file, with the reference's config."""
    config = tfblip.BlipConfig.from_dict({**reference.config.to_dict(), **config_changes})
    return TF_CLASSES[class_name].from_pretrained(path, config=config)


def test_captioning_logits(tf_checkpoints):
    reference, path = tf_checkpoints["BlipForConditionalGeneration"]
    model = loaded_model("BlipForConditionalGeneration", reference, path)
    pixels = pixel_values(seed=61)
    input_ids, attention_mask = text_inputs(seed=61)
    with torch.no_grad():
        expected = reference(
            pixel_values=to_torch(pixels),
            input_ids=to_torch(input_ids),
            attention_mask=to_torch(attention_mask),
        )
    outputs = model(pixel_values=pixels, input_ids=input_ids, attention_mask=attention_mask)
    assert_close(outputs.logits, expected.logits, name="logits")
    assert_close(outputs.image_embeds, expected.image_embeds, name="image_embeds")


def test_question_answering_logits(tf_checkpoints):
    reference, path = tf_checkpoints["BlipForQuestionAnswering"]
    model = loaded_model("BlipForQuestionAnswering", reference, path)
    pixels = pixel_values(seed=62)
    input_ids, _ = text_inputs(seed=62)
    question_mask = np.ones_like(input_ids)
    answers, answer_mask = text_inputs(length=4, seed=63)
    answers[:, 0] = reference.config.text_config.bos_token_id
    expected = reference_vqa_decoder_logits(reference, pixels, input_ids, answers, answer_mask)
    outputs = model(
        input_ids=input_ids,
        pixel_values=pixels,
        attention_mask=question_mask,
        decoder_input_ids=answers,
        decoder_attention_mask=answer_mask,
    )
    assert_close(outputs.decoder_logits, expected, name="decoder_logits")


@pytest.mark.parametrize("use_itm_head", [True, False])
def test_retrieval_scores(tf_checkpoints, use_itm_head):
    reference, path = tf_checkpoints["BlipForImageTextRetrieval"]
    model = loaded_model("BlipForImageTextRetrieval", reference, path)
    pixels = pixel_values(seed=64)
    input_ids, attention_mask = text_inputs(seed=64)
    with torch.no_grad():
        expected = reference(
            input_ids=to_torch(input_ids),
            pixel_values=to_torch(pixels),
            attention_mask=to_torch(attention_mask),
            use_itm_head=use_itm_head,
        )
    outputs = model(
        input_ids=input_ids,
        pixel_values=pixels,
        attention_mask=attention_mask,
        use_itm_head=use_itm_head,
    )
    assert_close(outputs.itm_score, expected.itm_score, name="itm_score")


def test_blip_model_similarities(tf_checkpoints):
    reference, path = tf_checkpoints["BlipModel"]
    model = loaded_model("BlipModel", reference, path)
    pixels = pixel_values(batch_size=3, seed=65)
    input_ids, attention_mask = text_inputs(batch_size=3, seed=65)
    with torch.no_grad():
        expected = reference(
            input_ids=to_torch(input_ids),
            pixel_values=to_torch(pixels),
            attention_mask=to_torch(attention_mask),
        )
    outputs = model(input_ids=input_ids, pixel_values=pixels, attention_mask=attention_mask)
    for field in ("logits_per_image", "text_embeds", "image_embeds"):
        assert_close(outputs[field], expected[field], name=field)


def test_lm_head_trained_apart_from_the_embeddings(tmp_path):
    # TF's decoder is a Dense of its own, so TF fine-tuning moves it away from the word
    # embeddings. With an untied config the model keeps it, and the bias TF adds after it.
    reference = reference_model(
        "BlipForConditionalGeneration",
        seed=66,
        text={"tie_word_embeddings": False},
        tie_word_embeddings=False,
    )
    predictions = reference.text_decoder.cls.predictions
    with torch.no_grad():
        predictions.decoder.bias.copy_(predictions.bias)  # TF has only `predictions/bias`
    path = write_tf_h5(tmp_path / "tf_model.h5", reference, "BlipForConditionalGeneration")
    state = read_tf_h5(path)
    assert_state_equal(state, reference)
    assert not np.array_equal(
        state["text_decoder.cls.predictions.decoder.weight"],
        state["text_decoder.bert.embeddings.word_embeddings.weight"],
    )
    # A config saying "tied" (transformers' default) is corrected from the weights.
    text_config = {**reference.config.text_config.to_dict(), "tie_word_embeddings": True}
    model = loaded_model("BlipForConditionalGeneration", reference, path, text_config=text_config)
    assert model.config.text_config.tie_word_embeddings is False
    # As transformers 4.x saved it: config.json beside tf_model.h5 in a directory.
    reference.config.save_pretrained(tmp_path)
    from_directory = tfblip.TFBlipForConditionalGeneration.from_pretrained(tmp_path)
    assert from_directory.config.text_config.tie_word_embeddings is False
    pixels = pixel_values(seed=66)
    input_ids, attention_mask = text_inputs(seed=66)
    with torch.no_grad():
        expected = reference(
            pixel_values=to_torch(pixels),
            input_ids=to_torch(input_ids),
            attention_mask=to_torch(attention_mask),
        ).logits
    for loaded in (model, from_directory):
        outputs = loaded(pixel_values=pixels, input_ids=input_ids, attention_mask=attention_mask)
        assert_close(outputs.logits, expected, name="logits")


# ----------------------------------------------------------------------------- bad files


def test_non_hdf5_files(tmp_path):
    text = tmp_path / "tf_model.h5"
    text.write_text("not weights\n")
    assert not is_tf_h5_checkpoint(text)
    assert not is_tf_h5_checkpoint(tmp_path / "missing.h5")
    assert not is_tf_h5_checkpoint(tmp_path / "empty_dir")
    with pytest.raises(CheckpointError, match="is not an HDF5 file"):
        read_tf_h5(text)
    with pytest.raises(CheckpointError, match="No TensorFlow checkpoint"):
        read_tf_h5(tmp_path / "missing.h5")

    text.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:0\nsize 1\n")
    with pytest.raises(CheckpointError, match="git-lfs pointer"):
        read_tf_h5(text)


def test_truncated_file(tf_checkpoints, tmp_path):
    data = tf_checkpoints["BlipForImageTextRetrieval"][1].read_bytes()
    truncated = tmp_path / "tf_model.h5"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        read_tf_h5(truncated)


def test_hdf5_that_is_not_keras_weights(tmp_path):
    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("vision_model/kernel:0", data=np.zeros((2, 2), np.float32))
    assert not is_tf_h5_checkpoint(path)
    with pytest.raises(CheckpointError, match="no root attribute 'layer_names'"):
        read_tf_h5(path)


def test_unknown_weights_are_listed(tf_checkpoints, tmp_path):
    reference, _ = tf_checkpoints["BlipForImageTextRetrieval"]
    variables = tf_variables(reference, "BlipForImageTextRetrieval")
    variables["classifier/kernel"] = np.zeros((32, 3), np.float32)
    variables["vision_model/encoder/layers_._0/self_attn/qkv/gamma"] = np.zeros(3, np.float32)
    path = write_tf_h5(
        tmp_path / "tf_model.h5", reference, "BlipForImageTextRetrieval", variables=variables
    )
    with pytest.raises(
        CheckpointError, match=r"not part of a transformers 4.x TFBlip task model .*\(2\)"
    ) as error:
        read_tf_h5(path)
    assert "classifier/kernel:0" in str(error.value)
    assert "vision_model/encoder/layers_._0/self_attn/qkv/gamma:0" in str(error.value)


def test_listed_weight_missing_from_the_file(tf_checkpoints, tmp_path):
    reference, _ = tf_checkpoints["BlipForImageTextRetrieval"]
    path = write_tf_h5(tmp_path / "tf_model.h5", reference, "BlipForImageTextRetrieval")
    with h5py.File(path, "a") as f:
        del f["itm_head/tf_blip_for_image_text_retrieval/itm_head/bias:0"]
    with pytest.raises(CheckpointError, match="itm_head/bias:0' but holds no such dataset"):
        read_tf_h5(path)
