"""`export_saved_model`: a BLIP task model as a SavedModel that stock TF Serving runs.

Clients send encoded images and strings; the graph decodes and preprocesses the images
(`tfblip.ops.image`), tokenizes and detokenizes text (`tfblip.ops.text`) and generates with
the same decoding code as `generate()` (`tfblip.generation.decoding`), all with core
TensorFlow ops: no XLA (stock TF Serving runs without it), no custom ops. Generation options
are fixed at export time. Each signature also has a `*_from_pixels` variant for clients that
preprocess themselves (pixel_values float32 (B, 3, H, W), and input_ids / attention_mask int32
instead of strings).
"""

import dataclasses
import functools
import io
import json
import os
import shutil
import tempfile

import numpy as np
import tensorflow as tf
from PIL import Image

from tfblip.export.warmup import write_warmup_requests
from tfblip.generation.decoding import decode
from tfblip.generation.options import GenerationOptions
from tfblip.modeling.blip import (
    TFBlipForConditionalGeneration,
    TFBlipForImageTextRetrieval,
    TFBlipForQuestionAnswering,
    TFBlipModel,
    all_ones_mask,
)
from tfblip.modeling.decoder_step import DecoderStep
from tfblip.ops.image import preprocess_image_bytes
from tfblip.ops.text import GraphTokenizer

TASKS = {
    "caption": TFBlipForConditionalGeneration,
    "vqa": TFBlipForQuestionAnswering,
    "retrieval": TFBlipForImageTextRetrieval,
    "features": TFBlipModel,
}
GENERATING_TASKS = ("caption", "vqa")
EXPORT_INFO_FILE = "tfblip_export.json"

# Options that change what a signature returns, or need XLA, cannot be baked into an export.
_UNEXPORTABLE_OPTIONS = {
    "output_scores": "signatures return token ids and text, not scores",
    "return_dict_in_generate": "signatures always return a dict of named outputs",
    "jit_compile": "stock TF Serving runs without XLA",
}


def task_of(model):
    """The export task of a model instance.

    Args:
        model: a tfblip task model.

    Returns:
        "caption", "vqa", "retrieval" or "features".

    Raises:
        TypeError: a model no task exports.
    """
    for task, model_class in TASKS.items():
        if type(model) is model_class:
            return task
    raise TypeError(
        f"Cannot export a {type(model).__name__}; export one of "
        f"{', '.join(c.__name__ for c in TASKS.values())}."
    )


def _check_inputs(model, processor, task):
    if task is not None and task not in TASKS:
        raise ValueError(f"Unknown task {task!r}; choose one of {sorted(TASKS)}.")
    model_task = task_of(model)
    if task is not None and task != model_task:
        raise ValueError(
            f"Task {task!r} needs a {TASKS[task].__name__}, got a {type(model).__name__} "
            f"(task {model_task!r})."
        )
    if processor.image_processor is None or processor.tokenizer is None:
        raise ValueError("The processor needs both an image processor and a tokenizer.")
    size = processor.image_processor.size
    image_size = model.config.vision_config.image_size
    if (size["height"], size["width"]) != (image_size, image_size):
        raise ValueError(
            f"The processor resizes images to {size['height']}x{size['width']} but the model "
            f"takes {image_size}x{image_size}; use the processor saved with the checkpoint."
        )
    text_config = model.config.text_config
    if processor.tokenizer.get_vocab_size() > text_config.vocab_size:
        raise ValueError(
            f"The tokenizer has {processor.tokenizer.get_vocab_size()} tokens but the model's "
            f"vocabulary only {text_config.vocab_size}: they do not belong together."
        )
    return model_task


def _generation_options(model, task, generation_options):
    if task not in GENERATING_TASKS:
        if generation_options:
            raise ValueError(
                f"Generation options {sorted(generation_options)} apply to the caption and vqa "
                f"tasks only, not {task!r}."
            )
        return None
    for name, why in _UNEXPORTABLE_OPTIONS.items():
        if generation_options.get(name):
            raise ValueError(f"{name}=True cannot be exported: {why}.")
    options = GenerationOptions.from_dicts(model.generation_defaults, generation_options)
    if options.num_return_sequences != 1:
        raise ValueError(
            "num_return_sequences must be 1 in an export: each signature returns one text per "
            "input."
        )
    return options


