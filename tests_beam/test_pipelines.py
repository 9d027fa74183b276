"""The Beam pipelines end to end on local runners, as a user runs them: `python -m tfblip.beam`
in a fresh process over 44 photos and 3 corrupt files, against the export's own signatures
called one image at a time (and `tfblip caption` on the same checkpoint)."""

import glob
import json
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from conftest import MAX_NEW_TOKENS

from tfblip.beam import ExampleError, TFBlipSavedModelHandler, load_gallery

WORKERS = {
    "in_process": [],
    "two_processes": ["--direct_num_workers", "2", "--direct_running_mode", "multi_processing"],
}


def run(*arguments):
    return subprocess.run(
        [sys.executable, "-m", *map(str, arguments)],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )


def read_jsonl(pattern):
    records = []
    for name in sorted(glob.glob(pattern)):
        with open(name) as f:
            records += [json.loads(line) for line in f if line.strip()]
    return records


def outputs(prefix):
    """(results, dead letters) of a pipeline that wrote PREFIX-*.jsonl."""
    results = [n for n in glob.glob(f"{prefix}-*.jsonl") if "-errors-" not in n]
    return [r for n in sorted(results) for r in read_jsonl(n)], read_jsonl(
        f"{prefix}-errors-*.jsonl"
    )


def one_at_a_time(export, signature, examples):
    function = tf.saved_model.load(export).signatures[signature]
    return [
        {
            k: v.numpy()[0]
            for k, v in function(**{k: tf.constant([v]) for k, v in e.items()}).items()
        }
        for e in examples
    ]


def read_bytes(path):
    with open(path, "rb") as f:
        return f.read()


@pytest.fixture(scope="module")
def expected_captions(models, photos):
    _, good, _ = photos
    rows = one_at_a_time(
        models["caption"][1], "serving_default", [{"image_bytes": read_bytes(p)} for p in good]
    )
    return {path: row["caption"].decode() for path, row in zip(good, rows)}


@pytest.mark.parametrize("workers", sorted(WORKERS))
def test_caption_pipeline(models, photos, expected_captions, tmp_path, workers):
    directory, good, corrupt = photos
    prefix = tmp_path / "captions"
    done = run(
        "tfblip.beam",
        "caption",
        "--model",
        models["caption"][1],
        "--input",
        f"{directory}/*",
        "--output",
        prefix,
        "--batch-size",
        5,
        *WORKERS[workers],
    )
    assert done.returncode == 0, done.stderr[-3000:]
    captions, dead = outputs(prefix)
    assert {r["path"]: r["caption"] for r in captions} == expected_captions
    assert len(captions) == len(good) >= 40
    assert sorted(d["path"] for d in dead) == corrupt
    reasons = {d["path"].rsplit("/", 1)[1]: d["error"] for d in dead}
    assert "not a JPEG, PNG, GIF or BMP image (0 bytes" in reasons["empty.png"]
    assert "not a JPEG, PNG, GIF or BMP image" in reasons["notes.jpg"]
    assert reasons["truncated.jpg"]
    # Guard: the tiny model's captions depend on the image.
    assert len(set(expected_captions.values())) >= 5


def test_captions_equal_the_tfblip_command(models, photos, expected_captions):
    directory, good, _ = photos
    done = run(
        "tfblip",
        "caption",
        directory,
        "--model",
        models["caption"][0],
        "--format",
        "jsonl",
        "--max-new-tokens",
        MAX_NEW_TOKENS,
        "--quiet",
    )
    captions = {
        json.loads(line)["path"]: json.loads(line)["caption"] for line in done.stdout.splitlines()
    }
    assert {p: captions[p] for p in good} == expected_captions


def test_embed_pipeline_writes_a_gallery(models, photos, tmp_path):
    directory, good, corrupt = photos
    prefix = tmp_path / "embeddings"
    done = run(
        "tfblip.beam",
        "embed",
        "--model",
        models["features"][1],
        "--input",
        f"{directory}/*",
        "--output",
        prefix,
        *WORKERS["two_processes"],
    )
    assert done.returncode == 0, done.stderr[-3000:]
    gallery = load_gallery(str(prefix))
    assert gallery.ids == good
    rows = one_at_a_time(
        models["features"][1], "image_embeds", [{"image_bytes": read_bytes(p)} for p in good]
    )
    expected = np.stack([row["image_embeds"] for row in rows])
    np.testing.assert_allclose(gallery.embeddings, expected, atol=1e-5)
    assert np.abs(expected[0] - expected[1]).max() > 1e-3
    assert sorted(d["path"] for d in read_jsonl(f"{prefix}-errors-*.jsonl")) == corrupt


