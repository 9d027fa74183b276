"""Original Salesforce BLIP checkpoints (.pth) read into transformers' layout.

No original checkpoint is available offline, so each test writes one: a tiny transformers
model's state dict renamed back to the original salesforce/BLIP module names (the inverse of
transformers' convert_blip_original_pytorch_to_hf.py, written independently below), plus the
momentum encoders and queues that pretraining and retrieval checkpoints carry.
"""

import json
import re

import numpy as np
import pytest
import torch
import transformers
from reference import (
    assert_close,
    pixel_values,
    reference_model,
    reference_vqa_decoder_logits,
    text_inputs,
    to_torch,
)

import tfblip
from tfblip.checkpoints import load_weights
from tfblip.checkpoints.salesforce import (
    ORIGINAL_VISION_LAYER_NORM_EPS,
    SalesforceCheckpointError,
    is_salesforce_checkpoint,
    read_salesforce_checkpoint,
)
from tfblip.checkpoints.sources import DictSource

# Head counts are inferred as width // 64 (true of every BLIP tower), so the tiny towers use
# 64-wide heads. The vision eps is the original ViT's, which the reader puts in the config.
TEXT = {"hidden_size": 64, "num_attention_heads": 1, "intermediate_size": 37}
VISION = {
    "hidden_size": 128,
    "num_attention_heads": 2,
    "intermediate_size": 41,
    "layer_norm_eps": ORIGINAL_VISION_LAYER_NORM_EPS,
}
# VQA's answer decoder cross-attends to question states: the widths must be equal.
VQA_VISION = {**VISION, "hidden_size": 64, "num_attention_heads": 1}
PATCH = 6
STRUCTURE = {
    "vision_config": (
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "image_size",
        "patch_size",
        "layer_norm_eps",
        "hidden_act",
    ),
    "text_config": (
        "vocab_size",
        "hidden_size",
        "encoder_hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "max_position_embeddings",
        "layer_norm_eps",
        "hidden_act",
        "is_decoder",
    ),
}

TF_CLASSES = {
    "BlipForConditionalGeneration": tfblip.TFBlipForConditionalGeneration,
    "BlipForQuestionAnswering": tfblip.TFBlipForQuestionAnswering,
    "BlipForImageTextRetrieval": tfblip.TFBlipForImageTextRetrieval,
}
ARCHITECTURES = tuple(TF_CLASSES)

_VISION_BLOCK = {
    "self_attn.qkv": "attn.qkv",
    "self_attn.projection": "attn.proj",
    "layer_norm1": "norm1",
    "layer_norm2": "norm2",
}


def original_key(key):
    """transformers' key -> the original BLIP module's key."""
    match = re.fullmatch(r"vision_model\.encoder\.layers\.(\d+)\.(.+)\.(weight|bias)", key)
    if match:
        layer, module, parameter = match.groups()
        return f"visual_encoder.blocks.{layer}.{_VISION_BLOCK.get(module, module)}.{parameter}"
    for hf, original in (
        ("vision_model.embeddings.class_embedding", "visual_encoder.cls_token"),
        ("vision_model.embeddings.position_embedding", "visual_encoder.pos_embed"),
        ("vision_model.embeddings.patch_embedding.", "visual_encoder.patch_embed.proj."),
        ("vision_model.post_layernorm.", "visual_encoder.norm."),
    ):
        if key.startswith(hf):
            return original + key[len(hf) :]
    return key  # BERT and head names are the same in both


def to_original(hf_state):
    return {original_key(key): value.detach().clone() for key, value in hf_state.items()}


