"""Reading the original Salesforce BLIP checkpoints (github.com/salesforce/BLIP `*.pth` files).

Those files are `torch.save({"model": state_dict, ...})` pickles of the original PyTorch
modules: a timm-style ViT under `visual_encoder.`, BERTs under `text_encoder.` /
`text_decoder.`, the ITC/ITM heads, and (in pretraining and retrieval checkpoints) momentum
copies and feature queues. `read_salesforce_checkpoint` turns one into a transformers BLIP
config dict and a state dict under transformers' key names, which the regular Hugging Face
loader then reads.

Vision keys are renamed as transformers' `convert_blip_original_pytorch_to_hf.py` does; BERT
keys are already transformers' names (transformers' BLIP text model was ported from BLIP's
`med.py`). Nothing is split or fused: transformers keeps the ViT's fused `qkv` projection.

Reading needs PyTorch, since the files are PyTorch pickles; they are opened with
`weights_only=True` (no arbitrary code runs) and memory-mapped.
"""

import math
import operator
import os
import re
import zipfile

from tfblip.errors import CheckpointError, summarize_names

ARCHITECTURES = (
    "BlipForConditionalGeneration",
    "BlipForQuestionAnswering",
    "BlipForImageTextRetrieval",
    "BlipModel",
)

# The original ViT builds its LayerNorms with partial(nn.LayerNorm, eps=1e-6). transformers'
# converted hub configs (e.g. Salesforce/blip-image-captioning-base) kept BlipVisionConfig's
# default 1e-5 instead; we reproduce the original model, so we use the original's value.
ORIGINAL_VISION_LAYER_NORM_EPS = 1e-6
# BERT's value, which the original med_config.json keeps.
ORIGINAL_TEXT_LAYER_NORM_EPS = 1e-12

# Every BLIP tower (ViT-B/L, BERT-base) uses 64-wide attention heads; head counts are not
# recorded in the tensors, so they are derived from the widths.
_HEAD_WIDTH = 64
# BERT's [PAD] and [SEP]. BLIP appends [DEC] (its BOS) and then [ENC] to BERT's vocabulary,
# so [DEC] is the second-to-last row of the word embeddings (30522 of 30524).
_PAD_TOKEN_ID = 0
_SEP_TOKEN_ID = 102
# transformers' hub configs keep BlipTextConfig's eos_token_id; BLIP itself stops on [SEP].
_EOS_TOKEN_ID = 2

# Top-level fields as transformers' converted hub configs have them. projection_dim and
# logit_scale_init_value belong to BlipModel, which no original checkpoint converts to.
_HUB_PROJECTION_DIM = 512
_HUB_LOGIT_SCALE_INIT_VALUE = 2.6592
_HUB_IMAGE_TEXT_HIDDEN_SIZE = 256

_VISION_PREFIX = "visual_encoder."
# HF suffix -> original suffix inside one transformer block.
_VISION_BLOCK_RENAMES = (
    ("self_attn.qkv", "attn.qkv"),
    ("self_attn.projection", "attn.proj"),
    ("layer_norm1", "norm1"),
    ("mlp.fc1", "mlp.fc1"),
    ("mlp.fc2", "mlp.fc2"),
    ("layer_norm2", "norm2"),
)

# What each architecture reads, as (transformers module, original module, description).
_TEXT_PARTS = {
    "BlipForConditionalGeneration": (("text_decoder", "text_decoder", "the caption decoder"),),
    "BlipForQuestionAnswering": (
        ("text_encoder", "text_encoder", "the question encoder"),
        ("text_decoder", "text_decoder", "the answer decoder"),
    ),
    "BlipForImageTextRetrieval": (("text_encoder", "text_encoder", "the text encoder"),),
}
_RETRIEVAL_HEADS = ("vision_proj", "text_proj", "itm_head")


class SalesforceCheckpointError(CheckpointError):
    """An original BLIP checkpoint that cannot be read, or that lacks what a model needs."""


# ----------------------------------------------------------------------------- reading


