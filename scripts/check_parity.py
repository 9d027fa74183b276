"""Full-size parity check of tfblip against transformers' PyTorch BLIP, with random weights.

The unit tests (tests/test_parity.py) check parity on tiny models. This script repeats the
check at the real sizes, where float32 accumulation over 768/1024-wide layers and 12/24 blocks
is what one actually runs: each transformers model is built with random weights, saved with
`save_pretrained`, loaded with `tfblip.<TFClass>.from_pretrained`, and both are run on the
same inputs.

Usage:

    PYTHONPATH=. python scripts/check_parity.py --config base
    PYTHONPATH=. python scripts/check_parity.py --config large --models caption,retrieval
    PYTHONPATH=. python scripts/check_parity.py --config base --batch-size 2 --tolerance 1e-4

For every model class it prints, per output field: the shape, the max abs difference, the
reference scale (max abs of the PyTorch output), their ratio (the relative diff) and OK/FAIL.
The exit status is 1 when any relative diff exceeds --tolerance, 0 otherwise.

Configs: `base` is ViT-B/16 and `large` ViT-L/16, both at 384x384, each with transformers'
default (768-wide, BERT-base) text model, as in Salesforce's blip-*-base / blip-*-large
checkpoints. Needs torch and transformers (the `test` extra); runs on CPU in a few minutes and
a few GiB of memory (one model class at a time).
"""

import argparse
import gc
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

# Set before tensorflow (imported by tfblip, lazily below) reads it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

MODEL_NAMES = ("caption", "vqa", "retrieval", "features", "vision", "text")

# Vision towers; the text tower is transformers' BlipTextConfig() defaults in both.
VISION_CONFIGS = {
    "base": {
        "hidden_size": 768,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "intermediate_size": 3072,
    },
    "large": {
        "hidden_size": 1024,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "intermediate_size": 4096,
    },
}
VISION_COMMON = {"image_size": 384, "patch_size": 16, "layer_norm_eps": 1e-5}

SEQUENCE_LENGTH = 16
ANSWER_LENGTH = 5
CLS_TOKEN_ID = 101  # [CLS]: first token of encoder (bidirectional) inputs
DEC_TOKEN_ID = 30522  # [DEC]: BLIP's decoder start token (the text config's bos_token_id)
PAD_TOKEN_ID = 0
PAD_LENGTH = 4  # padded tail of the last row when batch_size >= 2
IGNORE_INDEX = -100

WEIGHT_STD = 0.02
# Parameters drawn as 1 + N(0, std) so that layer norms keep activations at their usual scale.
LAYER_NORM_WEIGHT_SUFFIXES = (
    "LayerNorm.weight",
    "layer_norm1.weight",
    "layer_norm2.weight",
    "post_layernorm.weight",
)
KEPT_PARAMETERS = ("logit_scale",)  # keeps its initial value: exp(2.6592) ~ 14.3


# ----------------------------------------------------------------------------- configs


def vision_config_kwargs(config_name):
    return {**VISION_COMMON, **VISION_CONFIGS[config_name]}


def blip_config(config_name):
    import transformers

    # BlipConfig sets text_config.encoder_hidden_size to the vision width, so the text
    # decoder's cross-attention reads 1024-wide image states in `large`.
    return transformers.BlipConfig(text_config={}, vision_config=vision_config_kwargs(config_name))


def vision_config(config_name):
    import transformers

    return transformers.BlipVisionConfig(**vision_config_kwargs(config_name))


def text_config(config_name):
    import transformers

    # As in the task models: the cross-attention (built, though unused by a bidirectional
    # call) is sized for the vision width.
    hidden = VISION_CONFIGS[config_name]["hidden_size"]
    return transformers.BlipTextConfig(encoder_hidden_size=hidden)


# ----------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class Inputs:
    pixel_values: np.ndarray  # (B, 3, 384, 384) float32
    encoder_ids: np.ndarray  # (B, L) starting with [CLS]
    decoder_ids: np.ndarray  # (B, L) starting with [DEC]
    attention_mask: np.ndarray  # (B, L), the last row's tail is padding when B >= 2
    answer_ids: np.ndarray  # (B, ANSWER_LENGTH) starting with [DEC], no padding

    @property
    def caption_labels(self):
        # Padded positions are left out of the loss, as a training pipeline would do.
        return np.where(self.attention_mask == 1, self.decoder_ids, IGNORE_INDEX)


