"""tfblip against transformers' PyTorch BLIP, timed side by side in the same run.

    python scripts/benchmark.py                      # every benchmark
    python scripts/benchmark.py --only generation    # processor, vision, generation, saved_model

Each benchmark runs the same work through tfblip and through transformers on the same inputs
and prints the ratio tfblip / PyTorch of the best time over --repeats runs (below 1.0 means
tfblip is faster). Absolute times on a shared machine are noise; the ratios are the result.

- processor: BlipImageProcessor on 32 photographs (scikit-image's samples, several sizes)
  against transformers' BlipImageProcessorPil, both returning numpy arrays.
- vision: the base-size ViT-B/16 vision encoder at 384x384, batch 1, fp32, random weights;
  tfblip runs it in a tf.function. First-call (trace) time is reported separately.
- generation: base-size random-weight captioning and VQA checkpoints built with transformers;
  `generate()` with exactly 20 new tokens (min_new_tokens = max_new_tokens = 20): caption at
  batch 1 (also with XLA), batch 8 and beam 3; VQA at batch 1; bfloat16 (the Keras
  "bfloat16" policy: bf16 weights, LayerNorm statistics and softmax in float32) against
  PyTorch fp32, with the share of greedy tokens that agree with tfblip fp32. First-call
  (trace/compile) times are printed beside.
- saved_model: the caption export (`tfblip.export_saved_model`) loaded with
  `tf.saved_model.load` and run in graph mode without XLA, as stock TF Serving runs it, on JPEG
  bytes (decoding, preprocessing, 20 greedy tokens, detokenizing) against transformers doing
  the same work from the same bytes. Beside it, the memory a fresh process (TensorFlow alone)
  gains by loading the export and answering one request, as a multiple of the checkpoint's
  size, with the TF2 loader and with a TF1 Session (TF Serving's C++ runtime path).
"""

import argparse
import os
import platform
import tempfile
import time

import numpy as np
from measure_load_memory import STATUS_BYTES_SOURCE

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def cpu_model():
    """The processor's model name (these benchmarks' ratios differ between CPU models)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def best_time(function, repeats):
    """Best wall time of `repeats` calls (the least disturbed by other load)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def report(name, tfblip_seconds, torch_seconds, extra=""):
    ratio = tfblip_seconds / torch_seconds
    print(
        f"{name:<40} tfblip {tfblip_seconds * 1e3:9.1f} ms   transformers "
        f"{torch_seconds * 1e3:9.1f} ms   ratio {ratio:5.2f}{extra}"
    )
    return ratio


def sample_photos(count=32):
    """`count` RGB photographs of several sizes and aspect ratios, as PIL images."""
    from PIL import Image
    from skimage import data

    sources = [data.astronaut(), data.chelsea(), data.coffee(), data.rocket()]
    sizes = [(512, 512), (640, 427), (427, 640), (800, 600), (300, 451), (1024, 768)]
    photos = []
    for index in range(count):
        image = Image.fromarray(sources[index % len(sources)])
        photos.append(image.resize(sizes[index % len(sizes)], Image.BICUBIC))
    return photos


def benchmark_processor(repeats):
    import transformers

    import tfblip

    photos = sample_photos()
    ours = tfblip.BlipImageProcessor()
    theirs = transformers.BlipImageProcessorPil()
    ours_output = ours(photos, return_tensors="np")["pixel_values"]
    theirs_output = theirs(photos, return_tensors="np")["pixel_values"]
    difference = float(np.max(np.abs(ours_output - theirs_output)))
    ours_time = best_time(lambda: ours(photos, return_tensors="np"), repeats)
    theirs_time = best_time(lambda: theirs(photos, return_tensors="np"), repeats)
    return report(
        "image processor, 32 photos", ours_time, theirs_time, f"   max abs diff {difference:.1e}"
    )