class _ServingFunctions:
    """The signature functions of one task: the model, the in-graph tokenizer and the options.

    Each task runs its model in one graph function per kind of output (the `*_from_pixels` /
    `*_from_ids` ones); the signatures that take bytes, strings or no prompt only prepare its
    inputs and call it. The export then holds each model graph once instead of once per
    signature (the caption graph, decoding loop included, is shared by four), which keeps
    TensorFlow's memory and load time down wherever the export is loaded.

    A plain object, not a `tf.Module`: what gets saved is chosen by `_serving_root`.
    """

    def __init__(self, model, processor, task, options, max_text_length):
        self.model = model
        self.task = task
        self.options = options
        self._image_processor = processor.image_processor
        self.tokenizer = GraphTokenizer(processor, max_length=max_text_length)
        image_size = model.config.vision_config.image_size
        pixels = tf.TensorSpec([None, 3, image_size, image_size], tf.float32, name="pixel_values")
        ids = tf.TensorSpec([None, None], tf.int32, name="input_ids")
        mask = tf.TensorSpec([None, None], tf.int32, name="attention_mask")
        self.caption_with_prompt_from_pixels = _graph(self._caption, pixels, ids, mask)
        self.vqa_from_pixels = _graph(self._vqa, pixels, ids, mask)
        self.retrieval_from_pixels = _graph(self._retrieval, pixels, ids, mask)
        self.image_embeds_from_pixels = _graph(self._image_embeds, pixels)
        self.text_embeds_from_ids = _graph(self._text_embeds, ids, mask)
        string = functools.partial(tf.TensorSpec, [None], tf.string)
        self.caption = _graph(self._caption_bytes, string(name="image_bytes"))
        self.caption_with_prompt = _graph(
            self._caption_with_prompt_bytes, string(name="image_bytes"), string(name="prompt")
        )
        self.caption_from_pixels = _graph(self._caption_without_prompt, pixels)
        self.vqa = _graph(self._vqa_bytes, string(name="image_bytes"), string(name="question"))
        self.retrieval = _graph(
            self._retrieval_bytes, string(name="image_bytes"), string(name="text")
        )
        self.image_embeds = _graph(self._image_embeds_bytes, string(name="image_bytes"))
        self.text_embeds = _graph(self._text_embeds_strings, string(name="text"))

    # -------------------------------------------------------------- building blocks

    def _pixels(self, image_bytes):
        return preprocess_image_bytes(image_bytes, self._image_processor)

    def _image_states(self, pixel_values):
        return self.model.vision_model(pixel_values=pixel_values).last_hidden_state

    def _seed(self):
        if self.options.seed is not None:
            return tf.constant(self.options.seed, tf.int64)
        # Sampling without a fixed seed: a fresh one per request, as generate() does per call.
        return tf.random.uniform([], maxval=2**31 - 1, dtype=tf.int64)

    def _generate(self, encoder_states, encoder_mask, prompt_ids, prompt_mask, text_key):
        result = decode(
            DecoderStep(self.model.text_decoder),
            encoder_states,
            encoder_mask,
            prompt_ids,
            prompt_mask,
            self.options,
            self._seed(),
        )
        token_ids = result["sequences"][:, : result["width"]]
        return {text_key: self.tokenizer.detokenize(token_ids), "token_ids": token_ids}

    @staticmethod
    def _same_batch(pixel_values, input_ids):
        tf.debugging.assert_equal(
            tf.shape(pixel_values)[0],
            tf.shape(input_ids)[0],
            message="Each image needs one text: the batch sizes of the inputs differ.",
        )

    # -------------------------------------------------------------- caption

    def _caption(self, pixel_values, input_ids, attention_mask):
        self._same_batch(pixel_values, input_ids)
        states = self._image_states(pixel_values)
        ids, mask = self.model.decoder_prompt(tf.shape(states)[0], input_ids, attention_mask)
        return self._generate(states, all_ones_mask(states), ids, mask, "caption")

    def _caption_without_prompt(self, pixel_values):
        ids = self.model.unprompted_input_ids(tf.shape(pixel_values)[0])
        return self.caption_with_prompt_from_pixels(pixel_values, ids, tf.ones_like(ids))

    def _caption_bytes(self, image_bytes):
        return self.caption_from_pixels(self._pixels(image_bytes))

    def _caption_with_prompt_bytes(self, image_bytes, prompt):
        input_ids, attention_mask = self.tokenizer.tokenize(prompt)
        return self.caption_with_prompt_from_pixels(
            self._pixels(image_bytes), input_ids, attention_mask
        )

    # -------------------------------------------------------------- vqa

    def _vqa(self, pixel_values, input_ids, attention_mask):
        self._same_batch(pixel_values, input_ids)
        _, question_states = self.model.encode_question(
            input_ids, pixel_values, attention_mask=attention_mask
        )
        bos = tf.fill((tf.shape(input_ids)[0], 1), self.model.config.text_config.bos_token_id)
        return self._generate(question_states, attention_mask, bos, tf.ones_like(bos), "answer")

    def _vqa_bytes(self, image_bytes, question):
        input_ids, attention_mask = self.tokenizer.tokenize(question)
        return self.vqa_from_pixels(self._pixels(image_bytes), input_ids, attention_mask)

    # -------------------------------------------------------------- retrieval

    def _retrieval(self, pixel_values, input_ids, attention_mask):
        self._same_batch(pixel_values, input_ids)
        states = self._image_states(pixel_values)
        itm_probability, itc_similarity = self.model.pair_scores(states, input_ids, attention_mask)
        return {"itm_probability": itm_probability, "itc_similarity": itc_similarity}

    def _retrieval_bytes(self, image_bytes, text):
        input_ids, attention_mask = self.tokenizer.tokenize(text)
        return self.retrieval_from_pixels(self._pixels(image_bytes), input_ids, attention_mask)

    # -------------------------------------------------------------- features

    def _image_embeds(self, pixel_values):
        embeds = self.model.get_image_features(pixel_values=pixel_values)
        return {"image_embeds": tf.cast(embeds, tf.float32)}

    def _text_embeds(self, input_ids, attention_mask):
        embeds = self.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask)
        return {"text_embeds": tf.cast(embeds, tf.float32)}

    def _image_embeds_bytes(self, image_bytes):
        return self.image_embeds_from_pixels(self._pixels(image_bytes))

    def _text_embeds_strings(self, text):
        return self.text_embeds_from_ids(*self.tokenizer.tokenize(text))

    # -------------------------------------------------------------- signatures

    def signatures(self):
        """{signature name: concrete function} for this task; `serving_default` first."""
        names = {
            "caption": {
                "serving_default": self.caption,
                "caption_with_prompt": self.caption_with_prompt,
                "caption_from_pixels": self.caption_from_pixels,
                "caption_with_prompt_from_pixels": self.caption_with_prompt_from_pixels,
            },
            "vqa": {"serving_default": self.vqa, "vqa_from_pixels": self.vqa_from_pixels},
            "retrieval": {
                "serving_default": self.retrieval,
                "retrieval_from_pixels": self.retrieval_from_pixels,
            },
            "features": {
                "serving_default": self.image_embeds,
                "image_embeds": self.image_embeds,
                "text_embeds": self.text_embeds,
                "image_embeds_from_pixels": self.image_embeds_from_pixels,
                "text_embeds_from_ids": self.text_embeds_from_ids,
            },
        }[self.task]
        return {name: function.get_concrete_function() for name, function in names.items()}


