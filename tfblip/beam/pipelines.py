"""The ready pipelines behind `python -m tfblip.beam caption|embed|vqa`, as PTransforms.

Each reads its inputs (a file pattern through Beam's fileio, or a JSONL manifest), checks every
image with the decoder the export itself runs, sends what fails to the dead letters with its
path and reason, runs the export's signature through RunInference (`TFBlipSavedModelHandler`)
and writes what it returns. Nothing one input does stops the others.
"""

import json
import os
import tempfile
import uuid

import apache_beam as beam
import numpy as np
import tensorflow as tf
from apache_beam.io import fileio
from apache_beam.io.filesystems import FileSystems
from apache_beam.ml.inference.base import KeyedModelHandler, RunInference

from tfblip.beam.errors import ExampleError, failure_reason
from tfblip.beam.handler import TFBlipSavedModelHandler
from tfblip.ops.image import decode_image

ERRORS = "errors"


def _read_file(path):
    with FileSystems.open(path) as file:
        return file.read()


class ReadInputs(beam.PTransform):
    """(path, {input name: value}) for each input, and dead letters {"path", "error"}.

    `pattern`: files matched with fileio (gs://, s3://, hdfs:// where Beam has the
    filesystem); or `manifest`: a JSONL file of {"image": path, ...} records whose other
    fields are the signature's text inputs (`text_fields`, e.g. "question").
    """

    def __init__(self, pattern=None, manifest=None, text_fields=()):
        super().__init__()
        if (pattern is None) == (manifest is None):
            raise ValueError("Give either an input file pattern or a JSONL manifest.")
        self.pattern, self.manifest, self.text_fields = pattern, manifest, tuple(text_fields)

    def expand(self, pipeline):
        if self.pattern is not None:
            records = (
                pipeline
                | "Match" >> fileio.MatchFiles(self.pattern)
                | "Records" >> beam.Map(lambda metadata: {"image": metadata.path})
            )
        else:
            records = pipeline | "ReadManifest" >> ReadManifest(self.manifest)
        check = beam.ParDo(_ReadAndCheck(self.text_fields)).with_outputs(ERRORS, main="examples")
        return records | "ReadAndCheck" >> check


class ReadManifest(beam.PTransform):
    """The records of a JSONL file; a line that is not JSON goes to the dead letters (as a
    record without the fields it needs, with the line as its "path")."""

    def __init__(self, manifest):
        super().__init__()
        self.manifest = manifest

    def expand(self, pipeline):
        return (
            pipeline
            | "ReadLines" >> beam.io.ReadFromText(self.manifest)
            | "Parse" >> beam.Map(_parsed_line)
        )


def _parsed_line(line):
    try:
        return json.loads(line)
    except json.JSONDecodeError:
        return line  # not a dict: the next step reports it


class _ReadAndCheck(beam.DoFn):
    """Reads each record's image and decodes it as the export will: a file that is missing,
    unreadable or no image the export decodes becomes a dead letter."""

    def __init__(self, text_fields):
        self.text_fields = text_fields

    def process(self, record):
        path = record.get("image") if isinstance(record, dict) else None
        if not isinstance(path, str):
            yield _dead_letter(str(record), 'a manifest record needs an "image" path')
            return
        missing = [field for field in self.text_fields if not isinstance(record.get(field), str)]
        if missing:
            yield _dead_letter(path, f"the manifest record has no {', '.join(missing)} text")
            return
        try:
            image_bytes = _read_file(path)
            decode_image(tf.constant(image_bytes))
        except (OSError, ValueError, tf.errors.OpError) as error:  # unreadable, not an image
            yield _dead_letter(path, failure_reason(error))
            return
        yield path, {"image_bytes": image_bytes, **{f: record[f] for f in self.text_fields}}


def _dead_letter(path, reason):
    return beam.pvalue.TaggedOutput(ERRORS, {"path": path, "error": reason})


class Predict(beam.PTransform):
    """RunInference on (path, example) pairs: (path, outputs) and dead letters."""

    def __init__(self, handler):
        super().__init__()
        self.handler = handler

    def expand(self, examples):
        return (
            examples
            | "RunInference" >> RunInference(KeyedModelHandler(self.handler))
            | "Split" >> beam.ParDo(_SplitFailures()).with_outputs(ERRORS, main="predictions")
        )


class _SplitFailures(beam.DoFn):
    def process(self, keyed):
        path, result = keyed
        if isinstance(result.inference, ExampleError):
            yield _dead_letter(path, result.inference.reason)
        else:
            yield path, result.example, result.inference


def write_jsonl(records, prefix, label):
    """Writes dicts as JSON lines to PREFIX-SSSSS-of-NNNNN.jsonl shards."""
    return (
        records
        | f"{label}ToJson" >> beam.Map(lambda record: json.dumps(record, ensure_ascii=False))
        | f"Write{label}" >> beam.io.WriteToText(prefix, file_name_suffix=".jsonl")
    )


