"""Tests for tfblip.configuration, checked against transformers' BLIP configs."""

import dataclasses
import json

import pytest
import transformers

from tfblip.configuration import CONFIG_NAME, BlipConfig, BlipTextConfig, BlipVisionConfig

# (ours, transformers') pairs.
PAIRS = [
    (BlipVisionConfig, transformers.BlipVisionConfig),
    (BlipTextConfig, transformers.BlipTextConfig),
    (BlipConfig, transformers.BlipConfig),
]
PAIR_IDS = ["vision", "text", "blip"]
SUB_CONFIG_KEYS = {"text_config", "vision_config"}
# Fields we have that transformers 5 does not (older transformers files carry them).
OUR_ONLY_FIELDS = {"num_channels"}


def hf_own_fields(hf_cls):
    """Field names transformers declares on the BLIP class itself (not on PreTrainedConfig)."""
    base = {f.name for f in dataclasses.fields(transformers.PreTrainedConfig)}
    return [f.name for f in dataclasses.fields(hf_cls) if f.name not in base]


def tiny_config(**vision_extra):
    """A small, non-default config (every size differs from the defaults)."""
    return BlipConfig(
        text_config={
            "vocab_size": 99,
            "hidden_size": 32,
            "intermediate_size": 37,
            "projection_dim": 24,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "max_position_embeddings": 40,
            "bos_token_id": 97,
            "eos_token_id": 3,
            "sep_token_id": 5,
            "layer_norm_eps": 1e-6,
            "hidden_dropout_prob": 0.1,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 37,
            "projection_dim": 24,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "image_size": 30,
            "patch_size": 6,
            "hidden_act": "quick_gelu",
            **vision_extra,
        },
        projection_dim=16,
        image_text_hidden_size=20,
        logit_scale_init_value=1.5,
        label_smoothing=0.1,
    )


def write_json(path, data):
    path.write_text(json.dumps(data))
    return path


# ------------------------------------------------------------------------------------------
# Agreement with transformers' defaults
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("ours", "hf"), PAIRS, ids=PAIR_IDS)
def test_field_names_match_transformers(ours, hf):
    assert set(ours._field_names) - OUR_ONLY_FIELDS == set(hf_own_fields(hf))
    assert ours.model_type == hf.model_type


@pytest.mark.parametrize(("ours", "hf"), PAIRS, ids=PAIR_IDS)
def test_defaults_match_transformers(ours, hf):
    ours_dict, hf_dict = ours().to_dict(), hf().to_dict()
    checked = 0
    for name in ours._field_names:
        if name in OUR_ONLY_FIELDS or name in SUB_CONFIG_KEYS:
            continue
        assert ours_dict[name] == hf_dict[name], name
        # Same type too: transformers 5 rejects e.g. an int where it declares a float.
        assert type(ours_dict[name]) is type(hf_dict[name]), name
        checked += 1
    assert checked == len(hf_own_fields(hf)) - len(SUB_CONFIG_KEYS & set(hf_own_fields(hf)))
    assert ours_dict["model_type"] == hf_dict["model_type"]


def test_blip_sub_config_defaults_match_transformers():
    ours, hf = BlipConfig().to_dict(), transformers.BlipConfig().to_dict()
    for key in SUB_CONFIG_KEYS:
        shared = set(ours[key]) & set(hf[key])
        assert set(ours[key]) - shared == OUR_ONLY_FIELDS & set(ours[key])
        for name in shared:
            assert ours[key][name] == hf[key][name], (key, name)


def test_num_channels_defaults_to_3():
    assert BlipVisionConfig().num_channels == 3
    assert BlipVisionConfig.from_dict({"hidden_size": 96}).num_channels == 3
    assert BlipConfig().vision_config.num_channels == 3
    assert BlipVisionConfig(num_channels=1).to_dict()["num_channels"] == 1


# ------------------------------------------------------------------------------------------
# Interoperability with transformers' config files
# ------------------------------------------------------------------------------------------