def test_vqa_pipeline_reads_a_manifest(models, photos, tmp_path):
    _, good, corrupt = photos
    questions = ["what is in the picture?", "how many cats are there?", "is it red"]
    records = [{"image": p, "question": questions[i % 3]} for i, p in enumerate(good[:12])]
    records += [
        {"image": corrupt[0], "question": "what?"},
        {"image": good[0]},
        {"image": str(tmp_path / "missing.jpg"), "question": "what?"},
    ]
    manifest = tmp_path / "questions.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in records))
    prefix = tmp_path / "answers"
    done = run(
        "tfblip.beam",
        "vqa",
        "--model",
        models["vqa"][1],
        "--manifest",
        manifest,
        "--output",
        prefix,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    answers, dead = outputs(prefix)
    examples = [
        {"image_bytes": read_bytes(r["image"]), "question": r["question"]} for r in records[:12]
    ]
    rows = one_at_a_time(models["vqa"][1], "serving_default", examples)
    expected = sorted(
        (r["image"], r["question"], row["answer"].decode()) for r, row in zip(records, rows)
    )
    assert sorted((a["path"], a["question"], a["answer"]) for a in answers) == expected
    reasons = {d["path"]: d["error"] for d in dead}
    assert set(reasons) == {corrupt[0], good[0], str(tmp_path / "missing.jpg")}
    assert "no question" in reasons[good[0]]
    assert (
        "missing.jpg" in reasons[str(tmp_path / "missing.jpg")]
        or "No such file" in reasons[str(tmp_path / "missing.jpg")]
    )


def test_missing_model_fails_at_start(tmp_path):
    done = run(
        "tfblip.beam",
        "caption",
        "--model",
        tmp_path / "nowhere",
        "--input",
        "x/*",
        "--output",
        tmp_path / "o",
    )
    assert done.returncode == 1
    assert "No SavedModel at" in done.stderr and "Traceback" not in done.stderr


def test_handler_isolates_a_failing_example(models, photos):
    """A batch that fails is retried one by one: only the bad example gets an ExampleError."""
    _, good, corrupt = photos
    handler = TFBlipSavedModelHandler(models["caption"][1])
    model = handler.load_model()
    batch = [{"image_bytes": read_bytes(p)} for p in (good[0], corrupt[1], good[1])]
    results = list(handler.run_inference(batch, model))
    assert [r.example for r in results] == batch
    assert isinstance(results[1].inference, ExampleError)
    assert "not a JPEG, PNG, GIF or BMP image" in results[1].inference.reason
    (alone,) = handler.run_inference([batch[1]], model)  # a batch of one: no retry, no raise
    assert alone.inference == results[1].inference
    clean = list(handler.run_inference([batch[0], batch[2]], model))
    assert [r.inference["caption"] for r in clean] == [
        results[0].inference["caption"],
        results[2].inference["caption"],
    ]
    with pytest.raises(ValueError, match="no signature 'nope'"):
        TFBlipSavedModelHandler(models["caption"][1], signature="nope").load_model()


def test_caption_pipeline_reads_a_manifest(models, photos, expected_captions, tmp_path):
    _, good, corrupt = photos
    manifest = tmp_path / "images.jsonl"
    records = [{"image": p} for p in good[:6] + corrupt[:1]] + [{"path": good[0]}]
    manifest.write_text("".join(json.dumps(r) + "\n" for r in records) + "{not json\n")
    prefix = tmp_path / "captions"
    done = run(
        "tfblip.beam", "caption", "--model", models["caption"][1],
        "--manifest", manifest, "--output", prefix,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    captions, dead = outputs(prefix)
    assert {r["path"]: r["caption"] for r in captions} == {
        p: expected_captions[p] for p in good[:6]
    }
    assert {d["path"] for d in dead} == {corrupt[0], str({"path": good[0]}), "{not json"}


def test_embed_pipeline_embeds_texts(models, tmp_path):
    texts = ["a cat on a couch", "an astronaut", "coffee", "two red dogs"]
    manifest = tmp_path / "texts.jsonl"
    records = [{"text": t, "id": f"t{i}"} for i, t in enumerate(texts)] + [{"text": 3}]
    manifest.write_text("".join(json.dumps(r) + "\n" for r in records))
    prefix = tmp_path / "text_embeddings"
    done = run(
        "tfblip.beam", "embed", "--model", models["features"][1],
        "--texts", manifest, "--output", prefix,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    gallery = load_gallery(str(prefix))
    assert gallery.modality == "text" and gallery.ids == ["t0", "t1", "t2", "t3"]
    assert gallery.items == texts
    rows = one_at_a_time(models["features"][1], "text_embeds", [{"text": t} for t in texts])
    expected = np.stack([row["text_embeds"] for row in rows])
    np.testing.assert_allclose(gallery.embeddings, expected, atol=1e-5)
    dead = read_jsonl(f"{prefix}-errors-*.jsonl")
    assert len(dead) == 1 and '"text" string' in dead[0]["error"]