def _torch():
    try:
        import torch
    except ImportError as error:
        raise ImportError(
            "Reading an original Salesforce BLIP checkpoint (.pth) needs PyTorch: "
            "pip install 'tfblip[torch]'."
        ) from error
    return torch


def _load(path):
    torch = _torch()
    try:
        # Pre-1.6 (non-zip) torch files cannot be memory-mapped; they are read whole.
        return torch.load(
            path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path)
        )
    except FileNotFoundError:
        raise
    except Exception as error:  # torch raises many types for corrupt or unsafe pickles
        raise SalesforceCheckpointError(
            f"Cannot read {path} as a PyTorch checkpoint: {error}"
        ) from error


def _original_state_dict(loaded, path):
    """The tensors of `{"model": state_dict, ...}` or of a bare state dict."""
    torch = _torch()
    if isinstance(loaded, dict) and isinstance(loaded.get("model"), dict):
        loaded = loaded["model"]
    if not isinstance(loaded, dict):
        raise SalesforceCheckpointError(
            f"{path} holds a {type(loaded).__name__}, not a state dict or a dict with a "
            "'model' state dict."
        )
    state = {k: v for k, v in loaded.items() if isinstance(k, str) and torch.is_tensor(v)}
    if not any(key.startswith(_VISION_PREFIX) for key in state):
        hint = (
            " It looks like a transformers checkpoint: load it as one."
            if any(key.startswith("vision_model.") for key in state)
            else ""
        )
        raise SalesforceCheckpointError(
            f"{path} is not an original BLIP checkpoint: it has no {_VISION_PREFIX}* tensors."
            + hint
        )
    return state


def is_salesforce_checkpoint(path):
    """Whether a file is an original Salesforce BLIP checkpoint.

    Args:
        path: the file; only .pth / .pt files that load as a BLIP state dict count.

    Returns:
        True for an original checkpoint; False otherwise, unreadable files included.
    """
    path = os.fspath(path)
    if not path.lower().endswith((".pth", ".pt")) or not os.path.isfile(path):
        return False
    try:
        _original_state_dict(_load(path), path)
    except (SalesforceCheckpointError, OSError):
        return False
    return True


# ----------------------------------------------------------------------------- inference


def _require(state, keys, path, what):
    missing = [key for key in keys if key not in state]
    if missing:
        raise SalesforceCheckpointError(f"{path} lacks {what}: missing {', '.join(missing)}.")


def _layer_count(state, pattern):
    indices = {int(m.group(1)) for key in state if (m := pattern.match(key))}
    return max(indices) + 1 if indices else 0


def _heads(width, what):
    if width % _HEAD_WIDTH:
        raise SalesforceCheckpointError(
            f"Cannot infer the attention heads of {what}: its width {width} is not a multiple "
            f"of BLIP's head width {_HEAD_WIDTH}."
        )
    return width // _HEAD_WIDTH


def _vision_config(state, path):
    p = _VISION_PREFIX
    _require(
        state,
        [
            f"{p}cls_token",
            f"{p}pos_embed",
            f"{p}patch_embed.proj.weight",
            f"{p}blocks.0.mlp.fc1.weight",
        ],
        path,
        "the vision transformer's tensors",
    )
    width = state[f"{p}cls_token"].shape[-1]
    _, channels, patch_h, patch_w = state[f"{p}patch_embed.proj.weight"].shape
    if channels != 3 or patch_h != patch_w:
        raise SalesforceCheckpointError(
            f"{path}: the patch embedding takes {channels}-channel {patch_h}x{patch_w} patches; "
            "BLIP models take square patches of RGB images."
        )
    positions = state[f"{p}pos_embed"].shape[1]
    grid = math.isqrt(positions - 1)
    if grid * grid != positions - 1:
        raise SalesforceCheckpointError(
            f"{path}: {p}pos_embed has {positions} positions, which is not a class token plus "
            "a square patch grid."
        )
    return {
        "hidden_size": width,
        "intermediate_size": state[f"{p}blocks.0.mlp.fc1.weight"].shape[0],
        "num_hidden_layers": _layer_count(state, re.compile(re.escape(p) + r"blocks\.(\d+)\.")),
        "num_attention_heads": _heads(width, "the vision transformer"),
        "image_size": grid * patch_h,
        "patch_size": patch_h,
        "hidden_act": "gelu",
        "layer_norm_eps": ORIGINAL_VISION_LAYER_NORM_EPS,
        "attention_dropout": 0.0,
        "model_type": "blip_vision_model",
    }