def _graph(method, *input_signature):
    """A graph function (no XLA: stock TF Serving runs without it) with a fixed signature."""
    return tf.function(method, input_signature=list(input_signature), jit_compile=False)


def _serving_root(signatures, tokenizer, assets):
    """The object `tf.saved_model.save` writes: the weights the signatures read, the tokenizer's
    lookup tables and the assets, each exactly once.

    It deliberately does not hold the Keras model. A Keras 3 variable wraps a `tf.Variable`, and
    saving a Keras variable writes a second `tf.Variable` copied from the first
    (`keras.Variable._export_to_saved_model_graph`). The signatures read the wrapped variables,
    but the MetaGraph's saver restores only the copies, so TF Serving's C++ loader (and any TF1
    Session) fails with "Could not find variable ...", and `tf.saved_model.load` keeps both:
    twice the weights in memory. `keras.export.ExportArchive` has the same problem (it tracks
    the Keras variables as well as the wrapped ones: three handles per weight). Tracking the
    `tf.Variable`s the concrete functions capture gives one handle per weight, restored by the
    saver and read by every signature.
    """
    root = tf.Module(name="tfblip_serving")
    variables = {}
    for function in signatures.values():
        for variable in function.variables:
            variables.setdefault(variable.ref(), variable)
    root.model_variables = list(variables.values())
    root.tokenizer = tokenizer
    root.assets = assets
    return root