def make_inputs(batch_size, seed, image_size):
    rng = np.random.default_rng(seed)
    pixel_values = rng.normal(size=(batch_size, 3, image_size, image_size)).astype(np.float32)
    tokens = rng.integers(1000, 30000, size=(batch_size, SEQUENCE_LENGTH), dtype=np.int64)
    attention_mask = np.ones_like(tokens)
    if batch_size >= 2:
        tokens[-1, -PAD_LENGTH:] = PAD_TOKEN_ID
        attention_mask[-1, -PAD_LENGTH:] = 0
    encoder_ids, decoder_ids = tokens.copy(), tokens.copy()
    encoder_ids[:, 0] = CLS_TOKEN_ID
    decoder_ids[:, 0] = DEC_TOKEN_ID
    answer_ids = rng.integers(1000, 30000, size=(batch_size, ANSWER_LENGTH), dtype=np.int64)
    answer_ids[:, 0] = DEC_TOKEN_ID
    return Inputs(pixel_values, encoder_ids, decoder_ids, attention_mask, answer_ids)


# ----------------------------------------------------------------------------- comparison


@dataclass(frozen=True)
class FieldResult:
    field: str
    shape: tuple
    max_abs_diff: float
    scale: float

    @property
    def relative_diff(self):
        return self.max_abs_diff / self.scale if self.scale > 0 else self.max_abs_diff

    def passes(self, tolerance):
        return bool(self.relative_diff <= tolerance)  # False for NaN too


def to_numpy(value):
    if hasattr(value, "detach"):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def compare_field(field, actual, expected):
    actual, expected = to_numpy(actual), to_numpy(expected)
    if actual.shape != expected.shape:
        raise ValueError(f"{field}: tfblip shape {actual.shape} != transformers {expected.shape}")
    diff = np.abs(actual.astype(np.float64) - expected.astype(np.float64))
    max_abs_diff = float(diff.max()) if diff.size else 0.0
    scale = float(np.abs(expected).max()) if expected.size else 0.0
    return FieldResult(field, expected.shape, max_abs_diff, scale)


def run_both(reference, model, kwargs, fields, tag=""):
    """Calls both models with the same keyword inputs and compares `fields`."""
    import torch

    torch_kwargs = {
        key: torch.from_numpy(value) if isinstance(value, np.ndarray) else value
        for key, value in kwargs.items()
    }
    with torch.no_grad():
        expected = reference(**torch_kwargs)
    actual = model(**kwargs)
    suffix = f"[{tag}]" if tag else ""
    return [compare_field(field + suffix, actual[field], expected[field]) for field in fields]


# ----------------------------------------------------------------------------- per model class


def vision_fields(reference, model, inputs):
    kwargs = {"pixel_values": inputs.pixel_values}
    return run_both(reference, model, kwargs, ["last_hidden_state", "pooler_output"])


def text_fields(reference, model, inputs):
    kwargs = {
        "input_ids": inputs.encoder_ids,
        "attention_mask": inputs.attention_mask,
        "is_decoder": False,  # bidirectional, as the text encoder of retrieval and features
    }
    return run_both(reference, model, kwargs, ["last_hidden_state", "pooler_output"])


def caption_fields(reference, model, inputs):
    kwargs = {
        "pixel_values": inputs.pixel_values,
        "input_ids": inputs.decoder_ids,
        "attention_mask": inputs.attention_mask,
        "labels": inputs.caption_labels,
    }
    return run_both(reference, model, kwargs, ["loss", "logits", "image_embeds"])


def vqa_fields(reference, model, inputs):
    # An all-ones question mask: transformers 5's BlipTextAttention does not pass
    # encoder_attention_mask on to its cross-attention, so the answer decoder attends to padded
    # question positions there, while tfblip (like the original BLIP) masks them. Padded ids
    # are still fed, as ordinary tokens.
    kwargs = {
        "pixel_values": inputs.pixel_values,
        "input_ids": inputs.encoder_ids,
        "attention_mask": np.ones_like(inputs.attention_mask),
        "labels": inputs.answer_ids,
    }
    return run_both(reference, model, kwargs, ["loss", "image_embeds"])