def _bert_prefix(state, module):
    """Where `module`'s BertModel lives: `text_decoder.bert.`, `text_encoder.` (or `.bert.`)."""
    candidates = (
        (f"{module}.bert.",) if module == "text_decoder" else (f"{module}.", f"{module}.bert.")
    )
    for prefix in candidates:
        if f"{prefix}embeddings.word_embeddings.weight" in state:
            return prefix
    return None


def _text_config(state, prefix, path, vision_width):
    _require(
        state,
        [
            f"{prefix}embeddings.word_embeddings.weight",
            f"{prefix}embeddings.position_embeddings.weight",
            f"{prefix}encoder.layer.0.intermediate.dense.weight",
        ],
        path,
        "the text transformer's tensors",
    )
    vocab_size, width = state[f"{prefix}embeddings.word_embeddings.weight"].shape
    return {
        "vocab_size": vocab_size,
        "hidden_size": width,
        "encoder_hidden_size": vision_width,
        "intermediate_size": state[f"{prefix}encoder.layer.0.intermediate.dense.weight"].shape[0],
        "num_hidden_layers": _layer_count(
            state, re.compile(re.escape(prefix) + r"encoder\.layer\.(\d+)\.")
        ),
        "num_attention_heads": _heads(width, "the text transformer"),
        "max_position_embeddings": state[f"{prefix}embeddings.position_embeddings.weight"].shape[0],
        "hidden_act": "gelu",
        "layer_norm_eps": ORIGINAL_TEXT_LAYER_NORM_EPS,
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "bos_token_id": vocab_size - 2,
        "eos_token_id": _EOS_TOKEN_ID,
        "pad_token_id": _PAD_TOKEN_ID,
        "sep_token_id": _SEP_TOKEN_ID,
        "is_decoder": True,
        "tie_word_embeddings": True,
        "model_type": "blip_text_model",
    }


# ----------------------------------------------------------------------------- key schema


