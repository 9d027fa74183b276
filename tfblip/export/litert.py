"""LiteRT (TensorFlow Lite) export of captioning and VQA, for the stock on-device runtime.

`export_litert` writes FILE.tflite, whose graph takes what a phone has, an RGB image already
resized to the model's size as uint8 [1, H, W, 3] (and for VQA the question's token ids
[1, L]), normalises it, runs the vision tower and greedy decoding, and returns the token ids
[1, 1 + max_new_tokens]. Beside it go FILE.vocab.txt (one token per line, line i is id i)
and FILE.json (the special ids, the image size and the resize rule), which `detokenize` and
a client in any language need to turn ids into text.

Only LiteRT's builtin ops are allowed (no Flex / SELECT_TF_OPS), so the standard runtime on
Android, iOS and Linux runs the file; an op that would need Flex fails the export by name.
The weights are frozen into the graph as constants: LiteRT's resource variables do not survive
its WHILE loop.
"""

import json
import os
import re

import tensorflow as tf
from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

from tfblip.generation.decoding import decode
from tfblip.generation.options import GenerationOptions
from tfblip.modeling.decoder_step import DecoderStep
from tfblip.ops.text import WORDPIECE_CLEANUP
from tfblip.processing import CLEAN_UP_REPLACEMENTS

LITERT_QUANTIZATIONS = (None, "float16", "dynamic_int8")
METADATA_VERSION = 1


def _task_of(model):
    names = {
        "TFBlipForConditionalGeneration": "caption",
        "TFBlipForQuestionAnswering": "vqa",
    }
    if type(model).__name__ not in names:
        raise ValueError(
            f"export_litert exports captioning and VQA models, not {type(model).__name__}."
        )
    return names[type(model).__name__]


def _normalised(image, image_processor):
    """uint8 [1, H, W, 3] -> float32 [1, 3, H, W], as BlipImageProcessor rescales and
    normalises (the resize is the client's: see FILE.json)."""
    pixels = tf.cast(image, tf.float32) * float(image_processor.rescale_factor)
    mean = tf.constant(image_processor.image_mean, tf.float32)
    std = tf.constant(image_processor.image_std, tf.float32)
    return tf.transpose((pixels - mean) / std, (0, 3, 1, 2))


def _graph(model, image_processor, task, max_new_tokens):
    """The concrete function to convert: greedy decoding with static shapes (the prompt
    pass before the loop, as under XLA)."""
    size = model.config.vision_config.image_size
    image = tf.TensorSpec([1, size, size, 3], tf.uint8, name="image")
    options = GenerationOptions(max_new_tokens=max_new_tokens, jit_compile=True)
    step = DecoderStep(model.text_decoder)
    seed = tf.constant(0, tf.int64)

    def generate(states, mask, ids):
        ones = tf.ones_like(ids)
        result = decode(step, states, mask, ids, ones, options, seed, max_new=max_new_tokens)
        return result["sequences"]

    if task == "caption":

        def caption(image):
            pixels = _normalised(image, image_processor)
            states = model.vision_model(pixel_values=pixels).last_hidden_state
            ids, _ = model.decoder_prompt(1)
            return {"token_ids": generate(states, tf.ones(tf.shape(states)[:2], tf.int32), ids)}

        return tf.function(caption, input_signature=[image], autograph=False)

    question = tf.TensorSpec([1, None], tf.int32, name="input_ids")

    def vqa(image, input_ids):
        pixels = _normalised(image, image_processor)
        mask = tf.ones_like(input_ids)
        _, states = model.encode_question(input_ids, pixels, attention_mask=mask)
        bos = tf.fill((1, 1), model.config.text_config.bos_token_id)
        return {"token_ids": generate(states, mask, bos)}

    return tf.function(vqa, input_signature=[image, question], autograph=False)


def _flex_ops(message):
    """The TensorFlow ops a converter error names as not convertible to builtins."""
    return sorted(set(re.findall(r"'tf\.(\w+)'", message)))


def convert(function, quantize):
    """The .tflite bytes of a concrete function, builtin ops only, weights frozen."""
    frozen = convert_variables_to_constants_v2(function)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([frozen])
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if quantize is not None:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantize == "float16":
        converter.target_spec.supported_types = [tf.float16]
    try:
        return converter.convert()
    except Exception as error:  # the converter raises ConverterError and others
        ops = _flex_ops(str(error))
        if ops:
            raise ValueError(
                "The model needs TensorFlow ops that LiteRT has no builtin for (they would "
                f"need Flex, which the stock runtime lacks): {', '.join(ops)}."
            ) from None
        raise


