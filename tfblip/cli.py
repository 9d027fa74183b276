"""The `tfblip` command (also `python -m tfblip`).

tfblip export --model DIR --task caption --output saved_models/blip_caption/1 --num-beams 3
"""

import argparse
import sys

# generate() options the export command takes: flag -> (option name, type, help).
GENERATION_FLAGS = {
    "--max-new-tokens": ("max_new_tokens", int, "tokens to generate at most (default 20)"),
    "--max-length": ("max_length", int, "total length cap, prompt included"),
    "--min-new-tokens": ("min_new_tokens", int, "tokens to generate at least"),
    "--min-length": ("min_length", int, "total length floor, prompt included"),
    "--num-beams": ("num_beams", int, "beam search with N beams (BLIP's demo uses 3)"),
    "--length-penalty": ("length_penalty", float, "beam search length exponent"),
    "--repetition-penalty": ("repetition_penalty", float, "penalty for repeated tokens"),
    "--no-repeat-ngram-size": ("no_repeat_ngram_size", int, "forbid repeating N-grams"),
    "--temperature": ("temperature", float, "sampling temperature"),
    "--top-k": ("top_k", int, "sample among the K most likely tokens"),
    "--top-p": ("top_p", float, "nucleus sampling probability mass"),
    "--seed": ("seed", int, "fixed sampling seed (default: a new seed per request)"),
}
EXPORT_EPILOG = """examples:
  tfblip export --model ./blip-image-captioning-base --task caption \\
      --output saved_models/blip_caption/1 --num-beams 3 --max-new-tokens 30
  tfblip export --model ./blip-vqa-base --task vqa --output saved_models/blip_vqa/1
  tfblip export --model ./blip-itm-base-coco --task retrieval --output saved_models/blip_itm/1
"""


def _early_stopping(value):
    choices = {"true": True, "false": False, "never": "never"}
    if value.lower() not in choices:
        raise argparse.ArgumentTypeError("expected true, false or never")
    return choices[value.lower()]


def _add_export_parser(subparsers):
    parser = subparsers.add_parser(
        "export",
        help="write a SavedModel for TF Serving",
        description="Export a checkpoint as a TF Serving SavedModel: image bytes and text in, "
        "text (or scores, or embeddings) out. Generation options are fixed at export.",
        epilog=EXPORT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", required=True, help="checkpoint directory (or hub repo id)")
    parser.add_argument(
        "--task", required=True, choices=("caption", "vqa", "retrieval", "features")
    )
    parser.add_argument(
        "--output", required=True, help="version directory, e.g. saved_models/NAME/1"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --output")
    parser.add_argument(
        "--no-warmup", action="store_true", help="skip assets.extra/tf_serving_warmup_requests"
    )
    parser.add_argument(
        "--max-text-length", type=int, help="truncate tokenized inputs to this many tokens"
    )
    options = parser.add_argument_group("generation options (caption and vqa)")
    for flag, (_, kind, text) in GENERATION_FLAGS.items():
        options.add_argument(flag, type=kind, help=text)
    options.add_argument("--sample", action="store_true", help="sample instead of greedy/beam")
    options.add_argument(
        "--early-stopping", type=_early_stopping, help="beam search: true, false or never"
    )
    parser.set_defaults(run=_run_export)


def _run_export(args):
    from tfblip.checkpoint import resolve_checkpoint_path
    from tfblip.export.saved_model import TASKS, export_saved_model
    from tfblip.processing import BlipProcessor

    options = {
        name: getattr(args, flag[2:].replace("-", "_"))
        for flag, (name, _, _) in GENERATION_FLAGS.items()
        if getattr(args, flag[2:].replace("-", "_")) is not None
    }
    if args.sample:
        options["do_sample"] = True
    if args.early_stopping is not None:
        options["early_stopping"] = args.early_stopping
    directory = resolve_checkpoint_path(args.model)
    model = TASKS[args.task].from_pretrained(directory)
    processor = BlipProcessor.from_pretrained(directory)
    path = export_saved_model(
        model,
        processor,
        args.output,
        task=args.task,
        max_text_length=args.max_text_length,
        warmup=not args.no_warmup,
        overwrite=args.overwrite,
        **options,
    )
    print(f"Exported {args.task} SavedModel to {path}")


def build_parser():
    parser = argparse.ArgumentParser(
        prog="tfblip", description="BLIP in TensorFlow: captioning, VQA, retrieval, export."
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    _add_export_parser(subparsers)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (ValueError, TypeError, OSError, ImportError) as error:
        print(f"tfblip {args.command}: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