def _warmup_requests(image_processor, signatures):
    """One small request per signature, so TF Serving builds every graph at load time."""
    size = image_processor.size
    gradient = np.linspace(0, 255, 64 * 48 * 3).reshape(48, 64, 3).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(gradient).save(buffer, format="JPEG")
    image_bytes = np.array([buffer.getvalue()], dtype=object)
    pixels = np.zeros((1, 3, size["height"], size["width"]), np.float32)
    ids = np.array([[0, 0]], np.int32)  # any ids: warming up needs shapes, not meaning
    mask = np.ones_like(ids)
    text = np.array([b"a picture of"], dtype=object)
    inputs_by_name = {
        "image_bytes": image_bytes,
        "pixel_values": pixels,
        "input_ids": ids,
        "attention_mask": mask,
        "prompt": text,
        "question": np.array([b"what is in the picture?"], dtype=object),
        "text": text,
    }
    requests = []
    for name, function in signatures.items():
        specs = function.structured_input_signature[0]
        requests.append((name, {spec.name: inputs_by_name[spec.name] for spec in specs}))
    return requests


def export_saved_model(
    model,
    processor,
    export_dir,
    *,
    task=None,
    max_text_length=None,
    warmup=True,
    overwrite=False,
    **generation_options,
):
    """Writes `model` as a TF Serving SavedModel in `export_dir` (e.g. saved_models/NAME/1).

    Args:
        model: a TFBlipForConditionalGeneration (task "caption"), TFBlipForQuestionAnswering
            ("vqa"), TFBlipForImageTextRetrieval ("retrieval") or TFBlipModel ("features").
        processor: the checkpoint's BlipProcessor; its image options and vocabulary go into
            the graph.
        task: optional, checked against the model's class.
        max_text_length: longest tokenized text (with [CLS] and [SEP]); longer prompts,
            questions and texts are truncated. Default: the processor's model_max_length, at
            most the model's max_position_embeddings.
        warmup: write assets.extra/tf_serving_warmup_requests (one request per signature).
        overwrite: replace an existing non-empty `export_dir` (otherwise an error).
        **generation_options: generate() options fixed into the caption / vqa graphs
            (num_beams, max_new_tokens, ...); defaults as generate(), from the checkpoint's
            generation_config.json.

    Returns the export directory. Signatures are listed in the README ("Export for TF
    Serving").
    """
    task = _check_inputs(model, processor, task)
    options = _generation_options(model, task, generation_options)
    export_dir = os.fspath(export_dir)
    if os.path.isfile(export_dir):
        raise FileExistsError(f"{export_dir!r} is a file, not a directory.")
    if os.path.isdir(export_dir) and os.listdir(export_dir):
        if not overwrite:
            raise FileExistsError(
                f"{export_dir!r} exists and is not empty; pass overwrite=True to replace it."
            )
        shutil.rmtree(export_dir)
    if max_text_length is None:
        max_text_length = model.config.text_config.max_position_embeddings
        if processor.model_max_length is not None:
            max_text_length = min(max_text_length, processor.model_max_length)

    functions = _ServingFunctions(model, processor, task, options, max_text_length)
    signatures = functions.signatures()
    with tempfile.TemporaryDirectory() as staging:
        # The processor and model config travel with the export, so it documents itself.
        processor.save_pretrained(staging)
        model.config.save_pretrained(staging)
        info = {
            "task": task,
            "generation_options": dataclasses.asdict(options) if options else None,
            "max_text_length": max_text_length,
            "quantization": getattr(model, "quantization", None),
            "signatures": sorted(signatures),
        }
        with open(os.path.join(staging, EXPORT_INFO_FILE), "w") as f:
            json.dump(info, f, indent=2, sort_keys=True)
        assets = [
            tf.saved_model.Asset(os.path.join(staging, name))
            for name in sorted(os.listdir(staging))
        ]
        root = _serving_root(signatures, functions.tokenizer, assets)
        tf.saved_model.save(root, export_dir, signatures=signatures)
    if warmup:
        write_warmup_requests(export_dir, _warmup_requests(processor.image_processor, signatures))
    return export_dir