def training_state(original, seed=0):
    """Momentum copies, queues and temperature, as BLIP_Pretrain / BLIP_Retrieval save them."""
    generator = torch.Generator().manual_seed(seed)
    extra = {
        key.replace(module, module + "_m", 1): torch.randn(value.shape, generator=generator)
        for key, value in original.items()
        for module in ("visual_encoder", "text_encoder", "vision_proj", "text_proj")
        if key.startswith(module + ".")
    }
    extra.update(
        image_queue=torch.randn(12, 8, generator=generator),
        text_queue=torch.randn(12, 8, generator=generator),
        idx_queue=torch.full((1, 8), -100),
        ptr_queue=torch.zeros(1, dtype=torch.long),
        queue_ptr=torch.zeros(1, dtype=torch.long),
        temp=torch.tensor(0.07),
    )
    return extra


def tiny_reference(architecture, seed):
    vision = VQA_VISION if architecture == "BlipForQuestionAnswering" else VISION
    return reference_model(architecture, seed=seed, text=TEXT, vision=vision)


def write_checkpoint(path, state, wrap=True):
    torch.save({"model": state, "epoch": 3} if wrap else state, path)
    return path


@pytest.fixture(scope="module", params=ARCHITECTURES)
def converted(request, tmp_path_factory):
    """(architecture, reference model, checkpoint path, read config, read state dict)."""
    architecture = request.param
    reference = tiny_reference(architecture, seed=ARCHITECTURES.index(architecture) + 30)
    original = to_original(reference.state_dict())
    original.update(training_state(original))
    path = tmp_path_factory.mktemp("salesforce") / "model.pth"
    write_checkpoint(path, original)
    config, state = read_salesforce_checkpoint(path, architecture)
    return architecture, reference, path, config, state


def test_state_dict_is_exactly_transformers(converted):
    _, reference, _, _, state = converted
    expected = reference.state_dict()
    assert sorted(state) == sorted(expected)
    for key, value in expected.items():
        assert torch.equal(torch.as_tensor(state[key]), value), key


def test_config_builds_both_frameworks(converted):
    architecture, reference, _, config, state = converted
    assert config["architectures"] == [architecture]
    assert json.loads(json.dumps(config)) == config  # plain ints, as config.json needs
    vision, text = config["vision_config"], config["text_config"]
    assert vision["layer_norm_eps"] == ORIGINAL_VISION_LAYER_NORM_EPS
    assert (vision["image_size"], vision["patch_size"]) == (30, PATCH)
    assert text["encoder_hidden_size"] == vision["hidden_size"]
    assert text["bos_token_id"] == text["vocab_size"] - 2  # [DEC] precedes [ENC]
    # The tiny reference's special token ids are its own; its architecture is the checkpoint's.
    for sub, fields in STRUCTURE.items():
        for key in fields:
            assert getattr(getattr(reference.config, sub), key) == config[sub][key], (sub, key)
    # transformers itself accepts the config and loads the state dict strictly.
    pytorch = getattr(transformers, architecture)(transformers.BlipConfig(**config))
    pytorch.load_state_dict({k: torch.as_tensor(v) for k, v in state.items()}, strict=True)
    tfblip.BlipConfig.from_dict(config)


def test_tfblip_outputs_equal_transformers(converted):
    architecture, reference, path, _, _ = converted
    model = TF_CLASSES[architecture].from_pretrained(path)
    pixels = pixel_values(batch_size=2, seed=5)
    input_ids, attention_mask = text_inputs(batch_size=2, seed=5)
    with torch.no_grad():
        if architecture == "BlipForConditionalGeneration":
            inputs = {
                "pixel_values": pixels,
                "input_ids": input_ids,
                "attention_mask": attention_mask,
            }
            expected = reference(**{k: to_torch(v) for k, v in inputs.items()})
            assert_close(model(**inputs).logits, expected.logits, name="logits")
        elif architecture == "BlipForQuestionAnswering":
            answers, answer_mask = text_inputs(batch_size=2, length=4, seed=6)
            inputs = {
                "pixel_values": pixels,
                "input_ids": input_ids,
                "attention_mask": np.ones_like(input_ids),
                "decoder_input_ids": answers,
                "decoder_attention_mask": answer_mask,
            }
            expected = reference_vqa_decoder_logits(
                reference, pixels, input_ids, answers, answer_mask
            )
            assert_close(model(**inputs).decoder_logits, expected, name="decoder_logits")
        else:
            inputs = {
                "pixel_values": pixels,
                "input_ids": input_ids,
                "attention_mask": attention_mask,
            }
            for use_itm_head in (True, False):
                expected = reference(
                    **{k: to_torch(v) for k, v in inputs.items()}, use_itm_head=use_itm_head
                )
                actual = model(**inputs, use_itm_head=use_itm_head)
                assert_close(actual.itm_score, expected.itm_score, name=f"itm {use_itm_head}")