def test_round_trip_through_transformers(tmp_path):
    ours = tiny_config(my_vision_key="kept")
    ours.my_top_key = {"a": [1, 2]}
    ours.save_pretrained(tmp_path / "ours")

    hf = transformers.BlipConfig.from_pretrained(tmp_path / "ours")
    assert hf.text_config.vocab_size == 99
    assert hf.text_config.hidden_size == 32
    assert hf.text_config.num_hidden_layers == 2
    assert hf.text_config.encoder_hidden_size == 32
    assert hf.text_config.eos_token_id == 3
    assert hf.vision_config.image_size == 30
    assert hf.vision_config.patch_size == 6
    assert hf.vision_config.num_attention_heads == 4
    assert hf.vision_config.hidden_act == "quick_gelu"
    assert hf.vision_config.num_channels == 3
    assert hf.image_text_hidden_size == 20
    assert hf.logit_scale_init_value == 1.5

    hf.save_pretrained(tmp_path / "hf")
    back = BlipConfig.from_pretrained(tmp_path / "hf")
    for name in BlipConfig._field_names:
        assert getattr(back, name) == getattr(ours, name), name
    assert back.vision_config.my_vision_key == "kept"
    assert back.my_top_key == {"a": [1, 2]}
    # transformers adds transformers_version; it is kept as an extra key. Nothing else changes.
    added = {"transformers_version": transformers.__version__}
    assert back.to_dict() == {**ours.to_dict(), **added}
    assert back.vision_config.to_dict() == ours.vision_config.to_dict()


def test_round_trip_with_square_pair_sizes(tmp_path):
    ours = tiny_config()
    ours.vision_config.image_size = (30, 30)
    ours.vision_config.patch_size = [6, 6]
    ours.validate()
    assert ours.vision_config.image_size == [30, 30]
    ours.save_pretrained(tmp_path)
    hf = transformers.BlipConfig.from_pretrained(tmp_path)
    assert list(hf.vision_config.image_size) == [30, 30]
    hf.save_pretrained(tmp_path / "hf")
    assert BlipConfig.from_pretrained(tmp_path / "hf").vision_config == ours.vision_config


def test_int_given_for_float_field_is_stored_as_float_and_accepted_by_transformers(tmp_path):
    # transformers 5 rejects {"layer_norm_eps": 1} (int for a float field).
    ours = BlipConfig(
        vision_config={"layer_norm_eps": 1, "attention_dropout": 0},
        logit_scale_init_value=2,
        label_smoothing=0,
    )
    assert type(ours.vision_config.layer_norm_eps) is float
    assert type(ours.logit_scale_init_value) is float
    ours.save_pretrained(tmp_path)
    hf = transformers.BlipConfig.from_pretrained(tmp_path)
    assert hf.vision_config.layer_norm_eps == 1.0
    assert hf.logit_scale_init_value == 2.0


def test_reads_transformers_written_config(tmp_path):
    hf = transformers.BlipConfig(
        text_config={"vocab_size": 99, "hidden_size": 32, "num_attention_heads": 4},
        vision_config={
            "hidden_size": 48,
            "num_attention_heads": 4,
            "image_size": 30,
            "patch_size": 6,
            "num_hidden_layers": 2,
        },
        projection_dim=16,
    )
    hf.save_pretrained(tmp_path)
    ours = BlipConfig.from_pretrained(tmp_path)
    hf_dict = hf.to_dict()
    for name in BlipConfig._field_names:
        if name in SUB_CONFIG_KEYS:
            continue
        assert getattr(ours, name) == hf_dict[name], name
    for key in SUB_CONFIG_KEYS:
        sub = getattr(ours, key)
        for name in type(sub)._field_names:
            if name not in OUR_ONLY_FIELDS:
                assert getattr(sub, name) == hf_dict[key][name], (key, name)
    assert ours.text_config.encoder_hidden_size == 48
    assert ours.transformers_version == transformers.__version__
    # The sub-configs can be read from the same file.
    assert BlipVisionConfig.from_pretrained(tmp_path) == ours.vision_config
    assert BlipTextConfig.from_pretrained(tmp_path / CONFIG_NAME) == ours.text_config


