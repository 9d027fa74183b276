"""The `tfblip` command line: its subcommands, their arguments, help texts and usage checks.

Imports no TensorFlow, so that `--help`, `--version` and usage errors answer at once.
"""

import argparse

from tfblip import __version__

# tfblip.modeling.quantization.QUANTIZATION_MODES, spelled out here: this module must not
# import TensorFlow (`tfblip --help` stays fast).
QUANTIZE_CHOICES = ("int8",)
# tfblip.export.litert.LITERT_QUANTIZATIONS without None, for `export --format litert`.
LITERT_QUANTIZE_CHOICES = ("float16", "dynamic_int8")

DEFAULT_MODELS = {
    "caption": "Salesforce/blip-image-captioning-base",
    "vqa": "Salesforce/blip-vqa-base",
    "match": "Salesforce/blip-itm-base-coco",
    "embed": "Salesforce/blip-itm-base-coco",
}
DEFAULT_BATCH_SIZE = 8
TASK_CHOICES = ("caption", "vqa", "retrieval", "features")


def _checked_number(kind, accepts, requirement):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {requirement}, got {text!r}") from None
        if not accepts(value):
            raise argparse.ArgumentTypeError(f"expected {requirement}, got {text!r}")
        return value

    return parse


positive_int = _checked_number(int, lambda v: v >= 1, "a positive integer")
non_negative_int = _checked_number(int, lambda v: v >= 0, "a non-negative integer")
positive_float = _checked_number(float, lambda v: v > 0, "a number > 0")
probability = _checked_number(float, lambda v: 0 < v <= 1, "a number in (0, 1]")
any_float = _checked_number(float, lambda v: True, "a number")

# generate() options on the command line: flag -> (type, metavar, help). Each sets the
# generate() option of the flag's name, "--max-new-tokens" -> max_new_tokens.
GENERATION_FLAGS = {
    "--max-new-tokens": (positive_int, "N", "tokens to generate at most (default 20)"),
    "--max-length": (positive_int, "N", "total length cap, prompt included"),
    "--min-new-tokens": (non_negative_int, "N", "tokens to generate at least"),
    "--min-length": (non_negative_int, "N", "total length floor, prompt included"),
    "--num-beams": (positive_int, "N", "beam search with N beams (BLIP's demo: 3)"),
    "--length-penalty": (any_float, "X", "beam search length exponent"),
    "--repetition-penalty": (positive_float, "X", "penalty for repeated tokens"),
    "--no-repeat-ngram-size": (non_negative_int, "N", "forbid repeating N-grams"),
    "--temperature": (positive_float, "T", "sampling temperature"),
    "--top-k": (non_negative_int, "K", "sample among the K most likely tokens"),
    "--top-p": (probability, "P", "nucleus sampling probability mass"),
    "--seed": (int, "S", "fixed sampling seed (default: a new seed per request)"),
}
SAMPLING_FLAGS = ("--temperature", "--top-k", "--top-p", "--seed")