def benchmark_vision(repeats):
    import tensorflow as tf
    import torch
    import transformers

    import tfblip

    torch.manual_seed(0)
    reference = transformers.BlipVisionModel(transformers.BlipVisionConfig()).eval()
    with tempfile.TemporaryDirectory() as directory:
        reference.save_pretrained(directory)
        model = tfblip.TFBlipVisionModel.from_pretrained(directory)
    pixels = np.random.default_rng(0).normal(size=(1, 3, 384, 384)).astype(np.float32)
    pixels_tf, pixels_torch = tf.constant(pixels), torch.from_numpy(pixels)
    forward = tf.function(lambda x: model(pixel_values=x).last_hidden_state)

    start = time.perf_counter()
    forward(pixels_tf).numpy()
    first_call = time.perf_counter() - start

    def run_torch():
        with torch.no_grad():
            reference(pixel_values=pixels_torch)

    ours_time = best_time(lambda: forward(pixels_tf).numpy(), repeats)
    theirs_time = best_time(run_torch, repeats)
    return report(
        "vision encoder, base 384, batch 1",
        ours_time,
        theirs_time,
        f"   (tfblip first call {first_call:.1f} s)",
    )


def base_captioning_pair(directory):
    """A base-size random-weight captioning checkpoint, in transformers and in tfblip."""
    import torch
    import transformers

    import tfblip

    torch.manual_seed(0)
    config = transformers.BlipConfig()
    reference = transformers.BlipForConditionalGeneration(config).eval()
    reference.save_pretrained(directory)
    return reference, tfblip.TFBlipForConditionalGeneration.from_pretrained(directory)


FIXED_20_TOKENS = {"max_new_tokens": 20, "min_new_tokens": 20}


def time_generation(name, tfblip_generate, torch_generate, repeats, options=None):
    """Reports tfblip against PyTorch for one decoding setup, first call shown apart."""
    options = options or {}
    start = time.perf_counter()
    tfblip_generate(**options)
    first_call = time.perf_counter() - start
    ours = best_time(lambda: tfblip_generate(**options), repeats)
    theirs = best_time(torch_generate, repeats)
    return report(name, ours, theirs, f"   (first call {first_call:.1f} s)")


def benchmark_generation(repeats):
    """Captioning and VQA decoding; every run produces exactly 20 new tokens."""
    import torch

    import tfblip

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as directory:
        reference, model = base_captioning_pair(directory)
        bf16 = tfblip.TFBlipForConditionalGeneration.from_pretrained(directory, dtype="bfloat16")
    cases = [
        ("caption, batch 1, greedy", 1, {}),
        ("caption, batch 1, greedy, XLA", 1, {"jit_compile": True}),
        ("caption, batch 8, greedy", 8, {}),
        ("caption, batch 1, beam 3", 1, {"num_beams": 3}),
    ]
    for name, batch, options in cases:
        pixels = rng.normal(size=(batch, 3, 384, 384)).astype(np.float32)
        torch_options = {k: v for k, v in options.items() if k != "jit_compile"}

        def run_torch(pixels=pixels, torch_options=torch_options):
            with torch.no_grad():
                reference.generate(
                    pixel_values=torch.from_numpy(pixels), **FIXED_20_TOKENS, **torch_options
                )

        def run_tfblip(pixels=pixels, **options):
            model.generate(pixels, **FIXED_20_TOKENS, **options)

        time_generation(name, run_tfblip, run_torch, repeats, options)
    bf16_agreement(model, bf16, reference, rng, repeats)
    benchmark_vqa(rng, repeats)


def benchmark_vqa(rng, repeats):
    import torch
    import transformers

    import tfblip

    torch.manual_seed(0)
    reference = transformers.BlipForQuestionAnswering(transformers.BlipConfig()).eval()
    with tempfile.TemporaryDirectory() as directory:
        reference.save_pretrained(directory)
        model = tfblip.TFBlipForQuestionAnswering.from_pretrained(directory)
    pixels = rng.normal(size=(1, 3, 384, 384)).astype(np.float32)
    question = np.array([[101, 2054, 2003, 1999, 1996, 3861, 1029, 102]])

    def run_torch():
        with torch.no_grad():
            reference.generate(
                input_ids=torch.from_numpy(question),
                pixel_values=torch.from_numpy(pixels),
                **FIXED_20_TOKENS,
            )

    def run_tfblip():
        model.generate(question, pixels, **FIXED_20_TOKENS)

    time_generation("vqa, batch 1, greedy", run_tfblip, run_torch, repeats)


