"""Fine-tune BLIP captioning (or VQA) on your own images with Keras model.fit.

    python scripts/finetune.py --model ./blip-image-captioning-base --task caption \\
        --train train.jsonl --validation val.jsonl --output finetuned/ --epochs 5

The data files are JSONL or CSV with the columns `image` and `text` (VQA: `image`,
`question`, `answer`); relative image paths are read from the file's directory. Training uses
BLIP's augmentation (random resized crop, horizontal flip), AdamW with a cosine learning-rate
decay, and keeps the weights of the epoch with the lowest validation loss (training loss
without --validation). At the end the best weights are written with `save_pretrained` (plus
the processor files) to --output, which transformers and tfblip load, and optionally exported
as a TF Serving SavedModel (--export DIR).
"""

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

TASKS = ("caption", "vqa")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog=__doc__.split("\n\n", 2)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", required=True, help="checkpoint directory (or hub repo id)")
    parser.add_argument("--task", choices=TASKS, default="caption")
    parser.add_argument("--train", required=True, help="training records, .jsonl or .csv")
    parser.add_argument("--validation", help="validation records, .jsonl or .csv")
    parser.add_argument("--output", required=True, help="directory for the fine-tuned checkpoint")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=1e-5, help="peak (BLIP: 1e-5)")
    parser.add_argument("--weight-decay", type=float, default=0.05, help="AdamW (BLIP: 0.05)")
    parser.add_argument(
        "--prompt", default="", help='caption prefix not learned, e.g. "a picture of "'
    )
    parser.add_argument("--freeze-vision", action="store_true", help="train the text side only")
    parser.add_argument(
        "--mixed-precision", action="store_true", help="train under the mixed_bfloat16 policy"
    )
    parser.add_argument("--seed", type=int, default=0, help="shuffling and augmentation seed")
    parser.add_argument("--skip-corrupt", action="store_true", help="skip unreadable images")
    parser.add_argument("--export", help="also write a TF Serving SavedModel to this directory")
    args = parser.parse_args(argv)
    for name in ("epochs", "batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if not args.learning_rate > 0:
        parser.error("--learning-rate must be positive")
    if os.path.isdir(args.output) and os.listdir(args.output):
        parser.error(f"--output {args.output!r} exists and is not empty")
    return args


def build_datasets(args, processor):
    from tfblip import data

    common = {"batch_size": args.batch_size, "seed": args.seed, "skip_corrupt": args.skip_corrupt}
    if args.task == "caption":
        build = data.caption_dataset
        common["prompt"] = args.prompt
    else:
        build = data.vqa_dataset
    train = build(args.train, processor, training=True, **common)
    validation = None
    if args.validation:
        validation = build(args.validation, processor, training=False, **common)
    return train, validation


def main(argv=None):
    args = parse_args(argv)
    import keras

    import tfblip

    keras.utils.set_random_seed(args.seed)
    model_class = {
        "caption": tfblip.TFBlipForConditionalGeneration,
        "vqa": tfblip.TFBlipForQuestionAnswering,
    }[args.task]
    dtype = "mixed_bfloat16" if args.mixed_precision else None
    model = model_class.from_pretrained(args.model, dtype=dtype)
    processor = tfblip.BlipProcessor.from_pretrained(args.model)
    train, validation = build_datasets(args, processor)
    if args.freeze_vision:
        model.vision_model.trainable = False

    steps = args.epochs * int(train.cardinality()) if train.cardinality() > 0 else None
    learning_rate = args.learning_rate
    if steps:
        learning_rate = keras.optimizers.schedules.CosineDecay(args.learning_rate, steps)
    model.compile(
        optimizer=keras.optimizers.AdamW(
            learning_rate=learning_rate, weight_decay=args.weight_decay
        )
    )
    os.makedirs(args.output, exist_ok=True)
    best_weights = os.path.join(args.output, "best.weights.h5")
    monitor = "val_loss" if validation is not None else "loss"
    history = model.fit(
        train,
        validation_data=validation,
        epochs=args.epochs,
        callbacks=[
            keras.callbacks.ModelCheckpoint(
                best_weights, monitor=monitor, save_best_only=True, save_weights_only=True
            )
        ],
        verbose=1,
    )
    best_epoch = min(range(args.epochs), key=lambda e: history.history[monitor][e])
    print(
        f"best epoch {best_epoch + 1}: {monitor} {history.history[monitor][best_epoch]:.4f}",
        file=sys.stderr,
    )
    model.load_weights(best_weights)
    model.save_pretrained(args.output)
    processor.save_pretrained(args.output)
    print(f"saved the fine-tuned checkpoint to {args.output}", file=sys.stderr)
    if args.export:
        if args.mixed_precision:
            # Serve in float32: load the saved weights into a float32 model.
            model = model_class.from_pretrained(args.output)
        tfblip.export_saved_model(model, processor, args.export)
        print(f"exported a SavedModel to {args.export}", file=sys.stderr)


if __name__ == "__main__":
    main()