CAPTION_EPILOG = """examples:
  tfblip caption photo.jpg
  tfblip caption photos/ 'more/*.png' --num-beams 3 --max-new-tokens 30
  tfblip caption photos/ --prompt "a picture of" --format jsonl --output captions.jsonl
  tfblip caption photo.jpg --sample --top-p 0.9 --seed 0
  tfblip caption photos/ --model ./blip-image-captioning-large

Directories are searched recursively for image files (.bmp .gif .jpeg .jpg .png .tif .tiff
.webp), in sorted order; quote globs to let tfblip expand them (** recurses). An unreadable
image is reported on stderr and skipped; the exit code is then 1. Batching never changes a
caption; --sample captions each image on its own, so a seed gives the same caption in any run.
"""
VQA_EPILOG = """examples:
  tfblip vqa photo.jpg --question "how many cats are there?"
  tfblip vqa photo.jpg --question "what color is the couch?" --num-beams 3
  tfblip vqa photo.jpg --question "what is this?" --model ./blip-vqa-capfilt-large
"""
MATCH_EPILOG = """examples:
  tfblip match photo.jpg --text "a cat on a couch" --text "a dog on the beach"
  tfblip match photo.jpg --text "two cats" --format jsonl

Columns: itm (image-text matching probability, 0..1: does the text describe the image?),
itc (cosine similarity of the contrastive features, -1..1: ranks texts for retrieval), text.
"""
EMBED_EPILOG = """examples:
  tfblip embed photos/ --output photos.npy         # also writes photos.paths.txt
  tfblip embed --text "a cat" --text "a dog" --output texts.npy

Writes a float32 array, one row per image (or per --text, in order). Retrieval checkpoints
(BlipForImageTextRetrieval, the default) give L2-normalized ITC features, so a dot product
is a cosine similarity; BlipModel checkpoints give get_image_features / get_text_features
(projected, not normalized). FILE.paths.txt lists the image of each row, one per line:
unreadable images are skipped (exit code 1) and have no row.
"""
CONVERT_EPILOG = """examples:
  tfblip convert ./blip-image-captioning-base ./blip-caption-safetensors
  tfblip convert ./blip-vqa-base ./blip-vqa.keras
  tfblip convert Salesforce/blip-itm-base-coco ./blip-itm-base-coco
  tfblip convert ./model_base_capfilt_large.pth ./blip-caption --task caption

SRC: a checkpoint directory (model.safetensors, a sharded model.safetensors.index.json,
pytorch_model.bin or tf_model.h5), an original Salesforce BLIP .pth file (with --task) or a
hub repo id; .bin and .pth files need PyTorch. A DST directory receives config.json,
model.safetensors (loadable by tfblip and transformers) and SRC's processor files; a DST
ending in .keras is a Keras file (keras.saving.load_model, after importing a tfblip model
class). The model class follows config.json's "architectures" unless --task.
"""
EXPORT_EPILOG = """examples:
  tfblip export --model ./blip-image-captioning-base --task caption \\
      --output saved_models/blip_caption/1 --num-beams 3 --max-new-tokens 30
  tfblip export --model ./blip-vqa-base --task vqa --output saved_models/blip_vqa/1
  tfblip export --model ./blip-itm-base-coco --task retrieval --output saved_models/blip_itm/1
"""


# Each command's summary (in `tfblip --help`), description and examples (in its --help).
COMMANDS = {
    "caption": (
        "caption images",
        "Caption image files: one line per image, `path<TAB>caption` (or JSON lines).",
        CAPTION_EPILOG,
    ),
    "vqa": (
        "answer a question about an image",
        "Answer a question about an image; prints the answer.",
        VQA_EPILOG,
    ),
    "match": (
        "score how well texts describe an image",
        (
            "Score texts against an image with a retrieval checkpoint: the image-text matching\n"
            "(ITM) probability and the contrastive (ITC) similarity of each text."
        ),
        MATCH_EPILOG,
    ),
    "embed": (
        "write image or text feature vectors to a .npy file",
        "Compute image features (or text features, with --text); save them as a .npy array.",
        EMBED_EPILOG,
    ),
    "convert": (
        "convert a checkpoint to safetensors or a .keras file",
        (
            "Convert a BLIP checkpoint to a config.json + model.safetensors directory,\n"
            "or to a Keras .keras file."
        ),
        CONVERT_EPILOG,
    ),
    "export": (
        "write a SavedModel for TF Serving",
        (
            "Export a checkpoint as a TF Serving SavedModel: image bytes and text in, text\n"
            "(or scores, or embeddings) out. Generation options are fixed at export."
        ),
        EXPORT_EPILOG,
    ),
}


def _early_stopping(value):
    choices = {"true": True, "false": False, "never": "never"}
    if value.lower() not in choices:
        raise argparse.ArgumentTypeError("expected true, false or never")
    return choices[value.lower()]


def _option_name(flag):
    return flag.removeprefix("--").replace("-", "_")


def _value_of(args, flag):
    return getattr(args, _option_name(flag))


def generation_options(args):
    """The generate() keyword arguments the command line sets.

    Args:
        args: the parsed arguments of a command with generation options.

    Returns:
        {generate() option: value} for each option given (and do_sample, early_stopping).
    """
    options = {
        _option_name(flag): _value_of(args, flag)
        for flag in GENERATION_FLAGS
        if _value_of(args, flag) is not None
    }
    if args.sample:
        options["do_sample"] = True
    if args.early_stopping is not None:
        options["early_stopping"] = args.early_stopping
    return options


