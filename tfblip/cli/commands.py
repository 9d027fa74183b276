"""What each `tfblip` subcommand does (`tfblip.cli.parser` parses the arguments).

Imported only once `tfblip.cli.main` has configured TensorFlow's logging, since importing this
module loads TensorFlow. Each runner returns the exit code: 0, or 1 when an input failed.
"""

import contextlib
import glob
import json
import os
import shutil
import sys

import numpy as np
import tensorflow as tf

from tfblip.checkpoints import resolve_checkpoint_path
from tfblip.cli.parser import DEFAULT_MODELS, generation_options
from tfblip.cli.report import CommandError, Reporter
from tfblip.configuration import CONFIG_NAME
from tfblip.export.saved_model import TASKS, export_saved_model
from tfblip.image_processing import IMAGE_PROCESSOR_NAME, PROCESSOR_NAME
from tfblip.processing import (
    SPECIAL_TOKENS_MAP_FILE,
    TOKENIZER_CONFIG_FILE,
    TOKENIZER_FILE,
    VOCAB_FILE,
    BlipProcessor,
)

IMAGE_EXTENSIONS = frozenset({".bmp", ".gif", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp"})
PROCESSOR_FILES = (
    TOKENIZER_FILE,
    VOCAB_FILE,
    TOKENIZER_CONFIG_FILE,
    SPECIAL_TOKENS_MAP_FILE,
    IMAGE_PROCESSOR_NAME,
    PROCESSOR_NAME,
)
# config.json "architectures" -> task, as in TASKS: transformers' PyTorch class names, and
# its TensorFlow ones (tf_model.h5 checkpoints), which are tfblip's.
ARCHITECTURE_TASKS = {
    name: task
    for task, model_class in TASKS.items()
    for name in (model_class.__name__, model_class.__name__.removeprefix("TF"))
}
HUB_HELP = (
    "{name!r} is not a local directory, and it could not be downloaded from the Hugging Face "
    "Hub ({reason}). Pass a local checkpoint directory instead, --model DIR: a directory "
    "holding config.json, model.safetensors (or pytorch_model.bin) and the processor files "
    "(vocab.txt or tokenizer.json, preprocessor_config.json). To get one, run on a machine "
    "with internet access `hf download {name} --local-dir {local_dir}` (`huggingface-cli "
    "download` with huggingface_hub before 1.0; pip install huggingface_hub) and copy that "
    "directory here. tfblip downloads repo ids itself when the hub extra is installed (pip "
    "install 'tfblip[hub]') and the Hub can be reached."
)


# ----------------------------------------------------------------------------- checkpoints


def _hub_failure(name, reason):
    local_dir = "./" + name.rsplit("/", 1)[-1]
    return CommandError(HUB_HELP.format(name=name, reason=reason, local_dir=local_dir))


def locate_checkpoint(name):
    """A local checkpoint directory or weights file for a path or hub repo id."""
    try:
        return resolve_checkpoint_path(name)
    except FileNotFoundError as error:
        raise CommandError(f"Checkpoint directory {name!r} does not exist.") from error
    except ImportError as error:
        raise _hub_failure(name, "huggingface_hub is not installed") from error
    except OSError as error:
        reason = str(error.__cause__ or error).splitlines()[0].rstrip(".")
        raise _hub_failure(name, reason) from error


def _architecture(task):
    return TASKS[task].__name__.removeprefix("TF")


def _directory_of(path):
    return path if os.path.isdir(path) else os.path.dirname(path) or "."


def checkpoint_task(path):
    """The task config.json's "architectures" names; None when it names none, or when
    `path` is a weights file without one (original Salesforce .pth files have none)."""
    config_path = os.path.join(_directory_of(path), CONFIG_NAME)
    if not os.path.isfile(config_path):
        if os.path.isdir(path):
            raise CommandError(f"{path!r} has no {CONFIG_NAME}; is it a checkpoint directory?")
        return None
    with open(config_path, encoding="utf-8") as f:
        architectures = json.load(f).get("architectures") or []
    for architecture in architectures:
        if architecture in ARCHITECTURE_TASKS:
            return ARCHITECTURE_TASKS[architecture]
    if architectures:
        raise CommandError(
            f"{config_path} names architecture {architectures[0]!r}; tfblip supports "
            f"{', '.join(_architecture(task) for task in TASKS)}."
        )
    return None


def open_checkpoint(name, tasks, command):
    """(path, task, processor) of a checkpoint whose task is one of `tasks`."""
    path = locate_checkpoint(name)
    task = checkpoint_task(path) or tasks[0]
    if task not in tasks:
        raise CommandError(
            f"{name!r} is a {_architecture(task)} checkpoint; `tfblip {command}` needs "
            f"{' or '.join(_architecture(t) for t in tasks)} (as {DEFAULT_MODELS[command]})."
        )
    return path, task, BlipProcessor.from_pretrained(_directory_of(path))


def encode_texts(processor, model, texts):
    """Token ids and masks, truncated to what the model's position embeddings allow."""
    max_length = model.config.text_config.max_position_embeddings
    if processor.model_max_length is not None:
        max_length = min(max_length, processor.model_max_length)
    return processor(
        text=texts, padding=True, truncation=True, max_length=max_length, return_tensors="tf"
    )


# ----------------------------------------------------------------------------- images


def _image_files_under(directory):
    return sorted(
        os.path.join(root, name)
        for root, _, names in os.walk(directory)
        for name in names
        if os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS
    )


def _expand_glob_match(path):
    return _image_files_under(path) if os.path.isdir(path) else [path]


def expand_image_paths(arguments, reporter):
    """The image files PATH arguments name, each once, reporting the arguments that name none.

    A file is taken as it is, a directory gives its image files (recursively, sorted) and a
    glob its matches, as a shell would expand it.
    """
    found = {}
    for argument in arguments:
        if os.path.isdir(argument):
            paths = _image_files_under(argument)
            if not paths:
                reporter.error(f"{argument}: no image files in this directory")
        elif os.path.exists(argument):
            paths = [argument]
        elif any(c in argument for c in "*?["):
            paths = [
                p
                for m in sorted(glob.glob(argument, recursive=True))
                for p in _expand_glob_match(m)
            ]
            if not paths:
                reporter.error(f"{argument}: no files match")
        else:
            paths = []
            reporter.error(f"{argument}: no such file or directory")
        found.update(dict.fromkeys(paths))
    return list(found)


def _read_image(processor, path):
    return processor.image_processor(path, return_tensors="np")["pixel_values"][0]


def _image_error(path, error):
    message = str(error)
    return message if path in message else f"{path}: {message}"


def read_single_image(processor, path):
    """(1, 3, H, W) pixel values of one image file."""
    try:
        return _read_image(processor, path)[None]
    except (OSError, ValueError) as error:
        raise CommandError(_image_error(path, error)) from error


def image_batches(processor, paths, batch_size, reporter):
    """(paths, pixel values) of the readable images of each batch of `paths`.

    Images are read one at a time, so an unreadable one is reported and skipped alone.
    """
    reporter.start(len(paths))
    for start in range(0, len(paths), batch_size):
        batch = paths[start : start + batch_size]
        readable, pixels = [], []
        for path in batch:
            try:
                pixels.append(_read_image(processor, path))
            except (OSError, ValueError) as error:
                reporter.error(_image_error(path, error))
                continue
            readable.append(path)
        if readable:
            yield readable, np.stack(pixels)
        reporter.advance(len(batch))
    reporter.finish()


def _open_output(path):
    if path is None:
        return contextlib.nullcontext(sys.stdout)
    return open(path, "w", encoding="utf-8")


def _write_lines(output, lines, reporter):
    reporter.clear()
    output.write("".join(line + "\n" for line in lines))
    output.flush()
    reporter.draw()


# ----------------------------------------------------------------------------- commands


def _caption_lines(output_format, paths, captions):
    if output_format == "jsonl":
        return [
            json.dumps({"path": path, "caption": caption}, ensure_ascii=False)
            for path, caption in zip(paths, captions)
        ]
    return [f"{path}\t{caption}" for path, caption in zip(paths, captions)]


def caption(args):
    reporter = Reporter("caption", args.quiet)
    paths = expand_image_paths(args.paths, reporter)
    if not paths:
        return 1
    checkpoint, task, processor = open_checkpoint(args.model, ("caption",), "caption")
    with _open_output(args.output) as output:
        model = TASKS[task].from_pretrained(checkpoint, quantize=args.quantize)
        options = generation_options(args)
        # Sampling draws one random stream per batch, so a sampled caption would depend on
        # the images batched with it; captioned alone, each image gets the seed's caption.
        batch_size = 1 if args.sample else args.batch_size
        for batch_paths, pixels in image_batches(processor, paths, batch_size, reporter):
            prompt_inputs = {}
            if args.prompt is not None:
                encoded = encode_texts(processor, model, [args.prompt] * len(batch_paths))
                prompt_inputs = {
                    "input_ids": encoded["input_ids"],
                    "attention_mask": encoded["attention_mask"],
                }
            token_ids = model.generate(pixels, **prompt_inputs, **options)
            captions = processor.batch_decode(token_ids, skip_special_tokens=True)
            _write_lines(output, _caption_lines(args.format, batch_paths, captions), reporter)
    return reporter.exit_code


def vqa(args):
    checkpoint, task, processor = open_checkpoint(args.model, ("vqa",), "vqa")
    pixels = read_single_image(processor, args.image)
    model = TASKS[task].from_pretrained(checkpoint, quantize=args.quantize)
    question = encode_texts(processor, model, [args.question])
    token_ids = model.generate(
        question["input_ids"],
        pixels,
        attention_mask=question["attention_mask"],
        **generation_options(args),
    )
    print(processor.decode(token_ids[0], skip_special_tokens=True))
    return 0


def match(args):
    checkpoint, task, processor = open_checkpoint(args.model, ("retrieval",), "match")
    pixels = read_single_image(processor, args.image)
    model = TASKS[task].from_pretrained(checkpoint, quantize=args.quantize)
    texts = encode_texts(processor, model, args.text)
    image_states = model.vision_model(pixel_values=pixels).last_hidden_state
    image_states = tf.repeat(image_states, len(args.text), axis=0)
    itm, itc = model.pair_scores(image_states, texts["input_ids"], texts["attention_mask"])
    rows = zip(args.text, itm.numpy().tolist(), itc.numpy().tolist())
    if args.format == "jsonl":
        for text, probability, similarity in rows:
            record = {"text": text, "itm_probability": probability, "itc_similarity": similarity}
            print(json.dumps(record, ensure_ascii=False))
    else:
        print("itm\titc\ttext")
        for text, probability, similarity in rows:
            print(f"{probability:.4f}\t{similarity:.4f}\t{text}")
    return 0


def _save_array(path, features):
    rows = np.concatenate([np.asarray(batch, np.float32) for batch in features])
    with open(path, "wb") as f:  # np.save(path) would append ".npy" to other names
        np.save(f, rows)


def _embed_texts(args):
    checkpoint, task, processor = open_checkpoint(args.model, ("retrieval", "features"), "embed")
    model = TASKS[task].from_pretrained(checkpoint, quantize=args.quantize)
    texts = encode_texts(processor, model, args.text)
    # Both model kinds have get_text_features / get_image_features: a retrieval model's are its
    # normalized ITC features, a TFBlipModel's transformers' projected ones.
    features = model.get_text_features(
        input_ids=texts["input_ids"], attention_mask=texts["attention_mask"]
    )
    _save_array(args.output, [features])
    return 0


def _embed_images(args):
    reporter = Reporter("embed", args.quiet)
    paths = expand_image_paths(args.paths, reporter)
    if not paths:
        return 1
    checkpoint, task, processor = open_checkpoint(args.model, ("retrieval", "features"), "embed")
    model = TASKS[task].from_pretrained(checkpoint, quantize=args.quantize)
    features, embedded_paths = [], []
    for batch_paths, pixels in image_batches(processor, paths, args.batch_size, reporter):
        features.append(model.get_image_features(pixel_values=pixels))
        embedded_paths.extend(batch_paths)
    if not features:
        raise CommandError("none of the images could be read; nothing written")
    _save_array(args.output, features)
    with open(args.output.removesuffix(".npy") + ".paths.txt", "w", encoding="utf-8") as f:
        f.writelines(path + "\n" for path in embedded_paths)
    return reporter.exit_code


def embed(args):
    return _embed_texts(args) if args.text else _embed_images(args)


def convert(args):
    source = locate_checkpoint(args.source)
    task = args.task or checkpoint_task(source)
    if task is None:
        raise CommandError(
            f"{args.source!r} has no config.json naming its architecture; pass --task "
            "caption, vqa, retrieval or features."
        )
    destination = args.destination
    if os.path.isdir(destination) and os.path.samefile(destination, _directory_of(source)):
        raise CommandError("DST is SRC's directory; choose another destination.")
    occupied = os.path.isfile(destination) or (
        os.path.isdir(destination) and os.listdir(destination)
    )
    if occupied and not args.overwrite:
        raise CommandError(f"{destination!r} exists; pass --overwrite to replace it.")
    model = TASKS[task].from_pretrained(source)
    if destination.endswith(".keras"):
        model.save(destination)
    else:
        model.save_pretrained(destination)
        for name in PROCESSOR_FILES:
            processor_file = os.path.join(_directory_of(source), name)
            if os.path.isfile(processor_file):
                shutil.copyfile(processor_file, os.path.join(destination, name))
    print(f"Wrote {_architecture(task)} ({model.count_params():,} parameters) to {destination}")
    return 0


def export(args):
    options = generation_options(args)
    checkpoint = locate_checkpoint(args.model)
    if args.format == "litert":
        return _export_litert(args, checkpoint, options)
    model = TASKS[args.task].from_pretrained(checkpoint, quantize=args.quantize)
    processor = BlipProcessor.from_pretrained(_directory_of(checkpoint))
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
    return 0


def _export_litert(args, checkpoint, options):
    from tfblip.export.litert import export_litert

    model = TASKS[args.task].from_pretrained(checkpoint)
    processor = BlipProcessor.from_pretrained(_directory_of(checkpoint))
    try:
        path = export_litert(
            model,
            processor,
            args.output,
            task=args.task,
            quantize=args.quantize,
            max_new_tokens=options.get("max_new_tokens", 20),
            overwrite=args.overwrite,
        )
    except ValueError as error:
        raise CommandError(str(error)) from error
    print(f"Exported {args.task} LiteRT model to {path} (with its .vocab.txt and .json)")
    return 0


RUNNERS = {
    "caption": caption,
    "vqa": vqa,
    "match": match,
    "embed": embed,
    "convert": convert,
    "export": export,
}