# A config.json as transformers 4.x wrote them for BLIP checkpoints (trimmed).
LEGACY_CONFIG = {
    "_commit_hash": None,
    "architectures": ["BlipForConditionalGeneration"],
    "image_text_hidden_size": 256,
    "initializer_factor": 1.0,
    "logit_scale_init_value": 2.6592,
    "model_type": "blip",
    "projection_dim": 512,
    "text_config": {
        "_name_or_path": "",
        "add_cross_attention": False,
        "architectures": None,
        "bos_token_id": 30522,
        "encoder_hidden_size": 768,
        "eos_token_id": 2,
        "hidden_size": 768,
        "id2label": {"0": "LABEL_0", "1": "LABEL_1"},
        "initializer_factor": 1.0,
        "max_length": 20,
        "model_type": "blip_text_model",
        "num_attention_heads": 12,
        "num_beams": 1,
        "pad_token_id": 0,
        "sep_token_id": 102,
        "torch_dtype": None,
        "transformers_version": "4.26.0.dev0",
        "vocab_size": 30524,
    },
    "text_config_dict": None,
    "torch_dtype": "float32",
    "transformers_version": None,
    "vision_config": {
        "dropout": 0.0,
        "hidden_size": 768,
        "image_size": 384,
        "initializer_factor": 1.0,
        "initializer_range": 1e-10,
        "model_type": "blip_vision_model",
        "num_attention_heads": 12,
        "num_channels": 3,
        "patch_size": 16,
        "transformers_version": "4.26.0.dev0",
    },
    "vision_config_dict": None,
}


def test_reads_legacy_config_and_keeps_its_extra_keys(tmp_path):
    write_json(tmp_path / CONFIG_NAME, LEGACY_CONFIG)
    ours = BlipConfig.from_pretrained(tmp_path)
    assert ours.text_config.num_attention_heads == 12  # not the default 8
    assert ours.architectures == ["BlipForConditionalGeneration"]
    assert ours.torch_dtype == "float32"
    assert ours.text_config_dict is None
    assert ours.text_config.max_length == 20
    assert ours.text_config._name_or_path == ""
    assert ours.vision_config.dropout == 0.0

    out = ours.to_dict()
    for key, value in LEGACY_CONFIG.items():
        if key not in SUB_CONFIG_KEYS:
            assert out[key] == value, key
    for key in SUB_CONFIG_KEYS:
        for name, value in LEGACY_CONFIG[key].items():
            assert out[key][name] == value, (key, name)

    # Written back, transformers reads it as it reads the original.
    ours.save_pretrained(tmp_path / "ours")
    from_original = transformers.BlipConfig.from_pretrained(tmp_path).to_dict()
    from_ours = transformers.BlipConfig.from_pretrained(tmp_path / "ours").to_dict()
    assert from_ours == from_original


# ------------------------------------------------------------------------------------------
# Unknown and missing keys
# ------------------------------------------------------------------------------------------


def test_unknown_keys_are_kept_and_round_trip(tmp_path):
    cfg = BlipVisionConfig(hidden_size=96, architectures=["X"], zzz=1, aaa={"b": 2})
    assert cfg.zzz == 1
    assert cfg.extra_keys == ("architectures", "zzz", "aaa")
    d = cfg.to_dict()
    assert list(d)[-4:] == ["model_type", "architectures", "zzz", "aaa"]
    assert d["aaa"] == {"b": 2}
    d["aaa"]["b"] = 3  # to_dict returns copies
    assert cfg.aaa == {"b": 2}

    cfg.added_later = "x"
    del cfg.zzz
    cfg.save_pretrained(tmp_path)
    back = BlipVisionConfig.from_pretrained(tmp_path)
    assert back == cfg
    assert back.added_later == "x"
    assert not hasattr(back, "zzz")
    assert back.hidden_size == 96


def test_unknown_key_clashing_with_an_attribute_is_rejected():
    with pytest.raises(ValueError, match="to_dict"):
        BlipTextConfig(to_dict=1)
    with pytest.raises(AttributeError, match="model_type"):
        BlipTextConfig().model_type = "bert"


def test_missing_keys_take_defaults(tmp_path):
    write_json(tmp_path / CONFIG_NAME, {"text_config": {"vocab_size": 7}, "projection_dim": 8})
    cfg = BlipConfig.from_pretrained(tmp_path)  # no model_type: accepted
    assert cfg.text_config.vocab_size == 7
    assert cfg.projection_dim == 8
    defaults = BlipConfig()
    assert cfg.vision_config == defaults.vision_config
    assert cfg.text_config.hidden_size == defaults.text_config.hidden_size
    assert cfg.image_text_hidden_size == defaults.image_text_hidden_size