def bf16_agreement(model, bf16, reference, rng, repeats):
    """bfloat16 speed against PyTorch fp32, and the share of its tokens equal to fp32's."""
    import torch

    fixed = FIXED_20_TOKENS
    pixels = rng.normal(size=(8, 3, 384, 384)).astype(np.float32)
    full = model.generate(pixels, **fixed).numpy()[:, 1:]
    half = bf16.generate(pixels, **fixed).numpy()[:, 1:]
    single = pixels[:1]

    def run_torch():
        with torch.no_grad():
            reference.generate(pixel_values=torch.from_numpy(single), **fixed)

    theirs = best_time(run_torch, repeats)
    agreement = f"   ({np.mean(full == half):.0%} of 8x20 greedy tokens equal to fp32)"
    for suffix, options in (("", {}), (", XLA", {"jit_compile": True})):
        bf16.generate(single, **fixed, **options)
        ours = best_time(lambda options=options: bf16.generate(single, **fixed, **options), repeats)
        report("caption, batch 1, greedy, bfloat16" + suffix, ours, theirs, agreement)


def write_processor_files(directory):
    """A BERT-layout vocabulary (30522 entries, then [DEC] and [ENC] as BLIP adds them) and
    BLIP's tokenizer and image-processor configs, so the checkpoint loads with a processor."""
    import json

    import tfblip

    vocab = ["[PAD]"] + [f"[unused{i}]" for i in range(99)]
    vocab += ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab += [f"word{i}" for i in range(30522 - len(vocab))]
    with open(os.path.join(directory, "vocab.txt"), "w") as f:
        f.write("\n".join(vocab) + "\n")
    special = {"bos_token": "[DEC]", "additional_special_tokens": ["[ENC]"]}
    with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
        json.dump({"do_lower_case": True, "model_max_length": 512, **special}, f)
    with open(os.path.join(directory, "special_tokens_map.json"), "w") as f:
        json.dump(special, f)
    tfblip.BlipImageProcessor().save_pretrained(directory)


# Runs in a fresh process: TensorFlow only, its runtime started by a first small op before the
# baseline, then the export loaded and one request answered, either by the TF2 object loader
# (`tf.saved_model.load`) or by a TF1 Session (`loader.load` + `Session.run`: the C++ runtime
# path TF Serving takes). VmRSS is what the process holds afterwards; VmHWM its peak.
SERVING_MEMORY_CHILD = (
    """
import json, sys
import tensorflow as tf
"""
    + STATUS_BYTES_SOURCE
    + """
loader, export_dir, image_path = sys.argv[1:]
with open(image_path, "rb") as f:
    image = f.read()
tf.reduce_sum(tf.matmul(tf.ones((8, 8)), tf.ones((8, 8)))).numpy()
before = status_bytes("VmRSS")
if loader == "tf2":
    serve = tf.saved_model.load(export_dir).signatures["serving_default"]
    serve(image_bytes=tf.constant([image]))["caption"].numpy()
    after = status_bytes("VmRSS")
else:
    with tf.Graph().as_default(), tf.compat.v1.Session() as session:
        signature = tf.compat.v1.saved_model.loader.load(session, ["serve"], export_dir)
        signature = signature.signature_def["serving_default"]
        session.run(
            signature.outputs["caption"].name, {signature.inputs["image_bytes"].name: [image]}
        )
        after = status_bytes("VmRSS")
print(json.dumps({"before": before, "after": after, "peak": status_bytes("VmHWM")}))
"""
)