@pytest.mark.parametrize("image_size", [36, 24, 30])
def test_image_size_resizes_position_embeddings_bicubically(converted, image_size):
    architecture, _, path, _, state = converted
    resized_config, resized = read_salesforce_checkpoint(path, architecture, image_size)
    assert resized_config["vision_config"]["image_size"] == image_size
    key = "vision_model.embeddings.position_embedding"
    width = state[key].shape[-1]
    grid = image_size // PATCH
    patches = state[key][:, 1:].reshape(1, 5, 5, width).permute(0, 3, 1, 2)
    patches = torch.nn.functional.interpolate(
        patches, size=(grid, grid), mode="bicubic", align_corners=False
    )
    expected = torch.cat([state[key][:, :1], patches.permute(0, 2, 3, 1).flatten(1, 2)], dim=1)
    assert resized[key].shape == (1, grid * grid + 1, width)
    torch.testing.assert_close(resized[key], expected, rtol=0, atol=0)
    assert all(torch.equal(resized[k], state[k]) for k in state if k != key)
    # The resized model runs at the new resolution.
    model = TF_CLASSES[architecture](tfblip.BlipConfig.from_dict(resized_config))
    load_weights(model, DictSource(resized))
    outputs = model.vision_model(pixel_values=pixel_values(batch_size=1, size=image_size))
    assert outputs.last_hidden_state.shape == (1, grid * grid + 1, width)


def test_image_size_must_fit_the_patches(converted):
    architecture, _, path, _, _ = converted
    with pytest.raises(ValueError, match="patch size 6"):
        read_salesforce_checkpoint(path, architecture, image_size=32)
    for bad in (0, 36.0, "36", True):
        with pytest.raises(ValueError, match="positive int"):
            read_salesforce_checkpoint(path, architecture, image_size=bad)
    config, _ = read_salesforce_checkpoint(path, architecture, image_size=np.int64(36))
    assert type(config["vision_config"]["image_size"]) is int


@pytest.fixture(scope="module")
def pretraining_checkpoint(tmp_path_factory):
    """A BLIP_Pretrain-like checkpoint: ITC/ITM heads, encoder, decoder, momentum, queues.

    Its decoder and encoder come from a VQA model, its heads from a retrieval model.
    """
    vqa = tiny_reference("BlipForQuestionAnswering", seed=40)
    retrieval = reference_model("BlipForImageTextRetrieval", seed=41, text=TEXT, vision=VQA_VISION)
    original = to_original(vqa.state_dict())
    heads = to_original(retrieval.state_dict())
    original.update(
        {
            k: v
            for k, v in heads.items()
            if k.split(".")[0] in ("vision_proj", "text_proj", "itm_head")
        }
    )
    original.update(training_state(original, seed=1))
    path = write_checkpoint(tmp_path_factory.mktemp("pretrain") / "model_base.pth", original)
    return path, original


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_pretraining_checkpoint_serves_every_task(pretraining_checkpoint, architecture):
    path, original = pretraining_checkpoint
    config, state = read_salesforce_checkpoint(path, architecture)
    expected = getattr(transformers, architecture)(transformers.BlipConfig(**config)).state_dict()
    assert sorted(state) == sorted(expected)
    for key, value in state.items():
        assert torch.equal(value, original[original_key(key)]), key
    assert not any(k.startswith(("text_encoder_m", "visual_encoder_m")) for k in state)