def _add_generation_arguments(parser):
    options = parser.add_argument_group("generation options")
    for flag, (kind, metavar, text) in GENERATION_FLAGS.items():
        options.add_argument(flag, type=kind, metavar=metavar, help=text)
    options.add_argument("--sample", action="store_true", help="sample instead of greedy/beam")
    options.add_argument(
        "--early-stopping",
        type=_early_stopping,
        metavar="WHEN",
        help="beam search: true, false or never",
    )


def _generation_usage_problem(args, sampling_needs_flag):
    if args.sample and args.num_beams is not None and args.num_beams > 1:
        return "--sample cannot be combined with --num-beams above 1 (no beam sampling)"
    if sampling_needs_flag and not args.sample:
        given = [flag for flag in SAMPLING_FLAGS if _value_of(args, flag) is not None]
        if given:
            return f"{', '.join(given)}: used only when sampling; add --sample"
    return None


def _add_command(subparsers, common, name):
    summary, description, epilog = COMMANDS[name]
    parser = subparsers.add_parser(
        name,
        parents=[common],
        help=summary,
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(command_parser=parser, usage_problem=lambda args: None)
    return parser


def _add_model_argument(parser, command):
    parser.add_argument(
        "--model",
        default=DEFAULT_MODELS[command],
        metavar="DIR_OR_REPO",
        help=f"checkpoint directory or Hugging Face repo id (default {DEFAULT_MODELS[command]})",
    )
    _add_quantize_argument(parser)


def _add_quantize_argument(parser):
    parser.add_argument(
        "--quantize",
        choices=QUANTIZE_CHOICES,
        help="quantize the weights after loading: int8 holds them in about a quarter of "
        "float32's memory (weight-only, one scale per output channel)",
    )


def _add_output_arguments(parser, what):
    parser.add_argument(
        "--format",
        choices=("text", "jsonl"),
        default="text",
        help=f"text: tab-separated lines; jsonl: one JSON object per {what} (default text)",
    )


def _add_batch_arguments(parser):
    parser.add_argument(
        "--batch-size",
        type=positive_int,
        default=DEFAULT_BATCH_SIZE,
        metavar="N",
        help=f"images per model call (default {DEFAULT_BATCH_SIZE})",
    )
    parser.add_argument(
        "--quiet", action="store_true", help="no progress bar (shown on a terminal for > 8 images)"
    )


def _add_caption_parser(subparsers, common):
    parser = _add_command(subparsers, common, "caption")
    parser.add_argument("paths", nargs="+", metavar="PATH", help="image file, directory or glob")
    _add_model_argument(parser, "caption")
    parser.add_argument("--prompt", help="text each caption starts with, e.g. 'a picture of'")
    _add_output_arguments(parser, "image")
    parser.add_argument("--output", metavar="FILE", help="write captions here, not to stdout")
    _add_batch_arguments(parser)
    _add_generation_arguments(parser)
    parser.set_defaults(usage_problem=lambda args: _generation_usage_problem(args, True))


def _add_vqa_parser(subparsers, common):
    parser = _add_command(subparsers, common, "vqa")
    parser.add_argument("image", metavar="IMAGE", help="image file")
    parser.add_argument("--question", required=True, help="the question, in English")
    _add_model_argument(parser, "vqa")
    _add_generation_arguments(parser)
    parser.set_defaults(usage_problem=lambda args: _generation_usage_problem(args, True))


def _add_match_parser(subparsers, common):
    parser = _add_command(subparsers, common, "match")
    parser.add_argument("image", metavar="IMAGE", help="image file")
    parser.add_argument(
        "--text", action="append", required=True, help="a text to score (repeat for more)"
    )
    _add_model_argument(parser, "match")
    _add_output_arguments(parser, "text")


def _embed_usage_problem(args):
    if bool(args.paths) == bool(args.text):
        return "give image PATHs or --text, not both or neither"
    return None


def _add_embed_parser(subparsers, common):
    parser = _add_command(subparsers, common, "embed")
    parser.add_argument(
        "paths", nargs="*", metavar="PATH", help="image file, directory or glob (as for caption)"
    )
    parser.add_argument("--text", action="append", help="embed this text (repeat for more)")
    parser.add_argument("--output", required=True, metavar="FILE.npy", help="the array to write")
    _add_model_argument(parser, "embed")
    _add_batch_arguments(parser)
    parser.set_defaults(usage_problem=_embed_usage_problem)


def _add_convert_parser(subparsers, common):
    parser = _add_command(subparsers, common, "convert")
    parser.add_argument("source", metavar="SRC", help="checkpoint directory or hub repo id")
    parser.add_argument("destination", metavar="DST", help="directory, or a file ending in .keras")
    parser.add_argument(
        "--task", choices=TASK_CHOICES, help="model class (default: config.json's architectures)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing DST")


def _add_export_parser(subparsers, common):
    parser = _add_command(subparsers, common, "export")
    parser.add_argument("--model", required=True, help="checkpoint directory (or hub repo id)")
    parser.add_argument("--task", required=True, choices=TASK_CHOICES)
    parser.add_argument(
        "--format",
        choices=("saved_model", "litert"),
        default="saved_model",
        help="saved_model (TF Serving, default) or litert (a .tflite for phones; caption, vqa)",
    )
    parser.add_argument(
        "--output",
        required=True,
        help="saved_model: version directory, e.g. saved_models/NAME/1; litert: FILE.tflite",
    )
    parser.add_argument(
        "--quantize",
        choices=QUANTIZE_CHOICES + LITERT_QUANTIZE_CHOICES,
        help="saved_model: int8 weights; litert: float16 or dynamic_int8",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --output")
    parser.add_argument(
        "--no-warmup", action="store_true", help="skip assets.extra/tf_serving_warmup_requests"
    )
    parser.add_argument(
        "--max-text-length", type=int, help="truncate tokenized inputs to this many tokens"
    )
    _add_generation_arguments(parser)
    parser.set_defaults(usage_problem=_export_usage_problem)


def _export_usage_problem(args):
    problem = _generation_usage_problem(args, False)
    if problem:
        return problem
    litert = args.format == "litert"
    allowed = LITERT_QUANTIZE_CHOICES if litert else QUANTIZE_CHOICES
    if args.quantize is not None and args.quantize not in allowed:
        return f"--quantize {args.quantize}: --format {args.format} takes {', '.join(allowed)}"
    if litert:
        if args.task not in ("caption", "vqa"):
            return f"--format litert exports caption and vqa models, not {args.task}"
        given = ["--no-warmup"] if args.no_warmup else []
        given += ["--sample"] if args.sample else []
        given += ["--early-stopping"] if args.early_stopping is not None else []
        others = ["--max-text-length", *GENERATION_FLAGS]
        given += [
            flag
            for flag in others
            if flag != "--max-new-tokens" and _value_of(args, flag) is not None
        ]
        if flag_problem := [f for f in given if f != "--num-beams" or args.num_beams != 1]:
            return (
                f"{', '.join(flag_problem)}: --format litert decodes greedily and takes "
                "--max-new-tokens only"
            )
    return None


def build_parser():
    """The `tfblip` argument parser, one subparser per command.

    Each command's namespace carries `command_parser` (its subparser, for usage errors) and
    `usage_problem(args)` (a usage error message, or None), checks argparse cannot express.

    Returns:
        The argparse.ArgumentParser.
    """
    parser = argparse.ArgumentParser(
        prog="tfblip",
        description="BLIP in TensorFlow: captioning, VQA, image-text matching, embeddings, "
        "checkpoint conversion and TF Serving export. `tfblip COMMAND --help` shows examples.",
        epilog="exit codes: 0 success; 1 some inputs failed or a runtime error; 2 usage error",
    )
    parser.add_argument("--version", action="version", version=f"tfblip {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--verbose",
        action="store_true",
        help="show TensorFlow's log messages and warnings, and tracebacks of errors",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_caption_parser(subparsers, common)
    _add_vqa_parser(subparsers, common)
    _add_match_parser(subparsers, common)
    _add_embed_parser(subparsers, common)
    _add_convert_parser(subparsers, common)
    _add_export_parser(subparsers, common)
    return parser