def serving_memory(loader, export_dir, jpeg, checkpoint_bytes):
    """(grown, peak growth) of a fresh process that loads `export_dir` with `loader` ("tf2" or
    "session") and captions `jpeg`, each as a multiple of `checkpoint_bytes`."""
    import json
    import subprocess
    import sys

    with tempfile.NamedTemporaryFile(suffix=".jpg") as image:
        image.write(jpeg)
        image.flush()
        completed = subprocess.run(
            [sys.executable, "-c", SERVING_MEMORY_CHILD, loader, export_dir, image.name],
            capture_output=True,
            text=True,
            check=True,
        )
    sizes = json.loads(completed.stdout.strip().splitlines()[-1])
    grown = (sizes["after"] - sizes["before"]) / checkpoint_bytes
    return grown, (sizes["peak"] - sizes["before"]) / checkpoint_bytes


def benchmark_saved_model(repeats):
    """The exported caption SavedModel (graph mode, no XLA, as stock TF Serving runs it) on
    JPEG bytes, against transformers decoding the JPEG, preprocessing, generating and
    detokenizing; batch 1, greedy, 20 new tokens."""
    import io

    import tensorflow as tf
    import torch
    import transformers
    from PIL import Image

    import tfblip

    buffer = io.BytesIO()
    sample_photos(1)[0].resize((640, 480)).save(buffer, format="JPEG", quality=90)
    jpeg = buffer.getvalue()
    with tempfile.TemporaryDirectory() as directory:
        reference, model = base_captioning_pair(directory)
        write_processor_files(directory)
        processor = tfblip.BlipProcessor.from_pretrained(directory)
        reference_processor = transformers.BlipProcessor.from_pretrained(directory)
        export_dir = os.path.join(directory, "saved_model", "1")
        start = time.perf_counter()
        tfblip.export_saved_model(model, processor, export_dir, **FIXED_20_TOKENS)
        export_time = time.perf_counter() - start
        checkpoint_bytes = os.path.getsize(os.path.join(directory, "model.safetensors"))
        memory = {
            loader: serving_memory(loader, export_dir, jpeg, checkpoint_bytes)
            for loader in ("tf2", "session")
        }
        start = time.perf_counter()
        serve = tf.saved_model.load(export_dir).signatures["serving_default"]
        images = tf.constant([jpeg])
        first_caption = serve(image_bytes=images)["caption"].numpy()
        first_call = time.perf_counter() - start

    def run_saved_model():
        serve(image_bytes=images)["caption"].numpy()

    def run_torch():
        image = Image.open(io.BytesIO(jpeg)).convert("RGB")
        inputs = reference_processor(images=image, return_tensors="pt")
        with torch.no_grad():
            ids = reference.generate(pixel_values=inputs["pixel_values"], **FIXED_20_TOKENS)
        reference_processor.batch_decode(ids, skip_special_tokens=True)

    ours = best_time(run_saved_model, repeats)
    theirs = best_time(run_torch, repeats)
    assert first_caption.shape == (1,)
    ratio = report(
        "SavedModel caption, JPEG, batch 1, greedy",
        ours,
        theirs,
        f"   (export {export_time:.0f} s, load + first call {first_call:.1f} s)",
    )
    for loader, (grown, peak) in memory.items():
        print(
            f"{'SavedModel load + 1 request, ' + loader:<40} process grew {grown:.2f}x the "
            f"checkpoint ({checkpoint_bytes / 2**20:.0f} MiB), peak {peak:.2f}x"
        )
    return ratio


BENCHMARKS = {
    "processor": benchmark_processor,
    "vision": benchmark_vision,
    "generation": benchmark_generation,
    "saved_model": benchmark_saved_model,
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=sorted(BENCHMARKS), action="append")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    import tensorflow as tf
    import torch

    print(
        f"{cpu_model()}, {os.cpu_count()} CPUs; "
        f"tensorflow {tf.__version__}, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads)"
    )
    for name in args.only or BENCHMARKS:
        BENCHMARKS[name](args.repeats)


if __name__ == "__main__":
    main()