def test_text_encoder_under_a_bert_prefix(tmp_path):
    reference = tiny_reference("BlipForImageTextRetrieval", seed=42)
    original = {
        re.sub(r"^text_encoder\.", "text_encoder.bert.", key): value
        for key, value in to_original(reference.state_dict()).items()
    }
    path = write_checkpoint(tmp_path / "model.pth", original, wrap=False)
    _, state = read_salesforce_checkpoint(path, "BlipForImageTextRetrieval")
    expected = reference.state_dict()
    assert sorted(state) == sorted(expected)
    assert all(torch.equal(state[k], expected[k]) for k in expected)


# ----------------------------------------------------------------------------- errors


@pytest.fixture(scope="module")
def caption_checkpoint(tmp_path_factory):
    reference = tiny_reference("BlipForConditionalGeneration", seed=43)
    original = to_original(reference.state_dict())
    path = tmp_path_factory.mktemp("caption") / "model_large_caption.pth"
    return write_checkpoint(path, original), original


@pytest.mark.parametrize(
    "architecture,named",
    [
        ("BlipForQuestionAnswering", r"text_encoder\.\* \(the question encoder\)"),
        ("BlipForImageTextRetrieval", r"vision_proj\.\*.*BlipForConditionalGeneration"),
    ],
)
def test_architecture_the_checkpoint_lacks(caption_checkpoint, architecture, named):
    path, _ = caption_checkpoint
    with pytest.raises(SalesforceCheckpointError, match=named):
        read_salesforce_checkpoint(path, architecture)


def test_blip_model_is_refused_with_the_reason(caption_checkpoint):
    path, _ = caption_checkpoint
    with pytest.raises(SalesforceCheckpointError, match="pooler.*use_itm_head=False"):
        read_salesforce_checkpoint(path, "BlipModel")
    with pytest.raises(ValueError, match="Unknown architecture 'BlipForNLVR'"):
        read_salesforce_checkpoint(path, "BlipForNLVR")


def test_missing_and_misshapen_tensors_are_named(caption_checkpoint, tmp_path):
    path, original = caption_checkpoint
    partial = dict(original)
    del partial["visual_encoder.blocks.1.attn.proj.bias"]
    partial["text_decoder.bert.encoder.layer.0.output.dense.bias"] = torch.zeros(3)
    path = write_checkpoint(tmp_path / "partial.pth", partial)
    with pytest.raises(SalesforceCheckpointError) as error:
        read_salesforce_checkpoint(path, "BlipForConditionalGeneration")
    assert "visual_encoder.blocks.1.attn.proj.bias" in str(error.value)
    assert "text_decoder.bert.encoder.layer.0.output.dense.bias (3,), expected (64,)" in str(
        error.value
    )


def test_vqa_needs_one_text_config_and_equal_widths(tmp_path):
    # A ViT wider than the text: the original answer decoder's cross-attention takes
    # text-wide question states, transformers' takes vision-wide ones.
    retrieval = to_original(tiny_reference("BlipForImageTextRetrieval", seed=45).state_dict())
    vqa = to_original(tiny_reference("BlipForQuestionAnswering", seed=46).state_dict())
    wide = {k: v for k, v in retrieval.items() if k.startswith(("visual_", "text_encoder."))}
    wide.update({k: v for k, v in vqa.items() if k.startswith("text_decoder.")})
    path = write_checkpoint(tmp_path / "wide.pth", wide)
    with pytest.raises(SalesforceCheckpointError, match="wrong shape.*equal text and vision"):
        read_salesforce_checkpoint(path, "BlipForQuestionAnswering")

    deeper = dict(vqa)
    layer = "text_decoder.bert.encoder.layer."
    deeper.update(
        {
            k.replace(f"{layer}1.", f"{layer}2."): v
            for k, v in vqa.items()
            if k.startswith(f"{layer}1.")
        }
    )
    path = write_checkpoint(tmp_path / "deeper.pth", deeper)
    with pytest.raises(SalesforceCheckpointError, match="differ in num_hidden_layers"):
        read_salesforce_checkpoint(path, "BlipForQuestionAnswering")