def test_from_dict_overrides_and_equality():
    base = BlipTextConfig(vocab_size=50)
    changed = BlipTextConfig.from_dict(base.to_dict(), hidden_size=64)
    assert changed.hidden_size == 64 and changed.vocab_size == 50
    assert changed != base
    assert BlipTextConfig.from_dict(base.to_dict()) == base
    assert BlipTextConfig() != BlipVisionConfig()
    assert "BlipTextConfig(" in repr(base) and "vocab_size=50" in repr(base)


def test_to_json_string_is_sorted_and_indented():
    text = BlipVisionConfig(zeta=1).to_json_string()
    assert text.startswith('{\n  "attention_dropout"')
    keys = list(json.loads(text))
    assert keys == sorted(keys)


# ------------------------------------------------------------------------------------------
# Composition
# ------------------------------------------------------------------------------------------


def test_encoder_hidden_size_follows_vision_hidden_size():
    cfg = BlipConfig(text_config={"encoder_hidden_size": 5}, vision_config={"hidden_size": 96})
    assert cfg.text_config.encoder_hidden_size == 96
    assert cfg.to_dict()["text_config"]["encoder_hidden_size"] == 96
    hf = transformers.BlipConfig(
        text_config={"encoder_hidden_size": 5}, vision_config={"hidden_size": 96}
    )
    assert hf.text_config.encoder_hidden_size == cfg.text_config.encoder_hidden_size


def test_from_text_vision_configs():
    text = BlipTextConfig(vocab_size=99, hidden_size=32, num_attention_heads=4)
    vision = BlipVisionConfig(hidden_size=48, num_attention_heads=4, image_size=30, patch_size=6)
    cfg = BlipConfig.from_text_vision_configs(text, vision, projection_dim=16, foo="bar")
    assert cfg.text_config.vocab_size == 99
    assert cfg.vision_config == vision
    assert cfg.text_config.encoder_hidden_size == 48
    assert text.encoder_hidden_size == 768  # the caller's config is not modified
    assert cfg.projection_dim == 16 and cfg.foo == "bar"
    d = cfg.to_dict()
    assert d["model_type"] == "blip"
    assert d["text_config"]["model_type"] == "blip_text_model"
    assert d["vision_config"]["model_type"] == "blip_vision_model"
    # dicts work as well
    assert BlipConfig.from_text_vision_configs(text.to_dict(), vision.to_dict()) == cfg.__class__(
        text_config=text, vision_config=vision
    )


def test_sub_config_of_the_wrong_class_is_rejected():
    with pytest.raises(TypeError, match="text_config"):
        BlipConfig(text_config=BlipVisionConfig())
    with pytest.raises(TypeError, match="vision_config"):
        BlipConfig(vision_config=42)


# ------------------------------------------------------------------------------------------
# File errors and model_type checks
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model_type", ["clip", "bert", "blip_vision_model"])
def test_blip_config_rejects_other_model_types(tmp_path, model_type):
    write_json(tmp_path / CONFIG_NAME, {"model_type": model_type, "hidden_size": 32})
    with pytest.raises(ValueError, match=f"'{model_type}' config, not a BLIP config"):
        BlipConfig.from_pretrained(tmp_path)


@pytest.mark.parametrize("cls", [BlipVisionConfig, BlipTextConfig])
def test_sub_configs_reject_other_model_types(tmp_path, cls):
    write_json(tmp_path / CONFIG_NAME, {"model_type": "clip"})
    with pytest.raises(ValueError, match="'clip' config"):
        cls.from_pretrained(tmp_path)
    other = BlipTextConfig if cls is BlipVisionConfig else BlipVisionConfig
    other().save_pretrained(tmp_path / "other")
    with pytest.raises(ValueError, match=other.model_type):
        cls.from_pretrained(tmp_path / "other")


@pytest.mark.parametrize("cls", [BlipVisionConfig, BlipTextConfig])
def test_sub_configs_read_their_own_files(tmp_path, cls):
    cfg = cls(hidden_size=64, num_attention_heads=4)
    path = cfg.save_pretrained(tmp_path)
    assert path == str(tmp_path / CONFIG_NAME)
    assert cls.from_pretrained(tmp_path) == cfg
    assert cls.from_json_file(path) == cfg