def _vision_schema(v):
    """(transformers key, original key, shape) of every vision tensor."""
    d, inner, patch = v["hidden_size"], v["intermediate_size"], v["patch_size"]
    positions = (v["image_size"] // patch) ** 2 + 1
    o, h = _VISION_PREFIX, "vision_model."
    yield f"{h}embeddings.class_embedding", f"{o}cls_token", (1, 1, d)
    yield f"{h}embeddings.position_embedding", f"{o}pos_embed", (1, positions, d)
    yield (
        f"{h}embeddings.patch_embedding.weight",
        f"{o}patch_embed.proj.weight",
        (d, 3, patch, patch),
    )
    yield f"{h}embeddings.patch_embedding.bias", f"{o}patch_embed.proj.bias", (d,)
    shapes = {
        "self_attn.qkv": ((3 * d, d), (3 * d,)),
        "self_attn.projection": ((d, d), (d,)),
        "layer_norm1": ((d,), (d,)),
        "mlp.fc1": ((inner, d), (inner,)),
        "mlp.fc2": ((d, inner), (d,)),
        "layer_norm2": ((d,), (d,)),
    }
    for i in range(v["num_hidden_layers"]):
        for hf_name, original_name in _VISION_BLOCK_RENAMES:
            weight, bias = shapes[hf_name]
            hf, orig = f"{h}encoder.layers.{i}.{hf_name}", f"{o}blocks.{i}.{original_name}"
            yield f"{hf}.weight", f"{orig}.weight", weight
            yield f"{hf}.bias", f"{orig}.bias", bias
    yield f"{h}post_layernorm.weight", f"{o}norm.weight", (d,)
    yield f"{h}post_layernorm.bias", f"{o}norm.bias", (d,)


def _bert_schema(t):
    """(suffix, shape) of every tensor of a BLIP BertModel without pooler (the same in both)."""
    w, inner, enc = t["hidden_size"], t["intermediate_size"], t["encoder_hidden_size"]
    yield "embeddings.word_embeddings.weight", (t["vocab_size"], w)
    yield "embeddings.position_embeddings.weight", (t["max_position_embeddings"], w)
    # (module, weight shape) of one layer; every module has a bias as wide as its output.
    layer = []
    for block, kv_width in (("attention", w), ("crossattention", enc)):
        layer += [
            (f"{block}.self.query", (w, w)),
            (f"{block}.self.key", (w, kv_width)),
            (f"{block}.self.value", (w, kv_width)),
            (f"{block}.output.dense", (w, w)),
            (f"{block}.output.LayerNorm", (w,)),
        ]
    layer += [
        ("intermediate.dense", (inner, w)),
        ("output.dense", (w, inner)),
        ("output.LayerNorm", (w,)),
    ]
    modules = [("embeddings.LayerNorm", (w,))]
    modules += [
        (f"encoder.layer.{i}.{name}", shape)
        for i in range(t["num_hidden_layers"])
        for name, shape in layer
    ]
    for name, shape in modules:
        yield f"{name}.weight", shape
        yield f"{name}.bias", shape[:1]


def _lm_head_schema(t):
    """(suffix, original suffixes in order of preference, shape) of the LM head."""
    v, w = t["vocab_size"], t["hidden_size"]
    for suffix, shape in (
        ("cls.predictions.bias", (v,)),
        ("cls.predictions.transform.dense.weight", (w, w)),
        ("cls.predictions.transform.dense.bias", (w,)),
        ("cls.predictions.transform.LayerNorm.weight", (w,)),
        ("cls.predictions.transform.LayerNorm.bias", (w,)),
    ):
        yield suffix, (suffix,), shape
    # Tied in the original: one Parameter under both names, so both are normally saved.
    decoder_weight = ("cls.predictions.decoder.weight", "bert.embeddings.word_embeddings.weight")
    yield decoder_weight[0], decoder_weight, (v, w)
    yield (
        "cls.predictions.decoder.bias",
        ("cls.predictions.decoder.bias", "cls.predictions.bias"),
        (v,),
    )


def _schema(architecture, vision, text, image_text_hidden_size, bert_prefixes):
    """(transformers key, original keys in order of preference, shape) of every tensor."""
    for hf, original, shape in _vision_schema(vision):
        yield hf, (original,), shape
    for hf_module, original_module, _ in _TEXT_PARTS[architecture]:
        source = bert_prefixes[original_module]
        target = f"{hf_module}.bert." if hf_module == "text_decoder" else f"{hf_module}."
        for suffix, shape in _bert_schema(text):
            yield target + suffix, (source + suffix,), shape
        if hf_module == "text_decoder":
            for suffix, originals, shape in _lm_head_schema(text):
                yield f"text_decoder.{suffix}", tuple(f"text_decoder.{o}" for o in originals), shape
    if architecture == "BlipForImageTextRetrieval":
        size, d, w = image_text_hidden_size, vision["hidden_size"], text["hidden_size"]
        for name, shape in (
            ("vision_proj", (size, d)),
            ("text_proj", (size, w)),
            ("itm_head", (2, w)),
        ):
            yield f"{name}.weight", (f"{name}.weight",), shape
            yield f"{name}.bias", (f"{name}.bias",), shape[:1]


# ----------------------------------------------------------------------------- conversion


def _holds(state, original_module):
    return any(key.startswith(original_module + ".") for key in state)


def _supported_architectures(state):
    return [
        arch
        for arch, parts in _TEXT_PARTS.items()
        if all(_bert_prefix(state, original) for _, original, _ in parts)
        and (arch != "BlipForImageTextRetrieval" or all(_holds(state, h) for h in _RETRIEVAL_HEADS))
    ]


def _missing_parts_error(path, architecture, missing, state):
    supported = _supported_architectures(state)
    held = sorted(
        {key.split(".")[0] for key in state} & {"text_encoder", "text_decoder", *_RETRIEVAL_HEADS}
    )
    return SalesforceCheckpointError(
        f"{path} cannot be read as {architecture}: it has no {'; no '.join(missing)}. "
        f"Its text modules are: {', '.join(held) or 'none'}"
        + (f" (it can be read as {', '.join(supported)})." if supported else ".")
    )


def _interpolate_position_embedding(position_embedding, grid):
    """The class position, then the patch positions resized bicubically to `grid` x `grid`.

    As the original `interpolate_pos_embed`: torch's bicubic, align_corners=False, over the
    (old grid x old grid) patch positions.
    """
    torch = _torch()
    _, positions, width = position_embedding.shape
    old_grid = math.isqrt(positions - 1)
    if old_grid == grid:
        return position_embedding
    value = position_embedding.detach().float()
    patches = value[:, 1:].reshape(1, old_grid, old_grid, width).permute(0, 3, 1, 2)
    patches = torch.nn.functional.interpolate(
        patches, size=(grid, grid), mode="bicubic", align_corners=False
    )
    patches = patches.permute(0, 2, 3, 1).reshape(1, grid * grid, width)
    return torch.cat([value[:, :1], patches], dim=1).to(position_embedding.dtype)


def _resize_image(vision, image_size, path):
    try:
        if isinstance(image_size, bool):
            raise TypeError
        image_size = operator.index(image_size)
    except TypeError:
        raise ValueError(f"image_size must be a positive int, got {image_size!r}") from None
    if image_size <= 0:
        raise ValueError(f"image_size must be a positive int, got {image_size!r}")
    patch = vision["patch_size"]
    if image_size % patch:
        raise ValueError(
            f"image_size {image_size} is not a multiple of {path}'s patch size {patch}."
        )
    return {**vision, "image_size": image_size}


def read_salesforce_checkpoint(path, architecture, image_size=None):
    """Read an original BLIP checkpoint as transformers' config and state dict.

    A pretraining checkpoint (model_base.pth, model_*capfilt_large.pth, model_large.pth)
    serves all three architectures; a fine-tuned one serves its own task. Momentum encoders,
    feature queues, the contrastive temperature and modules the architecture does not use
    are left out.

    Args:
        path: the .pth / .pt file.
        architecture: the transformers model to build: BlipForConditionalGeneration,
            BlipForQuestionAnswering or BlipForImageTextRetrieval.
        image_size: pixels; resizes the position embeddings as the original code does when
            a model is built for another resolution. Default: the checkpoint's own.

    Returns:
        (config dict, state dict): the state dict holds exactly the tensors of transformers'
        model of that architecture, as torch tensors in PyTorch layouts.

    Raises:
        ValueError: an unknown architecture.
        SalesforceCheckpointError: BlipModel, or a file that is not an original checkpoint
            or lacks the architecture's modules.
    """
    if architecture not in ARCHITECTURES:
        raise ValueError(
            f"Unknown architecture {architecture!r}: expected one of {', '.join(ARCHITECTURES)}."
        )
    if architecture == "BlipModel":
        # transformers' BlipModel pools the vision tower through post_layernorm a second
        # time, pools text through a tanh pooler and projects without bias; the original
        # ITC head does none of these, so no original checkpoint has weights that make
        # BlipModel compute BLIP's features. Loading anyway would give silently wrong
        # embeddings.
        raise SalesforceCheckpointError(
            "Original BLIP checkpoints cannot be read as BlipModel: transformers' BlipModel "
            "pools text through a pooler (text_model.pooler.dense) that BLIP does not have, "
            "projects without the biases of BLIP's vision_proj/text_proj, and applies "
            "post_layernorm twice to the image feature, so it cannot reproduce BLIP's "
            "image-text features. Read the checkpoint as BlipForImageTextRetrieval and call "
            "it with use_itm_head=False for BLIP's contrastive (ITC) similarity."
        )
    path = os.fspath(path)
    state = _original_state_dict(_load(path), path)

    missing_parts = []
    bert_prefixes = {}
    for _, original_module, description in _TEXT_PARTS[architecture]:
        prefix = _bert_prefix(state, original_module)
        if prefix is None:
            missing_parts.append(f"{original_module}.* ({description})")
        bert_prefixes[original_module] = prefix
    if architecture == "BlipForImageTextRetrieval":
        missing_parts += [f"{h}.*" for h in _RETRIEVAL_HEADS if not _holds(state, h)]
    if missing_parts:
        raise _missing_parts_error(path, architecture, missing_parts, state)

    vision = _vision_config(state, path)
    texts = {
        module: _text_config(state, prefix, path, vision["hidden_size"])
        for module, prefix in bert_prefixes.items()
    }
    (first, text), *others = texts.items()
    for module, other in others:
        if other != text:
            differing = sorted(k for k in text if text[k] != other[k])
            raise SalesforceCheckpointError(
                f"{path}: {first} and {module} differ in {', '.join(differing)}, but "
                f"{architecture} has one text config for both."
            )
    image_text_hidden_size = _HUB_IMAGE_TEXT_HIDDEN_SIZE
    if architecture == "BlipForImageTextRetrieval":
        _require(state, ["vision_proj.weight"], path, "the image-text projection")
        image_text_hidden_size = state["vision_proj.weight"].shape[0]
    checkpoint_vision = vision
    if image_size is not None:
        vision = _resize_image(vision, image_size, path)
    config = {
        "architectures": [architecture],
        "model_type": "blip",
        "projection_dim": _HUB_PROJECTION_DIM,
        "logit_scale_init_value": _HUB_LOGIT_SCALE_INIT_VALUE,
        "image_text_hidden_size": image_text_hidden_size,
        "text_config": text,
        "vision_config": vision,
    }

    # Shapes are checked against the checkpoint's own resolution; resizing comes after.
    schema = _schema(architecture, checkpoint_vision, text, image_text_hidden_size, bert_prefixes)
    converted, missing, mismatched = {}, [], []
    for hf_key, originals, shape in schema:
        found = next((o for o in originals if o in state), None)
        if found is None:
            missing.append(originals[0])
        elif tuple(state[found].shape) != shape:
            mismatched.append(f"{found} {tuple(state[found].shape)}, expected {shape}")
        else:
            converted[hf_key] = state[found]
    if missing or mismatched:
        problems = []
        if missing:
            # In schema order: the reader's order of modules, not sorted.
            listed = summarize_names(missing, sort=False)
            problems.append(f"missing tensors ({len(missing)}): {listed}")
        if mismatched:
            listed = summarize_names(mismatched, sort=False)
            problems.append(f"tensors of wrong shape ({len(mismatched)}): {listed}")
            if architecture == "BlipForQuestionAnswering":
                problems.append(
                    "transformers' answer decoder cross-attends to question states through "
                    "weights sized for image states, so VQA needs equal text and vision widths"
                )
        raise SalesforceCheckpointError(
            f"{path} cannot be read as {architecture}: " + "; ".join(problems) + "."
        )

    if "text_decoder.cls.predictions.decoder.weight" in converted:
        _check_tied(converted, path)
    if vision["image_size"] != checkpoint_vision["image_size"]:
        key = "vision_model.embeddings.position_embedding"
        converted[key] = _interpolate_position_embedding(
            converted[key], vision["image_size"] // vision["patch_size"]
        )
    return config, converted


def _check_tied(converted, path):
    torch = _torch()
    pairs = (
        (
            "text_decoder.cls.predictions.decoder.weight",
            "text_decoder.bert.embeddings.word_embeddings.weight",
        ),
        ("text_decoder.cls.predictions.decoder.bias", "text_decoder.cls.predictions.bias"),
    )
    for head, tied in pairs:
        # transformers ties these; an untied original head would be silently replaced.
        if not torch.equal(converted[head], converted[tied]):
            raise SalesforceCheckpointError(
                f"{path}: the decoder's {head.removeprefix('text_decoder.')} differs from "
                f"{tied.removeprefix('text_decoder.')}, which BLIP ties to it; this checkpoint's "
                "LM head cannot be loaded into a tied transformers BLIP model."
            )