def export_litert(
    model,
    processor,
    path,
    task=None,
    quantize=None,
    max_new_tokens=20,
    num_beams=1,
    overwrite=False,
):
    """Writes a LiteRT model of greedy captioning or VQA, with its vocabulary and metadata.

    Args:
        model: a TFBlipForConditionalGeneration or TFBlipForQuestionAnswering.
        processor: the model's BlipProcessor (normalisation, vocabulary, special tokens).
        path: the .tflite file to write; FILE.vocab.txt and FILE.json go beside it.
        task: "caption" or "vqa"; default: the model's.
        quantize: None (float32), "float16" (float16 weights) or "dynamic_int8" (int8
            weights, activations quantized at run time where LiteRT has kernels for it).
        max_new_tokens: tokens after bos; the output has 1 + max_new_tokens ids, [SEP] and
            padding after the end of the text.
        num_beams: 1 (greedy decoding).
        overwrite: replace existing files.

    Returns:
        The .tflite path.

    Raises:
        ValueError: a bad option, a model of another task, existing files without
            `overwrite`, or ops that would need Flex (named).
    """
    model_task = _task_of(model)
    if task is not None and task != model_task:
        raise ValueError(f"A {type(model).__name__} exports task {model_task!r}, not {task!r}.")
    if quantize not in LITERT_QUANTIZATIONS:
        raise ValueError(
            f"Unknown LiteRT quantization {quantize!r}; expected one of {LITERT_QUANTIZATIONS}."
        )
    if num_beams != 1:
        raise ValueError("export_litert decodes greedily: num_beams must be 1.")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}.")
    path = os.fspath(path)
    if not path.endswith(".tflite"):
        raise ValueError(f"The LiteRT file must end in .tflite: {path!r}.")
    stem = path[: -len(".tflite")]
    files = [path, f"{stem}.vocab.txt", f"{stem}.json"]
    existing = [name for name in files if os.path.exists(name)]
    if existing and not overwrite:
        raise ValueError(f"{', '.join(existing)} exist; pass overwrite=True to replace them.")

    function = _graph(model, processor.image_processor, model_task, max_new_tokens)
    blob = convert(function.get_concrete_function(), quantize)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as f:
        f.write(blob)
    vocabulary, _ = vocabulary_and_special_ids(processor)
    with open(files[1], "w", encoding="utf-8") as f:
        f.write("".join(token + "\n" for token in vocabulary))
    with open(files[2], "w") as f:
        json.dump(_metadata(model, processor, model_task, quantize, max_new_tokens), f, indent=2)
    return path


def _metadata(model, processor, task, quantize, max_new_tokens):
    image_processor = processor.image_processor
    size = model.config.vision_config.image_size
    text = model.config.text_config
    return {
        "format": "tfblip-litert",
        "version": METADATA_VERSION,
        "task": task,
        "quantize": quantize,
        "inputs": {
            "image": [1, size, size, 3],
            **({"input_ids": [1, -1]} if task == "vqa" else {}),
        },
        "output": {"token_ids": [1, 1 + max_new_tokens]},
        "resize": {
            "height": size,
            "width": size,
            "rule": "RGB, resized to height x width with Pillow's BICUBIC filter "
            "(Image.resize((width, height), Image.BICUBIC)), as BlipImageProcessor does",
            "rescale_factor": image_processor.rescale_factor,
            "mean": list(image_processor.image_mean),
            "std": list(image_processor.image_std),
        },
        "special_token_ids": vocabulary_and_special_ids(processor)[1],
        "bos_token_id": text.bos_token_id,
        "sep_token_id": text.sep_token_id,
        "pad_token_id": text.pad_token_id,
        **_decoding_rules(processor),
    }


def vocabulary_and_special_ids(processor):
    """(token of each id, the sorted special ids decoding skips), from the processor's
    tokenizer: its vocabulary, then its added tokens ([DEC], [ENC])."""
    tokenizer = processor.tokenizer
    by_id = {i: token for token, i in tokenizer.get_vocab(with_added_tokens=False).items()}
    added = tokenizer.get_added_tokens_decoder()
    by_id.update({i: token.content for i, token in added.items()})
    special = {token.content for token in added.values() if token.special}
    vocabulary = [by_id.get(i, "") for i in range(max(by_id) + 1)]
    return vocabulary, sorted(i for i, token in by_id.items() if token in special)


def _decoding_rules(processor):
    """The WordPiece decoder's continuation prefix and its per-token replacements, and
    transformers' clean-up of the whole text when the tokenizer config asks for it."""
    decoder = json.loads(processor.tokenizer.to_str())["decoder"]
    token_cleanup = WORDPIECE_CLEANUP if decoder.get("cleanup", True) else ()
    text_cleanup = CLEAN_UP_REPLACEMENTS if processor.clean_up_tokenization_spaces else ()
    return {
        "continuation_prefix": decoder["prefix"],
        "token_replacements": [list(pair) for pair in token_cleanup],
        "text_replacements": [list(pair) for pair in text_cleanup],
    }


def detokenize(token_ids, vocabulary, metadata):
    """The text of one row of token ids, as `BlipProcessor.decode(ids,
    skip_special_tokens=True)` gives it, from FILE.vocab.txt's lines and FILE.json.

    Steps (the same in any language): drop the special ids (bos, [SEP], padding ...) and ids
    outside the vocabulary; turn each remaining id into its token: the first as it is, one
    starting with the continuation prefix ("##") without it, any other after a space; apply
    the token replacements to each of these pieces; join them; apply the text replacements.
    """
    special = set(metadata["special_token_ids"])
    prefix = metadata["continuation_prefix"]
    pieces = []
    for token_id in map(int, token_ids):
        if token_id in special or not 0 <= token_id < len(vocabulary) or not vocabulary[token_id]:
            continue
        token = vocabulary[token_id]
        if not pieces:
            piece = token
        elif token.startswith(prefix):
            piece = token[len(prefix) :]
        else:
            piece = " " + token
        for old, new in metadata["token_replacements"]:
            piece = piece.replace(old, new)
        pieces.append(piece)
    text = "".join(pieces)
    for old, new in metadata["text_replacements"]:
        text = text.replace(old, new)
    return text