def test_untied_decoder_is_refused(caption_checkpoint, tmp_path):
    _, original = caption_checkpoint
    untied = dict(original)
    key = "text_decoder.cls.predictions.decoder.weight"
    untied[key] = untied[key] + 1.0
    path = write_checkpoint(tmp_path / "untied.pth", untied)
    with pytest.raises(SalesforceCheckpointError, match="ties"):
        read_salesforce_checkpoint(path, "BlipForConditionalGeneration")


def test_is_salesforce_checkpoint(caption_checkpoint, tmp_path):
    path, original = caption_checkpoint
    assert is_salesforce_checkpoint(path)
    assert is_salesforce_checkpoint(write_checkpoint(tmp_path / "bare.pt", original, wrap=False))
    # The same file under another extension is not taken for one.
    assert not is_salesforce_checkpoint(write_checkpoint(tmp_path / "model.bin", original))
    assert not is_salesforce_checkpoint(tmp_path / "absent.pth")
    assert not is_salesforce_checkpoint(tmp_path)


def test_a_transformers_checkpoint_is_not_one(tmp_path):
    reference = tiny_reference("BlipForConditionalGeneration", seed=44)
    path = write_checkpoint(tmp_path / "hf.pth", reference.state_dict(), wrap=False)
    assert not is_salesforce_checkpoint(path)
    with pytest.raises(SalesforceCheckpointError, match="no visual_encoder.*transformers"):
        read_salesforce_checkpoint(path, "BlipForConditionalGeneration")
    other = write_checkpoint(tmp_path / "other.pth", {"weight": torch.zeros(2)})
    with pytest.raises(SalesforceCheckpointError, match="not an original BLIP checkpoint"):
        read_salesforce_checkpoint(other, "BlipForConditionalGeneration")
    listed = tmp_path / "list.pth"
    torch.save([torch.zeros(2)], listed)
    with pytest.raises(SalesforceCheckpointError, match="holds a list"):
        read_salesforce_checkpoint(listed, "BlipForConditionalGeneration")


def test_corrupt_files(caption_checkpoint, tmp_path):
    path, _ = caption_checkpoint
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(np.random.default_rng(0).bytes(4096))
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(path.read_bytes()[:5000])
    for bad in (garbage, truncated):
        assert not is_salesforce_checkpoint(bad)
        with pytest.raises(SalesforceCheckpointError, match="Cannot read .* as a PyTorch"):
            read_salesforce_checkpoint(bad, "BlipForConditionalGeneration")
    with pytest.raises(FileNotFoundError):
        read_salesforce_checkpoint(tmp_path / "absent.pth", "BlipForConditionalGeneration")


def test_unsafe_pickles_are_not_run(tmp_path):
    # weights_only loading refuses arbitrary objects instead of executing their pickle code.
    path = tmp_path / "unsafe.pth"
    torch.save({"model": {"visual_encoder.cls_token": torch.zeros(1)}, "hook": print}, path)
    with pytest.raises(SalesforceCheckpointError, match="Cannot read"):
        read_salesforce_checkpoint(path, "BlipForConditionalGeneration")


def test_from_pretrained_resizes_to_image_size(converted):
    architecture, _, path, _, _ = converted
    model = TF_CLASSES[architecture].from_pretrained(path, image_size=36)
    assert model.config.vision_config.image_size == 36
    states = model.vision_model(pixel_values=pixel_values(batch_size=1, seed=1, size=36))
    assert states.last_hidden_state.shape[1] == (36 // PATCH) ** 2 + 1
    with pytest.raises(ValueError, match="image_size applies to original Salesforce"):
        tfblip.TFBlipVisionModel.from_pretrained(path.parent, image_size=36)