def retrieval_fields(reference, model, inputs):
    results = []
    for use_itm_head, tag in ((True, "itm"), (False, "itc")):
        kwargs = {
            "pixel_values": inputs.pixel_values,
            "input_ids": inputs.encoder_ids,
            "attention_mask": inputs.attention_mask,
            "use_itm_head": use_itm_head,
        }
        results += run_both(reference, model, kwargs, ["itm_score", "question_embeds"], tag)
    return results


def feature_fields(reference, model, inputs):
    kwargs = {
        "pixel_values": inputs.pixel_values,
        "input_ids": inputs.encoder_ids,
        "attention_mask": inputs.attention_mask,
    }
    fields = ["logits_per_image", "logits_per_text", "text_embeds", "image_embeds"]
    return run_both(reference, model, kwargs, fields)


def vqa_skip_reason(config_name):
    vision_width = VISION_CONFIGS[config_name]["hidden_size"]
    text_width = text_config(config_name).hidden_size
    if vision_width == text_width:
        return None
    return (
        f"skipped: BlipForQuestionAnswering needs vision hidden == text hidden (got {vision_width}"
        f" vs {text_width}). Its answer decoder cross-attends to {text_width}-wide question "
        f"states through key/value weights sized encoder_hidden_size = {vision_width}, so "
        "transformers cannot run it either, and tfblip raises ValueError."
    )


@dataclass(frozen=True)
class ModelCheck:
    name: str
    torch_class: str
    tf_class: str
    config: Callable  # config name -> transformers config
    fields: Callable  # (reference, model, inputs) -> [FieldResult]
    skip_reason: Callable = lambda config_name: None


CHECKS = {
    "caption": ModelCheck(
        "caption",
        "BlipForConditionalGeneration",
        "TFBlipForConditionalGeneration",
        blip_config,
        caption_fields,
    ),
    "vqa": ModelCheck(
        "vqa",
        "BlipForQuestionAnswering",
        "TFBlipForQuestionAnswering",
        blip_config,
        vqa_fields,
        vqa_skip_reason,
    ),
    "retrieval": ModelCheck(
        "retrieval",
        "BlipForImageTextRetrieval",
        "TFBlipForImageTextRetrieval",
        blip_config,
        retrieval_fields,
    ),
    "features": ModelCheck("features", "BlipModel", "TFBlipModel", blip_config, feature_fields),
    "vision": ModelCheck(
        "vision", "BlipVisionModel", "TFBlipVisionModel", vision_config, vision_fields
    ),
    "text": ModelCheck("text", "BlipTextModel", "TFBlipTextModel", text_config, text_fields),
}


# ----------------------------------------------------------------------------- models


def randomize(model, seed):
    """Re-draws every parameter from a normal distribution.

    BLIP's own vision init (std 1e-10) would make a wrongly laid out weight invisible; std 0.02
    (BERT's) keeps activations in their usual range through 12-24 blocks.
    """
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith(KEPT_PARAMETERS):
                continue
            values = torch.randn(parameter.shape, generator=generator) * WEIGHT_STD
            if name.endswith(LAYER_NORM_WEIGHT_SUFFIXES):
                values += 1.0
            parameter.copy_(values)
    return model


def build_reference(check, config_name, seed):
    import torch
    import transformers

    config = check.config(config_name)
    torch.manual_seed(seed)
    model_class = getattr(transformers, check.torch_class)
    if check.torch_class == "BlipTextModel":
        model = model_class(config, add_pooling_layer=True)
    else:
        model = model_class(config)
    return randomize(model, seed).eval()


def load_into_tfblip(reference, tf_class_name):
    """Saves the PyTorch model with transformers and loads it into tfblip from that directory."""
    import tfblip

    with tempfile.TemporaryDirectory(prefix="tfblip-parity-") as directory:
        reference.save_pretrained(directory)
        # The checkpoint directory goes away here: nothing is kept of it after loading.
        return getattr(tfblip, tf_class_name).from_pretrained(directory)


def torch_parameter_count(model):
    return sum(parameter.numel() for parameter in model.parameters())  # tied ones once


def keras_parameter_count(model):
    return sum(int(np.prod(variable.shape)) for variable in model.weights)


def free_memory():
    import keras

    keras.backend.clear_session()
    gc.collect()


# ----------------------------------------------------------------------------- report