class _WriteGalleryShard(beam.DoFn):
    """Writes each batch of (id, item, embedding) as one `tfblip.retrieval.Gallery` .npz
    file, PREFIX-<random>.npz."""

    def __init__(self, prefix, modality):
        self.prefix, self.modality = prefix, modality

    def process(self, batch):
        from tfblip.retrieval import Gallery

        gallery = Gallery(
            embeddings=np.stack([embedding for _, _, embedding in batch]).astype(np.float32),
            ids=[identifier for identifier, _, _ in batch],
            modality=self.modality,
            items=[item for _, item, _ in batch],
        )
        name = f"{self.prefix}-{uuid.uuid4().hex[:12]}.npz"
        with tempfile.TemporaryDirectory() as staging:  # Gallery.save writes local files
            local = gallery.save(os.path.join(staging, "shard.npz"))
            with open(local, "rb") as source, FileSystems.create(name) as target:
                target.write(source.read())
        yield name


class _ReadTexts(beam.DoFn):
    """(id, {"text": text}) of each {"text", optional "id"} manifest record; the id defaults
    to the text."""

    def process(self, record):
        text = record.get("text") if isinstance(record, dict) else None
        if not isinstance(text, str):
            yield _dead_letter(str(record), 'a text manifest record needs a "text" string')
            return
        yield str(record.get("id", text)), {"text": text}


def caption_pipeline(pipeline, export_dir, output, pattern=None, manifest=None, batch_size=8):
    """Captions: PREFIX-*.jsonl of {"path", "caption"}; dead letters PREFIX-errors-*.jsonl."""
    handler = TFBlipSavedModelHandler(export_dir, "serving_default", max_batch_size=batch_size)
    inputs = pipeline | "Read" >> ReadInputs(pattern, manifest)
    predicted = inputs.examples | "Caption" >> Predict(handler)
    captions = predicted.predictions | "Format" >> beam.MapTuple(
        lambda path, _, outputs: {"path": path, "caption": outputs["caption"]}
    )
    _write_outputs(captions, (inputs[ERRORS], predicted[ERRORS]), output, "Captions")


def vqa_pipeline(pipeline, export_dir, output, manifest, batch_size=8):
    """Answers to a JSONL manifest of {"image", "question"}: PREFIX-*.jsonl of {"path",
    "question", "answer"}; dead letters PREFIX-errors-*.jsonl."""
    handler = TFBlipSavedModelHandler(export_dir, "serving_default", max_batch_size=batch_size)
    inputs = pipeline | "Read" >> ReadInputs(manifest=manifest, text_fields=("question",))
    predicted = inputs.examples | "Answer" >> Predict(handler)
    answers = predicted.predictions | "Format" >> beam.MapTuple(
        lambda path, example, outputs: {
            "path": path,
            "question": example["question"],
            "answer": outputs["answer"],
        }
    )
    _write_outputs(answers, (inputs[ERRORS], predicted[ERRORS]), output, "Answers")


def embed_pipeline(
    pipeline, export_dir, output, pattern=None, manifest=None, texts=None, batch_size=8
):
    """Embeddings from a `features` export: of images (`pattern` or `manifest`, signature
    `image_embeds`, ids and items the paths) or of texts (`texts`: a JSONL manifest of
    {"text", optional "id"}, signature `text_embeds`). Written as PREFIX-*.npz Gallery shards
    (`load_gallery(PREFIX)` joins them); dead letters PREFIX-errors-*.jsonl."""
    modality = "image" if texts is None else "text"
    signature = f"{modality}_embeds"
    handler = TFBlipSavedModelHandler(export_dir, signature, max_batch_size=batch_size)
    if texts is None:
        inputs = pipeline | "Read" >> ReadInputs(pattern, manifest)
    else:
        inputs = (
            pipeline
            | "ReadTexts" >> ReadManifest(texts)
            | "Texts" >> beam.ParDo(_ReadTexts()).with_outputs(ERRORS, main="examples")
        )
    predicted = inputs.examples | "Embed" >> Predict(handler)
    item = "text" if texts is not None else None
    (
        predicted.predictions
        | "Rows"
        >> beam.MapTuple(
            lambda key, example, outputs: (
                key,
                example[item] if item else key,
                outputs[signature],
            )
        )
        | "Shards" >> beam.BatchElements(min_batch_size=1, max_batch_size=1024)
        | "WriteShards" >> beam.ParDo(_WriteGalleryShard(output, modality))
    )
    _write_dead_letters((inputs[ERRORS], predicted[ERRORS]), output)


def _write_outputs(records, dead_letters, output, label):
    write_jsonl(records, output, label)
    _write_dead_letters(dead_letters, output)


def _write_dead_letters(dead_letters, output):
    errors = dead_letters | "AllErrors" >> beam.Flatten()
    write_jsonl(errors, f"{output}-errors", "Errors")


def load_gallery(prefix):
    """The Gallery of every PREFIX-*.npz shard an embed pipeline wrote, sorted by id."""
    from tfblip.retrieval import Gallery

    names = sorted(tf.io.gfile.glob(f"{prefix}-*.npz"))
    if not names:
        raise FileNotFoundError(f"No embedding shards {prefix}-*.npz.")
    shards = [Gallery.load(name) for name in names]
    ids = [identifier for shard in shards for identifier in shard.ids]
    items = [item for shard in shards for item in shard.items]
    order = sorted(range(len(ids)), key=ids.__getitem__)
    embeddings = np.concatenate([shard.embeddings for shard in shards])[order]
    return Gallery(
        embeddings=embeddings,
        ids=[ids[i] for i in order],
        modality=shards[0].modality,
        items=[items[i] for i in order],
    )