def test_text_config_from_full_blip_file_uses_vision_hidden_size(tmp_path):
    write_json(
        tmp_path / CONFIG_NAME,
        {"model_type": "blip", "vision_config": {"hidden_size": 64, "num_attention_heads": 4}},
    )
    assert BlipTextConfig.from_pretrained(tmp_path).encoder_hidden_size == 64
    assert BlipVisionConfig.from_pretrained(tmp_path).hidden_size == 64


def test_wrong_model_type_inside_blip_config(tmp_path):
    data = {"model_type": "blip", "text_config": {"model_type": "bert"}}
    write_json(tmp_path / CONFIG_NAME, data)
    with pytest.raises(ValueError, match="'bert' config"):
        BlipConfig.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="'bert' config"):
        BlipConfig.from_dict(data)
    with pytest.raises(ValueError, match="model_type"):
        BlipVisionConfig(model_type="blip_text_model")


def test_missing_file(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match="nope"):
        BlipConfig.from_pretrained(missing)
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(FileNotFoundError, match="empty_dir"):
        BlipVisionConfig.from_pretrained(tmp_path / "empty_dir")
    with pytest.raises(FileNotFoundError, match="nope.json"):
        BlipTextConfig.from_json_file(tmp_path / "nope.json")


def test_invalid_json(tmp_path):
    (tmp_path / CONFIG_NAME).write_text('{"model_type": "blip",')
    with pytest.raises(ValueError, match=CONFIG_NAME):
        BlipConfig.from_pretrained(tmp_path)
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="list.json"):
        BlipTextConfig.from_pretrained(tmp_path / "list.json")


# ------------------------------------------------------------------------------------------
# Validation
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cls", "kwargs", "field"),
    [
        (BlipVisionConfig, {"hidden_size": 30, "num_attention_heads": 4}, "hidden_size"),
        (BlipTextConfig, {"hidden_size": 30, "num_attention_heads": 4}, "hidden_size"),
        (BlipVisionConfig, {"image_size": 31, "patch_size": 6}, "image_size"),
        (BlipVisionConfig, {"image_size": [30, 36], "patch_size": 6}, "image_size"),
        (BlipVisionConfig, {"image_size": [30, 30, 30]}, "image_size"),
        (BlipVisionConfig, {"patch_size": (6, 5)}, "patch_size"),
        (BlipVisionConfig, {"patch_size": 0}, "patch_size"),
        (BlipVisionConfig, {"num_hidden_layers": -1}, "num_hidden_layers"),
        (BlipVisionConfig, {"num_channels": 0}, "num_channels"),
        (BlipVisionConfig, {"hidden_size": 768.0}, "hidden_size"),
        (BlipTextConfig, {"vocab_size": "99"}, "vocab_size"),
        (BlipTextConfig, {"num_attention_heads": True}, "num_attention_heads"),
        (BlipTextConfig, {"is_decoder": 1}, "is_decoder"),
        (BlipTextConfig, {"hidden_dropout_prob": 1.5}, "hidden_dropout_prob"),
        (BlipTextConfig, {"layer_norm_eps": 0.0}, "layer_norm_eps"),
        (BlipTextConfig, {"eos_token_id": -1}, "eos_token_id"),
        (BlipTextConfig, {"hidden_act": ""}, "hidden_act"),
        (BlipConfig, {"projection_dim": 0}, "projection_dim"),
        (BlipConfig, {"logit_scale_init_value": float("nan")}, "logit_scale_init_value"),
        (BlipConfig, {"vision_config": {"hidden_size": 30}}, "hidden_size"),
    ],
)
def test_validation_errors_name_the_field(cls, kwargs, field):
    with pytest.raises(ValueError, match=field):
        cls(**kwargs)


def test_valid_edge_values_are_accepted():
    vision = BlipVisionConfig(
        image_size=(30, 30), patch_size=6, hidden_size=8, num_attention_heads=2
    )
    assert vision.image_size == [30, 30]
    assert vision.image_size_px == 30
    assert vision.num_patches_per_side == 5
    assert vision.num_patches == 25
    assert vision.num_positions == 26
    text = BlipTextConfig(eos_token_id=[2, 3], bos_token_id=None, pad_token_id=None)
    assert text.eos_token_id == [2, 3]
    assert BlipVisionConfig().num_positions == (384 // 16) ** 2 + 1


def test_validate_after_mutation():
    cfg = BlipVisionConfig()
    cfg.hidden_size = 100
    with pytest.raises(ValueError, match="hidden_size"):
        cfg.validate()