def print_table(results, tolerance):
    header = ("field", "shape", "max abs diff", "ref scale", "rel diff", "status")
    rows = [
        (
            result.field,
            str(result.shape),
            f"{result.max_abs_diff:.3e}",
            f"{result.scale:.3e}",
            f"{result.relative_diff:.3e}",
            "OK" if result.passes(tolerance) else "FAIL",
        )
        for result in results
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


def print_facts(args):
    import keras
    import tensorflow as tf
    import torch
    import transformers

    vision = VISION_CONFIGS[args.config]
    text = text_config(args.config)
    print(f"config: {args.config}")
    print(
        f"  vision: hidden {vision['hidden_size']}, layers {vision['num_hidden_layers']}, "
        f"heads {vision['num_attention_heads']}, intermediate {vision['intermediate_size']}, "
        f"image {VISION_COMMON['image_size']}, patch {VISION_COMMON['patch_size']}, "
        f"layer_norm_eps {VISION_COMMON['layer_norm_eps']}"
    )
    print(
        f"  text: hidden {text.hidden_size}, layers {text.num_hidden_layers}, "
        f"heads {text.num_attention_heads}, intermediate {text.intermediate_size}, "
        f"vocab {text.vocab_size}, encoder_hidden_size {vision['hidden_size']}"
    )
    print(
        f"  batch size {args.batch_size}, sequence length {SEQUENCE_LENGTH}, seed {args.seed}, "
        f"tolerance {args.tolerance:g} (relative to max abs of the reference output)"
    )
    print(
        f"  torch {torch.__version__}, transformers {transformers.__version__}, "
        f"tensorflow {tf.__version__}, keras {keras.__version__}"
    )


# ----------------------------------------------------------------------------- driver


def check_model(check, args, inputs):
    """Builds, loads and compares one model class; returns its field results."""
    start = time.perf_counter()
    reference = build_reference(check, args.config, args.seed)
    built = time.perf_counter()
    model = load_into_tfblip(reference, check.tf_class)
    loaded = time.perf_counter()
    results = check.fields(reference, model, inputs)
    compared = time.perf_counter()
    torch_count, keras_count = torch_parameter_count(reference), keras_parameter_count(model)
    print(
        f"parameters: transformers {torch_count:,}, tfblip {keras_count:,}"
        + ("" if torch_count == keras_count else "  (differ)")
    )
    print(
        f"timings: build+randomize {built - start:.1f}s, save+load {loaded - built:.1f}s, "
        f"forward (both) {compared - loaded:.1f}s"
    )
    print_table(results, args.tolerance)
    del reference, model
    return results


def parse_models(value):
    names = [name.strip() for name in value.split(",") if name.strip()]
    unknown = sorted(set(names) - set(MODEL_NAMES))
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown model(s) {unknown}; choose from {', '.join(MODEL_NAMES)}"
        )
    return list(dict.fromkeys(names))  # drop repeats, keep order


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", choices=sorted(VISION_CONFIGS), required=True)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tolerance", type=float, default=1e-4)
    parser.add_argument(
        "--models",
        type=parse_models,
        default=list(MODEL_NAMES),
        help=f"comma-separated subset of {','.join(MODEL_NAMES)} (default: all)",
    )
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    return args


def quiet_transformers():
    """Hides save_pretrained's progress bars and BlipModel's deprecation notice."""
    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


def main(argv=None):
    args = parse_args(argv)
    quiet_transformers()
    print_facts(args)
    inputs = make_inputs(args.batch_size, args.seed, VISION_COMMON["image_size"])
    all_results, total_start = [], time.perf_counter()
    for name in args.models:
        check = CHECKS[name]
        print(f"\n== {name}: {check.tf_class} vs {check.torch_class}")
        reason = check.skip_reason(args.config)
        if reason:
            print(f"  {reason}")
            continue
        results = check_model(check, args, inputs)
        all_results += [(name, result) for result in results]
        free_memory()  # one model class in memory at a time
    print()
    if not all_results:
        print("summary: nothing compared")
        return 1
    failures = [(name, r) for name, r in all_results if not r.passes(args.tolerance)]
    worst_name, worst = max(
        all_results,
        key=lambda item: np.inf if np.isnan(item[1].relative_diff) else item[1].relative_diff,
    )
    print(
        f"summary: {'FAIL' if failures else 'PASS'} ({args.config}, batch {args.batch_size}): "
        f"worst relative diff {worst.relative_diff:.3e} ({worst_name} {worst.field}), "
        f"{len(all_results) - len(failures)}/{len(all_results)} fields within "
        f"{args.tolerance:g}; total {time.perf_counter() - total_start:.0f}s"
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
